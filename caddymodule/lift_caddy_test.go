package caddymodule_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/go-jose/go-jose/v4"
)

// profile fapi2 turns on add_iss always, and gateway PKCE (required for
// every client) when the token endpoint is behind the gateway.
func TestCaddyProfileFAPI2LiftsTheTokenEndpoint(t *testing.T) {
	keys := saNewKeys(t)
	jwks := "`" + saJWKS(t, keys[jose.ES256]) + "`"
	doc := `{"issuer":"` + saIssuer + `","authorization_endpoint":"https://idp.example.test/authorize","token_endpoint":"https://idp.example.test/token","token_endpoint_auth_methods_supported":["client_secret_basic"]}`
	up := tkUpstream(t, map[string]http.HandlerFunc{"/.well-known/openid-configuration": ctJSONHandler(doc)})
	base := "authorization_endpoint /authorize\n\t\tprofile fapi2\n\t\tissuer " + saIssuer + "\n\t\t" +
		"client fapi {\n\t\t\tjwks " + jwks + "\n\t\t\tredirect_uris https://fapi.example.test/cb\n\t\t\tupstream_secret up-secret\n\t\t}\n\t\t"
	strs := func(v any) string { b, _ := json.Marshal(v); return string(b) }

	c := ctStart(t, up, "", base+"token_endpoint /token")
	m := ctDecode(t, c.get(t, "/.well-known/openid-configuration", nil).Body)
	for member, want := range map[string]string{
		"authorization_response_iss_parameter_supported":   `true`,
		"code_challenge_methods_supported":                 `["S256"]`,
		"token_endpoint_auth_methods_supported":            `["private_key_jwt"]`,
		"token_endpoint_auth_signing_alg_values_supported": `["PS256","ES256","EdDSA"]`,
	} {
		if got := strs(m[member]); got != want {
			t.Errorf("%s = %s, want %s", member, got, want)
		}
	}
	// A code the gateway never bound is refused: PKCE is required.
	before := up.count()
	f := ctWith(tkCodeForm("redirect_uri", "https://fapi.example.test/cb"), "client_assertion_type", saAssertType,
		"client_assertion", saAssertion(t, keys[jose.ES256], "fapi", saIssuer, nil))
	ctWantJSONError(t, c.postForm(t, "/token", f.Encode(), nil), http.StatusBadRequest, "invalid_grant")
	// FAPI 2.0 §5.3.2.1: the assertion's aud is the issuer alone.
	f = ctWith(f, "client_assertion", saAssertion(t, keys[jose.ES256], "fapi", c.base+"/token", nil))
	ctWantJSONError(t, c.postForm(t, "/token", f.Encode(), nil), http.StatusUnauthorized, "invalid_client")
	ctWantUpstreamUntouched(t, up, before)

	// Without token_endpoint the profile still loads (the token endpoint
	// stays the IdP's) and still adds iss.
	c.reload(t, "authorization_endpoint /authorize\n\t\tprofile fapi2\n\t\tissuer "+saIssuer+"\n\t\tclient fapi {\n\t\t\tjwks "+jwks+"\n\t\t\tredirect_uris https://fapi.example.test/cb\n\t\t}")
	m = ctDecode(t, c.get(t, "/.well-known/openid-configuration", nil).Body)
	if m["authorization_response_iss_parameter_supported"] != true || strs(m["token_endpoint_auth_methods_supported"]) != `["client_secret_basic"]` {
		t.Errorf("fapi2 without token_endpoint: iss %v, token_endpoint_auth_methods_supported %v", m["authorization_response_iss_parameter_supported"], m["token_endpoint_auth_methods_supported"])
	}
}

func TestCaddyLiftCaddyfileAdapts(t *testing.T) {
	cf := `:8080 {
	oauth_par {
		authorization_endpoint /authorize
		add_iss
		token_endpoint /token
		gateway_pkce
		upstream_pkce off
		client a {
			secret s
			redirect_uris https://a.example.test/cb
			upstream_secret {env.A_UPSTREAM}
			upstream_auth_method client_secret_post
			require_gateway_pkce
		}
	}
}`
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cf), map[string]any{"filename": "Caddyfile"})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`"add_iss":true`, `"token_endpoint":"/token"`, `"gateway_pkce":true`, `"upstream_pkce":"off"`,
		`"upstream_secret":"{env.A_UPSTREAM}"`, `"upstream_auth_method":"client_secret_post"`, `"require_gateway_pkce":true`,
	} {
		if !bytes.Contains(cfg, []byte(want)) {
			t.Errorf("adapted JSON lacks %s:\n%s", want, cfg)
		}
	}
}
