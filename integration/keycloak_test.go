package integration

import (
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-par/caddy-par/integration/internal/harness"
)

const (
	kcRealmPath = "/realms/demo"
	kcAuthzPath = kcRealmPath + "/protocol/openid-connect/auth"
	kcPARPath   = kcRealmPath + "/protocol/openid-connect/par"
	// Keycloak's own PAR endpoint, which clients must not be steered to.
	kcNativePARPath = kcRealmPath + "/protocol/openid-connect/ext/par/request"
	// Keycloak (Quarkus/Vert.x) answers 414 when the request line exceeds
	// 32 KiB; a pushed request can be up to max_request_size (64 KiB by
	// default), hence forward_method post for Keycloak.
	kcRequestLineLimit = 32 << 10
)

// keycloakBoot is Keycloak started in the background by TestMain, so that
// its boot (one to two minutes) overlaps the builds and the Dex tests.
// The gateway's port is chosen up front: Keycloak's hostname (issuer and
// every URL it emits) is the gateway's origin.
type keycloakBoot struct {
	once   sync.Once
	done   chan struct{}
	proc   *harness.Proc
	err    error
	art    string
	runDir string
	gwPort int
	kcPort int
	secret string
	// fapiSecret is fapi-app's secret at Keycloak.
	fapiSecret string
	took       time.Duration

	// upstreamOnlySecret is the secret of upstream-only-app and
	// no-code-flow-app, which only Keycloak knows.
	upstreamOnlySecret string
}

var kcBoot = &keycloakBoot{done: make(chan struct{})}

func bootKeycloak() { kcBoot.once.Do(kcBoot.run) }

func (b *keycloakBoot) run() {
	defer close(b.done)
	start := time.Now()
	defer func() { b.took = time.Since(start) }()
	if b.art, b.err = resetArtifacts("TestKeycloak"); b.err != nil {
		return
	}
	ports, err := harness.FreePorts(2)
	if err != nil {
		b.err = err
		return
	}
	b.gwPort, b.kcPort = ports[0], ports[1]
	b.secret = "kc-" + randHex(16)
	b.fapiSecret = "kcf-" + randHex(16)
	b.upstreamOnlySecret = "kcu-" + randHex(16)
	fetchLog, err := os.Create(filepath.Join(b.art, "keycloak-fetch.log"))
	if err != nil {
		b.err = err
		return
	}
	defer fetchLog.Close()
	home, err := harness.FetchKeycloak(suiteCtx, fetchLog)
	if err != nil {
		b.err = fmt.Errorf("%v\n%s", err, harness.Tail(fetchLog.Name(), 20))
		return
	}
	// Keycloak's H2 database and import dir: kept with the artifacts
	// (a few MB), replaced on the next run.
	b.runDir = filepath.Join(b.art, "keycloak-run")
	if b.err = os.MkdirAll(b.runDir, 0o755); b.err != nil {
		return
	}
	if suiteCtx.Err() != nil {
		b.err = suiteCtx.Err()
		return
	}
	b.proc, b.err = harness.StartKeycloak(suiteCtx, harness.KeycloakConfig{
		Home:       home,
		Port:       b.kcPort,
		PublicURL:  fmt.Sprintf("http://127.0.0.1:%d", b.gwPort),
		RunDir:     b.runDir,
		Secret:     b.secret,
		FAPISecret: b.fapiSecret,
		LogPath:    filepath.Join(b.art, "keycloak.log"),

		UpstreamOnlySecret: b.upstreamOnlySecret,
	})
}

