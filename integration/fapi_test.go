package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddy-par/caddy-par/integration/internal/harness"
	"github.com/caddy-par/caddy-par/integration/internal/jws"
)

// fapiClientID is the client that the gateway knows by its public keys
// (private_key_jwt, signed request objects, DPoP) and the upstream knows
// by a secret only (Keycloak's realm import, Dex's static client).
const fapiClientID = "fapi-app"

// fapiSetup is what differs between the IdPs for the FAPI 2.0 flows.
type fapiSetup struct {
	secret   string // the upstream's secret for fapi-app
	redirect string // fapi-app's only redirect URI (loopback)
	// gw is the FAPI gateway's configuration, without the fapi-app client
	// and the FAPI lines (runFAPI2 adds them); it takes over the plain
	// gateway's port, so the upstream's issuer stays the same.
	gw harness.GatewayConfig
	// upstreamBindsDPoP: the upstream binds the code to the forwarded
	// dpop_jkt, so the token request must carry a proof with the same key
	// (Keycloak). Dex ignores dpop_jkt.
	upstreamBindsDPoP bool
	// encAlg/encEnc: the JWE algorithms of the encrypted request object.
	encAlg, encEnc string
	// checkTokens: per-IdP checks of a successful flow's tokens.
	checkTokens func(t *testing.T, e *idpEnv, r *FlowResult)
	// upstreamPKCEOff: the fapi2_lift group also runs a flow with
	// upstream_pkce off (an upstream that does not require PKCE).
	upstreamPKCEOff bool
}

// fapiEnv is the FAPI gateway with the client's keys.
type fapiEnv struct {
	*idpEnv
	s          fapiSetup
	assertKey  *jws.Key // ES256, client assertions
	requestKey *jws.Key // PS256, request objects
	jwksPath   string   // the gateway's request-object encryption JWKS
	// distinctive: values that must not show up in the gateway's log.
	distinctive []string
	// lastOK is the last FAPI flow that passed checkFlow.
	lastOK *FlowResult
}

// fapiGatewayLines are the oauth_par lines of the FAPI gateway (the syntax
// of issue 7).
func fapiGatewayLines(issuer, jwksPath string) []string {
	return []string{
		"issuer " + issuer,
		"profile fapi2",
		"request_object_signing_algs PS256 ES256",
		"request_object_encryption {\n\t\t\tjwks_path " + jwksPath + "\n\t\t}",
		"dpop_signing_algs ES256 PS256",
	}
}

// newFAPIEnv generates fapi-app's keys (ES256 for its assertions, PS256
// for its request objects, kids prefixed with kid) and writes their public
// JWK Set into dir for the gateway's jwks_file.
func (e *idpEnv) newFAPIEnv(t *testing.T, s fapiSetup, dir, kid string) (*fapiEnv, string) {
	t.Helper()
	f := &fapiEnv{idpEnv: e, s: s, jwksPath: s.gw.PAREndpoint + "/jwks"}
	var err error
	if f.assertKey, err = jws.New("ES256", kid+"-es256"); err != nil {
		t.Fatal(err)
	}
	if f.requestKey, err = jws.New("PS256", kid+"-ps256"); err != nil {
		t.Fatal(err)
	}
	jwksFile := filepath.Join(dir, "fapi-app.jwks.json")
	if err := os.WriteFile(jwksFile, jws.PublicJWKS(f.assertKey, f.requestKey), 0o644); err != nil {
		t.Fatal(err)
	}
	return f, jwksFile
}

