package caddymodule_test

// In-process Caddy tests of upstream_client_auth: the stand-in upstream
// answers the gateway's probes at its token endpoint the way Keycloak
// 26.7.3 and Dex answer (recorded in the end-to-end tests, README
// "Clients known only to the upstream"). Serial, like caddy_test.go.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig"
)

const (
	ctUpOnlyID       = "upstream-only-app"
	ctUpOnlySecret   = "up-only+secret%:1"
	ctUpOnlyRedirect = "https://upstream-only.example.test/cb"
	ctUpPublicID     = "upstream-public-spa"
)

// ctTokenEndpoint mimics an upstream token endpoint's answers to a token
// request with an unknown code. style is "keycloak" or "dex".
type ctTokenEndpoint struct {
	style  string
	probes atomic.Int32
	// down answers 503 (an upstream outage).
	down atomic.Bool
	url  string
}

// ctStartTokenEndpoint serves e on 127.0.0.1: the gateway's direct line to
// the upstream's token endpoint, beside the reverse-proxied upstream.
func ctStartTokenEndpoint(t *testing.T, style string) *ctTokenEndpoint {
	t.Helper()
	e := &ctTokenEndpoint{style: style}
	srv := httptest.NewServer(http.HandlerFunc(e.handler))
	t.Cleanup(srv.Close)
	e.url = srv.URL + "/token"
	return e
}

func (e *ctTokenEndpoint) handler(w http.ResponseWriter, r *http.Request) {
	e.probes.Add(1)
	if e.down.Load() {
		http.Error(w, "down", http.StatusServiceUnavailable)
		return
	}
	_ = r.ParseForm()
	id, secret, basic := r.BasicAuth()
	if basic {
		id, _ = url.QueryUnescape(id)
		secret, _ = url.QueryUnescape(secret)
	} else {
		id, secret = r.PostForm.Get("client_id"), r.PostForm.Get("client_secret")
	}
	answer := func(status int, code, desc string) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		b, _ := json.Marshal(map[string]string{"error": code, "error_description": desc})
		_, _ = w.Write(b)
	}
	secrets := map[string]string{ctUpOnlyID: ctUpOnlySecret, ctAppID: "the-upstreams-web-app-secret"}
	want, known := secrets[id]
	public := id == ctUpPublicID
	switch e.style {
	case "keycloak":
		switch {
		case !known && !public:
			answer(401, "invalid_client", "Invalid client or Invalid client credentials")
		case public:
			// Keycloak authenticates a public client whatever secret comes.
			answer(400, "invalid_grant", "Code not valid")
		case secret != want:
			answer(401, "unauthorized_client", "Invalid client or Invalid client credentials")
		default:
			answer(400, "invalid_grant", "Code not valid")
		}
	default: // dex
		if !known || secret != want {
			answer(401, "invalid_client", "Invalid client credentials.")
			return
		}
		answer(400, "invalid_grant", "Invalid or expired code parameter.")
	}
}

func ctUpOnlyForm() url.Values {
	return url.Values{
		"response_type":         {"code"},
		"client_id":             {ctUpOnlyID},
		"redirect_uri":          {ctUpOnlyRedirect},
		"scope":                 {"openid profile anything"},
		"state":                 {"st-" + fmt.Sprint(time.Now().UnixNano())},
		"nonce":                 {"n-upstream-only"},
		"code_challenge":        {ctChallenge("verifier-for-upstream-only-0123456789-abcdefghijk")},
		"code_challenge_method": {"S256"},
	}
}

