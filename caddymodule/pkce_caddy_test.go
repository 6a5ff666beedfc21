package caddymodule_test

// In-process tests of PKCE enforced by the gateway (issue 10 §2), in front
// of a stand-in IdP that knows nothing of PKCE: it renders a login page at
// /authorize, answers the login form's POST at /login-actions/authenticate
// with the redirect to the client, and issues tokens at /token to anyone.

import (
	"crypto/rand"
	"encoding/base64"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/caddy-par/caddy-par/caddymodule"
)

const (
	pkVerifier  = "verifier-for-web-app-0123456789-abcdefghijklmnop"
	pkOtherVer  = "another-verifier-0123456789-abcdefghijklmnopqrst"
	pkLoginPath = "/login-actions/authenticate"
)

var pkCodes atomic.Int64

// pkUpstream is the PKCE-less IdP. The login POST names the redirect_uri
// and state to answer with (a real IdP keeps them in its session).
func pkUpstream(t *testing.T, routes map[string]http.HandlerFunc) *ctUpstream {
	if routes == nil {
		routes = map[string]http.HandlerFunc{}
	}
	routes[pkLoginPath] = func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		code := "CODE-" + r.Form.Get("tag") + "-" + base64.RawURLEncoding.EncodeToString([]byte{byte(pkCodes.Add(1))})
		loc := r.Form.Get("redirect_uri") + "?code=" + url.QueryEscape(code)
		if s := r.Form.Get("state"); s != "" {
			loc += "&state=" + url.QueryEscape(s)
		}
		w.Header().Set("Set-Cookie", "IDP_SESSION=1; Path=/")
		http.Redirect(w, r, loc, http.StatusFound)
	}
	return tkUpstream(t, routes)
}

// pkBrowser is one browser: its cookies for the gateway.
type pkBrowser struct{ jar map[string]string }

func newBrowser() *pkBrowser { return &pkBrowser{jar: map[string]string{}} }

func (b *pkBrowser) take(t *testing.T, r ctResp) {
	t.Helper()
	for _, ck := range (&http.Response{Header: r.Header}).Cookies() {
		if ck.MaxAge < 0 || ck.Value == "" {
			delete(b.jar, ck.Name)
		} else {
			b.jar[ck.Name] = ck.Value
		}
	}
}

func (b *pkBrowser) header() http.Header {
	var parts []string
	for k, v := range b.jar {
		parts = append(parts, k+"="+v)
	}
	if len(parts) == 0 {
		return nil
	}
	return http.Header{"Cookie": {strings.Join(parts, "; ")}}
}

// login runs the browser part for a pushed request_uri: redemption, then
// the login form's POST; it returns the code and state the client got.
func (b *pkBrowser) login(t *testing.T, c *ctCaddy, clientID, requestURI, redirect, state, tag string) (string, url.Values) {
	t.Helper()
	r := c.get(t, ctRedeemQuery(clientID, requestURI), b.header())
	if r.Status != http.StatusOK {
		t.Fatalf("redeem: %s", r)
	}
	b.take(t, r)
	form := url.Values{"redirect_uri": {redirect}, "state": {state}, "tag": {tag}}
	r = pkLoginPost(t, c, form.Encode(), b.header())
	if r.Status != http.StatusFound {
		t.Fatalf("login: %s", r)
	}
	b.take(t, r)
	loc, err := url.Parse(r.Header.Get("Location"))
	if err != nil {
		t.Fatal(err)
	}
	return loc.Query().Get("code"), loc.Query()
}

// pkLoginPost is the login form's POST; the stand-in IdP reads the
// parameters from the query (ctUpstream has read the body already).
func pkLoginPost(t *testing.T, c *ctCaddy, form string, hdr http.Header) ctResp {
	t.Helper()
	return c.postForm(t, pkLoginPath+"?"+form, "username=u&password=p", hdr)
}

