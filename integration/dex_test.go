package integration

import (
	"fmt"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddy-par/caddy-par/integration/internal/harness"
)

// TestDex runs the suite against the embedded Dex server (integration/dex)
// behind the gateway. Dex has no URL length limit, so the gateway keeps the
// default forward_method (GET); Dex's same-origin bounce
// /dex/auth?q → /dex/auth/local?q is followed by the gateway server-side.
func TestDex(t *testing.T) {
	art, err := resetArtifacts("TestDex")
	if err != nil {
		t.Fatal(err)
	}
	needBrowser(t)
	gwBin := needGateway(t)
	dexBin := needDex(t)

	ports, err := harness.FreePorts(7)
	if err != nil {
		t.Fatal(err)
	}
	fapiSecret := "dexf-" + randHex(16)
	fapiRedirect := fmt.Sprintf("http://127.0.0.1:%d/callback", ports[5])
	gwPort, dexPort, cbPort, spaPort := ports[0], ports[1], ports[2], ports[3]
	origin := fmt.Sprintf("http://127.0.0.1:%d", gwPort)
	secret := "dex-" + randHex(16)
	password := "pw-" + randHex(8)
	webRedirect := fmt.Sprintf("http://127.0.0.1:%d/callback", cbPort)
	spaRedirect := fmt.Sprintf("http://127.0.0.1:%d/callback", spaPort)
	upstreamOnlySecret := "dexu-" + randHex(16)
	upstreamOnlyRedirect := fmt.Sprintf("http://127.0.0.1:%d/callback", ports[6])

	dex, err := harness.StartDex(suiteCtx, dexBin, art, harness.DexConfig{
		Port:         dexPort,
		Issuer:       origin + "/dex",
		UserPassword: password,
		Clients: []harness.DexClient{
			{ID: "web-app", Secret: secret, Name: "Web App", RedirectURIs: []string{webRedirect}},
			{ID: "spa", Name: "SPA", RedirectURIs: []string{spaRedirect}},
			// The gateway knows fapi-app by its public keys, Dex by this
			// secret only.
			{ID: fapiClientID, Secret: fapiSecret, Name: "FAPI App", RedirectURIs: []string{fapiRedirect}},
			// Only Dex knows this client: the gateway checks its secret
			// with Dex's token endpoint (upstream_client_auth).
			{ID: upstreamOnlyClientID, Secret: upstreamOnlySecret, Name: "Upstream Only App", RedirectURIs: []string{upstreamOnlyRedirect}},
		},
		LogPath: filepath.Join(art, "dex.log"),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dex.Stop(5 * time.Second) })

	gw, err := harness.StartGateway(suiteCtx, gwBin, art, harness.GatewayConfig{
		Port:                  gwPort,
		Upstream:              fmt.Sprintf("127.0.0.1:%d", dexPort),
		LogPath:               filepath.Join(art, "gateway.log"),
		AuthorizationEndpoint: "/dex/auth",
		PAREndpoint:           "/dex/par",
		RequirePAR:            true,
		Clients: []harness.GatewayClient{
			{ID: "web-app", SecretEnv: "WEB_APP_SECRET", RedirectURIs: []string{webRedirect}},
			{ID: "spa", RedirectURIs: []string{spaRedirect}},
		},
	}, []string{"WEB_APP_SECRET=" + secret})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { gw.Stop(5 * time.Second) })
	t.Logf("Dex on 127.0.0.1:%d, gateway on %s; artifacts in %s", dexPort, origin, art)

	e := &idpEnv{
		name:          "Dex",
		art:           art,
		gw:            gw,
		upstream:      dex,
		upstreamURL:   fmt.Sprintf("http://127.0.0.1:%d", dexPort),
		issuer:        origin + "/dex",
		secret:        secret,
		webRedirect:   webRedirect,
		spaRedirect:   spaRedirect,
		email:         "alice@example.com",
		discoveryPath: "/dex/.well-known/openid-configuration",
		login: FlowLogin{
			Username:         "alice@example.com",
			Password:         password,
			UsernameSelector: "input[name=login]",
			PasswordSelector: "input[name=password]",
			SubmitSelector:   "button[type=submit]",
		},
		// Dex's token response has no scope member: the pushed scope shows
		// in what Dex issued: email (email scope), name (profile) and a
		// refresh token (offline_access).
		confScope: "openid email profile offline_access",
		scopeReached: func(t *testing.T, r *FlowResult) {
			if r.Tokens.IDTokenClaims["name"] != "alice" {
				t.Errorf("id_token name = %v: the pushed profile scope did not reach Dex", r.Tokens.IDTokenClaims["name"])
			}
			if !r.Tokens.RefreshTokenPresent {
				t.Errorf("no refresh token: the pushed offline_access scope did not reach Dex")
			}
		},
	}
	e.runCommonFlows(t)

	// Dex is the upstream that bounces the whole query to
	// /dex/auth/local; check that the browser never saw that hop.
	t.Run("dex_bounce_followed_server_side", func(t *testing.T) {
		dir := e.subtestDir(t)
		cfg := e.flow("web-app")
		cfg.Scope = "openid email"
		r := runFlow(t, dir, cfg)
		e.remember(r)
		requireTokens(t, r)
		e.checkPARFlow(t, r, "web-app")
		for _, u := range r.BrowserURLs {
			if strings.HasPrefix(u, origin+"/dex/auth/local?") {
				t.Errorf("the browser saw Dex's bounce: %s", clip(u, 200))
			}
		}
	})

	// forward_method post works with Dex too: Dex answers the POST with the
	// same bounce (/dex/auth/local?<query>), which the gateway follows with
	// a GET, server-side. Checked with plain HTTP through a second gateway.
	t.Run("forward_method_post_bounce_followed", func(t *testing.T) {
		dir := e.subtestDir(t)
		postCfg := gw.Config
		postCfg.Port = ports[4]
		postCfg.ForwardMethod = "post"
		postCfg.LogPath = filepath.Join(dir, "gateway.log")
		gwPost, err := harness.StartGateway(suiteCtx, gwBin, dir, postCfg, []string{"WEB_APP_SECRET=" + secret})
		if err != nil {
			t.Fatal(err)
		}
		defer gwPost.Stop(5 * time.Second)
		params := url.Values{
			"response_type": {"code"}, "redirect_uri": {webRedirect}, "scope": {"openid email"},
			"state": {randHex(8)}, "nonce": {randHex(16)},
			"code_challenge": {pkceChallenge()}, "code_challenge_method": {"S256"},
		}
		status, body := push(t, gwPost.Config.Origin()+"/dex/par", "web-app", secret, params)
		ru, _ := body["request_uri"].(string)
		if status != 201 || ru == "" {
			t.Fatalf("push: %d %v", status, body)
		}
		code, h, page := browserGet(t, gwPost.Config.Origin()+"/dex/auth?"+url.Values{"client_id": {"web-app"}, "request_uri": {ru}}.Encode())
		if loc := h.Get("Location"); code != 302 || !strings.HasPrefix(loc, "/dex/auth/local/login?") {
			t.Errorf("redemption with forward_method post: %d Location=%q %q, want Dex's login redirect", code, loc, clip(page, 200))
		}
	})

	t.Run("gateway_log", e.checkGatewayLog)

	// A client only Dex knows, through a gateway with upstream_client_auth
	// on the same port; the plain gateway is back afterwards.
	t.Run("upstream_client_auth", func(t *testing.T) {
		e.runDelegated(t, gwBin, delegatedSetup{
			tokenEndpoint: e.upstreamURL + "/dex/token",
			secret:        upstreamOnlySecret,
			redirect:      upstreamOnlyRedirect,
			publicID:      "spa",
			// Dex's error page, 400.
			unregisteredRedirectText: "Unregistered redirect_uri",
			probes:                   probeTable(upstreamOnlySecret, "spa", 401, "invalid_client", 401, "invalid_client"),
		})
	})

	// Last: the gateway is replaced by one with profile fapi2 on the same
	// port (Dex's issuer).
	t.Run("fapi2", func(t *testing.T) {
		e.runFAPI2(t, gwBin, fapiSetup{
			secret:   fapiSecret,
			redirect: fapiRedirect,
			gw: harness.GatewayConfig{
				Upstream:              fmt.Sprintf("127.0.0.1:%d", dexPort),
				AuthorizationEndpoint: "/dex/auth",
				PAREndpoint:           "/dex/par",
			},
			upstreamBindsDPoP: false,
			encAlg:            "ECDH-ES",
			encEnc:            "A128GCM",
		})
	})

	// Issue 10: the token endpoint behind the gateway, gateway PKCE and
	// iss, which Dex does not add: the gateway does.
	t.Run("fapi2_lift", func(t *testing.T) {
		e.runFAPI2Lift(t, gwBin, fapiSetup{
			secret:   fapiSecret,
			redirect: fapiRedirect,
			gw: harness.GatewayConfig{
				Upstream:              fmt.Sprintf("127.0.0.1:%d", dexPort),
				AuthorizationEndpoint: "/dex/auth",
				PAREndpoint:           "/dex/par",
			},
			upstreamPKCEOff: true,
		}, "/dex/token")
	})
}