func TestCaddyDelegatedClientAuthenticationKeycloakAndDexAnswers(t *testing.T) {
	for _, style := range []string{"keycloak", "dex"} {
		t.Run(style, func(t *testing.T) {
			te := ctStartTokenEndpoint(t, style)
			up := ctNewUpstream(t, nil)
			logFile := filepath.Join(t.TempDir(), "caddy.log")
			global := fmt.Sprintf("log {\n\t\toutput file %s\n\t\tformat json\n\t\tlevel DEBUG\n\t}", logFile)
			c := ctStart(t, up, global, ctBlock("require_par", "upstream_client_auth "+te.url))

			// A client only the upstream knows: Basic, then post.
			uri := c.mustPush(t, ctUpOnlyForm(), ctBasic(ctUpOnlyID, ctUpOnlySecret))
			if n := te.probes.Load(); n != 1 {
				t.Fatalf("probes after the first push: %d, want 1", n)
			}
			c.mustPush(t, ctUpOnlyForm(), ctBasic(ctUpOnlyID, ctUpOnlySecret))
			if n := te.probes.Load(); n != 1 {
				t.Errorf("the same credentials again: %d probes, want 1 (cached)", n)
			}
			c.mustPush(t, ctWith(ctUpOnlyForm(), "client_secret", ctUpOnlySecret), nil)
			if n := te.probes.Load(); n != 2 {
				t.Errorf("client_secret_post: %d probes in all, want 2", n)
			}

			// Redemption forwards exactly the pushed request.
			before := up.count()
			r := c.get(t, ctRedeemQuery(ctUpOnlyID, uri), nil)
			if r.Status != 200 || !bytes.Contains(r.Body, []byte(ctUpstreamOK)) {
				t.Fatalf("redeem: %s", r)
			}
			reqs := up.requests()
			if len(reqs) != before+1 {
				t.Fatalf("upstream requests: %d new, want 1", len(reqs)-before)
			}
			fwd, _ := url.ParseQuery(reqs[len(reqs)-1].RawQuery)
			if fwd.Get("client_id") != ctUpOnlyID || fwd.Get("redirect_uri") != ctUpOnlyRedirect || fwd.Get("scope") != "openid profile anything" || fwd.Has("client_secret") {
				t.Errorf("forwarded %v", fwd)
			}

			// A wrong secret: 401 invalid_client with WWW-Authenticate.
			r = c.postForm(t, "/par", ctUpOnlyForm().Encode(), ctBasic(ctUpOnlyID, "wrong"))
			ctWantJSONError(t, r, 401, "invalid_client")
			if r.Header.Get("WWW-Authenticate") == "" {
				t.Errorf("no WWW-Authenticate on a Basic 401")
			}
			// Unknown everywhere.
			ctWantJSONError(t, c.postForm(t, "/par", ctWith(ctUpOnlyForm(), "client_id", "nobody").Encode(), ctBasic("nobody", "x")), 401, "invalid_client")

			// A configured client never reaches the probe, even with the
			// secret the upstream has for it.
			probes := te.probes.Load()
			ctWantJSONError(t, c.postForm(t, "/par", ctAppForm().Encode(), ctBasic(ctAppID, "the-upstreams-web-app-secret")), 401, "invalid_client")
			if te.probes.Load() != probes {
				t.Errorf("a configured client was probed")
			}

			// A client the upstream treats as public: Keycloak confirms any
			// secret, Dex refuses it. PKCE is required either way.
			pub := ctWith(ctUpOnlyForm(), "client_id", ctUpPublicID)
			r = c.postForm(t, "/par", pub.Encode(), ctBasic(ctUpPublicID, "made-up"))
			if style == "keycloak" {
				if r.Status != 201 {
					t.Errorf("Keycloak-style public client with a made-up secret: %s, want 201", r)
				}
				r = c.postForm(t, "/par", ctWithout(pub, "code_challenge", "code_challenge_method").Encode(), ctBasic(ctUpPublicID, "made-up"))
				ctWantJSONError(t, r, 400, "invalid_request")
			} else {
				ctWantJSONError(t, r, 401, "invalid_client")
			}

			// Not registered at the gateway, so not checked at push time:
			// any absolute redirect_uri; still refused: a relative one.
			c.mustPush(t, ctWith(ctUpOnlyForm(), "redirect_uri", "https://elsewhere.example.test/cb"), ctBasic(ctUpOnlyID, ctUpOnlySecret))
			ctWantJSONError(t, c.postForm(t, "/par", ctWith(ctUpOnlyForm(), "redirect_uri", "/cb").Encode(), ctBasic(ctUpOnlyID, ctUpOnlySecret)), 400, "invalid_request")

			// require_par: an unpushed request of the delegated client is
			// shown as a page, never redirected.
			before = up.count()
			r = c.get(t, "/authorize?"+ctUpOnlyForm().Encode(), http.Header{"Accept": {"text/html"}})
			ctWantHTMLError(t, r, 400, "invalid_request")
			ctWantUpstreamUntouched(t, up, before)

			// The upstream goes down: 503, nothing accepted.
			te.down.Store(true)
			r = c.postForm(t, "/par", ctUpOnlyForm().Encode(), ctBasic(ctUpOnlyID, "not-cached"))
			ctWantJSONError(t, r, 503, "temporarily_unavailable")
			if r.Header.Get("Retry-After") == "" {
				t.Errorf("503 without Retry-After")
			}
			// Confirmed credentials keep working from the cache.
			c.mustPush(t, ctUpOnlyForm(), ctBasic(ctUpOnlyID, ctUpOnlySecret))
			te.down.Store(false)

			// The log: probe lines, never a secret.
			var logs []byte
			deadline := time.Now().Add(5 * time.Second)
			for {
				logs, _ = os.ReadFile(logFile)
				if bytes.Contains(logs, []byte("upstream client authentication: confirmed")) && bytes.Contains(logs, []byte(`"upstream_error":"`)) || time.Now().After(deadline) {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			for _, m := range []string{"upstream client authentication: confirmed", "upstream client authentication: cached", "upstream client authentication: refused"} {
				if !bytes.Contains(logs, []byte(m)) {
					t.Errorf("log has no %q line", m)
				}
			}
			for _, s := range []string{ctUpOnlySecret, url.QueryEscape(ctUpOnlySecret), "the-upstreams-web-app-secret", "made-up", "caddy-par-probe-"} {
				if bytes.Contains(logs, []byte(s)) {
					t.Errorf("the log holds %q", s)
				}
			}
		})
	}
}

func TestCaddyDelegatedFailureLimitAnswers429(t *testing.T) {
	te := ctStartTokenEndpoint(t, "keycloak")
	up := ctNewUpstream(t, nil)
	c := ctStart(t, up, "", ctBlock(`upstream_client_auth {
			token_endpoint `+te.url+`
			failure_limit 2 1m
			global_failure_limit 50 1m
		}`))
	c.mustPush(t, ctUpOnlyForm(), ctBasic(ctUpOnlyID, ctUpOnlySecret))
	for i := 0; i < 2; i++ {
		ctWantJSONError(t, c.postForm(t, "/par", ctUpOnlyForm().Encode(), ctBasic(ctUpOnlyID, fmt.Sprint("wrong", i))), 401, "invalid_client")
	}
	probes := te.probes.Load()
	r := c.postForm(t, "/par", ctUpOnlyForm().Encode(), ctBasic(ctUpOnlyID, "wrong-again"))
	ctWantJSONError(t, r, 429, "temporarily_unavailable")
	if r.Header.Get("Retry-After") == "" {
		t.Errorf("429 without Retry-After")
	}
	if te.probes.Load() != probes {
		t.Errorf("probed beyond the failure limit")
	}
	// The confirmed secret is still accepted (cache), without a probe.
	c.mustPush(t, ctUpOnlyForm(), ctBasic(ctUpOnlyID, ctUpOnlySecret))
	if te.probes.Load() != probes {
		t.Errorf("a cached secret was probed")
	}
}

func TestCaddyDelegatedAllowPublic(t *testing.T) {
	te := ctStartTokenEndpoint(t, "dex")
	up := ctNewUpstream(t, nil)
	c := ctStart(t, up, "", ctBlock("upstream_client_auth {\n\t\t\ttoken_endpoint "+te.url+"\n\t\t\tallow_public\n\t\t}"))
	pub := ctWith(ctUpOnlyForm(), "client_id", ctUpPublicID)
	uri := c.mustPush(t, pub, nil)
	ctWantJSONError(t, c.postForm(t, "/par", ctWithout(pub, "code_challenge", "code_challenge_method").Encode(), nil), 400, "invalid_request")
	if r := c.get(t, ctRedeemQuery(ctUpPublicID, uri), nil); r.Status != 200 {
		t.Errorf("redeem: %s", r)
	}
	if n := te.probes.Load(); n != 0 {
		t.Errorf("%d probes for public pushes", n)
	}
}

func TestCaddyDelegatedConfigErrorsNameTheDirective(t *testing.T) {
	up := ctNewUpstream(t, nil)
	storage := t.TempDir()
	base := "authorization_endpoint /authorize\n\t\t"
	for _, tc := range []struct {
		name  string
		block string
		want  []string
	}{
		{"no_token_endpoint", base + "upstream_client_auth", []string{"upstream_client_auth", "token_endpoint is required"}},
		{"relative_token_endpoint", base + "upstream_client_auth /token", []string{"upstream_client_auth", "token_endpoint"}},
		{"two_token_endpoints", base + "upstream_client_auth http://a/token {\n token_endpoint http://b/token\n }", []string{"upstream_client_auth", "token_endpoint", "more than once"}},
		{"too_many_args", base + "upstream_client_auth http://a/token http://b/token", []string{"upstream_client_auth", "too many arguments"}},
		{"twice", base + "upstream_client_auth http://a/token\n upstream_client_auth http://a/token", []string{"upstream_client_auth", "more than once"}},
		{"unknown_subdirective", base + "upstream_client_auth {\n token_endpoint http://a/token\n wibble\n }", []string{"upstream_client_auth", "wibble"}},
		{"method_not_delegable", base + "upstream_client_auth {\n token_endpoint http://a/token\n methods private_key_jwt\n }", []string{"upstream_client_auth", "methods", "private_key_jwt"}},
		{"timeout_not_a_duration", base + "upstream_client_auth {\n token_endpoint http://a/token\n timeout soon\n }", []string{"upstream_client_auth", "timeout"}},
		{"timeout_too_long", base + "upstream_client_auth {\n token_endpoint http://a/token\n timeout 1m\n }", []string{"upstream_client_auth", "timeout"}},
		{"cache_ttl_too_long", base + "upstream_client_auth {\n token_endpoint http://a/token\n cache_ttl 2h\n }", []string{"upstream_client_auth", "cache_ttl"}},
		{"cache_size_zero", base + "upstream_client_auth {\n token_endpoint http://a/token\n cache_size 0\n }", []string{"upstream_client_auth", "cache_size"}},
		{"failure_limit_one_arg", base + "upstream_client_auth {\n token_endpoint http://a/token\n failure_limit 5\n }", []string{"upstream_client_auth", "failure_limit"}},
		{"global_failure_limit_bad_window", base + "upstream_client_auth {\n token_endpoint http://a/token\n global_failure_limit 5 2h\n }", []string{"upstream_client_auth", "global_failure_limit"}},
		{"allow_public_with_arg", base + "upstream_client_auth {\n token_endpoint http://a/token\n allow_public yes\n }", []string{"upstream_client_auth", "allow_public"}},
		{"profile_fapi2", base + "issuer https://idp.example.test\n profile fapi2\n upstream_client_auth http://a/token", []string{"profile fapi2", "upstream_client_auth", "FAPI 2.0"}},
		{"require_signed_request_object", base + "require_signed_request_object\n upstream_client_auth http://a/token", []string{"upstream_client_auth", "require_signed_request_object"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctWantLoadError(t, up, storage, tc.block, tc.want...)
		})
	}
}

func TestCaddyDelegatedAdaptsToJSON(t *testing.T) {
	cf := ctCaddyfile(8080, "127.0.0.1:9", t.TempDir(), "", `authorization_endpoint /authorize
		upstream_client_auth {
			token_endpoint http://idp.internal:8080/token
			methods client_secret_basic
			timeout 2s
			cache_ttl 10m
			cache_size 500
			failure_limit 3 30s
			global_failure_limit 60 1m
			allow_public
		}`, "")
	out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cf), nil)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Apps struct {
			HTTP struct {
				Servers map[string]struct {
					Routes []struct {
						Handle []struct {
							Routes []struct {
								Handle []map[string]json.RawMessage `json:"handle"`
							} `json:"routes"`
						} `json:"handle"`
					} `json:"routes"`
				} `json:"servers"`
			} `json:"http"`
		} `json:"apps"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		t.Fatal(err)
	}
	got := doc.Apps.HTTP.Servers["srv0"].Routes[0].Handle[0].Routes[0].Handle[0]["upstream_client_auth"]
	want := map[string]any{
		"token_endpoint": "http://idp.internal:8080/token", "methods": []any{"client_secret_basic"},
		"timeout": 2e9, "cache_ttl": 600e9, "cache_size": 500.0, "failure_limit": 3.0, "failure_window": 30e9,
		"global_failure_limit": 60.0, "global_failure_window": 60e9, "allow_public": true,
	}
	var gotMap map[string]any
	if err := json.Unmarshal(got, &gotMap); err != nil || !reflect.DeepEqual(gotMap, want) {
		t.Errorf("adapted upstream_client_auth = %s, want %v (%v)", got, want, err)
	}
}

// At token_endpoint, a client authenticated by upstream_client_auth goes
// upstream with the credentials it presented: the upstream knows it by
// them, and the gateway has no upstream_secret for it.
func TestCaddyDelegatedClientKeepsItsCredentialsAtTheTokenEndpoint(t *testing.T) {
	te := ctStartTokenEndpoint(t, "keycloak")
	up := tkUpstream(t, nil)
	c := ctStart(t, up, "", ctBlock("token_endpoint /token", "upstream_client_auth "+te.url))
	basic := tkBasic(ctUpOnlyID, ctUpOnlySecret)
	for _, tc := range []struct {
		name string
		form url.Values
		hdr  http.Header
	}{
		{"client_secret_basic", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {"RT"}}, http.Header{"Authorization": {basic}}},
		{"client_secret_post", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {"RT"}, "client_id": {ctUpOnlyID}, "client_secret": {ctUpOnlySecret}}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if r := c.postForm(t, "/token", tc.form.Encode(), tc.hdr); r.Status != http.StatusOK {
				t.Fatalf("%s", r)
			}
			form, h := tkForwarded(t, up)
			if got := h.Get("Authorization"); got != tc.hdr.Get("Authorization") {
				t.Errorf("forwarded Authorization %q, want %q", got, tc.hdr.Get("Authorization"))
			}
			for k, want := range tc.form {
				if got := form[k]; !slices.Equal(got, want) {
					t.Errorf("forwarded %s = %q, want %q", k, got, want)
				}
			}
		})
	}
	// A wrong secret stops at the gateway.
	before := up.count()
	ctWantJSONError(t, c.postForm(t, "/token", "grant_type=refresh_token&refresh_token=RT", http.Header{"Authorization": {tkBasic(ctUpOnlyID, "wrong")}}), http.StatusUnauthorized, "invalid_client")
	if up.count() != before {
		t.Errorf("a token request with a wrong secret was forwarded")
	}
}
