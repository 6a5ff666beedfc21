package integration

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddy-par/caddy-par/integration/internal/harness"
)

// upstreamOnlyClientID is a confidential client that only the upstream
// knows (Keycloak's realm import, a Dex static client): the gateway checks
// its secret with the upstream's token endpoint (upstream_client_auth).
const upstreamOnlyClientID = "upstream-only-app"

// delegatedSetup is what differs between the IdPs for the
// upstream_client_auth flows.
type delegatedSetup struct {
	// tokenEndpoint is the upstream's token endpoint, reached directly
	// (not through the gateway), as the Caddyfile names it.
	tokenEndpoint string
	secret        string // upstream-only-app's secret at the upstream
	redirect      string // its redirect URI, registered at the upstream only
	// publicID is a client the upstream treats as public (spa), probed
	// with a made-up secret.
	publicID string
	// unregisteredRedirectText is on the upstream's error page for an
	// unregistered redirect_uri.
	unregisteredRedirectText string
	// noCodeFlowID, if set, is a client with this secret whose code flow
	// is disabled at the upstream, which still confirms the check.
	noCodeFlowID string
	// probes are the expected answers of the upstream's token endpoint to
	// the gateway's probe, recorded by probe_answers (README table).
	probes []probeCase
}

// probeCase is one token request the gateway's probe would send:
// grant_type=authorization_code with a random code.
type probeCase struct {
	name     string
	clientID string
	secret   string
	post     bool // client_secret_post; else client_secret_basic
	// wantStatus and wantError are the upstream's answer; verdict is what
	// the gateway makes of it.
	wantStatus int
	wantError  string
	verdict    string
}

// verdictOf is the gateway's classification (caddymodule classifyProbe):
// 400 invalid_grant confirms, any 401 or 400 invalid_client refuses,
// anything else cannot tell (refused too).
func verdictOf(status int, code string) string {
	switch {
	case status == 400 && code == "invalid_grant":
		return "confirmed"
	case status == 401, status == 400 && code == "invalid_client":
		return "refused"
	case status >= 500 || status == 429:
		return "unavailable"
	}
	return "undetermined"
}

