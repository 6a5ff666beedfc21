package caddymodule_test

// In-process tests of the token endpoint behind the gateway (issue 10 §3):
// client authentication with the gateway's methods, replaced by the
// upstream credentials before the request is forwarded.

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/go-jose/go-jose/v4"
)

const (
	tkUpstreamSecret = "upstream+secret/for:jwt-app"
	tkPostApp        = "post-app"
	tkPostSecret     = "post-app-gateway-secret"
	tkPostUpstream   = "post-app-upstream-secret"
	tkPlainApp       = "plain-app"
	tkTokenResponse  = `{"access_token":"AT","token_type":"Bearer","expires_in":60}`
)

// tkUpstream answers /token like an IdP and records what it got.
func tkUpstream(t *testing.T, routes map[string]http.HandlerFunc) *ctUpstream {
	if routes == nil {
		routes = map[string]http.HandlerFunc{}
	}
	routes["/token"] = func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		_, _ = io.WriteString(w, tkTokenResponse)
	}
	return ctNewUpstream(t, routes)
}

func tkBlock(t *testing.T, keys map[jose.SignatureAlgorithm]saKey, extra ...string) string {
	t.Setenv("CADDY_PAR_TEST_UPSTREAM_SECRET", tkUpstreamSecret)
	return saBlock(t, keys, append([]string{
		"token_endpoint /token",
		"client " + tkPostApp + " {\n\t\t\tsecret " + tkPostSecret + "\n\t\t\tredirect_uris https://post.example.test/cb\n\t\t\tupstream_secret " + tkPostUpstream + "\n\t\t\tupstream_auth_method client_secret_post\n\t\t}",
		"client " + tkPlainApp + " {\n\t\t\tsecret plain-secret\n\t\t\tredirect_uris https://plain.example.test/cb\n\t\t}",
		"client spa {\n\t\t\tpublic\n\t\t\tredirect_uris https://spa.example.test/cb\n\t\t}",
	}, extra...)...)
}

// tkJWTAppUpstream turns saBlock's jwt-app into one the upstream knows by a
// secret.
func tkJWTAppUpstream(block string) string {
	return strings.Replace(block, "redirect_uris "+saJWTRedir+"\n", "redirect_uris "+saJWTRedir+"\n\t\t\tupstream_secret {env.CADDY_PAR_TEST_UPSTREAM_SECRET}\n", 1)
}

func tkCodeForm(extra ...string) url.Values {
	return ctWith(url.Values{
		"grant_type":    {"authorization_code"},
		"code":          {"THE-CODE"},
		"redirect_uri":  {saJWTRedir},
		"code_verifier": {"verifier-0123456789-abcdefghijklmnopqrstuvwxyz"},
	}, extra...)
}

// tkForwarded is the last token request the upstream got.
func tkForwarded(t *testing.T, up *ctUpstream) (url.Values, http.Header) {
	t.Helper()
	last := up.last(t)
	if last.Path != "/token" {
		t.Fatalf("last upstream request was %s %s, want the token endpoint", last.Method, last.Path)
	}
	form, err := url.ParseQuery(string(last.Body))
	if err != nil {
		t.Fatal(err)
	}
	return form, last.Header
}

func tkBasic(id, secret string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(url.QueryEscape(id)+":"+url.QueryEscape(secret)))
}