// TestKeycloak runs the suite against Keycloak (integration/keycloak)
// behind the gateway, with forward_method post as the README recommends
// for Keycloak.
func TestKeycloak(t *testing.T) {
	needBrowser(t)
	go bootKeycloak() // no-op when TestMain already started it
	gwBin := needGateway(t)
	t.Cleanup(func() {
		<-kcBoot.done
		kcBoot.proc.Stop(15 * time.Second)
	})
	select {
	case <-kcBoot.done:
	case <-suiteCtx.Done():
		t.Fatal("interrupted while waiting for Keycloak")
	}
	if kcBoot.err != nil {
		t.Fatalf("starting Keycloak: %v", kcBoot.err)
	}
	t.Logf("Keycloak ready on 127.0.0.1:%d after %s", kcBoot.kcPort, kcBoot.took.Round(time.Second))
	art := kcBoot.art

	ports, err := harness.FreePorts(5)
	if err != nil {
		t.Fatal(err)
	}
	cbPort, spaPort, gwGetPort, fapiPort, delegatedPort := ports[0], ports[1], ports[2], ports[3], ports[4]
	webRedirect := fmt.Sprintf("http://127.0.0.1:%d/callback", cbPort)
	spaRedirect := fmt.Sprintf("http://127.0.0.1:%d/callback", spaPort)
	upstream := fmt.Sprintf("127.0.0.1:%d", kcBoot.kcPort)
	clients := []harness.GatewayClient{
		{ID: "web-app", SecretEnv: "WEB_APP_SECRET", RedirectURIs: []string{webRedirect}},
		{ID: "spa", RedirectURIs: []string{spaRedirect}},
	}
	gwCfg := harness.GatewayConfig{
		Port:                  kcBoot.gwPort,
		Upstream:              upstream,
		LogPath:               filepath.Join(art, "gateway.log"),
		AuthorizationEndpoint: kcAuthzPath,
		PAREndpoint:           kcPARPath,
		ForwardMethod:         "post",
		RequirePAR:            true,
		Clients:               clients,
	}
	gw, err := harness.StartGateway(suiteCtx, gwBin, art, gwCfg, []string{"WEB_APP_SECRET=" + kcBoot.secret})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { gw.Stop(5 * time.Second) })
	origin := gwCfg.Origin()
	t.Logf("gateway on %s; artifacts in %s", origin, art)

	e := &idpEnv{
		name:          "Keycloak",
		art:           art,
		gw:            gw,
		upstream:      kcBoot.proc,
		upstreamURL:   "http://" + upstream,
		issuer:        origin + kcRealmPath,
		secret:        kcBoot.secret,
		webRedirect:   webRedirect,
		spaRedirect:   spaRedirect,
		email:         "alice@example.com",
		discoveryPath: kcRealmPath + "/.well-known/openid-configuration",
		login:         FlowLogin{Username: "alice", Password: "alice-password", SubmitSelector: "#kc-login"},
		largeReached:  kcClaimsReached,
		// phone is an optional client scope in Keycloak: it is in the token
		// response's scope only when the authorization request asked for it.
		confScope: "openid email profile phone",
		scopeReached: func(t *testing.T, r *FlowResult) {
			if r.Tokens.Scope == nil || !strings.Contains(" "+*r.Tokens.Scope+" ", " phone ") {
				t.Errorf("token response scope = %v: the pushed optional scope phone did not reach Keycloak", r.Tokens.Scope)
			}
		},
	}
	e.runCommonFlows(t)

	// Keycloak's own PAR endpoint still answers through the gateway (it is
	// just proxied), but its request_uris are refused at the gateway's
	// authorization endpoint: clients work only through the gateway's PAR.
	t.Run("keycloak_native_request_uri_refused", func(t *testing.T) {
		_ = e.subtestDir(t)
		nonce := randHex(16)
		params := url.Values{
			"response_type": {"code"}, "redirect_uri": {webRedirect}, "scope": {"openid"},
			"state": {randHex(8)}, "nonce": {nonce},
			"code_challenge": {pkceChallenge()}, "code_challenge_method": {"S256"},
		}
		status, body := push(t, origin+kcNativePARPath, "web-app", kcBoot.secret, params)
		ru, _ := body["request_uri"].(string)
		if status != 201 || !strings.HasPrefix(ru, "urn:ietf:params:oauth:request_uri:") {
			t.Fatalf("Keycloak's own PAR endpoint through the gateway: %d %v", status, body)
		}
		q := url.Values{"client_id": {"web-app"}, "request_uri": {ru}}.Encode()
		code, _, page := browserGet(t, origin+kcAuthzPath+"?"+q)
		if code != 400 || !strings.Contains(page, "invalid_request_uri") || !strings.Contains(page, "Authorization request rejected") {
			t.Errorf("Keycloak's request_uri at the gateway: %d %q, want the gateway's 400 invalid_request_uri page", code, clip(page, 300))
		}
		// The same request_uri is valid at Keycloak itself: the refusal is
		// the gateway's doing.
		code, h, page := browserGet(t, e.upstreamURL+kcAuthzPath+"?"+q)
		// Keycloak answers with its login page, or (no cookies yet) with a
		// redirect to its login-actions page; an invalid request_uri would
		// get an error page instead.
		accepted := code == 200 && strings.Contains(page, "kc-form-login") ||
			code == 302 && strings.HasPrefix(h.Get("Location"), origin+kcRealmPath+"/login-actions/authenticate?")
		if !accepted {
			t.Errorf("Keycloak's request_uri sent to Keycloak directly: %d Location=%q %q, want it accepted (login page)", code, h.Get("Location"), clip(page, 300))
		}
	})

	// A pushed request larger than Keycloak's 32 KiB request-line limit:
	// with forward_method post (this gateway) the browser login completes.
	t.Run("huge_claims_30KB_post_forwarding", func(t *testing.T) {
		r := e.largeFlow(t, hugeClaimsSize) // checks kcClaimsReached
		if q := encodedLen(r.PushedParams); q <= kcRequestLineLimit {
			t.Errorf("pushed request encodes to %d bytes; the test needs more than %d to prove the point", q, kcRequestLineLimit)
		}
	})

	// The same size with forward_method get: Keycloak refuses the forwarded
	// URL (414), which is why the README recommends post for Keycloak.
	t.Run("huge_claims_get_forwarding_refused_upstream", func(t *testing.T) {
		dir := e.subtestDir(t)
		getCfg := gwCfg
		getCfg.Port = gwGetPort
		getCfg.ForwardMethod = "get"
		getCfg.LogPath = filepath.Join(dir, "gateway.log")
		gwGet, err := harness.StartGateway(suiteCtx, gwBin, dir, getCfg, []string{"WEB_APP_SECRET=" + kcBoot.secret})
		if err != nil {
			t.Fatal(err)
		}
		defer gwGet.Stop(5 * time.Second)
		claims, _ := largeClaims(hugeClaimsSize)
		redeem := func(gwOrigin string) (int, string) {
			params := url.Values{
				"response_type": {"code"}, "redirect_uri": {webRedirect}, "scope": {"openid email"},
				"state": {randHex(8)}, "nonce": {randHex(16)},
				"code_challenge": {pkceChallenge()}, "code_challenge_method": {"S256"},
				"claims": {mustJSON(claims)},
			}
			status, body := push(t, gwOrigin+kcPARPath, "web-app", kcBoot.secret, params)
			ru, _ := body["request_uri"].(string)
			if status != 201 || ru == "" {
				t.Fatalf("push to %s: %d %v", gwOrigin, status, body)
			}
			if n := len(params.Encode()); n <= kcRequestLineLimit {
				t.Fatalf("pushed request is only %d bytes encoded", n)
			}
			code, _, page := browserGet(t, gwOrigin+kcAuthzPath+"?"+url.Values{"client_id": {"web-app"}, "request_uri": {ru}}.Encode())
			return code, page
		}
		code, page := redeem(gwGet.Config.Origin())
		if code != 414 {
			t.Errorf("forward_method get: redemption answered %d %q, want Keycloak's 414", code, clip(page, 200))
		}
		code, page = redeem(origin)
		if code != 200 || !strings.Contains(page, "kc-form-login") {
			t.Errorf("forward_method post: redemption answered %d %q, want Keycloak's login page", code, clip(page, 200))
		}
	})

	// A pushed dpop_jkt (RFC 9449 §10, no DPoP header on the push) reaches
	// Keycloak, which binds the code to that key: the token request carries
	// a proof of it (client_secret_basic as always) and the access token is
	// DPoP-bound. This is Keycloak's side of the fapi2 flows below, where
	// the gateway forwards the thumbprint of the push's DPoP proof.
	t.Run("pushed_dpop_jkt_binds_code_upstream", func(t *testing.T) {
		dir := e.subtestDir(t)
		cfg := e.flow("web-app")
		cfg.Scope = "openid email profile"
		cfg.DPoP = &FlowDPoP{Alg: "ES256", TokenRequest: true, NoPush: true, JKTParam: true}
		r := runFlow(t, dir, cfg)
		e.remember(r)
		requireTokens(t, r)
		e.checkPARFlow(t, r, "web-app")
		if r.DPoP == nil || r.pushed("dpop_jkt") != r.DPoP.JKT || r.ParRequest.DPoP != nil {
			t.Fatalf("pushed dpop_jkt %q, DPoP %+v, proof on the push %v", r.pushed("dpop_jkt"), r.DPoP, r.ParRequest.DPoP)
		}
		if r.Tokens.TokenType == nil || !strings.EqualFold(*r.Tokens.TokenType, "DPoP") {
			t.Errorf("token_type = %v, want DPoP", r.Tokens.TokenType)
		}
		if jkt, _ := r.Tokens.AccessTokenCnf["jkt"].(string); jkt != r.DPoP.JKT {
			t.Errorf("access token cnf = %v, want jkt %s", r.Tokens.AccessTokenCnf, r.DPoP.JKT)
		}
	})

	// The same without a proof on the token request: Keycloak refuses the
	// code. (A code bound by dpop_jkt needs a proof of that key.)
	t.Run("pushed_dpop_jkt_token_without_proof_refused_upstream", func(t *testing.T) {
		dir := e.subtestDir(t)
		cfg := e.flow("web-app")
		cfg.Scope = "openid email profile"
		cfg.DPoP = &FlowDPoP{Alg: "ES256", TokenRequest: false, NoPush: true, JKTParam: true}
		r := runFlow(t, dir, cfg)
		e.remember(r)
		if r.Outcome != "error" || r.Stage != "token" || !strings.Contains(fmt.Sprint(r.Error), "DPoP Proof missing") {
			t.Fatalf("outcome=%s stage=%s error=%v, want Keycloak's DPoP Proof missing at the token request", r.Outcome, r.Stage, r.Error)
		}
		if !r.Callback.CodePresent {
			t.Errorf("no code on the callback: %+v", r.Callback)
		}
		checkNothingPushedInBrowserURLs(t, r)
	})

	// Issue 9: Keycloak renders its login form at the authorization URL; a
	// reload within the reuse grace shows it again and the login completes,
	// while another browser with the same URL is refused.
	t.Run("reuse_grace_reload_login_page", e.reloadLoginPageWithinGrace)

	t.Run("gateway_log", e.checkGatewayLog)

	// A client only Keycloak knows, through a gateway with
	// upstream_client_auth on the same port; the plain gateway is back
	// afterwards.
	t.Run("upstream_client_auth", func(t *testing.T) {
		e.runDelegated(t, gwBin, delegatedSetup{
			tokenEndpoint: e.upstreamURL + kcRealmPath + "/protocol/openid-connect/token",
			secret:        kcBoot.upstreamOnlySecret,
			redirect:      fmt.Sprintf("http://127.0.0.1:%d/callback", delegatedPort),
			// A built-in public client of every Keycloak realm.
			publicID:                 "account-console",
			unregisteredRedirectText: "Invalid parameter: redirect_uri",
			noCodeFlowID:             "no-code-flow-app",
			probes: append(probeTable(kcBoot.upstreamOnlySecret, "account-console", 401, "unauthorized_client", 400, "invalid_grant"),
				// Keycloak checks the code before the client's grant types.
				probeCase{name: "code_flow_disabled_right_secret_basic", clientID: "no-code-flow-app", secret: kcBoot.upstreamOnlySecret,
					wantStatus: 400, wantError: "invalid_grant", verdict: "confirmed"}),
		})
	})

	// The gateway is replaced by one with profile fapi2 on the same port
	// (Keycloak's hostname), stopped again when the group ends.
	t.Run("fapi2", func(t *testing.T) {
		e.runFAPI2(t, gwBin, fapiSetup{
			secret:   kcBoot.fapiSecret,
			redirect: fmt.Sprintf("http://127.0.0.1:%d/callback", fapiPort),
			gw: harness.GatewayConfig{
				Upstream:              upstream,
				AuthorizationEndpoint: kcAuthzPath,
				PAREndpoint:           kcPARPath,
				ForwardMethod:         "post",
			},
			upstreamBindsDPoP: true,
			encAlg:            "RSA-OAEP-256",
			encEnc:            "A256GCM",
			checkTokens: func(t *testing.T, e *idpEnv, r *FlowResult) {
				// Keycloak bound the code to the forwarded dpop_jkt and the
				// access token to the key of the token request's proof.
				if r.Tokens.TokenType == nil || !strings.EqualFold(*r.Tokens.TokenType, "DPoP") {
					t.Errorf("token_type = %v, want DPoP", r.Tokens.TokenType)
				}
				if jkt, _ := r.Tokens.AccessTokenCnf["jkt"].(string); jkt != r.DPoP.JKT {
					t.Errorf("access token cnf.jkt = %v, want the DPoP key's thumbprint %s", r.Tokens.AccessTokenCnf, r.DPoP.JKT)
				}
			},
		})
	})

	// Issue 10: the token endpoint behind the gateway, gateway PKCE and
	// iss checks (Keycloak adds iss itself: verified, never doubled).
	t.Run("fapi2_lift", func(t *testing.T) {
		e.runFAPI2Lift(t, gwBin, fapiSetup{
			secret:   kcBoot.fapiSecret,
			redirect: fmt.Sprintf("http://127.0.0.1:%d/callback", fapiPort),
			gw: harness.GatewayConfig{
				Upstream:              upstream,
				AuthorizationEndpoint: kcAuthzPath,
				PAREndpoint:           kcPARPath,
				ForwardMethod:         "post",
			},
			upstreamBindsDPoP: true,
			checkTokens: func(t *testing.T, e *idpEnv, r *FlowResult) {
				if jkt, _ := r.Tokens.AccessTokenCnf["jkt"].(string); jkt != r.DPoP.JKT {
					t.Errorf("access token cnf.jkt = %v, want the DPoP key's thumbprint %s", r.Tokens.AccessTokenCnf, r.DPoP.JKT)
				}
			},
		}, kcRealmPath+"/protocol/openid-connect/token")
	})

	// Last: replaces the gateway with two sharing a Redis store.
	t.Run("redis_push_at_A_redeem_at_B", func(t *testing.T) { kcRedisTwoGateways(t, e, gwBin, gwCfg) })
}

// hugeClaimsSize is the claims JSON size whose pushed request, URL-encoded,
// exceeds Keycloak's 32 KiB request line and stays below the gateway's
// default 64 KiB max_request_size.
const hugeClaimsSize = 30 << 10

func encodedLen(pushed map[string]any) int {
	v := url.Values{}
	for k, x := range pushed {
		if s, ok := x.(string); ok {
			v.Set(k, s)
		}
	}
	return len(v.Encode())
}

// kcClaimsReached proves that Keycloak received the whole pushed claims
// value: Keycloak ignores an OIDC parameter longer than 4000 characters
// (its req-params-max-size default) and logs the size it received.
func kcClaimsReached(t *testing.T, e *idpEnv, r *FlowResult) {
	t.Helper()
	want := fmt.Sprintf("The size of OIDC parameter 'claims' size is longer (%d)", len(r.pushed("claims")))
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, err := os.ReadFile(e.upstream.LogPath)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(b), want) {
			t.Logf("Keycloak received the whole claims value (%d chars) and logged it as over its 4000-character parameter limit", len(r.pushed("claims")))
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("Keycloak's log has no %q: did the whole claims value reach Keycloak?", want)
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}