// runFAPI2 replaces the plain gateway by one with `profile fapi2` on the
// same port and runs the FAPI 2.0-shaped flows: openid-client pushes with
// private_key_jwt, a signed (then also an encrypted) request object, DPoP
// and PKCE S256; Chromium logs in; the code is redeemed at the upstream's
// token endpoint with the secret the upstream knows.
func (e *idpEnv) runFAPI2(t *testing.T, gwBin string, s fapiSetup) {
	dir := e.subtestDir(t)
	f, jwksFile := e.newFAPIEnv(t, s, dir, "fapi")
	cfg := s.gw
	cfg.Port = e.gw.Config.Port
	cfg.LogPath = filepath.Join(dir, "gateway.log")
	cfg.RequirePAR = true
	cfg.Extra = append(append([]string{}, cfg.Extra...), fapiGatewayLines(e.issuer, f.jwksPath)...)
	cfg.Clients = []harness.GatewayClient{{
		ID:           fapiClientID,
		RedirectURIs: []string{s.redirect},
		Lines: []string{
			"jwks_file " + harness.QuoteCaddyfile(jwksFile),
			"auth_methods private_key_jwt",
			"require_signed_request_object",
			"require_dpop",
		},
	}}
	// The plain gateway gives its port to the FAPI gateway: the upstream's
	// issuer (Keycloak's hostname, Dex's issuer) is that origin.
	plain := e.gw
	plain.Stop(5 * time.Second)
	gw, err := harness.StartGateway(suiteCtx, gwBin, dir, cfg, nil)
	if err != nil {
		t.Fatalf("starting the FAPI gateway (Caddyfile in %s): %v", dir, err)
	}
	t.Cleanup(func() { gw.Stop(5 * time.Second) })
	e.gw = gw
	t.Cleanup(func() { e.gw = plain })
	t.Logf("FAPI gateway on %s (profile fapi2); Caddyfile %s", cfg.Origin(), gw.CaddyfilePath)

	t.Run("discovery", f.testDiscovery)
	t.Run("private_key_jwt_signed_request_object_dpop_pkce", func(t *testing.T) {
		r := f.run(t, f.flow())
		f.checkFlow(t, r)
	})
	t.Run("encrypted_request_object", func(t *testing.T) {
		alg := f.encAlg(t)
		cfg := f.flow()
		cfg.RequestObjectEncryption = &FlowEncryption{JWKSURI: e.origin() + f.jwksPath, Alg: alg, Enc: s.encEnc}
		r := f.run(t, cfg)
		f.checkFlow(t, r)
		enc := r.RequestObject.Encrypted
		if enc == nil || enc.Parts != 5 || enc.Header["alg"] != alg || enc.Header["enc"] != s.encEnc || enc.KeyKid == nil {
			t.Fatalf("request object not encrypted as asked (%s/%s): %+v", alg, s.encEnc, enc)
		}
		if strings.Count(r.pushed("request"), ".") != 4 {
			t.Errorf("the pushed request is not a JWE (compact, 5 parts)")
		}
		t.Logf("request object: JWE %s/%s to the gateway's key %s from %s, %d chars", alg, s.encEnc, *enc.KeyKid, f.jwksPath, r.RequestObject.Length)
	})
	if s.upstreamBindsDPoP {
		// The gateway forwards the DPoP key's thumbprint as dpop_jkt;
		// Keycloak binds the code to it, so a token request without a
		// proof of that key is refused. This is the proof that dpop_jkt
		// reached Keycloak.
		t.Run("dpop_jkt_enforced_upstream", func(t *testing.T) {
			cfg := f.flow()
			cfg.DPoP.TokenRequest = false
			r := f.run(t, cfg)
			if r.Outcome != "error" || r.Stage != "token" || !strings.Contains(fmt.Sprint(r.Error), "DPoP") {
				t.Fatalf("token request without DPoP: outcome=%s stage=%s error=%v, want the upstream to refuse it for a missing DPoP proof", r.Outcome, r.Stage, r.Error)
			}
			if !r.LoginPageSeen || !r.Callback.CodePresent {
				t.Errorf("the login did not complete before the token request: loginPageSeen=%v callback=%+v", r.LoginPageSeen, r.Callback)
			}
			f.checkLeaks(t, r)
			t.Logf("upstream refused the code without a DPoP proof: %v", r.Error)
		})
	} else {
		// Dex has no DPoP: it ignores the forwarded dpop_jkt (it reads
		// only the parameters it knows), and the code is redeemed without
		// a proof. The forwarded query shows in reverse_proxy's DEBUG line.
		t.Run("dpop_jkt_forwarded_and_ignored_upstream", func(t *testing.T) {
			r := f.lastOK
			if r == nil {
				t.Skip("the main FAPI flow did not run or failed")
			}
			want := "dpop_jkt=" + url.QueryEscape(r.DPoP.JKT)
			b, err := os.ReadFile(gw.Config.LogPath)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Contains(b, []byte(want)) {
				t.Errorf("no forwarded request with %s in the gateway's reverse_proxy DEBUG lines (%s)", want, gw.Config.LogPath)
			}
			if r.Tokens.TokenType == nil || !strings.EqualFold(*r.Tokens.TokenType, "bearer") {
				t.Errorf("token_type = %v, want bearer (Dex has no DPoP)", r.Tokens.TokenType)
			}
		})
	}

	// Refusals at the gateway, without a browser: flow.mjs stops at the push.
	t.Run("push_without_request_object_refused", func(t *testing.T) {
		cfg := f.flow()
		cfg.RequestObjectKey = nil
		f.expectPushRefused(t, cfg, 400, "invalid_request")
	})
	t.Run("push_without_dpop_refused", func(t *testing.T) {
		cfg := f.flow()
		cfg.DPoP = nil
		f.expectPushRefused(t, cfg, 400, "invalid_request", "invalid_dpop_proof")
	})
	t.Run("upstream_secret_refused_at_gateway", func(t *testing.T) {
		// The gateway knows fapi-app by its keys only: the secret the
		// upstream knows is no way in at the PAR endpoint.
		cfg := f.flow()
		cfg.ClientAuth = "client_secret_basic"
		cfg.ClientSecret = s.secret
		cfg.ClientKey = nil
		f.expectPushRefused(t, cfg, 401, "invalid_client")
	})
	t.Run("gateway_log", f.checkLog)
}