func pkTokenForm(code, redirect, verifier string) url.Values {
	f := url.Values{"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {redirect}}
	if verifier != "" {
		f.Set("code_verifier", verifier)
	}
	return f
}

func pkPush(t *testing.T, c *ctCaddy, state, verifier string) string {
	t.Helper()
	return c.mustPush(t, ctWith(ctAppForm(), "state", state, "code_challenge", ctChallenge(verifier)), ctBasic(ctAppID, ctAppSecret))
}

func pkBlock(extra ...string) string {
	return ctBlock(append([]string{"issuer " + issIssuer, "add_iss", "token_endpoint /token", "gateway_pkce"}, extra...)...)
}

// pkTokens counts the upstream's token requests.
func pkTokens(up *ctUpstream) int {
	n := 0
	for _, r := range up.requests() {
		if r.Path == "/token" {
			n++
		}
	}
	return n
}

func TestCaddyPKCEEnforcedByTheGateway(t *testing.T) {
	up := pkUpstream(t, nil)
	c := ctStart(t, up, "", pkBlock())
	app := ctBasic(ctAppID, ctAppSecret)

	t.Run("verifier_checked_then_forwarded", func(t *testing.T) {
		b := newBrowser()
		ru := pkPush(t, c, "S-ok", pkVerifier)
		r := c.get(t, ctRedeemQuery(ctAppID, ru), nil)
		var cookie *http.Cookie
		for _, ck := range (&http.Response{Header: r.Header}).Cookies() {
			if strings.HasPrefix(ck.Name, "oauth_par_pkce_") {
				cookie = ck
			}
		}
		if cookie == nil || !cookie.HttpOnly || cookie.SameSite != http.SameSiteLaxMode || cookie.Path != "/" || cookie.MaxAge != 900 || len(cookie.Value) != 43 {
			t.Fatalf("binding cookie %+v in %v", cookie, r.Header["Set-Cookie"])
		}
		if q, _ := url.ParseQuery(up.last(t).RawQuery); q.Get("code_challenge") != ctChallenge(pkVerifier) {
			t.Errorf("upstream_pkce on: the challenge was not forwarded: %v", q)
		}
		code, q := b.login(t, c, ctAppID, pkPush(t, c, "S-ok", pkVerifier), ctAppRedirect, "S-ok", "ok")
		if code == "" || q.Get("iss") != issIssuer || q.Get("state") != "S-ok" {
			t.Fatalf("authorization response %v", q)
		}
		for name := range b.jar {
			if strings.HasPrefix(name, "oauth_par_pkce_") {
				t.Errorf("binding cookie %s not cleared by the authorization response", name)
			}
		}
		before := pkTokens(up)
		r = c.postForm(t, "/token", pkTokenForm(code, ctAppRedirect, pkVerifier).Encode(), app)
		if r.Status != http.StatusOK || pkTokens(up) != before+1 {
			t.Fatalf("token: %s", r)
		}
		form, _ := tkForwarded(t, up)
		if form.Get("code_verifier") != pkVerifier || form.Get("code") != code {
			t.Errorf("forwarded %v", form)
		}
		// One-time use at the gateway.
		ctWantJSONError(t, c.postForm(t, "/token", pkTokenForm(code, ctAppRedirect, pkVerifier).Encode(), app), http.StatusBadRequest, "invalid_grant")
		if pkTokens(up) != before+1 {
			t.Errorf("a replayed code was forwarded")
		}
	})

	refusals := []struct {
		name     string
		form     func(code string) url.Values
		auth     http.Header
		wantCode string
	}{
		{"wrong_verifier", func(code string) url.Values { return pkTokenForm(code, ctAppRedirect, pkOtherVer) }, app, "invalid_grant"},
		{"no_verifier", func(code string) url.Values { return pkTokenForm(code, ctAppRedirect, "") }, app, "invalid_grant"},
		{"short_verifier", func(code string) url.Values { return pkTokenForm(code, ctAppRedirect, "abc") }, app, "invalid_grant"},
		{"plain_challenge_as_verifier", func(code string) url.Values {
			return pkTokenForm(code, ctAppRedirect, ctChallenge(pkVerifier))
		}, app, "invalid_grant"},
		{"other_redirect_uri", func(code string) url.Values { return pkTokenForm(code, "https://app.example.test/cb2", pkVerifier) }, app, "invalid_grant"},
		{"no_redirect_uri", func(code string) url.Values {
			return ctWithout(pkTokenForm(code, ctAppRedirect, pkVerifier), "redirect_uri")
		}, app, "invalid_grant"},
		{"other_client", func(code string) url.Values { return pkTokenForm(code, ctAppRedirect, pkVerifier) }, ctBasic(ctStrictID, "strict-secret"), "invalid_grant"},
	}
	for _, tc := range refusals {
		t.Run("refused_"+tc.name, func(t *testing.T) {
			b := newBrowser()
			code, _ := b.login(t, c, ctAppID, pkPush(t, c, "S-"+tc.name, pkVerifier), ctAppRedirect, "S-"+tc.name, tc.name)
			before := pkTokens(up)
			ctWantJSONError(t, c.postForm(t, "/token", tc.form(code).Encode(), tc.auth), http.StatusBadRequest, tc.wantCode)
			// The code is spent: not even the right verifier gets it now.
			ctWantJSONError(t, c.postForm(t, "/token", pkTokenForm(code, ctAppRedirect, pkVerifier).Encode(), app), http.StatusBadRequest, "invalid_grant")
			if n := pkTokens(up) - before; n != 0 {
				t.Errorf("%d token request(s) forwarded", n)
			}
		})
	}

	t.Run("parallel_logins_in_two_tabs", func(t *testing.T) {
		b := newBrowser()
		ru1 := pkPush(t, c, "S-tab1", pkVerifier)
		ru2 := pkPush(t, c, "S-tab2", pkOtherVer)
		r := c.get(t, ctRedeemQuery(ctAppID, ru1), b.header())
		b.take(t, r)
		r = c.get(t, ctRedeemQuery(ctAppID, ru2), b.header())
		b.take(t, r)
		n := 0
		for name := range b.jar {
			if strings.HasPrefix(name, "oauth_par_pkce_") {
				n++
			}
		}
		if n != 2 {
			t.Fatalf("want a binding cookie per tab, got %v", b.jar)
		}
		login := func(state string) string {
			r := pkLoginPost(t, c, url.Values{"redirect_uri": {ctAppRedirect}, "state": {state}, "tag": {state}}.Encode(), b.header())
			b.take(t, r)
			loc, _ := url.Parse(r.Header.Get("Location"))
			return loc.Query().Get("code")
		}
		seen := len(up.requests())
		code2 := login("S-tab2") // the second tab finishes first
		code1 := login("S-tab1")
		// The binding cookies the browser sends with its login are the
		// gateway's business: the IdP never sees them.
		for _, rec := range up.requests()[seen:] {
			if ck := strings.Join(rec.Header.Values("Cookie"), "; "); strings.Contains(ck, "oauth_par_") {
				t.Errorf("the upstream got the gateway's cookies at %s: %q", rec.Path, ck)
			}
		}
		if r := c.postForm(t, "/token", pkTokenForm(code1, ctAppRedirect, pkVerifier).Encode(), app); r.Status != http.StatusOK {
			t.Errorf("tab 1: %s", r)
		}
		if r := c.postForm(t, "/token", pkTokenForm(code2, ctAppRedirect, pkOtherVer).Encode(), app); r.Status != http.StatusOK {
			t.Errorf("tab 2: %s", r)
		}
	})

	t.Run("code_never_seen_passes_for_a_client_that_does_not_require_it_once", func(t *testing.T) {
		before := pkTokens(up)
		if r := c.postForm(t, "/token", pkTokenForm("UNSEEN-CODE-1", ctAppRedirect, pkVerifier).Encode(), app); r.Status != http.StatusOK {
			t.Fatalf("%s", r)
		}
		ctWantJSONError(t, c.postForm(t, "/token", pkTokenForm("UNSEEN-CODE-1", ctAppRedirect, pkVerifier).Encode(), app), http.StatusBadRequest, "invalid_grant")
		if pkTokens(up) != before+1 {
			t.Errorf("want exactly one forwarded")
		}
	})

	t.Run("refresh_is_not_checked_for_PKCE", func(t *testing.T) {
		if r := c.postForm(t, "/token", "grant_type=refresh_token&refresh_token=RT", app); r.Status != http.StatusOK {
			t.Errorf("%s", r)
		}
	})

}

func TestCaddyPKCERequiredAndUpstreamPKCEOff(t *testing.T) {
	up := pkUpstream(t, map[string]http.HandlerFunc{"/.well-known/openid-configuration": ctJSONHandler(`{"issuer":"` + issIssuer + `","authorization_endpoint":"https://idp.example.test/authorize","code_challenge_methods_supported":["plain","S256"]}`)})
	block := strings.Replace(pkBlock("upstream_pkce off"), "allowed_scopes openid profile email", "allowed_scopes openid profile email\n\t\t\trequire_gateway_pkce", 1)
	c := ctStart(t, up, "", block)
	app := ctBasic(ctAppID, ctAppSecret)

	doc := ctDecode(t, c.get(t, "/.well-known/openid-configuration", nil).Body)
	if m, _ := doc["code_challenge_methods_supported"].([]any); len(m) != 1 || m[0] != "S256" {
		t.Errorf("code_challenge_methods_supported = %v, want [S256]", doc["code_challenge_methods_supported"])
	}

	b := newBrowser()
	ru := pkPush(t, c, "S-off", pkVerifier)
	r := c.get(t, ctRedeemQuery(ctAppID, ru), nil)
	b.take(t, r)
	if q, _ := url.ParseQuery(up.last(t).RawQuery); q.Has("code_challenge") || q.Has("code_challenge_method") || q.Get("state") != "S-off" {
		t.Errorf("upstream_pkce off: forwarded %v", q)
	}
	lr := pkLoginPost(t, c, url.Values{"redirect_uri": {ctAppRedirect}, "state": {"S-off"}, "tag": {"off"}}.Encode(), b.header())
	loc, _ := url.Parse(lr.Header.Get("Location"))
	code := loc.Query().Get("code")
	ctWantJSONError(t, c.postForm(t, "/token", pkTokenForm(code, ctAppRedirect, pkOtherVer).Encode(), app), http.StatusBadRequest, "invalid_grant")

	b = newBrowser()
	code, _ = b.login(t, c, ctAppID, pkPush(t, c, "S-off2", pkVerifier), ctAppRedirect, "S-off2", "off2")
	if r := c.postForm(t, "/token", pkTokenForm(code, ctAppRedirect, pkVerifier).Encode(), app); r.Status != http.StatusOK {
		t.Fatalf("%s", r)
	}
	if form, _ := tkForwarded(t, up); form.Has("code_verifier") || form.Get("code") != code {
		t.Errorf("upstream_pkce off: forwarded %v", form)
	}

	before := pkTokens(up)
	t.Run("code_never_seen_refused", func(t *testing.T) {
		ctWantJSONError(t, c.postForm(t, "/token", pkTokenForm("UNSEEN-CODE-2", ctAppRedirect, pkVerifier).Encode(), app), http.StatusBadRequest, "invalid_grant")
	})
	t.Run("login_in_another_browser_is_not_bound", func(t *testing.T) {
		ru := pkPush(t, c, "S-stolen", pkVerifier)
		if r := c.get(t, ctRedeemQuery(ctAppID, ru), nil); r.Status != http.StatusOK {
			t.Fatal(r)
		}
		// The login completes in a browser without the binding cookie.
		lr := pkLoginPost(t, c, url.Values{"redirect_uri": {ctAppRedirect}, "state": {"S-stolen"}, "tag": {"stolen"}}.Encode(), nil)
		loc, _ := url.Parse(lr.Header.Get("Location"))
		ctWantJSONError(t, c.postForm(t, "/token", pkTokenForm(loc.Query().Get("code"), ctAppRedirect, pkVerifier).Encode(), app), http.StatusBadRequest, "invalid_grant")
	})
	t.Run("push_without_PKCE_refused", func(t *testing.T) {
		ctWantJSONError(t, c.pushApp(t, ctWithout(ctAppForm(), "code_challenge", "code_challenge_method")), http.StatusBadRequest, "invalid_request")
	})
	if n := pkTokens(up) - before; n != 0 {
		t.Errorf("%d token request(s) forwarded", n)
	}
}

func TestCaddyPKCEBindsASessionAnswerAtTheAuthorizationEndpoint(t *testing.T) {
	// An IdP with a session answers the redeemed request with the code.
	up := tkUpstream(t, map[string]http.HandlerFunc{"/authorize": func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Set-Cookie", "IDP_SESSION=1; Path=/")
		http.Redirect(w, r, r.URL.Query().Get("redirect_uri")+"?code=SSO-CODE&state="+url.QueryEscape(r.URL.Query().Get("state")), http.StatusFound)
	}})
	c := ctStart(t, up, "", pkBlock())
	r := c.get(t, ctRedeemQuery(ctAppID, pkPush(t, c, "S-sso", pkVerifier)), nil)
	if r.Status != http.StatusFound {
		t.Fatalf("%s", r)
	}
	for _, sc := range r.Header.Values("Set-Cookie") {
		if strings.HasPrefix(sc, "oauth_par_pkce_") {
			t.Errorf("binding cookie set although the code came at once: %s", sc)
		}
	}
	app := ctBasic(ctAppID, ctAppSecret)
	ctWantJSONError(t, c.postForm(t, "/token", pkTokenForm("SSO-CODE", ctAppRedirect, pkOtherVer).Encode(), app), http.StatusBadRequest, "invalid_grant")
}

