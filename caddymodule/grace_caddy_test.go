package caddymodule_test

// In-process Caddy tests of reuse_grace (issue 9, browser retries): the
// browser that redeemed a request_uri first may redeem it again for a
// short while, recognised by a cookie; nobody else can.

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddy-par/caddy-par/caddymodule"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/go-jose/go-jose/v4"
)

const ctGracePrefix = "__Secure-oauth_par_"

// ctGraceCookieName is the cookie name the gateway uses for uri.
func ctGraceCookieName(uri string) string {
	sum := sha256.Sum256([]byte(strings.TrimPrefix(uri, ctURNPrefix)))
	return ctGracePrefix + hex.EncodeToString(sum[:6])
}

// ctGraceCookies are the grace cookies a response sets, parsed.
func ctGraceCookies(t *testing.T, r ctResp) []*http.Cookie {
	t.Helper()
	var out []*http.Cookie
	for _, line := range r.Header.Values("Set-Cookie") {
		c, err := http.ParseSetCookie(line)
		if err != nil {
			t.Fatalf("unparsable Set-Cookie %q: %v", line, err)
		}
		if strings.HasPrefix(c.Name, ctGracePrefix) {
			out = append(out, c)
		}
	}
	return out
}

// ctOneGraceCookie is the one grace cookie of a first redemption of uri,
// with every attribute checked.
func ctOneGraceCookie(t *testing.T, r ctResp, uri, path string, maxAge int) *http.Cookie {
	t.Helper()
	cs := ctGraceCookies(t, r)
	if len(cs) != 1 {
		t.Fatalf("want one grace cookie, got %d: %v", len(cs), r.Header.Values("Set-Cookie"))
	}
	c := cs[0]
	if c.Name != ctGraceCookieName(uri) {
		t.Errorf("cookie name %q, want %q", c.Name, ctGraceCookieName(uri))
	}
	if !c.HttpOnly || !c.Secure || c.SameSite != http.SameSiteLaxMode || c.Path != path || c.Domain != "" {
		t.Errorf("cookie attributes: HttpOnly=%v Secure=%v SameSite=%v Path=%q Domain=%q; want HttpOnly, Secure, Lax, %q, host-only",
			c.HttpOnly, c.Secure, c.SameSite, c.Path, c.Domain, path)
	}
	if c.MaxAge != maxAge {
		t.Errorf("Max-Age %d, want %d", c.MaxAge, maxAge)
	}
	// 256 bits, base64url: at least 128 bits of randomness.
	if len(c.Value) != 43 || strings.Trim(c.Value, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") != "" {
		t.Errorf("cookie value %q is not 32 random bytes in base64url", c.Value)
	}
	return c
}

func ctCookieHeader(cs ...*http.Cookie) http.Header {
	var parts []string
	for _, c := range cs {
		parts = append(parts, c.Name+"="+c.Value)
	}
	return http.Header{"Cookie": {strings.Join(parts, "; ")}}
}