// flow is the FAPI 2.0-shaped flow: private_key_jwt (ES256) and a signed
// request object (PS256) at the gateway's PAR endpoint with a DPoP proof
// (ES256), PKCE S256 and a nonce; client_secret_basic with the upstream's
// secret at the upstream's token endpoint.
func (f *fapiEnv) flow() FlowConfig {
	return FlowConfig{
		Issuer:            f.issuer,
		ClientID:          fapiClientID,
		RedirectURI:       f.s.redirect,
		Scope:             "openid email profile",
		UsePAR:            true,
		Login:             f.login,
		ClientAuth:        "private_key_jwt",
		ClientKey:         &FlowKey{JWK: f.assertKey.PrivateJWK(), Alg: f.assertKey.Alg},
		RequestObjectKey:  &FlowKey{JWK: f.requestKey.PrivateJWK(), Alg: f.requestKey.Alg},
		DPoP:              &FlowDPoP{Alg: "ES256", TokenRequest: f.s.upstreamBindsDPoP},
		TokenClientAuth:   "client_secret_basic",
		TokenClientSecret: f.s.secret,
	}
}

func (f *fapiEnv) run(t *testing.T, cfg FlowConfig) *FlowResult {
	t.Helper()
	r := runFlow(t, f.subtestDir(t), cfg)
	for _, v := range []string{r.pushed("client_assertion"), r.pushed("request"), r.Nonce} {
		if len(v) >= 16 {
			f.distinctive = append(f.distinctive, v)
		}
	}
	if r.RequestObject != nil && r.RequestObject.Signed != nil {
		if c, _ := r.RequestObject.Signed.Claims["code_challenge"].(string); c != "" {
			f.distinctive = append(f.distinctive, c)
		}
	}
	for _, x := range r.HTTPExchanges {
		if x.DPoP != nil {
			if jti, _ := x.DPoP.Claims["jti"].(string); len(jti) >= 16 {
				f.distinctive = append(f.distinctive, jti)
			}
		}
	}
	if r.RequestURI != nil {
		f.distinctive = append(f.distinctive, strings.TrimPrefix(*r.RequestURI, "urn:ietf:params:oauth:request_uri:"))
	}
	return r
}