func TestCaddyTokenEndpointTranslatesClientAuthentication(t *testing.T) {
	keys := saNewKeys(t)
	up := tkUpstream(t, nil)
	c := ctStart(t, up, "", tkJWTAppUpstream(tkBlock(t, keys)))
	es := keys[jose.ES256]
	assertion := func(aud any) url.Values {
		return url.Values{"client_assertion_type": {saAssertType}, "client_assertion": {saAssertion(t, es, saJWTApp, aud, nil)}, "client_id": {saJWTApp}}
	}
	withAuth := func(f url.Values, a url.Values) url.Values {
		out := ctWith(f)
		for k, v := range a {
			out[k] = v
		}
		return out
	}

	t.Run("private_key_jwt_becomes_upstream_client_secret_basic", func(t *testing.T) {
		for _, aud := range []any{saIssuer, c.base + "/token", []string{"https://other.example.test", saIssuer}} {
			r := c.postForm(t, "/token", withAuth(tkCodeForm(), assertion(aud)).Encode(), http.Header{"Dpop": {"the-dpop-proof"}})
			if r.Status != http.StatusOK || string(r.Body) != tkTokenResponse {
				t.Fatalf("aud %v: %s", aud, r)
			}
			form, h := tkForwarded(t, up)
			if got, want := h.Get("Authorization"), tkBasic(saJWTApp, tkUpstreamSecret); got != want {
				t.Errorf("upstream Authorization = %q, want %q", got, want)
			}
			for _, k := range []string{"client_assertion", "client_assertion_type", "client_secret", "client_id"} {
				if form.Has(k) {
					t.Errorf("forwarded %s", k)
				}
			}
			for k, v := range tkCodeForm() {
				if form.Get(k) != v[0] {
					t.Errorf("forwarded %s = %q, want %q", k, form.Get(k), v[0])
				}
			}
			if h.Get("DPoP") != "the-dpop-proof" {
				t.Errorf("the DPoP header did not pass: %v", h)
			}
		}
	})

	t.Run("refresh_token_grant_takes_the_same_path", func(t *testing.T) {
		f := withAuth(url.Values{"grant_type": {"refresh_token"}, "refresh_token": {"RT"}}, assertion(saIssuer))
		if r := c.postForm(t, "/token", f.Encode(), nil); r.Status != http.StatusOK {
			t.Fatalf("refresh: %s", r)
		}
		form, h := tkForwarded(t, up)
		if h.Get("Authorization") != tkBasic(saJWTApp, tkUpstreamSecret) || form.Get("refresh_token") != "RT" || form.Has("client_assertion") {
			t.Errorf("forwarded %v %v", form, h)
		}
	})

	t.Run("client_secret_basic_becomes_upstream_client_secret_post", func(t *testing.T) {
		f := ctWith(tkCodeForm(), "redirect_uri", "https://post.example.test/cb")
		if r := c.postForm(t, "/token", f.Encode(), ctBasic(tkPostApp, tkPostSecret)); r.Status != http.StatusOK {
			t.Fatalf("%s", r)
		}
		form, h := tkForwarded(t, up)
		if h.Get("Authorization") != "" || form.Get("client_id") != tkPostApp || form.Get("client_secret") != tkPostUpstream {
			t.Errorf("forwarded %v, Authorization %q", form, h.Get("Authorization"))
		}
	})

	t.Run("without_upstream_secret_only_client_id_is_forwarded", func(t *testing.T) {
		if r := c.postForm(t, "/token", ctWith(tkCodeForm(), "client_secret", "plain-secret", "client_id", tkPlainApp).Encode(), nil); r.Status != http.StatusOK {
			t.Fatalf("%s", r)
		}
		form, h := tkForwarded(t, up)
		if h.Get("Authorization") != "" || form.Get("client_id") != tkPlainApp || form.Has("client_secret") {
			t.Errorf("forwarded %v", form)
		}
		if r := c.postForm(t, "/token", ctWith(tkCodeForm(), "client_id", "spa").Encode(), nil); r.Status != http.StatusOK {
			t.Fatalf("public client: %s", r)
		}
	})

	t.Run("refused_with_nothing_forwarded", func(t *testing.T) {
		used := assertion(saIssuer)
		if r := c.postForm(t, "/token", withAuth(tkCodeForm(), used).Encode(), nil); r.Status != http.StatusOK {
			t.Fatalf("first use: %s", r)
		}
		pushed := saAssertion(t, es, saJWTApp, saIssuer, nil)
		if r := c.postForm(t, "/par", saWithAssertion(saForm(saJWTApp, saJWTRedir), pushed).Encode(), nil); r.Status != http.StatusCreated {
			t.Fatalf("push: %s", r)
		}
		before := up.count()
		for _, tc := range []struct {
			name   string
			form   url.Values
			hdr    http.Header
			status int
			code   string
			basic  bool
		}{
			{"replayed_assertion", withAuth(tkCodeForm(), used), nil, 401, "invalid_client", false},
			{"assertion_used_at_PAR", withAuth(tkCodeForm(), url.Values{"client_assertion_type": {saAssertType}, "client_assertion": {pushed}}), nil, 401, "invalid_client", false},
			{"aud_PAR_endpoint", withAuth(tkCodeForm(), assertion(c.base+"/par")), nil, 401, "invalid_client", false},
			{"wrong_key", withAuth(tkCodeForm(), url.Values{"client_assertion_type": {saAssertType}, "client_assertion": {saAssertion(t, keys[jose.PS256], saHSApp, saIssuer, nil)}}), nil, 401, "invalid_client", false},
			{"upstream_secret_is_no_credential_here", tkCodeForm(), ctBasic(saJWTApp, tkUpstreamSecret), 401, "invalid_client", true},
			{"wrong_secret_basic", tkCodeForm(), ctBasic(tkPostApp, "nope"), 401, "invalid_client", true},
			{"unknown_client", tkCodeForm(), ctBasic("nobody", "x"), 401, "invalid_client", true},
			{"no_authentication", tkCodeForm(), nil, 401, "invalid_client", false},
			{"client_id_mismatch", ctWith(tkCodeForm(), "client_id", saJWTApp), ctBasic(tkPostApp, tkPostSecret), 401, "invalid_client", true},
			{"two_methods", ctWith(withAuth(tkCodeForm(), assertion(saIssuer))), ctBasic(tkPostApp, tkPostSecret), 401, "invalid_client", true},
			{"repeated_parameter", withAuth(url.Values{"grant_type": {"authorization_code"}, "code": {"a", "b"}}, assertion(saIssuer)), nil, 400, "invalid_request", false},
			{"no_grant_type", withAuth(ctWithout(tkCodeForm(), "grant_type"), assertion(saIssuer)), nil, 400, "invalid_request", false},
		} {
			t.Run(tc.name, func(t *testing.T) {
				r := c.postForm(t, "/token", tc.form.Encode(), tc.hdr)
				ctWantJSONError(t, r, tc.status, tc.code)
				if got := r.Header.Get("WWW-Authenticate"); (got != "") != tc.basic {
					t.Errorf("WWW-Authenticate = %q with Basic tried %v", got, tc.basic)
				}
			})
		}
		r := c.get(t, "/token", nil)
		ctWantJSONError(t, r, http.StatusMethodNotAllowed, "invalid_request")
		if r.Header.Get("Allow") != "POST" {
			t.Errorf("Allow = %q", r.Header.Get("Allow"))
		}
		r = c.do(t, http.MethodPost, "/token", strings.NewReader(`{"grant_type":"x"}`), http.Header{"Content-Type": {"application/json"}})
		ctWantJSONError(t, r, http.StatusBadRequest, "invalid_request")
		r = c.postForm(t, "/token", "grant_type=authorization_code&code="+strings.Repeat("x", 70<<10), nil)
		ctWantJSONError(t, r, http.StatusRequestEntityTooLarge, "invalid_request")
		ctWantUpstreamUntouched(t, up, before)
	})

}