func TestCaddyReuseGraceSameBrowserRedeemsAgainOthersDoNot(t *testing.T) {
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	global := fmt.Sprintf("log {\n\t\toutput file %s\n\t\tformat json\n\t\tlevel DEBUG\n\t}", logFile)
	up := ctNewUpstream(t, nil)
	c := ctStart(t, up, global, ctBlock()) // the default: 10s
	upstreamCookie := &http.Cookie{Name: "KC_RESTART", Value: "upstream-owned"}

	uri := c.mustPush(t, ctAppForm(), ctBasic(ctAppID, ctAppSecret))
	first := c.get(t, ctRedeemQuery(ctAppID, uri), ctCookieHeader(upstreamCookie))
	if first.Status != http.StatusOK || string(first.Body) != ctUpstreamOK {
		t.Fatalf("first redemption: %s", first)
	}
	firstUp := up.last(t)
	grace := ctOneGraceCookie(t, first, uri, "/authorize", 10)
	var values []string // every grace cookie value seen, for the log check
	values = append(values, grace.Value)

	t.Run("same_cookie_redeems_again_with_the_same_pushed_request", func(t *testing.T) {
		before := up.count()
		hdr := ctCookieHeader(upstreamCookie, grace)
		r := c.get(t, ctRedeemQuery(ctAppID, uri, "scope", "evil"), hdr)
		if r.Status != http.StatusOK || string(r.Body) != ctUpstreamOK {
			t.Fatalf("grace redemption: %s", r)
		}
		if n := up.count() - before; n != 1 {
			t.Fatalf("upstream got %d requests, want 1", n)
		}
		got := up.last(t)
		if got.RawQuery != firstUp.RawQuery || got.Method != firstUp.Method {
			t.Errorf("grace redemption forwarded %s ?%s, want what the first forwarded: %s ?%s", got.Method, got.RawQuery, firstUp.Method, firstUp.RawQuery)
		}
		// The gateway's cookie stays with the gateway; the upstream's own
		// cookies reach it untouched.
		if ck := got.Header.Get("Cookie"); ck != "KC_RESTART=upstream-owned" {
			t.Errorf("upstream got Cookie %q, want only its own cookie", ck)
		}
		// No new cookie: the window is the first redemption's.
		if cs := ctGraceCookies(t, r); len(cs) != 0 {
			t.Errorf("a grace redemption set cookies again: %v", r.Header.Values("Set-Cookie"))
		}
		// By POST too (OpenID Connect Core §3.1.2.1).
		r = c.postForm(t, "/authorize", url.Values{"client_id": {ctAppID}, "request_uri": {uri}}.Encode(), ctCookieHeader(grace))
		if r.Status != http.StatusOK || up.last(t).RawQuery != firstUp.RawQuery {
			t.Errorf("grace redemption by POST: %s", r)
		}
	})

	for _, tc := range []struct {
		name string
		path string
		hdr  http.Header
	}{
		{"no_cookie", ctRedeemQuery(ctAppID, uri), nil},
		{"wrong_value", ctRedeemQuery(ctAppID, uri), ctCookieHeader(&http.Cookie{Name: grace.Name, Value: strings.Repeat("A", 43)})},
		{"value_under_another_name", ctRedeemQuery(ctAppID, uri), ctCookieHeader(&http.Cookie{Name: ctGracePrefix + "000000000000", Value: grace.Value})},
		{"right_cookie_other_client", ctRedeemQuery(ctSPAID, uri), ctCookieHeader(grace)},
		{"right_cookie_unknown_client", ctRedeemQuery("nobody", uri), ctCookieHeader(grace)},
		{"right_cookie_no_client_id", ctRedeemQuery("", uri), ctCookieHeader(grace)},
	} {
		t.Run(tc.name+"_is_invalid_request_uri", func(t *testing.T) {
			before := up.count()
			r := c.get(t, tc.path, tc.hdr)
			ctWantHTMLError(t, r, http.StatusBadRequest, "invalid_request_uri")
			ctWantUpstreamUntouched(t, up, before)
			if cs := ctGraceCookies(t, r); len(cs) != 0 {
				t.Errorf("a refused redemption set a grace cookie")
			}
		})
	}

	t.Run("after_refusals_the_first_browser_still_redeems", func(t *testing.T) {
		if r := c.get(t, ctRedeemQuery(ctAppID, uri), ctCookieHeader(grace)); r.Status != http.StatusOK {
			t.Fatalf("grace redemption: %s", r)
		}
	})

	t.Run("parallel_tabs_have_their_own_cookies", func(t *testing.T) {
		uri2 := c.mustPush(t, ctAppForm(), ctBasic(ctAppID, ctAppSecret))
		r := c.get(t, ctRedeemQuery(ctAppID, uri2), ctCookieHeader(grace))
		if r.Status != http.StatusOK {
			t.Fatalf("first redemption of the second tab's request_uri: %s", r)
		}
		grace2 := ctOneGraceCookie(t, r, uri2, "/authorize", 10)
		values = append(values, grace2.Value)
		if grace2.Name == grace.Name || grace2.Value == grace.Value {
			t.Fatalf("two request_uris share a cookie name or value: %s", grace2.Name)
		}
		// Both tabs' cookies travel together; each works for its own.
		both := ctCookieHeader(grace, grace2)
		for _, u := range []string{uri, uri2} {
			if r := c.get(t, ctRedeemQuery(ctAppID, u), both); r.Status != http.StatusOK {
				t.Errorf("grace redemption with both tabs' cookies: %s", r)
			}
		}
		// The other tab's value under this tab's name does not.
		swapped := ctCookieHeader(&http.Cookie{Name: grace.Name, Value: grace2.Value})
		ctWantHTMLError(t, c.get(t, ctRedeemQuery(ctAppID, uri), swapped), http.StatusBadRequest, "invalid_request_uri")
	})

	t.Run("pages_below_the_endpoint_get_no_grace_cookie_upstream", func(t *testing.T) {
		_ = c.get(t, "/authorize/login-step", ctCookieHeader(upstreamCookie, grace))
		if got := up.last(t); got.Path != "/authorize/login-step" || got.Header.Get("Cookie") != "KC_RESTART=upstream-owned" {
			t.Errorf("upstream got %s with Cookie %q", got.Path, got.Header.Get("Cookie"))
		}
	})

	t.Run("log_has_outcomes_never_cookie_values", func(t *testing.T) {
		var data []byte
		deadline := time.Now().Add(5 * time.Second)
		for {
			data, _ = os.ReadFile(logFile)
			if bytes.Contains(data, []byte(`"outcome":"redeemed_again"`)) || time.Now().After(deadline) {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if !bytes.Contains(data, []byte(`"outcome":"redeemed_again"`)) {
			t.Errorf("no redeemed_again outcome in the log")
		}
		for _, v := range values {
			if bytes.Contains(data, []byte(v)) {
				t.Errorf("a grace cookie value appears in the log")
			}
		}
	})
}

func TestCaddyReuseGraceEndsAndNeverOutlivesTheRequestURI(t *testing.T) {
	up := ctNewUpstream(t, nil)
	t.Run("ends_after_the_grace", func(t *testing.T) {
		c := ctStart(t, up, "", ctBlock("reuse_grace 1s"))
		uri := c.mustPush(t, ctAppForm(), ctBasic(ctAppID, ctAppSecret))
		r := c.get(t, ctRedeemQuery(ctAppID, uri), nil)
		grace := ctOneGraceCookie(t, r, uri, "/authorize", 1)
		time.Sleep(1200 * time.Millisecond)
		before := up.count()
		ctWantHTMLError(t, c.get(t, ctRedeemQuery(ctAppID, uri), ctCookieHeader(grace)), http.StatusBadRequest, "invalid_request_uri")
		ctWantUpstreamUntouched(t, up, before)
	})
	t.Run("capped_at_the_request_uri_lifetime", func(t *testing.T) {
		block := strings.Replace(ctBlock("reuse_grace 60s"), "request_uri_lifetime 90s", "request_uri_lifetime 5s", 1)
		c := ctStart(t, up, "", block)
		uri := c.mustPush(t, ctAppForm(), ctBasic(ctAppID, ctAppSecret))
		r := c.get(t, ctRedeemQuery(ctAppID, uri), nil)
		// The request_uri has less than 5 s left: the cookie gets no more.
		ctOneGraceCookie(t, r, uri, "/authorize", 5)
	})
}

func TestCaddyReuseGraceOffAndUnderFAPI2(t *testing.T) {
	up := ctNewUpstream(t, nil)
	for _, off := range []string{"off", "0", "0s"} {
		t.Run("reuse_grace_"+off+"_is_one_time_use", func(t *testing.T) {
			c := ctStart(t, up, "", ctBlock("reuse_grace "+off))
			uri := c.mustPush(t, ctAppForm(), ctBasic(ctAppID, ctAppSecret))
			r := c.get(t, ctRedeemQuery(ctAppID, uri), nil)
			if r.Status != http.StatusOK || r.Header.Get("Set-Cookie") != "" {
				t.Fatalf("redemption: %s, want 200 without cookies", r)
			}
			forged := ctCookieHeader(&http.Cookie{Name: ctGraceCookieName(uri), Value: strings.Repeat("x", 43)})
			ctWantHTMLError(t, c.get(t, ctRedeemQuery(ctAppID, uri), forged), http.StatusBadRequest, "invalid_request_uri")
		})
	}

	keys := saNewKeys(t)
	jwks := "`" + saJWKS(t, keys[jose.ES256]) + "`"
	fapi := "authorization_endpoint /authorize\n\t\tprofile fapi2\n\t\tissuer " + saIssuer +
		"\n\t\tclient fapi {\n\t\t\tjwks " + jwks + "\n\t\t\tredirect_uris https://fapi.example.test/cb\n\t\t}\n\t\t"
	pushFAPI := func(t *testing.T, c *ctCaddy) string {
		f := saForm("fapi", "https://fapi.example.test/cb")
		return c.mustPush(t, saWithAssertion(f, saAssertion(t, keys[jose.ES256], "fapi", saIssuer, nil)), nil)
	}
	t.Run("fapi2_default_is_off", func(t *testing.T) {
		c := ctStart(t, up, "", fapi)
		uri := pushFAPI(t, c)
		r := c.get(t, ctRedeemQuery("fapi", uri), nil)
		if r.Status != http.StatusOK || r.Header.Get("Set-Cookie") != "" {
			t.Fatalf("redemption under fapi2: %s, want 200 without cookies", r)
		}
		ctWantHTMLError(t, c.get(t, ctRedeemQuery("fapi", uri), nil), http.StatusBadRequest, "invalid_request_uri")
	})
	t.Run("fapi2_explicit_grace_is_honoured", func(t *testing.T) {
		c := ctStart(t, up, "", fapi+"reuse_grace 5s")
		uri := pushFAPI(t, c)
		r := c.get(t, ctRedeemQuery("fapi", uri), nil)
		grace := ctOneGraceCookie(t, r, uri, "/authorize", 5)
		if r := c.get(t, ctRedeemQuery("fapi", uri), ctCookieHeader(grace)); r.Status != http.StatusOK {
			t.Fatalf("grace redemption under fapi2 with an explicit reuse_grace: %s", r)
		}
		ctWantHTMLError(t, c.get(t, ctRedeemQuery("fapi", uri), nil), http.StatusBadRequest, "invalid_request_uri")
	})
}

func TestCaddyReuseGraceConfig(t *testing.T) {
	adapt := func(t *testing.T, line string) string {
		t.Helper()
		cf := ":8080 {\n\toauth_par {\n\t\tauthorization_endpoint /authorize\n\t\t" + line + "\n\t}\n}\n"
		cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cf), map[string]any{"filename": "Caddyfile"})
		if err != nil {
			t.Fatalf("adapting %q: %v", line, err)
		}
		return string(cfg)
	}
	for line, want := range map[string]string{
		"reuse_grace off": `"reuse_grace":0`,
		"reuse_grace 0":   `"reuse_grace":0`,
		"reuse_grace 5s":  `"reuse_grace":5000000000`,
		"reuse_grace 1m":  `"reuse_grace":60000000000`,
	} {
		if got := adapt(t, line); !strings.Contains(got, want) {
			t.Errorf("%q adapts to %s, want %s", line, got, want)
		}
	}
	if got := adapt(t, "require_par"); strings.Contains(got, "reuse_grace") {
		t.Errorf("unset reuse_grace appears in JSON: %s", got)
	}

	up := ctNewUpstream(t, nil)
	storage := t.TempDir()
	base := "authorization_endpoint /authorize\n\t\tclient c1 {\n\t\t\tsecret s\n\t\t\tredirect_uris https://c1.example.test/cb\n\t\t}\n\t\t"
	for _, tc := range []struct{ name, block string }{
		{"61s", base + "reuse_grace 61s"},
		{"2m", base + "reuse_grace 2m"},
		{"negative", base + "reuse_grace -1s"},
		{"not_a_duration", base + "reuse_grace soon"},
		{"missing_value", base + "reuse_grace"},
		{"two_values", base + "reuse_grace 5s 10s"},
		{"endpoint_not_a_cookie_path", strings.Replace(base, "/authorize", "/auth;orize", 1) + "reuse_grace 5s"},
	} {
		t.Run("load_refuses_"+tc.name, func(t *testing.T) {
			ctWantLoadError(t, up, storage, tc.block, "reuse_grace")
		})
	}
	t.Run("60s_loads", func(t *testing.T) {
		c := ctStart(t, up, "", ctBlock("reuse_grace 60s"))
		uri := c.mustPush(t, ctAppForm(), ctBasic(ctAppID, ctAppSecret))
		ctOneGraceCookie(t, c.get(t, ctRedeemQuery(ctAppID, uri), nil), uri, "/authorize", 60)
	})
	t.Run("endpoint_with_semicolon_loads_with_grace_off", func(t *testing.T) {
		_ = ctStart(t, up, "", strings.Replace(ctBlock("reuse_grace off"), "/authorize", "/auth;orize", 1))
	})
}