func TestCaddyPKCEAcrossGatewaysWithRedis(t *testing.T) {
	rd := caddymodule.StartTestRedis(t)
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	t.Setenv("CT_REDIS_KEY", base64.StdEncoding.EncodeToString(key))
	up := pkUpstream(t, nil)
	block := pkBlock("require_par", `store redis {
			address `+rd.Addr+`
			encryption_key {env.CT_REDIS_KEY}
			key_prefix ct:
		}`)
	c := ctStart(t, up, "", block)
	b := newBrowser()
	code, _ := b.login(t, c, ctAppID, pkPush(t, c, "S-redis", pkVerifier), ctAppRedirect, "S-redis", "redis")
	// The binding and the code live in Redis, as hashes only.
	keys := rd.MustCLI("--scan", "--pattern", "ct:*")
	if strings.Contains(keys, code) {
		t.Errorf("a Redis key holds the code: %s", keys)
	}
	// A reload is another gateway process's view of the same Redis.
	c.reload(t, block)
	app := ctBasic(ctAppID, ctAppSecret)
	ctWantJSONError(t, c.postForm(t, "/token", pkTokenForm(code, ctAppRedirect, pkOtherVer).Encode(), app), http.StatusBadRequest, "invalid_grant")
	code, _ = b.login(t, c, ctAppID, pkPush(t, c, "S-redis2", pkVerifier), ctAppRedirect, "S-redis2", "redis2")
	if r := c.postForm(t, "/token", pkTokenForm(code, ctAppRedirect, pkVerifier).Encode(), app); r.Status != http.StatusOK {
		t.Fatalf("%s", r)
	}
	ctWantJSONError(t, c.postForm(t, "/token", pkTokenForm(code, ctAppRedirect, pkVerifier).Encode(), app), http.StatusBadRequest, "invalid_grant")
}