func TestCaddyTokenEndpointDiscovery(t *testing.T) {
	keys := saNewKeys(t)
	doc := `{"issuer":"` + saIssuer + `","authorization_endpoint":"https://idp.example.test/authorize","token_endpoint":"https://idp.example.test/token",` +
		`"token_endpoint_auth_methods_supported":["client_secret_basic","client_secret_post"],"token_endpoint_auth_signing_alg_values_supported":["RS256","HS256"]}`
	up := tkUpstream(t, map[string]http.HandlerFunc{"/.well-known/openid-configuration": ctJSONHandler(doc)})
	strs := func(v any) string { b, _ := json.Marshal(v); return string(b) }

	c := ctStart(t, up, "", tkJWTAppUpstream(tkBlock(t, keys)))
	m := ctDecode(t, c.get(t, "/.well-known/openid-configuration", nil).Body)
	if got, want := strs(m["token_endpoint_auth_methods_supported"]), `["client_secret_basic","client_secret_jwt","client_secret_post","none","private_key_jwt"]`; got != want {
		t.Errorf("token_endpoint_auth_methods_supported = %s, want %s", got, want)
	}
	if got, want := strs(m["token_endpoint_auth_signing_alg_values_supported"]), `["PS256","ES256","EdDSA","RS256","HS256","HS384","HS512"]`; got != want {
		t.Errorf("token_endpoint_auth_signing_alg_values_supported = %s, want %s", got, want)
	}
	if m["token_endpoint"] != "https://idp.example.test/token" {
		t.Errorf("token_endpoint = %v, want the upstream's", m["token_endpoint"])
	}

	// Secrets only: no JWT method, so no signing algorithms to claim.
	c.reload(t, `authorization_endpoint /authorize
		token_endpoint /token
		client a {
			secret s
			redirect_uris https://a.example.test/cb
			upstream_secret u
		}`)
	m = ctDecode(t, c.get(t, "/.well-known/openid-configuration", nil).Body)
	if got := strs(m["token_endpoint_auth_methods_supported"]); got != `["client_secret_basic","client_secret_post"]` {
		t.Errorf("token_endpoint_auth_methods_supported = %s", got)
	}
	if _, ok := m["token_endpoint_auth_signing_alg_values_supported"]; ok {
		t.Errorf("token_endpoint_auth_signing_alg_values_supported = %v, want it dropped", m["token_endpoint_auth_signing_alg_values_supported"])
	}
}

