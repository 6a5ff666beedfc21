package caddymodule_test

// In-process Caddy tests of the PAR endpoint's rate limits (issue 9):
// 429 with Retry-After and an OAuth error body, the per-source limit
// before authentication (on Caddy's client IP, with trusted_proxies), the
// per-client limit after it, nothing stored or consumed by a limited
// push, and state kept across a reload. The limits are slow (per hour),
// so nothing refills while a test runs.

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strconv"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// ctWant429 asserts a rate-limit answer: 429, the OAuth JSON error,
// no-store, and Retry-After in whole seconds within (max-5, max].
func ctWant429(t *testing.T, r ctResp, max int) {
	t.Helper()
	ctWantJSONError(t, r, http.StatusTooManyRequests, "temporarily_unavailable")
	ra := r.Header.Get("Retry-After")
	n, err := strconv.Atoi(ra)
	if err != nil || n > max || n <= max-5 {
		t.Errorf("Retry-After %q, want an integer number of seconds just under %d", ra, max)
	}
}

func TestCaddyRateLimitPerSourceIsCheckedBeforeAuthentication(t *testing.T) {
	up := ctNewUpstream(t, nil)
	c := ctStart(t, up, "", ctBlock("rate_limit {\n\t\t\tper_source 3/1h\n\t\t\tper_client off\n\t\t\tauth_failure_cost 1\n\t\t}"))
	uri := c.mustPush(t, ctAppForm(), ctBasic(ctAppID, ctAppSecret))
	if r := c.postForm(t, "/par", ctAppForm().Encode(), ctBasic(ctAppID, "wrong")); r.Status != http.StatusUnauthorized {
		t.Fatalf("wrong secret: %s", r)
	}
	c.mustPush(t, ctSPAForm(), nil)

	before := up.count()
	// The 4th request from 127.0.0.1 in the hour: 20 minutes to wait.
	ctWant429(t, c.postForm(t, "/par", ctAppForm().Encode(), ctBasic(ctAppID, ctAppSecret)), 1200)
	// Before authentication: a wrong secret gets 429 too, not 401.
	ctWant429(t, c.postForm(t, "/par", ctAppForm().Encode(), ctBasic(ctAppID, "wrong")), 1200)
	// Without trusted_proxies, X-Forwarded-For is not the source.
	for _, xff := range []string{"198.51.100.1", "2001:db8::1", "10.0.0.1, 198.51.100.2"} {
		h := ctBasic(ctAppID, ctAppSecret)
		h.Set("X-Forwarded-For", xff)
		ctWant429(t, c.postForm(t, "/par", ctAppForm().Encode(), h), 1200)
	}
	ctWantUpstreamUntouched(t, up, before)
	// The authorization endpoint is not limited, and what was stored before
	// is still there.
	if r := c.get(t, ctRedeemQuery(ctAppID, uri), nil); r.Status != http.StatusOK {
		t.Fatalf("redeeming a push made before the limit: %s", r)
	}
}

func TestCaddyRateLimitPerSourceHonoursTrustedProxiesAndIPv6Prefixes(t *testing.T) {
	up := ctNewUpstream(t, nil)
	global := "servers {\n\t\ttrusted_proxies static 127.0.0.1/32\n\t}"
	c := ctStart(t, up, global, ctBlock("rate_limit {\n\t\t\tper_source 2/1h\n\t\t\tper_client off\n\t\t}"))
	push := func(xff string) ctResp {
		h := ctBasic(ctAppID, ctAppSecret)
		h.Set("X-Forwarded-For", xff)
		return c.postForm(t, "/par", ctAppForm().Encode(), h)
	}
	for _, xff := range []string{"2001:db8:1:2::1", "2001:db8:1:2:ffff:ffff:ffff:ffff"} {
		if r := push(xff); r.Status != http.StatusCreated {
			t.Fatalf("%s: %s", xff, r)
		}
	}
	// Any address of the same /64 is the same source.
	ctWant429(t, push("2001:db8:1:2:dead:beef::1"), 1800)
	// Another /64, and IPv4 addresses, are other sources.
	for _, xff := range []string{"2001:db8:1:3::1", "198.51.100.7", "198.51.100.8"} {
		if r := push(xff); r.Status != http.StatusCreated {
			t.Fatalf("%s: %s", xff, r)
		}
	}
}