// checkFlow holds for every successful FAPI flow.
func (f *fapiEnv) checkFlow(t *testing.T, r *FlowResult) {
	t.Helper()
	requireTokens(t, r)
	e := f.idpEnv
	if r.ParResponse == nil || r.ParResponse.Status != 201 || r.ParRequest == nil || r.ParRequest.URL != e.parURL() {
		t.Errorf("push: request %+v response %+v, want 201 from %s", r.ParRequest, r.ParResponse, e.parURL())
	}
	var pushed []string
	for k := range r.PushedParams {
		pushed = append(pushed, k)
	}
	slices.Sort(pushed)
	if want := []string{"client_assertion", "client_assertion_type", "client_id", "request"}; !slices.Equal(pushed, want) {
		t.Errorf("pushed parameters %v, want %v: everything else travels inside the request object", pushed, want)
	}
	if r.ParRequest != nil && r.ParRequest.AuthScheme != nil {
		t.Errorf("the push carried an Authorization header (%s): private_key_jwt only", *r.ParRequest.AuthScheme)
	}
	// RFC 7523 client assertion, FAPI 2.0: aud is the issuer, a string.
	if ca := r.ParRequest.ClientAssertion; ca == nil || ca.Header["alg"] != "ES256" || ca.Header["kid"] != f.assertKey.Kid ||
		ca.Claims["aud"] != e.issuer || ca.Claims["iss"] != fapiClientID || ca.Claims["sub"] != fapiClientID || ca.Claims["jti"] == nil {
		t.Errorf("client assertion: %+v, want ES256 kid %s, iss = sub = %s, aud = %q (a string)", ca, f.assertKey.Kid, fapiClientID, e.issuer)
	}
	ro := r.RequestObject
	if ro == nil || ro.Signed == nil {
		t.Fatalf("no request object in the report")
	}
	claims := ro.Signed.Claims
	if ro.Signed.Header["alg"] != "PS256" || ro.Signed.Header["kid"] != f.requestKey.Kid || ro.Signed.Header["typ"] != "oauth-authz-req+jwt" {
		t.Errorf("request object header %v, want PS256, kid %s, typ oauth-authz-req+jwt", ro.Signed.Header, f.requestKey.Kid)
	}
	exp, _ := claims["exp"].(float64)
	nbf, _ := claims["nbf"].(float64)
	if claims["iss"] != fapiClientID || claims["aud"] != e.issuer || claims["client_id"] != fapiClientID || nbf == 0 || exp <= nbf || exp-nbf > 3600 {
		t.Errorf("request object claims iss=%v aud=%v client_id=%v nbf=%v exp=%v", claims["iss"], claims["aud"], claims["client_id"], nbf, exp)
	}
	if claims["code_challenge_method"] != "S256" || claims["code_challenge"] == nil || claims["nonce"] != r.Nonce || claims["state"] != r.State || claims["redirect_uri"] != f.s.redirect || claims["response_type"] != "code" {
		t.Errorf("request object lacks PKCE S256, nonce, state, redirect_uri or response_type=code: %v", claims)
	}
	// RFC 9449 §10: the proof on the push is for the PAR endpoint.
	if p := r.ParRequest.DPoP; p == nil || p.Header["typ"] != "dpop+jwt" || p.Claims["htm"] != "POST" || p.Claims["htu"] != e.parURL() {
		t.Errorf("DPoP proof on the push: %+v, want typ dpop+jwt, htm POST, htu %s", p, e.parURL())
	}
	checkOnlyRequestURIInAuthorizationURL(t, r, e.authzURL())
	if !r.LoginPageSeen || r.LoginPageURL == nil || !strings.HasPrefix(*r.LoginPageURL, e.origin()+"/") {
		t.Errorf("the IdP's login page was not shown through the gateway: seen=%v url=%v", r.LoginPageSeen, r.LoginPageURL)
	}
	if !r.Callback.CodePresent || !r.Callback.StateMatches {
		t.Errorf("callback: %+v", r.Callback)
	}
	// The nonce was only inside the signed request object.
	if !r.NonceMatches || !r.AudMatches || !r.IssMatches || !r.Tokens.IDTokenSignatureVerified {
		t.Errorf("id_token: nonceMatches=%v audMatches=%v issMatches=%v signatureVerified=%v", r.NonceMatches, r.AudMatches, r.IssMatches, r.Tokens.IDTokenSignatureVerified)
	}
	if got := r.Tokens.IDTokenClaims["email"]; got != e.email {
		t.Errorf("id_token email = %v, want %s (scope email was inside the request object)", got, e.email)
	}
	// The code was redeemed at the upstream's token endpoint (through the
	// gateway's reverse proxy) with the secret the upstream knows.
	var redeemed bool
	for _, x := range r.HTTPExchanges {
		if x.GrantType == "authorization_code" {
			redeemed = x.URL == r.Discovery.TokenEndpoint && x.Status == 200 && x.AuthScheme == "Basic"
			if f.s.upstreamBindsDPoP && (x.DPoP == nil || x.DPoP.Claims["htu"] != r.Discovery.TokenEndpoint) {
				t.Errorf("token request DPoP proof: %+v", x.DPoP)
			}
		}
	}
	if !redeemed {
		t.Errorf("no 200 authorization_code request with client_secret_basic at %s", r.Discovery.TokenEndpoint)
	}
	if r.DPoP == nil || len(r.DPoP.JKT) != 43 {
		t.Fatalf("no DPoP key thumbprint in the report: %+v", r.DPoP)
	}
	if f.s.checkTokens != nil {
		f.s.checkTokens(t, e, r)
	}
	f.checkLeaks(t, r)
	if !t.Failed() {
		f.lastOK = r
	}
}