func TestCaddyTokenEndpointNeverLogsSecretsOrCodes(t *testing.T) {
	keys := saNewKeys(t)
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	global := fmt.Sprintf("log {\n\t\toutput file %s\n\t\tformat json\n\t\tlevel DEBUG\n\t}", logFile)
	up := tkUpstream(t, nil)
	c := ctStart(t, up, global, tkJWTAppUpstream(tkBlock(t, keys)))
	f := ctWith(tkCodeForm(), "redirect_uri", "https://post.example.test/cb", "code", "CODE-SENTINEL-0123456789")
	if r := c.postForm(t, "/token", f.Encode(), ctBasic(tkPostApp, tkPostSecret)); r.Status != http.StatusOK {
		t.Fatalf("%s", r)
	}
	if r := c.postForm(t, "/token", f.Encode(), ctBasic(tkPostApp, tkPostSecret+"x")); r.Status != http.StatusUnauthorized {
		t.Fatalf("%s", r)
	}
	a := saAssertion(t, keys[jose.ES256], saJWTApp, saIssuer, nil)
	if r := c.postForm(t, "/token", ctWith(tkCodeForm(), "client_assertion_type", saAssertType, "client_assertion", a).Encode(), nil); r.Status != http.StatusOK {
		t.Fatalf("%s", r)
	}
	b, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"endpoint":"token"`) {
		t.Errorf("no token endpoint outcome logged")
	}
	for _, s := range []string{tkPostSecret, tkPostUpstream, tkUpstreamSecret, url.QueryEscape(tkUpstreamSecret), "CODE-SENTINEL", "verifier-0123456789", a[len(a)-20:],
		base64.StdEncoding.EncodeToString([]byte(url.QueryEscape(saJWTApp) + ":" + url.QueryEscape(tkUpstreamSecret)))} {
		if strings.Contains(string(b), s) {
			t.Errorf("the log holds %q", s)
		}
	}
}

func TestCaddyTokenConfigErrorsNameTheDirective(t *testing.T) {
	up := ctNewUpstream(t, nil)
	storage := t.TempDir()
	for _, tc := range []struct {
		name, block string
		want        []string
	}{
		{"upstream_secret_without_token_endpoint", ctBlock("client x {\n secret s\n redirect_uris https://x.example.test/cb\n upstream_secret u\n }"), []string{`"x"`, "upstream_secret", "token_endpoint"}},
		{"bad_upstream_auth_method", ctBlock("token_endpoint /token", "client x {\n secret s\n redirect_uris https://x.example.test/cb\n upstream_secret u\n upstream_auth_method private_key_jwt\n }"), []string{"upstream_auth_method", "private_key_jwt"}},
		{"upstream_auth_method_without_secret", ctBlock("token_endpoint /token", "client x {\n secret s\n redirect_uris https://x.example.test/cb\n upstream_auth_method client_secret_post\n }"), []string{"upstream_auth_method", "upstream_secret"}},
		{"relative_token_endpoint", ctBlock("token_endpoint token"), []string{"token_endpoint"}},
		{"token_endpoint_is_par_endpoint", ctBlock("token_endpoint /par"), []string{"token_endpoint"}},
		{"token_endpoint_two_args", ctBlock("token_endpoint /a /b"), []string{"token_endpoint"}},
		{"upstream_secret_placeholder_unset", ctBlock("token_endpoint /token", "client x {\n secret s\n redirect_uris https://x.example.test/cb\n upstream_secret {env.CADDY_PAR_TEST_SURELY_UNSET}\n }"), []string{"upstream_secret"}},
	} {
		t.Run(tc.name, func(t *testing.T) { ctWantLoadError(t, up, storage, tc.block, tc.want...) })
	}
}