func TestCaddyRateLimitPerClientCountsOnlyAuthenticatedPushes(t *testing.T) {
	up := ctNewUpstream(t, nil)
	c := ctStart(t, up, "", ctBlock(
		"rate_limit {\n\t\t\tper_client 2/1h\n\t\t\tper_source off\n\t\t}",
		"client limited {\n\t\t\tsecret limited-secret\n\t\t\tredirect_uris https://limited.example.test/cb\n\t\t\trate_limit 1/1h\n\t\t}",
		"client unlimited {\n\t\t\tsecret unlimited-secret\n\t\t\tredirect_uris https://unlimited.example.test/cb\n\t\t\trate_limit off\n\t\t}",
	))
	// Many pushes naming web-app without its secret: 401, none counted.
	for i := range 30 {
		var r ctResp
		if i%2 == 0 {
			r = c.postForm(t, "/par", ctAppForm().Encode(), ctBasic(ctAppID, "guess-"+strconv.Itoa(i)))
		} else {
			r = c.postForm(t, "/par", ctAppForm().Encode(), nil) // client_id alone
		}
		ctWantJSONError(t, r, http.StatusUnauthorized, "invalid_client")
	}
	uris := []string{c.mustPush(t, ctAppForm(), ctBasic(ctAppID, ctAppSecret)), c.mustPush(t, ctAppForm(), ctBasic(ctAppID, ctAppSecret))}
	before := up.count()
	ctWant429(t, c.postForm(t, "/par", ctAppForm().Encode(), ctBasic(ctAppID, ctAppSecret)), 1800)
	ctWant429(t, c.postForm(t, "/par", ctWith(ctAppForm(), "client_secret", ctAppSecret).Encode(), nil), 1800)
	ctWantUpstreamUntouched(t, up, before)

	// Other clients have their own buckets; a public client has none
	// unless it is given one, and rate_limit off exempts a client.
	strict := ctWith(ctAppForm(), "client_id", ctStrictID, "redirect_uri", ctStrictRedir, "scope", "openid")
	c.mustPush(t, strict, ctBasic(ctStrictID, "strict-secret"))
	for range 4 {
		c.mustPush(t, ctSPAForm(), nil)
		c.mustPush(t, ctWith(ctAppForm(), "client_id", "unlimited", "redirect_uri", "https://unlimited.example.test/cb"), ctBasic("unlimited", "unlimited-secret"))
	}
	limited := ctWith(ctAppForm(), "client_id", "limited", "redirect_uri", "https://limited.example.test/cb")
	c.mustPush(t, limited, ctBasic("limited", "limited-secret"))
	ctWant429(t, c.postForm(t, "/par", limited.Encode(), ctBasic("limited", "limited-secret")), 3600)

	// The request_uris issued before the limit still work.
	for _, uri := range uris {
		if r := c.get(t, ctRedeemQuery(ctAppID, uri), nil); r.Status != http.StatusOK {
			t.Fatalf("redeem: %s", r)
		}
	}
}

// A push refused by the per-client limit has not used its assertion's
// jti (it is accepted later), and the limit's state survives a reload
// that keeps the limits.
func TestCaddyRateLimitedAssertionIsNotConsumedAndStateSurvivesReload(t *testing.T) {
	keys := saNewKeys(t)
	up := ctNewUpstream(t, nil)
	limits := "rate_limit {\n\t\t\tper_client 1/1h\n\t\t\tper_source off\n\t\t}"
	c := ctStart(t, up, "", saBlock(t, keys, limits))
	c.mustPush(t, saWithAssertion(saForm(saJWTApp, saJWTRedir), saAssertion(t, keys[jose.ES256], saJWTApp, saIssuer, nil)), nil)
	held := saAssertion(t, keys[jose.ES256], saJWTApp, saIssuer, nil)
	ctWant429(t, c.postForm(t, "/par", saWithAssertion(saForm(saJWTApp, saJWTRedir), held).Encode(), nil), 3600)

	// A reload that adds a client keeps the limits, and their state.
	c.reload(t, saBlock(t, keys, limits, "client extra-app {\n\t\t\tsecret extra-secret\n\t\t\tredirect_uris https://extra.example.test/cb\n\t\t}"))
	ctWant429(t, c.postForm(t, "/par", saWithAssertion(saForm(saJWTApp, saJWTRedir), held).Encode(), nil), 3600)

	// Without the limit, the assertion refused twice is accepted: its jti
	// was never recorded. Then it is used up as usual.
	c.reload(t, saBlock(t, keys, "rate_limit off"))
	c.mustPush(t, saWithAssertion(saForm(saJWTApp, saJWTRedir), held), nil)
	r := c.postForm(t, "/par", saWithAssertion(saForm(saJWTApp, saJWTRedir), held).Encode(), nil)
	ctWantJSONError(t, r, http.StatusUnauthorized, "invalid_client")
}