// With the memory store a redeemed request keeps its room for the grace:
// a full store takes new pushes once the graces of redeemed ones end.
func TestCaddyReuseGraceHoldsRoomUntilItEnds(t *testing.T) {
	up := ctNewUpstream(t, nil)
	c := ctStart(t, up, "", ctBlock("reuse_grace 1s", "store memory {\n\t\t\tmax_size 16KiB\n\t\t}"))
	auth := ctBasic(ctAppID, ctAppSecret)
	var issued []string
	for i := 0; ; i++ {
		if i == 500 {
			t.Fatal("no 503 after 500 pushes into a 16KiB store")
		}
		r := c.postForm(t, "/par", ctAppForm().Encode(), auth)
		if r.Status == http.StatusServiceUnavailable {
			break
		}
		if r.Status != http.StatusCreated {
			t.Fatalf("push %d: %s", i, r)
		}
		var b struct {
			RequestURI string `json:"request_uri"`
		}
		if err := json.Unmarshal(r.Body, &b); err != nil {
			t.Fatal(err)
		}
		issued = append(issued, b.RequestURI)
	}
	for _, uri := range issued {
		if r := c.get(t, ctRedeemQuery(ctAppID, uri), nil); r.Status != http.StatusOK {
			t.Fatalf("redeem: %s", r)
		}
	}
	if r := c.postForm(t, "/par", ctAppForm().Encode(), auth); r.Status != http.StatusServiceUnavailable {
		t.Errorf("push right after redeeming everything: %s, want 503 while the graces run", r)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		r := c.postForm(t, "/par", ctAppForm().Encode(), auth)
		if r.Status == http.StatusCreated {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("push 5 s after 1 s graces ended: %s", r)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// The Redis store keeps the grace for the first browser too (and the
// concurrent-redemption race of TestCaddyRedisStorePushRedeemReloadAndOutage
// runs with the default grace on).
func TestCaddyReuseGraceWithRedisStore(t *testing.T) {
	r := caddymodule.StartTestRedis(t)
	t.Setenv("CT_REDIS_KEY", "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=")
	up := ctNewUpstream(t, nil)
	c := ctStart(t, up, "", ctRedisBlock(r))
	uri := c.mustPush(t, ctAppForm(), ctBasic(ctAppID, ctAppSecret))
	first := c.get(t, ctRedeemQuery(ctAppID, uri), nil)
	if first.Status != http.StatusOK {
		t.Fatalf("redeem: %s", first)
	}
	grace := ctOneGraceCookie(t, first, uri, "/authorize", 10)
	q := up.last(t).RawQuery
	if r := c.get(t, ctRedeemQuery(ctAppID, uri), ctCookieHeader(grace)); r.Status != http.StatusOK || up.last(t).RawQuery != q {
		t.Fatalf("grace redemption with Redis: %s", r)
	}
	before := up.count()
	ctWantHTMLError(t, c.get(t, ctRedeemQuery(ctAppID, uri), nil), http.StatusBadRequest, "invalid_request_uri")
	ctWantHTMLError(t, c.get(t, ctRedeemQuery(ctSPAID, uri), ctCookieHeader(grace)), http.StatusBadRequest, "invalid_request_uri")
	ctWantUpstreamUntouched(t, up, before)
	if keys := r.MustCLI("--scan", "--pattern", "ct:*"); strings.Contains(keys, grace.Value) || strings.Count(keys, "ct:g:") != 1 || strings.Contains(keys, "ct:r:") {
		t.Errorf("keys during the grace: %q, want one grace key and no entry key", keys)
	}
	ctRaceRedeem(t, c, up)
}