// checkLeaks: PAR's promise again, for every value that was pushed, inside
// the request object too, and for the dpop_jkt the gateway forwards.
func (f *fapiEnv) checkLeaks(t *testing.T, r *FlowResult) {
	t.Helper()
	values := map[string]any{}
	for k, v := range r.PushedParams {
		values[k] = v
	}
	if r.RequestObject != nil && r.RequestObject.Signed != nil {
		for k, v := range r.RequestObject.Signed.Claims {
			switch k {
			case "iss", "aud", "exp", "nbf", "iat":
				continue
			}
			if s, ok := v.(string); ok {
				values[k] = s
			} else if k == "claims" || k == "authorization_details" {
				b, _ := json.Marshal(v)
				values[k] = string(b)
			}
		}
	}
	if r.DPoP != nil {
		values["dpop_jkt"] = r.DPoP.JKT
	}
	if len(r.BrowserURLs) == 0 {
		t.Errorf("no browser URLs recorded")
	}
	for _, p := range pushedValuesInURLs(values, r.BrowserURLs) {
		t.Error(p)
	}
	if _, problems := keycloakClientData(r.BrowserURLs); len(problems) > 0 {
		t.Errorf("Keycloak's client_data: %v", problems)
	}
}

// expectPushRefused runs cfg, which the gateway must refuse at the PAR
// endpoint with status and one of codes; no browser is opened.
func (f *fapiEnv) expectPushRefused(t *testing.T, cfg FlowConfig, status int, codes ...string) {
	t.Helper()
	r := f.run(t, cfg)
	if r.Outcome != "error" || r.Stage != "par" || r.ParResponse == nil {
		t.Fatalf("outcome=%s stage=%s error=%v parResponse=%+v, want a refused push", r.Outcome, r.Stage, r.Error, r.ParResponse)
	}
	code, _ := r.ParResponse.Body["error"].(string)
	if r.ParResponse.Status != status || !slices.Contains(codes, code) {
		t.Errorf("push answered %d %v, want %d with error %v", r.ParResponse.Status, r.ParResponse.Body, status, codes)
	}
	if len(r.BrowserURLs) != 0 {
		t.Errorf("a browser was opened after a refused push")
	}
	t.Logf("refused: %d %v", r.ParResponse.Status, r.ParResponse.Body)
}

// encAlg is the key management algorithm for the encrypted request object:
// s.encAlg, unless the gateway's key of that type (RSA or EC) names another
// algorithm of the same family in its "alg" (a key is meant for its alg).
func (f *fapiEnv) encAlg(t *testing.T) string {
	t.Helper()
	kty := "EC"
	if strings.HasPrefix(f.s.encAlg, "RSA") {
		kty = "RSA"
	}
	jwks := getJSON(t, f.origin()+f.jwksPath)
	keys, _ := jwks["keys"].([]any)
	for _, k := range keys {
		m, _ := k.(map[string]any)
		if m["kty"] != kty {
			continue
		}
		if a, _ := m["alg"].(string); a != "" && a != f.s.encAlg {
			t.Logf("the gateway's %s key is for %s: encrypting with that, not %s", kty, a, f.s.encAlg)
			return a
		}
		return f.s.encAlg
	}
	t.Fatalf("no %s key at %s (%v)", kty, f.jwksPath, keys)
	return ""
}