// runDelegated replaces the plain gateway by one with upstream_client_auth
// on the same port (the upstream's issuer), with the same configured
// clients, and runs the flows of a client known only to the upstream. The
// plain gateway is started again afterwards.
func (e *idpEnv) runDelegated(t *testing.T, gwBin string, s delegatedSetup) {
	dir := e.subtestDir(t)
	plain := e.gw
	cfg := plain.Config
	cfg.LogPath = filepath.Join(dir, "gateway.log")
	cfg.Extra = append(append([]string{}, cfg.Extra...), "upstream_client_auth "+s.tokenEndpoint)
	env := []string{"WEB_APP_SECRET=" + e.secret}
	plain.Stop(5 * time.Second)
	gw, err := harness.StartGateway(suiteCtx, gwBin, dir, cfg, env)
	if err != nil {
		t.Fatalf("starting the upstream_client_auth gateway (Caddyfile in %s): %v", dir, err)
	}
	e.gw = gw
	t.Cleanup(func() {
		gw.Stop(5 * time.Second)
		restored, err := harness.StartGateway(suiteCtx, gwBin, e.art, plain.Config, env)
		if err != nil {
			t.Errorf("restarting the plain gateway: %v", err)
			e.gw = plain
			return
		}
		e.gw = restored
	})
	t.Logf("upstream_client_auth gateway on %s; Caddyfile %s", cfg.Origin(), gw.CaddyfilePath)

	flow := func(clientAuth, secret string) FlowConfig {
		return FlowConfig{
			Issuer: e.issuer, ClientID: upstreamOnlyClientID, ClientSecret: secret, ClientAuth: clientAuth,
			RedirectURI: s.redirect, Scope: "openid email profile", UsePAR: true, Login: e.login,
		}
	}
	var distinctive []string
	remember := func(r *FlowResult) {
		for _, k := range []string{"nonce", "code_challenge"} {
			if v := r.pushed(k); len(v) >= 16 {
				distinctive = append(distinctive, v)
			}
		}
		if r.RequestURI != nil {
			distinctive = append(distinctive, strings.TrimPrefix(*r.RequestURI, "urn:ietf:params:oauth:request_uri:"))
		}
	}

	// What the upstream answers to the probe, sent straight to its token
	// endpoint as the gateway sends it.
	t.Run("probe_answers", func(t *testing.T) {
		dir := e.subtestDir(t)
		var rows []map[string]any
		for _, pc := range s.probes {
			status, code, desc := probeUpstream(t, s.tokenEndpoint, pc)
			v := verdictOf(status, code)
			rows = append(rows, map[string]any{"case": pc.name, "client_id": pc.clientID, "method": map[bool]string{true: "client_secret_post", false: "client_secret_basic"}[pc.post], "status": status, "error": code, "error_description": desc, "verdict": v})
			t.Logf("%-44s %d %-20s %-48q -> %s", pc.name, status, code, desc, v)
			if status != pc.wantStatus || code != pc.wantError {
				t.Errorf("%s: the upstream answered %d %s (%q), want %d %s", pc.name, status, code, desc, pc.wantStatus, pc.wantError)
			}
			if v != pc.verdict {
				t.Errorf("%s: the gateway's verdict would be %s, want %s", pc.name, v, pc.verdict)
			}
		}
		b, _ := json.MarshalIndent(rows, "", "  ")
		_ = os.WriteFile(filepath.Join(dir, "probe-answers.json"), b, 0o644)
	})

	// A client only the upstream knows pushes with client_secret_basic and
	// completes the browser login; the token request goes to the upstream
	// with the same secret.
	t.Run("upstream_only_client_basic_login", func(t *testing.T) {
		dir := e.subtestDir(t)
		r := runFlow(t, dir, flow("client_secret_basic", s.secret))
		remember(r)
		requireTokens(t, r)
		e.checkPARFlow(t, r, upstreamOnlyClientID)
		if r.ParRequest.AuthScheme == nil || *r.ParRequest.AuthScheme != "Basic" {
			t.Errorf("PAR request auth scheme = %v, want Basic", r.ParRequest.AuthScheme)
		}
		waitProbeLine(t, gw.Config.LogPath, "upstream client authentication: confirmed", upstreamOnlyClientID, "client_secret_basic")
	})

	// The same with client_secret_post: the probe uses post too.
	t.Run("upstream_only_client_post_login", func(t *testing.T) {
		dir := e.subtestDir(t)
		r := runFlow(t, dir, flow("client_secret_post", s.secret))
		remember(r)
		requireTokens(t, r)
		e.checkPARFlow(t, r, upstreamOnlyClientID)
		if r.ParRequest.AuthScheme != nil || r.pushed("client_secret") == "" {
			t.Errorf("PAR request: auth scheme %v, client_secret in the body %v; want client_secret_post", r.ParRequest.AuthScheme, r.pushed("client_secret") != "")
		}
		waitProbeLine(t, gw.Config.LogPath, "upstream client authentication: confirmed", upstreamOnlyClientID, "client_secret_post")
	})

	// The confirmed credentials are cached: another push, no probe.
	t.Run("second_push_answered_from_cache", func(t *testing.T) {
		_ = e.subtestDir(t)
		before := countProbeLines(t, gw.Config.LogPath, "upstream client authentication: confirmed", upstreamOnlyClientID)
		status, body := push(t, e.parURL(), upstreamOnlyClientID, s.secret, delegatedParams(s.redirect))
		if status != 201 {
			t.Fatalf("push: %d %v", status, body)
		}
		waitProbeLine(t, gw.Config.LogPath, "upstream client authentication: cached", upstreamOnlyClientID, "client_secret_basic")
		if after := countProbeLines(t, gw.Config.LogPath, "upstream client authentication: confirmed", upstreamOnlyClientID); after != before {
			t.Errorf("confirmed probes %d -> %d: the second push was probed", before, after)
		}
	})

	// A wrong secret: openid-client gets 401 invalid_client at the PAR
	// endpoint and no browser is opened.
	t.Run("wrong_secret_invalid_client", func(t *testing.T) {
		dir := e.subtestDir(t)
		r := runFlow(t, dir, flow("client_secret_basic", s.secret+"-wrong"))
		if r.Outcome != "error" || r.Stage != "par" || r.ParResponse == nil {
			t.Fatalf("outcome=%s stage=%s error=%v parResponse=%+v, want a refused push", r.Outcome, r.Stage, r.Error, r.ParResponse)
		}
		if code, _ := r.ParResponse.Body["error"].(string); r.ParResponse.Status != 401 || code != "invalid_client" {
			t.Errorf("push answered %d %v, want 401 invalid_client", r.ParResponse.Status, r.ParResponse.Body)
		}
		if len(r.BrowserURLs) != 0 {
			t.Errorf("a browser was opened after a refused push")
		}
		// With plain HTTP: WWW-Authenticate on the Basic 401.
		params := delegatedParams(s.redirect)
		params.Set("client_id", upstreamOnlyClientID)
		req, _ := http.NewRequest(http.MethodPost, e.parURL(), strings.NewReader(params.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.SetBasicAuth(upstreamOnlyClientID, "also-wrong")
		resp, err := harness.HTTPClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 401 || resp.Header.Get("WWW-Authenticate") == "" {
			t.Errorf("Basic with a wrong secret: %s, WWW-Authenticate %q", resp.Status, resp.Header.Get("WWW-Authenticate"))
		}
		waitProbeLine(t, gw.Config.LogPath, "upstream client authentication: refused", upstreamOnlyClientID, "client_secret_basic")
	})

	// Configured clients take precedence: web-app is refused with a wrong
	// secret without a probe, and its own secret works as before.
	t.Run("configured_client_not_probed", func(t *testing.T) {
		_ = e.subtestDir(t)
		if status, body := push(t, e.parURL(), "web-app", e.secret+"-wrong", delegatedParams(e.webRedirect)); status != 401 {
			t.Errorf("web-app with a wrong secret: %d %v, want 401", status, body)
		}
		if status, body := push(t, e.parURL(), "web-app", e.secret, delegatedParams(e.webRedirect)); status != 201 {
			t.Errorf("web-app with its secret: %d %v, want 201", status, body)
		}
		time.Sleep(200 * time.Millisecond)
		if n := countProbeLines(t, gw.Config.LogPath, "upstream client authentication", "web-app"); n != 0 {
			t.Errorf("%d probe lines for the configured client web-app", n)
		}
	})

	// A client unknown everywhere, and one without a secret (allow_public
	// is off): 401, no probe for the latter.
	t.Run("unknown_clients_refused", func(t *testing.T) {
		_ = e.subtestDir(t)
		if status, body := push(t, e.parURL(), "no-such-client", "x", delegatedParams(s.redirect)); status != 401 || body["error"] != "invalid_client" {
			t.Errorf("a client unknown everywhere: %d %v, want 401 invalid_client", status, body)
		}
		if status, body := push(t, e.parURL(), "no-secret-client", "", delegatedParams(s.redirect)); status != 401 || body["error"] != "invalid_client" {
			t.Errorf("an unknown client without a secret: %d %v, want 401 invalid_client", status, body)
		}
		time.Sleep(200 * time.Millisecond)
		if n := countProbeLines(t, gw.Config.LogPath, "upstream client authentication", "no-secret-client"); n != 0 {
			t.Errorf("%d probe lines for a push without a secret", n)
		}
	})

	// A client the upstream treats as public, pushed with a made-up
	// secret: Keycloak confirms any secret of a public client, so the
	// gateway accepts the push, but only with PKCE S256 (required for
	// every client it knows only through the upstream); Dex refuses it.
	t.Run("upstream_public_client_made_up_secret", func(t *testing.T) {
		_ = e.subtestDir(t)
		confirmed := false
		for _, pc := range s.probes {
			if pc.clientID == s.publicID {
				confirmed = pc.verdict == "confirmed"
			}
		}
		params := delegatedParams(s.redirect)
		status, body := push(t, e.parURL(), s.publicID, "made-up-"+randHex(4), params)
		switch {
		case confirmed && status != 201:
			t.Errorf("%s with a made-up secret: %d %v, want 201 (the upstream confirms any secret of it)", s.publicID, status, body)
		case !confirmed && status != 401:
			t.Errorf("%s with a made-up secret: %d %v, want 401", s.publicID, status, body)
		}
		if confirmed {
			noPKCE := delegatedParams(s.redirect)
			noPKCE.Del("code_challenge")
			noPKCE.Del("code_challenge_method")
			if status, body := push(t, e.parURL(), s.publicID, "made-up-"+randHex(4), noPKCE); status != 400 || body["error"] != "invalid_request" {
				t.Errorf("%s without PKCE: %d %v, want 400 invalid_request", s.publicID, status, body)
			}
		}
		t.Logf("%s pushed with a made-up secret: %d %v", s.publicID, status, body)
	})

	// The gateway cannot check the redirect_uri of a client it does not
	// know: it accepts the push, and the upstream refuses the forwarded
	// request at authorization, with its own error page, never a redirect
	// to the unregistered URI (RFC 6749 §4.1.2.1).
	t.Run("unregistered_redirect_uri_refused_by_upstream", func(t *testing.T) {
		_ = e.subtestDir(t)
		evil := strings.Replace(s.redirect, "/callback", "/not-registered", 1)
		status, body := push(t, e.parURL(), upstreamOnlyClientID, s.secret, delegatedParams(evil))
		ru, _ := body["request_uri"].(string)
		if status != 201 || ru == "" {
			t.Fatalf("push with an unregistered redirect_uri: %d %v, want 201 (not checked at push time)", status, body)
		}
		code, h, page := browserGet(t, e.authzURL()+"?"+url.Values{"client_id": {upstreamOnlyClientID}, "request_uri": {ru}}.Encode())
		loc := h.Get("Location")
		if strings.HasPrefix(loc, evil) || code < 400 {
			t.Errorf("redemption: %d Location=%q, want the upstream's error page and no redirect to %s", code, loc, evil)
		}
		if !strings.Contains(page, s.unregisteredRedirectText) {
			t.Errorf("redemption: %d, the page does not say %q: %q", code, s.unregisteredRedirectText, clip(page, 300))
		}
		t.Logf("the upstream answered the unregistered redirect_uri with %d and a page saying %q", code, s.unregisteredRedirectText)
	})

	// A client whose code flow is disabled at the upstream passes the check
	// (Keycloak looks at the code before the client's flows); the upstream
	// refuses the forwarded authorization request: no code is issued.
	if s.noCodeFlowID != "" {
		t.Run("code_flow_disabled_client_refused_by_upstream", func(t *testing.T) {
			_ = e.subtestDir(t)
			status, body := push(t, e.parURL(), s.noCodeFlowID, s.secret, delegatedParams(s.redirect))
			ru, _ := body["request_uri"].(string)
			if status != 201 || ru == "" {
				t.Fatalf("push of %s: %d %v, want 201 (the check confirms its secret)", s.noCodeFlowID, status, body)
			}
			code, h, page := browserGet(t, e.authzURL()+"?"+url.Values{"client_id": {s.noCodeFlowID}, "request_uri": {ru}}.Encode())
			loc := h.Get("Location")
			if lu, err := url.Parse(loc); err == nil && lu.Query().Get("code") != "" {
				t.Fatalf("the upstream issued a code to %s: %s", s.noCodeFlowID, loc)
			}
			refused := code >= 400 || strings.HasPrefix(loc, s.redirect+"?") && strings.Contains(loc, "error=")
			if !refused {
				t.Errorf("redemption: %d Location=%q %q, want the upstream to refuse the authorization request", code, loc, clip(page, 300))
			}
			t.Logf("the upstream answered %s's authorization request with %d Location=%q", s.noCodeFlowID, code, clip(loc, 200))
		})
	}

	// Under require_par, an unpushed request of the upstream-only client
	// gets the gateway's page: its redirect URIs are not known here, so
	// the error is never redirected.
	t.Run("unpushed_request_not_redirected", func(t *testing.T) {
		dir := e.subtestDir(t)
		cfg := flow("client_secret_basic", s.secret)
		cfg.UsePAR = false
		r := runFlow(t, dir, cfg)
		if r.Outcome != "error_page" || r.FinalPage.Status == nil || *r.FinalPage.Status != 400 {
			t.Fatalf("outcome=%s finalPage=%s status=%v %q, want the gateway's 400 page", r.Outcome, r.FinalPage.URL, r.FinalPage.Status, clip(r.FinalPage.Text, 300))
		}
		if !strings.Contains(r.FinalPage.Text, "invalid_request") || !strings.Contains(r.FinalPage.Text, "registered only at the authorization server") {
			t.Errorf("final page: %q", clip(r.FinalPage.Text, 400))
		}
		if r.Callback.Received || r.LoginPageSeen || r.CallbackHits != 0 {
			t.Errorf("callback=%v loginPageSeen=%v callbackHits=%d, want none", r.Callback.Received, r.LoginPageSeen, r.CallbackHits)
		}
	})

	// The log: probe lines with the upstream's status and error, never a
	// secret or the probe's code; no pushed value in the gateway's lines.
	t.Run("gateway_log", func(t *testing.T) {
		data, err := os.ReadFile(gw.Config.LogPath)
		if err != nil {
			t.Fatal(err)
		}
		for _, sec := range []string{s.secret, url.QueryEscape(s.secret), e.secret, "caddy-par-probe-"} {
			if bytes.Contains(data, []byte(sec)) {
				t.Errorf("the gateway's log holds %q", sec)
			}
		}
		for _, l := range readLogLines(t, data) {
			if v, ok := l.leaked(distinctive); ok && (l.own() || l.Level != "debug") {
				t.Errorf("pushed value %s… in a %s line of %s: %s", v[:8], l.Level, l.Logger, clip(string(l.raw), 300))
			}
		}
	})
}

func delegatedParams(redirect string) url.Values {
	return url.Values{
		"response_type": {"code"}, "redirect_uri": {redirect}, "scope": {"openid"},
		"state": {randHex(8)}, "nonce": {randHex(16)},
		"code_challenge": {pkceChallenge()}, "code_challenge_method": {"S256"},
	}
}

// probeUpstream sends the gateway's probe by hand and returns the
// upstream's status, error and error_description.
func probeUpstream(t *testing.T, tokenEndpoint string, pc probeCase) (int, string, string) {
	t.Helper()
	form := url.Values{"grant_type": {"authorization_code"}, "code": {"caddy-par-probe-" + randHex(16)}}
	if pc.post {
		form.Set("client_id", pc.clientID)
		form.Set("client_secret", pc.secret)
	}
	req, _ := http.NewRequest(http.MethodPost, tokenEndpoint, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	if !pc.post {
		req.SetBasicAuth(url.QueryEscape(pc.clientID), url.QueryEscape(pc.secret))
	}
	resp, err := harness.HTTPClient.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", tokenEndpoint, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 16<<10))
	var e struct {
		Error string `json:"error"`
		Desc  string `json:"error_description"`
	}
	_ = json.Unmarshal(b, &e)
	return resp.StatusCode, e.Error, e.Desc
}

// countProbeLines counts the gateway's log lines with msg (a prefix) for
// clientID.
func countProbeLines(t *testing.T, logPath, msg, clientID string) int {
	t.Helper()
	data, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, l := range readLogLines(t, data) {
		var f struct {
			ClientID string `json:"client_id"`
		}
		_ = json.Unmarshal(l.raw, &f)
		if l.own() && strings.HasPrefix(l.Msg, msg) && f.ClientID == clientID {
			n++
		}
	}
	return n
}

// waitProbeLine waits (briefly) for a probe line of clientID and method.
func waitProbeLine(t *testing.T, logPath, msg, clientID, method string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		data, err := os.ReadFile(logPath)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range readLogLines(t, data) {
			var f struct {
				ClientID string `json:"client_id"`
				Method   string `json:"method"`
			}
			_ = json.Unmarshal(l.raw, &f)
			if l.own() && l.Msg == msg && f.ClientID == clientID && f.Method == method {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Errorf("no %q line for %s (%s) in %s", msg, clientID, method, logPath)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// probeTable lists the probe cases common to both IdPs; extra cases are
// added per IdP.
func probeTable(secret, publicID string, wrongStatus int, wrongError string, publicStatus int, publicError string) []probeCase {
	var out []probeCase
	for _, post := range []bool{false, true} {
		m := map[bool]string{false: "basic", true: "post"}[post]
		out = append(out,
			probeCase{name: "right_secret_" + m, clientID: upstreamOnlyClientID, secret: secret, post: post, wantStatus: 400, wantError: "invalid_grant", verdict: "confirmed"},
			probeCase{name: "wrong_secret_" + m, clientID: upstreamOnlyClientID, secret: secret + "-wrong", post: post, wantStatus: wrongStatus, wantError: wrongError, verdict: "refused"},
			probeCase{name: "unknown_client_" + m, clientID: "no-such-client", secret: "x", post: post, wantStatus: 401, wantError: "invalid_client", verdict: "refused"},
			probeCase{name: "public_client_made_up_secret_" + m, clientID: publicID, secret: "made-up-" + randHex(4), post: post, wantStatus: publicStatus, wantError: publicError, verdict: verdictOf(publicStatus, publicError)},
		)
	}
	return out
}