// A limited push takes nothing from the store: in a full 16 KiB store with
// room for one more entry, a dozen pushes refused by the per-client limit
// (each with a fresh client assertion, whose jti would be recorded in the
// same byte budget) leave that room to the next push.
func TestCaddyRateLimitedPushesLeaveTheStoreUnchanged(t *testing.T) {
	keys := saNewKeys(t)
	up := ctNewUpstream(t, nil)
	c := ctStart(t, up, "", saBlock(t, keys,
		"rate_limit {\n\t\t\tper_client 1/1h\n\t\t\tper_source off\n\t\t}",
		"client filler {\n\t\t\tsecret filler-secret\n\t\t\tredirect_uris https://filler.example.test/cb\n\t\t\trate_limit off\n\t\t}",
		// A redeemed entry frees its room at once, not after the grace.
		"reuse_grace off",
		"store memory {\n\t\t\tmax_size 16KiB\n\t\t}"))
	jwtPush := func() ctResp {
		a := saAssertion(t, keys[jose.ES256], saJWTApp, saIssuer, nil)
		return c.postForm(t, "/par", saWithAssertion(saForm(saJWTApp, saJWTRedir), a).Encode(), nil)
	}
	fill := func() ctResp {
		f := ctWith(ctAppForm(), "client_id", "filler", "redirect_uri", "https://filler.example.test/cb")
		return c.postForm(t, "/par", f.Encode(), ctBasic("filler", "filler-secret"))
	}
	if r := jwtPush(); r.Status != http.StatusCreated {
		t.Fatalf("first jwt-app push: %s", r)
	}
	var uris []string
	for i := 0; ; i++ {
		if i == 500 {
			t.Fatal("the 16 KiB store never filled up")
		}
		r := fill()
		if r.Status == http.StatusServiceUnavailable {
			break
		}
		if r.Status != http.StatusCreated {
			t.Fatalf("filling: %s", r)
		}
		var b struct {
			RequestURI string `json:"request_uri"`
		}
		_ = json.Unmarshal(r.Body, &b)
		uris = append(uris, b.RequestURI)
	}
	if r := c.get(t, ctRedeemQuery("filler", uris[0]), nil); r.Status != http.StatusOK {
		t.Fatalf("redeem: %s", r)
	}
	for range 12 {
		ctWant429(t, jwtPush(), 3600)
	}
	if r := fill(); r.Status != http.StatusCreated {
		t.Fatalf("the room freed before the limited pushes is gone: %s", r)
	}
}

// The defaults are on: per source 1000 at once, 6000 a minute, and a
// failed authentication costs 10, so about 100 failures in a row get
// through (plus one per 100 ms the test takes), then 429.
func TestCaddyRateLimitDefaultsLimitFailedAuthentications(t *testing.T) {
	up := ctNewUpstream(t, nil)
	c := ctStart(t, up, "", ctBlock())
	start := time.Now()
	failures := 0
	var r ctResp
	for i := range 400 {
		r = c.postForm(t, "/par", ctAppForm().Encode(), ctBasic(ctAppID, "guess-"+strconv.Itoa(i)))
		if r.Status != http.StatusUnauthorized {
			break
		}
		failures++
	}
	elapsed := time.Since(start)
	ctWantJSONError(t, r, http.StatusTooManyRequests, "temporarily_unavailable")
	if ra := r.Header.Get("Retry-After"); ra != "1" {
		t.Errorf("Retry-After %q, want 1 (6000 a minute: one every 10 ms)", ra)
	}
	if most := 100 + int(elapsed/(100*time.Millisecond)) + 2; failures < 100 || failures > most {
		t.Errorf("%d failed authentications in %s before the 429, want 100..%d", failures, elapsed, most)
	}
	t.Logf("%d failed authentications in %s before the 429", failures, elapsed)
}