func TestCaddyPKCEConfigErrorsNameTheDirective(t *testing.T) {
	up := ctNewUpstream(t, nil)
	storage := t.TempDir()
	for _, tc := range []struct {
		name, block string
		want        []string
	}{
		{"gateway_pkce_without_token_endpoint", ctBlock("gateway_pkce"), []string{"gateway_pkce", "token_endpoint"}},
		{"upstream_pkce_off_without_gateway_pkce", ctBlock("token_endpoint /token", "upstream_pkce off"), []string{"upstream_pkce", "gateway_pkce"}},
		{"upstream_pkce_bad_value", ctBlock("token_endpoint /token", "gateway_pkce", "upstream_pkce maybe"), []string{"upstream_pkce", "maybe"}},
		{"require_gateway_pkce_without_token_endpoint", ctBlock("client x {\n secret s\n redirect_uris https://x.example.test/cb\n require_gateway_pkce\n }"), []string{`"x"`, "require_gateway_pkce", "token_endpoint"}},
		{"gateway_pkce_with_argument", ctBlock("token_endpoint /token", "gateway_pkce yes"), []string{"gateway_pkce"}},
	} {
		t.Run(tc.name, func(t *testing.T) { ctWantLoadError(t, up, storage, tc.block, tc.want...) })
	}
}
