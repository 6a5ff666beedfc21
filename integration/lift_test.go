package integration

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddy-par/caddy-par/integration/internal/harness"
)

// liftMixUpIssuer is the iss the hop puts into authorization responses in
// the mix-up scenario.
const liftMixUpIssuer = "https://mix-up.example.test/realms/other"

// runFAPI2Lift is issue 10 end to end: the FAPI gateway (profile fapi2)
// with the token endpoint behind it. openid-client uses private_key_jwt at
// the PAR endpoint and at the token endpoint, PKCE S256 (checked by the
// gateway, as fapi2 with token_endpoint requires), DPoP, and checks iss on
// the authorization response (discovery advertises it). The upstream knows
// the client by a secret only: the gateway sends it (upstream_secret). A
// counting hop between the gateway and the IdP shows what reached the IdP's
// token endpoint, and plays a mixed-up IdP for the iss check.
func (e *idpEnv) runFAPI2Lift(t *testing.T, gwBin string, s fapiSetup, tokenPath string) {
	dir := e.subtestDir(t)
	f, jwksFile := e.newFAPIEnv(t, s, dir, "lift")
	hop, err := harness.StartHop(s.gw.Upstream, tokenPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(hop.Close)
	cfg := s.gw
	cfg.Upstream = hop.Addr
	cfg.Port = e.gw.Config.Port
	cfg.LogPath = filepath.Join(dir, "gateway.log")
	cfg.RequirePAR = true
	cfg.Extra = append(append(append([]string{}, cfg.Extra...), fapiGatewayLines(e.issuer, f.jwksPath)...), "token_endpoint "+tokenPath)
	cfg.Clients = []harness.GatewayClient{{
		ID:           fapiClientID,
		RedirectURIs: []string{s.redirect},
		Lines: []string{
			"jwks_file " + harness.QuoteCaddyfile(jwksFile),
			"auth_methods private_key_jwt",
			"require_signed_request_object",
			"require_dpop",
			"upstream_secret {env.FAPI_UPSTREAM_SECRET}",
		},
	}}
	prev := e.gw
	prev.Stop(5 * time.Second)
	env := []string{"FAPI_UPSTREAM_SECRET=" + s.secret}
	gw, err := harness.StartGateway(suiteCtx, gwBin, dir, cfg, env)
	if err != nil {
		t.Fatalf("starting the gateway (Caddyfile in %s): %v", dir, err)
	}
	t.Cleanup(func() { gw.Stop(5 * time.Second) })
	e.gw = gw
	t.Cleanup(func() { e.gw = prev })
	t.Logf("gateway on %s with token_endpoint %s, hop %s -> %s; Caddyfile %s", cfg.Origin(), tokenPath, hop.Addr, s.gw.Upstream, gw.CaddyfilePath)

	flow := func() FlowConfig {
		c := f.flow()
		// One Configuration, private_key_jwt everywhere: the client holds
		// no secret at all.
		c.TokenClientAuth, c.TokenClientSecret = "", ""
		return c
	}
	tokenURL := e.origin() + tokenPath

	t.Run("discovery", func(t *testing.T) {
		viaGW := getJSON(t, e.origin()+e.discoveryPath)
		direct := getJSON(t, e.upstreamURL+e.discoveryPath)
		if viaGW["authorization_response_iss_parameter_supported"] != true {
			t.Errorf("authorization_response_iss_parameter_supported = %v (upstream %v), want true", viaGW["authorization_response_iss_parameter_supported"], direct["authorization_response_iss_parameter_supported"])
		}
		for member, want := range map[string][]string{
			"code_challenge_methods_supported":                 {"S256"},
			"token_endpoint_auth_methods_supported":            {"private_key_jwt"},
			"token_endpoint_auth_signing_alg_values_supported": {"PS256", "ES256", "EdDSA"},
		} {
			var got []string
			l, _ := viaGW[member].([]any)
			for _, x := range l {
				got = append(got, fmt.Sprint(x))
			}
			if !slices.Equal(got, want) {
				t.Errorf("%s = %v, want %v (upstream says %v)", member, viaGW[member], want, direct[member])
			}
		}
		if viaGW["token_endpoint"] != tokenURL || direct["token_endpoint"] != tokenURL {
			t.Errorf("token_endpoint = %v (upstream %v), want the upstream's own %s, served by the gateway", viaGW["token_endpoint"], direct["token_endpoint"], tokenURL)
		}
	})

	t.Run("private_key_jwt_at_par_and_token_endpoint_gateway_pkce_iss", func(t *testing.T) {
		before, redirectsBefore := hop.Count(), len(hop.CodeRedirects())
		r := f.run(t, flow())
		requireTokens(t, r)
		// Keycloak adds iss itself (the gateway verifies it and adds none);
		// Dex does not (the gateway adds it).
		upstreamIss := getJSON(t, e.upstreamURL+e.discoveryPath)["authorization_response_iss_parameter_supported"] == true
		if rs := hop.CodeRedirects()[redirectsBefore:]; len(rs) != 1 {
			t.Errorf("the IdP sent %d redirects with a code, want 1", len(rs))
		} else if n := strings.Count(rs[0], "iss="); n != map[bool]int{true: 1, false: 0}[upstreamIss] {
			t.Errorf("the IdP's own redirect has %d iss (its discovery promises iss: %v): %s", n, upstreamIss, clip(rs[0], 200))
		} else {
			t.Logf("the IdP's redirect carried %d iss of its own; the client got exactly one", n)
		}
		if r.Discovery.AuthorizationResponseIssParameterSupported == nil || !*r.Discovery.AuthorizationResponseIssParameterSupported {
			t.Errorf("openid-client did not see authorization_response_iss_parameter_supported, so it did not check iss")
		}
		if r.Callback.Iss == nil || *r.Callback.Iss != e.issuer || strings.Count(r.Callback.URL, "iss=") != 1 {
			t.Errorf("callback %s: want exactly one iss=%s", r.Callback.URL, e.issuer)
		}
		if !r.NonceMatches || !r.AudMatches || !r.IssMatches || !r.Tokens.IDTokenSignatureVerified {
			t.Errorf("id_token: nonce %v aud %v iss %v signature %v", r.NonceMatches, r.AudMatches, r.IssMatches, r.Tokens.IDTokenSignatureVerified)
		}
		var exchanged bool
		for _, x := range r.HTTPExchanges {
			if x.GrantType == "authorization_code" {
				exchanged = x.URL == tokenURL && x.Status == 200 && x.AuthScheme == nil
			}
		}
		if !exchanged {
			t.Errorf("no 200 authorization_code request without an Authorization header (private_key_jwt) at %s", tokenURL)
		}
		if n := hop.Count() - before; n != 1 {
			t.Fatalf("%d token requests reached the IdP, want 1", n)
		}
		up := hop.Seen()[len(hop.Seen())-1]
		wantAuth := "Basic " + base64.StdEncoding.EncodeToString([]byte(url.QueryEscape(fapiClientID)+":"+url.QueryEscape(s.secret)))
		if up.Authorization != wantAuth {
			t.Errorf("the IdP got Authorization %q, want the upstream_secret as client_secret_basic", clip(up.Authorization, 12))
		}
		for _, k := range []string{"client_assertion", "client_assertion_type", "client_secret"} {
			if up.Form.Has(k) {
				t.Errorf("the IdP got %s", k)
			}
		}
		if up.Form.Get("grant_type") != "authorization_code" || len(up.Form.Get("code_verifier")) < 43 || up.Form.Get("redirect_uri") != s.redirect {
			t.Errorf("the IdP got grant_type=%q, code_verifier of %d chars, redirect_uri=%q", up.Form.Get("grant_type"), len(up.Form.Get("code_verifier")), up.Form.Get("redirect_uri"))
		}
		if up.DPoP != s.upstreamBindsDPoP {
			t.Errorf("DPoP header at the IdP: %v, want %v", up.DPoP, s.upstreamBindsDPoP)
		}
		if s.checkTokens != nil {
			s.checkTokens(t, e, r)
		}
		f.checkLeaks(t, r)
		t.Logf("tokens issued; the client sent a client assertion, the IdP got one token request with the upstream secret and a %d-char code_verifier", len(up.Form.Get("code_verifier")))
	})

	t.Run("wrong_verifier_refused_at_gateway", func(t *testing.T) {
		before := hop.Count()
		cfg := flow()
		cfg.WrongVerifier = true
		r := f.run(t, cfg)
		if r.Outcome != "error" || r.Stage != "token" || !strings.Contains(fmt.Sprint(r.Error), "invalid_grant") {
			t.Fatalf("outcome=%s stage=%s error=%v, want invalid_grant at the token request", r.Outcome, r.Stage, r.Error)
		}
		if !r.Callback.CodePresent {
			t.Errorf("no code on the callback: %+v", r.Callback)
		}
		if n := hop.Count() - before; n != 0 {
			t.Errorf("%d token request(s) reached the IdP, want none", n)
		}
		t.Logf("refused at the gateway: %v", r.Error)
	})

	t.Run("replayed_code_refused_at_gateway", func(t *testing.T) {
		before := hop.Count()
		cfg := flow()
		cfg.ReplayCode = true
		r := f.run(t, cfg)
		requireTokens(t, r)
		if !r.Replay.Attempted || r.Replay.OK || r.Replay.ErrorCode == nil || *r.Replay.ErrorCode != "invalid_grant" {
			t.Errorf("replay: %+v, want invalid_grant", r.Replay)
		}
		if n := hop.Count() - before; n != 1 {
			t.Errorf("%d token requests reached the IdP, want only the first", n)
		}
		t.Logf("replay refused at the gateway: %v", r.Replay.Error)
	})

	t.Run("mismatched_iss_refused_at_gateway", func(t *testing.T) {
		hop.TamperIss(liftMixUpIssuer)
		defer hop.TamperIss("")
		before := hop.Count()
		r := f.run(t, flow())
		if r.OK || r.CallbackHits != 0 {
			t.Fatalf("ok=%v callbackHits=%d outcome=%s: the mixed-up response reached the client", r.OK, r.CallbackHits, r.Outcome)
		}
		if !r.LoginPageSeen || r.FinalPage.Status == nil || *r.FinalPage.Status != 502 || !strings.Contains(r.FinalPage.Text, "server_error") {
			t.Errorf("want the login, then the gateway's 502 server_error page: loginPageSeen=%v final %s %v %q", r.LoginPageSeen, r.FinalPage.URL, r.FinalPage.Status, clip(r.FinalPage.Text, 200))
		}
		for _, u := range r.BrowserURLs {
			if strings.HasPrefix(u, s.redirect) {
				t.Errorf("the browser was sent to the client: %s", clip(u, 120))
			}
		}
		if n := hop.Count() - before; n != 0 {
			t.Errorf("%d token request(s) reached the IdP", n)
		}
		t.Logf("the IdP's redirect named iss=%s; the browser got %v %q instead, the client nothing", liftMixUpIssuer, *r.FinalPage.Status, clip(r.FinalPage.Text, 120))
	})

	t.Run("gateway_log", func(t *testing.T) {
		b, err := os.ReadFile(gw.Config.LogPath)
		if err != nil {
			t.Fatal(err)
		}
		if n := bytes.Count(b, []byte(s.secret)); n > 0 {
			t.Errorf("the upstream secret appears %d times in %s", n, gw.Config.LogPath)
		}
		var token, bound int
		for _, l := range readLogLines(t, b) {
			if !l.own() {
				continue
			}
			switch {
			case bytes.Contains(l.raw, []byte(`"endpoint":"token"`)):
				token++
			case bytes.Contains(l.raw, []byte(`"outcome":"code_bound"`)):
				bound++
			}
			if v, ok := l.leaked(f.distinctive); ok {
				t.Errorf("a pushed value (%s…) appears in %s", v[:8], clip(string(l.raw), 300))
			}
		}
		if token == 0 || bound == 0 {
			t.Errorf("oauth_par lines: %d token endpoint, %d code_bound; want some of each", token, bound)
		}
		t.Logf("oauth_par lines: %d token endpoint, %d code_bound", token, bound)
	})

	if !s.upstreamPKCEOff {
		return
	}
	// The same gateway with upstream_pkce off: the IdP sees no PKCE
	// parameter at all, and the gateway alone checks the verifier.
	t.Run("upstream_pkce_off", func(t *testing.T) {
		sub := e.subtestDir(t)
		cfg2 := cfg
		cfg2.LogPath = filepath.Join(sub, "gateway.log")
		cfg2.Extra = append(append([]string{}, cfg.Extra...), "upstream_pkce off")
		gw.Stop(5 * time.Second)
		gw2, err := harness.StartGateway(suiteCtx, gwBin, sub, cfg2, env)
		if err != nil {
			t.Fatalf("starting the gateway (Caddyfile in %s): %v", sub, err)
		}
		t.Cleanup(func() { gw2.Stop(5 * time.Second) })
		e.gw = gw2
		mark, before := len(hop.All()), hop.Count()
		r := f.run(t, flow())
		requireTokens(t, r)
		authz := 0
		for _, u := range hop.All()[mark:] {
			if strings.Contains(u, cfg.AuthorizationEndpoint) {
				authz++
			}
			if strings.Contains(u, "code_challenge") {
				t.Errorf("the IdP got a PKCE parameter: %s", clip(u, 200))
			}
		}
		if authz == 0 {
			t.Errorf("no authorization request reached the IdP through the hop")
		}
		if n := hop.Count() - before; n != 1 {
			t.Fatalf("%d token requests reached the IdP, want 1", n)
		}
		if up := hop.Seen()[len(hop.Seen())-1]; up.Form.Has("code_verifier") {
			t.Errorf("the IdP got a code_verifier")
		}
		before = hop.Count()
		cfg := flow()
		cfg.WrongVerifier = true
		r = f.run(t, cfg)
		if r.Outcome != "error" || r.Stage != "token" || !strings.Contains(fmt.Sprint(r.Error), "invalid_grant") || hop.Count() != before {
			t.Errorf("wrong verifier with upstream_pkce off: outcome=%s stage=%s error=%v, %d token requests reached the IdP", r.Outcome, r.Stage, r.Error, hop.Count()-before)
		}
		t.Logf("upstream_pkce off: %d authorization request(s) and 1 token request reached the IdP without PKCE; a wrong verifier was still refused", authz)
	})
}
