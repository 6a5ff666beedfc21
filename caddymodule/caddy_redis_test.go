package caddymodule_test

// In-process Caddy with the Redis store (one config at a time: caddy.Load
// is process-global; the two-gateway tests are in integration/).

import (
	"bytes"
	"encoding/base64"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caddy-par/caddy-par/caddymodule"
	"github.com/caddyserver/caddy/v2/caddyconfig"
)

func ctRedisBlock(r *caddymodule.TestRedis, extra ...string) string {
	return ctBlock(`store redis {
			address ` + r.Addr + `
			encryption_key {env.CT_REDIS_KEY}
			key_prefix ct:
			` + strings.Join(extra, "\n\t\t\t") + `
		}`)
}

func TestCaddyRedisStoreCaddyfileAdapts(t *testing.T) {
	cf := `:8080 {
	oauth_par {
		authorization_endpoint /authorize
		store redis {
			address 10.0.0.5:6380
			username gw
			password {env.REDIS_PASSWORD}
			db 2
			tls
			tls_server_name redis.internal
			key_prefix par:
			dial_timeout 300ms
			read_timeout 200ms
			pool_size 40
			encryption_key {file./run/secrets/par-key}
			old_encryption_keys {env.OLD1} {env.OLD2}
		}
	}
}`
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cf), map[string]any{"filename": "Caddyfile"})
	if err != nil {
		t.Fatal(err)
	}
	want := `"store":{"address":"10.0.0.5:6380","backend":"redis","db":2,"dial_timeout":300000000,"encryption_key":"{file./run/secrets/par-key}","key_prefix":"par:","old_encryption_keys":["{env.OLD1}","{env.OLD2}"],"password":"{env.REDIS_PASSWORD}","pool_size":40,"read_timeout":200000000,"tls":true,"tls_server_name":"redis.internal","username":"gw"}`
	if !bytes.Contains(cfg, []byte(want)) {
		t.Fatalf("adapted JSON lacks\n%s\ngot\n%s", want, cfg)
	}
	sentinel := strings.Replace(cf, "address 10.0.0.5:6380", "sentinel parmaster 10.0.0.7:26379 10.0.0.8:26379\n\t\t\tsentinel_password {env.SENTINEL_PASSWORD}", 1)
	cfg, _, err = caddyconfig.GetAdapter("caddyfile").Adapt([]byte(sentinel), map[string]any{"filename": "Caddyfile"})
	if err != nil {
		t.Fatal(err)
	}
	if want := `"sentinel_addresses":["10.0.0.7:26379","10.0.0.8:26379"],"sentinel_master":"parmaster","sentinel_password":"{env.SENTINEL_PASSWORD}"`; !bytes.Contains(cfg, []byte(want)) {
		t.Fatalf("adapted JSON lacks %s:\n%s", want, cfg)
	}
	for _, bad := range []string{"bogus 1", "db x", "read_timeout -1s", "address", "tls yes", "old_encryption_keys", "sentinel onlyname"} {
		_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(strings.Replace(cf, "db 2", bad, 1)), map[string]any{"filename": "Caddyfile"})
		if err == nil || !strings.Contains(err.Error(), "store redis") && !strings.Contains(err.Error(), "argument") && !strings.Contains(err.Error(), "missing") {
			t.Errorf("%q: want an error naming the subdirective, got %v", bad, err)
		}
	}
}

func TestCaddyRedisStorePushRedeemReloadAndOutage(t *testing.T) {
	r := caddymodule.StartTestRedis(t)
	key1 := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{1}, 32))
	key2 := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{2}, 32))
	t.Setenv("CT_REDIS_KEY", key1)
	up := ctNewUpstream(t, nil)
	c := ctStart(t, up, "", ctRedisBlock(r))

	uri := c.mustPush(t, ctAppForm(), ctBasic(ctAppID, ctAppSecret))
	pending := c.mustPush(t, ctAppForm(), ctBasic(ctAppID, ctAppSecret))
	if keys := r.MustCLI("--scan"); strings.Count(keys, "ct:r:") != 2 || strings.Contains(keys, strings.TrimPrefix(uri, ctURNPrefix)) {
		t.Fatalf("keys in Redis: %q", keys)
	}
	before := up.count()
	if resp := c.get(t, ctRedeemQuery(ctAppID, uri), nil); resp.Status != http.StatusOK {
		t.Fatalf("redeem: %s", resp)
	}
	if got := up.count() - before; got != 1 {
		t.Fatalf("upstream got %d requests", got)
	}
	ctWantHTMLError(t, c.get(t, ctRedeemQuery(ctAppID, uri), nil), http.StatusBadRequest, "invalid_request_uri")
	ctRaceRedeem(t, c, up)

	// A reload that rotates the key (the old one kept for decryption)
	// keeps pending pushes redeemable.
	t.Setenv("CT_REDIS_KEY", key2)
	t.Setenv("CT_REDIS_OLD", key1)
	c.reload(t, ctRedisBlock(r, "old_encryption_keys {env.CT_REDIS_OLD}"))
	if resp := c.get(t, ctRedeemQuery(ctAppID, pending), nil); resp.Status != http.StatusOK {
		t.Fatalf("redeem of a push from before the reload: %s", resp)
	}
	pending = c.mustPush(t, ctAppForm(), ctBasic(ctAppID, ctAppSecret))
	// Not touched during the hang: a redemption that timed out may still
	// run when Redis wakes up (README, Redis store), so only this one is
	// sure to be redeemable afterwards.
	untouched := c.mustPush(t, ctAppForm(), ctBasic(ctAppID, ctAppSecret))

	// Redis hangs: the PAR endpoint answers 503 temporarily_unavailable
	// with Retry-After within the timeout; the authorization endpoint shows
	// its error page; nothing reaches the upstream.
	r.Pause()
	start := time.Now()
	resp := c.pushApp(t, ctAppForm())
	if el := time.Since(start); el > 1500*time.Millisecond {
		t.Errorf("PAR with Redis hung took %s", el)
	}
	ctWantJSONError(t, resp, http.StatusServiceUnavailable, "temporarily_unavailable")
	if resp.Header.Get("Retry-After") == "" {
		t.Errorf("503 without Retry-After: %s", resp)
	}
	before = up.count()
	start = time.Now()
	ctWantHTMLError(t, c.get(t, ctRedeemQuery(ctAppID, pending), nil), http.StatusServiceUnavailable, "temporarily_unavailable")
	if el := time.Since(start); el > 1500*time.Millisecond {
		t.Errorf("authorize with Redis hung took %s", el)
	}
	ctWantUpstreamUntouched(t, up, before)
	r.Resume()
	// Back by itself; a push from before the hang still works.
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp := c.get(t, ctRedeemQuery(ctAppID, untouched), nil)
		if resp.Status == http.StatusOK {
			break
		}
		if resp.Status != http.StatusServiceUnavailable || time.Now().After(deadline) {
			t.Fatalf("redeem after the hang: %s", resp)
		}
		time.Sleep(100 * time.Millisecond)
	}
	_ = c.mustPush(t, ctAppForm(), ctBasic(ctAppID, ctAppSecret))
}