func TestCaddyRateLimitConfigErrorsNameTheDirective(t *testing.T) {
	up := ctNewUpstream(t, nil)
	storage := t.TempDir()
	base := "authorization_endpoint /authorize\n\t\tclient c1 {\n\t\t\tsecret s\n\t\t\tredirect_uris https://c1.example.test/cb\n"
	for _, tc := range []struct {
		name  string
		block string
		want  []string
	}{
		{"zero_events", base + "}\nrate_limit {\nper_client 0/1m\n}", []string{"rate_limit", "per_client", "number of events"}},
		{"not_a_rate", base + "}\nrate_limit {\nper_source 100\n}", []string{"rate_limit", "per_source", "<events>/<duration>"}},
		{"burst_zero", base + "}\nrate_limit {\nper_source 100/1m burst 0\n}", []string{"rate_limit", "per_source", "burst"}},
		{"window_too_long", base + "}\nrate_limit {\nper_client 10/48h\n}", []string{"rate_limit", "per_client", "window"}},
		{"too_fast", base + "}\nrate_limit {\nper_source 2000000/1s\n}", []string{"rate_limit", "per_source", "per second"}},
		{"ipv6_prefix", base + "}\nrate_limit {\nsource_ipv6_prefix 8\n}", []string{"rate_limit", "source_ipv6_prefix"}},
		{"max_sources", base + "}\nrate_limit {\nmax_sources 100\n}", []string{"rate_limit", "max_sources"}},
		{"auth_failure_cost", base + "}\nrate_limit {\nauth_failure_cost 5000\n}", []string{"rate_limit", "auth_failure_cost"}},
		{"unknown", base + "}\nrate_limit {\nper_ip 1/s\n}", []string{"rate_limit", "per_ip"}},
		{"bare", base + "}\nrate_limit", []string{"rate_limit"}},
		{"client_rate", base + "rate_limit 10/1m burst -3\n}", []string{`"c1"`, "rate_limit", "burst"}},
		{"client_window", base + "rate_limit 10/0s\n}", []string{`"c1"`, "rate_limit", "duration"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctWantLoadError(t, up, storage, tc.block, tc.want...)
		})
	}
	// And one that loads, with every subdirective.
	c := ctStart(t, up, "", base+"rate_limit 100/1m burst 10\n}\nrate_limit {\nper_client 600/1m burst 100\nper_source 1000/1m\nsource_ipv6_prefix 56\nmax_sources 2048\nauth_failure_cost 3\n}")
	form := url.Values{"response_type": {"code"}, "client_id": {"c1"}, "redirect_uri": {"https://c1.example.test/cb"}}
	if r := c.postForm(t, "/par", form.Encode(), ctBasic("c1", "s")); r.Status != http.StatusCreated {
		t.Fatalf("push: %s", r)
	}
}

// The token endpoint behind the gateway spends the same per-source bucket
// as the PAR endpoint, before client authentication, and a failed client
// authentication there costs the source as much as at the PAR endpoint.
func TestCaddyRateLimitPerSourceCoversTheTokenEndpoint(t *testing.T) {
	keys := saNewKeys(t)
	up := tkUpstream(t, nil)
	c := ctStart(t, up, "", tkBlock(t, keys, "rate_limit {\n\t\t\tper_source 4/1h\n\t\t\tper_client off\n\t\t\tauth_failure_cost 2\n\t\t}"))
	refresh := "grant_type=refresh_token&refresh_token=RT"
	good := http.Header{"Authorization": {tkBasic(tkPlainApp, "plain-secret")}}
	if r := c.postForm(t, "/token", refresh, good); r.Status != http.StatusOK {
		t.Fatalf("token request: %s", r)
	}
	// A wrong secret: 401, and it costs 2 more.
	ctWantJSONError(t, c.postForm(t, "/token", refresh, http.Header{"Authorization": {tkBasic(tkPlainApp, "wrong")}}), http.StatusUnauthorized, "invalid_client")
	before := up.count()
	// 1 + 2 + this one = 4: the last one the bucket holds. Then 429 at both
	// endpoints, before authentication; nothing goes upstream.
	if r := c.postForm(t, "/token", refresh, good); r.Status != http.StatusOK {
		t.Fatalf("token request: %s", r)
	}
	before++
	ctWant429(t, c.postForm(t, "/token", refresh, good), 900)
	ctWant429(t, c.postForm(t, "/token", refresh, http.Header{"Authorization": {tkBasic(tkPlainApp, "wrong")}}), 900)
	ctWant429(t, c.postForm(t, "/par", ctAppForm().Encode(), ctBasic(ctAppID, ctAppSecret)), 900)
	ctWantUpstreamUntouched(t, up, before)
}