// testDiscovery: the FAPI gateway advertises what it enforces at PAR, and
// serves the public half of its request-object encryption keys.
func (f *fapiEnv) testDiscovery(t *testing.T) {
	e := f.idpEnv
	viaGW := getJSON(t, e.origin()+e.discoveryPath)
	direct := getJSON(t, e.upstreamURL+e.discoveryPath)
	if viaGW["issuer"] != e.issuer || viaGW["pushed_authorization_request_endpoint"] != e.parURL() || viaGW["require_pushed_authorization_requests"] != true {
		t.Errorf("issuer %v, pushed_authorization_request_endpoint %v, require_pushed_authorization_requests %v", viaGW["issuer"], viaGW["pushed_authorization_request_endpoint"], viaGW["require_pushed_authorization_requests"])
	}
	sameSet := func(member string, want ...string) {
		var got []string
		if l, ok := viaGW[member].([]any); ok {
			for _, x := range l {
				got = append(got, fmt.Sprint(x))
			}
		}
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("%s = %v, want %v (what the gateway enforces; upstream says %v)", member, viaGW[member], want, direct[member])
		}
	}
	sameSet("request_object_signing_alg_values_supported", "PS256", "ES256")
	sameSet("dpop_signing_alg_values_supported", "ES256", "PS256")
	if l, _ := viaGW["request_object_encryption_alg_values_supported"].([]any); !slices.Contains(l, any(f.s.encAlg)) {
		t.Errorf("request_object_encryption_alg_values_supported = %v, want it to contain %s (a default)", viaGW["request_object_encryption_alg_values_supported"], f.s.encAlg)
	}
	if l, _ := viaGW["request_object_encryption_enc_values_supported"].([]any); !slices.Contains(l, any(f.s.encEnc)) {
		t.Errorf("request_object_encryption_enc_values_supported = %v, want it to contain %s", viaGW["request_object_encryption_enc_values_supported"], f.s.encEnc)
	}
	// The gateway's own (default) algorithms, not the upstream's list for
	// its own keys (Keycloak advertises RSA1_5, A128CBC-HS256...).
	subset := func(member string, allowed ...string) {
		l, _ := viaGW[member].([]any)
		for _, x := range l {
			if !slices.Contains(allowed, fmt.Sprint(x)) {
				t.Errorf("%s = %v: %v is not one of the gateway's defaults %v (upstream says %v)", member, l, x, allowed, direct[member])
			}
		}
	}
	subset("request_object_encryption_alg_values_supported", "RSA-OAEP-256", "ECDH-ES", "ECDH-ES+A128KW", "ECDH-ES+A256KW")
	subset("request_object_encryption_enc_values_supported", "A128GCM", "A256GCM")
	if viaGW["jwks_uri"] != direct["jwks_uri"] {
		t.Errorf("jwks_uri = %v, want the upstream's %v (the upstream has one)", viaGW["jwks_uri"], direct["jwks_uri"])
	}
	t.Logf("token_endpoint_auth_methods_supported through the gateway %v (upstream %v)", viaGW["token_endpoint_auth_methods_supported"], direct["token_endpoint_auth_methods_supported"])

	jwks := getJSON(t, e.origin()+f.jwksPath)
	keys, _ := jwks["keys"].([]any)
	var kinds []string
	for _, k := range keys {
		m, _ := k.(map[string]any)
		for _, priv := range []string{"d", "p", "q", "dp", "dq", "qi", "k"} {
			if m[priv] != nil {
				t.Errorf("the gateway's JWKS at %s publishes private member %q of key %v", f.jwksPath, priv, m["kid"])
			}
		}
		if u, ok := m["use"]; ok && u != "enc" {
			t.Errorf("key %v at %s has use %v, want enc", m["kid"], f.jwksPath, u)
		}
		kinds = append(kinds, fmt.Sprintf("%v/%v", m["kty"], m["alg"]))
	}
	if len(keys) == 0 {
		t.Errorf("no keys at %s", f.jwksPath)
	}
	t.Logf("gateway encryption keys at %s: %v", f.jwksPath, kinds)
}

// checkLog: the FAPI gateway's log never holds the upstream's secret, and
// no assertion, request object, DPoP jti, nonce, code_challenge or
// request_uri reference appears in the handler's own lines or at level
// info and above.
func (f *fapiEnv) checkLog(t *testing.T) {
	b, err := os.ReadFile(f.gw.Config.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	if n := bytes.Count(b, []byte(f.s.secret)); n > 0 {
		t.Errorf("the upstream's client secret appears %d times in %s", n, f.gw.Config.LogPath)
	}
	if len(f.distinctive) == 0 {
		t.Skip("no FAPI flow ran in this invocation")
	}
	msgs := map[string]int{}
	for _, l := range readLogLines(t, b) {
		if l.own() {
			msgs[l.Msg]++
		} else if l.Level == "debug" {
			continue
		}
		if v, ok := l.leaked(f.distinctive); ok {
			t.Errorf("a pushed value (%s…) appears in a %s line of %s: %s", v[:8], l.Level, l.Logger, clip(string(l.raw), 300))
		}
	}
	t.Logf("oauth_par log lines: %v", msgs)
}
