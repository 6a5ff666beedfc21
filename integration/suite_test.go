package integration

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/caddy-par/caddy-par/integration/internal/harness"
)

// idpEnv is one upstream IdP with the gateway in front of it, shared by
// the sequential subtests of TestDex or TestKeycloak.
type idpEnv struct {
	name        string // Dex, Keycloak
	art         string // artifacts dir of the top-level test
	gw          *harness.Gateway
	upstream    *harness.Proc
	upstreamURL string // the IdP's own origin, bypassing the gateway
	issuer      string // as seen through the gateway
	secret      string // web-app's secret
	webRedirect string // web-app's only redirect URI
	spaRedirect string // spa's only redirect URI
	login       FlowLogin
	email       string
	// confScope is pushed by the confidential flow; scopeReached proves from
	// the tokens that it reached the IdP.
	confScope    string
	scopeReached func(t *testing.T, r *FlowResult)
	// largeReached, if set, proves that a large flow's claims value reached
	// the IdP whole.
	largeReached func(t *testing.T, e *idpEnv, r *FlowResult)
	// discoveryPath is the OpenID discovery path under the gateway origin.
	discoveryPath string

	// distinctive collects pushed values (nonces, code challenges,
	// request_uri references, claims markers) for the log check.
	distinctive []string
}

func (e *idpEnv) origin() string { return e.gw.Config.Origin() }
func (e *idpEnv) authzURL() string {
	return e.origin() + e.gw.Config.AuthorizationEndpoint
}
func (e *idpEnv) parURL() string { return e.origin() + e.gw.Config.PAREndpoint }

// subtestDir is the artifacts dir of the running subtest; on failure its
// path, the flow's log and the tails of the gateway and IdP logs are
// printed.
func (e *idpEnv) subtestDir(t *testing.T) string {
	t.Helper()
	if suiteCtx.Err() != nil {
		t.Fatal("the run was interrupted")
	}
	name := t.Name()
	if i := strings.IndexByte(name, '/'); i >= 0 {
		name = name[i+1:]
	}
	dir := filepath.Join(e.art, filepath.FromSlash(name))
	_ = os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		var shots []string
		if ents, err := os.ReadDir(dir); err == nil {
			for _, en := range ents {
				if strings.HasSuffix(en.Name(), ".png") {
					shots = append(shots, en.Name())
				}
			}
		}
		t.Logf("FAILED: artifacts in %s (screenshots: %s)", dir, strings.Join(shots, ", "))
		if b, err := os.ReadFile(filepath.Join(dir, "flow.stderr.log")); err == nil {
			t.Logf("flow.mjs log (tail):\n%s", tailString(string(b), 25))
		}
		t.Logf("gateway log %s (last oauth_par, warning and error lines):\n%s", e.gw.Config.LogPath, gatewayLogTail(e.gw.Config.LogPath, 12))
		t.Logf("%s log %s (tail):\n%s", e.name, e.upstream.LogPath, clipLines(harness.Tail(e.upstream.LogPath, 20), 400))
	})
	return dir
}

func (e *idpEnv) flow(clientID string) FlowConfig {
	c := FlowConfig{Issuer: e.issuer, ClientID: clientID, UsePAR: true, Login: e.login}
	switch clientID {
	case "web-app":
		c.ClientSecret = e.secret
		c.RedirectURI = e.webRedirect
	case "spa":
		c.RedirectURI = e.spaRedirect
	}
	return c
}

// remember records the distinctive pushed values of a flow.
func (e *idpEnv) remember(r *FlowResult) {
	for _, k := range []string{"nonce", "code_challenge"} {
		if v := r.pushed(k); len(v) >= 16 {
			e.distinctive = append(e.distinctive, v)
		}
	}
	if r.RequestURI != nil {
		e.distinctive = append(e.distinctive, strings.TrimPrefix(*r.RequestURI, "urn:ietf:params:oauth:request_uri:"))
	}
}

// requireTokens stops the subtest unless the flow ended with tokens.
func requireTokens(t *testing.T, r *FlowResult) {
	t.Helper()
	if !r.OK || r.Outcome != "tokens" {
		t.Fatalf("flow did not complete: ok=%v outcome=%s stage=%s error=%v loginPageSeen=%v callback=%+v finalPage=%s %q",
			r.OK, r.Outcome, r.Stage, r.Error, r.LoginPageSeen, r.Callback, r.FinalPage.URL, clip(r.FinalPage.Text, 300))
	}
}

// checkPARFlow holds for every successful pushed flow.
func (e *idpEnv) checkPARFlow(t *testing.T, r *FlowResult, clientID string) {
	t.Helper()
	if r.Discovery.PushedAuthorizationRequestEndpoint == nil || *r.Discovery.PushedAuthorizationRequestEndpoint != e.parURL() {
		t.Errorf("discovered PAR endpoint = %v, want %s", r.Discovery.PushedAuthorizationRequestEndpoint, e.parURL())
	}
	if r.ParResponse == nil || r.ParResponse.Status != 201 {
		t.Errorf("PAR response = %+v, want 201", r.ParResponse)
	}
	if r.ParRequest == nil || r.ParRequest.URL != e.parURL() {
		t.Errorf("PAR request = %+v, want it sent to %s", r.ParRequest, e.parURL())
	}
	checkOnlyRequestURIInAuthorizationURL(t, r, e.authzURL())
	if !r.LoginPageSeen || r.LoginPageURL == nil || !strings.HasPrefix(*r.LoginPageURL, e.origin()+"/") {
		t.Errorf("the IdP's login page was not shown through the gateway: seen=%v url=%v", r.LoginPageSeen, r.LoginPageURL)
	}
	if !r.NonceMatches || !r.AudMatches || !r.IssMatches {
		t.Errorf("id_token checks: nonceMatches=%v audMatches=%v issMatches=%v claims=%v", r.NonceMatches, r.AudMatches, r.IssMatches, r.Tokens.IDTokenClaims)
	}
	if got := r.Tokens.IDTokenClaims["nonce"]; got != r.pushed("nonce") || got == "" {
		t.Errorf("id_token nonce %v != pushed nonce %q: the IdP did not get the pushed nonce", got, r.pushed("nonce"))
	}
	if got := r.Tokens.IDTokenClaims["aud"]; !audContains(got, clientID) {
		t.Errorf("id_token aud = %v, want %s", got, clientID)
	}
	if !r.Tokens.IDTokenSignatureVerified {
		t.Errorf("id_token signature not verified with the JWKS fetched through the gateway")
	}
	if r.pushed("code_challenge_method") != "S256" || r.pushed("code_challenge") == "" {
		t.Errorf("PKCE S256 was not pushed: %v", r.PushedParams)
	}
	if r.Callback.Iss != nil && *r.Callback.Iss != e.issuer {
		t.Errorf("callback iss = %q, want %s", *r.Callback.Iss, e.issuer)
	}
	if iss := r.Discovery.AuthorizationResponseIssParameterSupported; iss != nil && *iss && r.Callback.Iss == nil {
		t.Errorf("discovery promises iss on authorization responses, the callback has none")
	}
	checkNothingPushedInBrowserURLs(t, r)
	if _, problems := keycloakClientData(r.BrowserURLs); len(problems) > 0 {
		t.Errorf("Keycloak's client_data: %v", problems)
	}
}

func audContains(aud any, id string) bool {
	switch a := aud.(type) {
	case string:
		return a == id
	case []any:
		for _, x := range a {
			if x == id {
				return true
			}
		}
	}
	return false
}

// runCommonFlows are the flows that must pass against every upstream.
func (e *idpEnv) runCommonFlows(t *testing.T) {
	t.Run("discovery", e.testDiscovery)

	// 1 + 6: confidential client, client_secret_basic at the PAR endpoint,
	// PKCE S256 and nonce; the token endpoint and JWKS pass through
	// untouched, refresh included.
	t.Run("confidential_basic_pkce_nonce_refresh", func(t *testing.T) {
		dir := e.subtestDir(t)
		cfg := e.flow("web-app")
		cfg.Scope = e.confScope
		cfg.Refresh = true
		r := runFlow(t, dir, cfg)
		e.remember(r)
		requireTokens(t, r)
		e.checkPARFlow(t, r, "web-app")
		if r.ParRequest.AuthScheme == nil || *r.ParRequest.AuthScheme != "Basic" {
			t.Errorf("PAR request auth scheme = %v, want Basic", r.ParRequest.AuthScheme)
		}
		if r.pushed("scope") != e.confScope {
			t.Errorf("pushed scope = %q, want %q", r.pushed("scope"), e.confScope)
		}
		if got := r.Tokens.IDTokenClaims["email"]; got != e.email {
			t.Errorf("id_token email = %v, want %s (the email scope was pushed)", got, e.email)
		}
		e.scopeReached(t, r)
		if !r.Refresh.Attempted || !r.Refresh.OK || !r.Refresh.NewAccessTokenDiffers {
			t.Errorf("refresh through the gateway: %+v", r.Refresh)
		}
		// Token endpoint and JWKS: reached through the gateway origin.
		var token, refresh, jwks bool
		for _, x := range r.HTTPExchanges {
			switch {
			case x.URL == r.Discovery.TokenEndpoint && x.GrantType == "authorization_code" && x.Status == 200:
				token = true
			case x.URL == r.Discovery.TokenEndpoint && x.GrantType == "refresh_token" && x.Status == 200:
				refresh = true
			case x.URL == r.Discovery.JwksURI && x.Status == 200:
				jwks = true
			}
		}
		if !token || !refresh || !jwks || !strings.HasPrefix(r.Discovery.TokenEndpoint, e.origin()+"/") || !strings.HasPrefix(r.Discovery.JwksURI, e.origin()+"/") {
			t.Errorf("token (%v), refresh (%v) and JWKS (%v) requests through the gateway (%s, %s)", token, refresh, jwks, r.Discovery.TokenEndpoint, r.Discovery.JwksURI)
		}
	})

	// 2: public client with PKCE, no secret.
	t.Run("public_pkce", func(t *testing.T) {
		dir := e.subtestDir(t)
		cfg := e.flow("spa")
		cfg.Scope = "openid email profile"
		r := runFlow(t, dir, cfg)
		e.remember(r)
		requireTokens(t, r)
		e.checkPARFlow(t, r, "spa")
		if r.ParRequest.AuthScheme != nil {
			t.Errorf("public client sent an Authorization header (%v)", *r.ParRequest.AuthScheme)
		}
		if r.pushed("client_id") != "spa" || r.PushedParams["client_secret"] != nil {
			t.Errorf("pushed params of the public client: %v", r.PushedParams)
		}
	})

	// 3a: require_par: a plain authorization URL never reaches the IdP; the
	// error goes back to the registered redirect_uri.
	t.Run("plain_request_rejected", func(t *testing.T) {
		dir := e.subtestDir(t)
		cfg := e.flow("web-app")
		cfg.UsePAR = false
		cfg.Scope = "openid email profile"
		r := runFlow(t, dir, cfg)
		if r.Outcome != "callback_error" || r.Callback.Error == nil || *r.Callback.Error != "invalid_request" {
			t.Fatalf("outcome=%s callback=%+v finalPage=%s %q, want callback_error with error=invalid_request", r.Outcome, r.Callback, r.FinalPage.URL, clip(r.FinalPage.Text, 300))
		}
		if r.LoginPageSeen || r.Tokens.Present {
			t.Errorf("a plain request reached the IdP: loginPageSeen=%v tokens=%v", r.LoginPageSeen, r.Tokens.Present)
		}
		if r.Callback.Params["state"] != r.State {
			t.Errorf("callback state = %q, want %q", r.Callback.Params["state"], r.State)
		}
		if d := r.Callback.ErrorDescription; d == nil || !strings.Contains(*d, "pushed") {
			t.Errorf("error_description = %v, want it to say PAR is required", d)
		}
		issSupported := r.Discovery.AuthorizationResponseIssParameterSupported != nil && *r.Discovery.AuthorizationResponseIssParameterSupported
		switch {
		case issSupported && (r.Callback.Iss == nil || *r.Callback.Iss != e.issuer):
			t.Errorf("upstream advertises authorization_response_iss_parameter_supported; callback iss = %v, want %s", r.Callback.Iss, e.issuer)
		case !issSupported && r.Callback.Iss != nil:
			t.Errorf("callback has iss=%s although discovery does not advertise it", *r.Callback.Iss)
		}
		for _, u := range r.BrowserURLs {
			if !strings.HasPrefix(u, e.authzURL()+"?") && !strings.HasPrefix(u, e.webRedirect+"?") {
				t.Errorf("the browser went beyond the gateway's authorization endpoint and the callback: %s", clip(u, 200))
			}
		}
	})

	// 3b: a plain URL with an unregistered redirect_uri: the gateway's own
	// 400 page, no redirect anywhere.
	t.Run("plain_unregistered_redirect_uri", func(t *testing.T) {
		dir := e.subtestDir(t)
		cfg := e.flow("web-app")
		cfg.UsePAR = false
		cfg.Scope = "openid email profile"
		evil := strings.Replace(e.webRedirect, "/callback", "/not-registered", 1)
		cfg.ExtraParams = map[string]any{"redirect_uri": evil}
		r := runFlow(t, dir, cfg)
		if r.Outcome != "error_page" || r.FinalPage.Status == nil || *r.FinalPage.Status != 400 {
			t.Fatalf("outcome=%s finalPage=%s status=%v %q, want the gateway's 400 page", r.Outcome, r.FinalPage.URL, r.FinalPage.Status, clip(r.FinalPage.Text, 300))
		}
		if !strings.HasPrefix(r.FinalPage.URL, e.authzURL()+"?") || !strings.Contains(r.FinalPage.Text, "Authorization request rejected") || !strings.Contains(r.FinalPage.Text, "invalid_request") {
			t.Errorf("final page is not the gateway's invalid_request page: %s %q", r.FinalPage.URL, clip(r.FinalPage.Text, 300))
		}
		if r.Callback.Received || r.LoginPageSeen || r.CallbackHits != 0 {
			t.Errorf("callback=%v loginPageSeen=%v callbackHits=%d, want none", r.Callback.Received, r.LoginPageSeen, r.CallbackHits)
		}
	})

	// 4: a request_uri is single-use: a second visit after a completed
	// login shows the gateway's invalid_request_uri page. The visit comes
	// after the gateway's reuse grace: within it this browser, which holds
	// the grace cookie, would have the request forwarded again (that is
	// reuse_grace_reload_login_page; another browser never would).
	t.Run("request_uri_reuse", func(t *testing.T) {
		dir := e.subtestDir(t)
		cfg := e.flow("web-app")
		cfg.Scope = "openid email profile"
		cfg.SecondVisit = true
		cfg.SecondVisitAfterMs = int((defaultReuseGrace + time.Second).Milliseconds())
		r := runFlow(t, dir, cfg)
		e.remember(r)
		requireTokens(t, r)
		e.checkPARFlow(t, r, "web-app")
		sv := r.SecondVisit
		if !sv.Attempted || sv.CodeIssued || sv.LoginPageSeen || sv.Callback != nil || sv.Result != "settled" {
			t.Errorf("second visit: attempted=%v result=%s codeIssued=%v loginPageSeen=%v callback=%v", sv.Attempted, sv.Result, sv.CodeIssued, sv.LoginPageSeen, sv.Callback)
		}
		if sv.Status == nil || *sv.Status != 400 || !strings.Contains(sv.Text, "invalid_request_uri") || !strings.Contains(sv.Text, "Authorization request rejected") {
			t.Errorf("second visit page: status=%v %q, want the gateway's 400 invalid_request_uri page", sv.Status, clip(sv.Text, 300))
		}
		if sv.URL != r.AuthorizationURL {
			t.Errorf("second visit ended at %s, want the authorization URL", clip(sv.URL, 200))
		}
		if r.CallbackHits != 1 {
			t.Errorf("callback hits = %d, want 1", r.CallbackHits)
		}
		if sv.AfterMs < int(defaultReuseGrace.Milliseconds()) {
			t.Errorf("the second visit came %d ms after the first, within the reuse grace", sv.AfterMs)
		}
	})

	// 5: a large request (8 KB claims JSON) completes the login.
	t.Run("large_claims_8KB", func(t *testing.T) {
		e.largeFlow(t, 8<<10)
	})
}

// largeFlow pushes a claims request of about size bytes of JSON and checks
// that the login completes with a short front-channel URL.
func (e *idpEnv) largeFlow(t *testing.T, size int) *FlowResult {
	t.Helper()
	dir := e.subtestDir(t)
	claims, marker := largeClaims(size)
	cfg := e.flow("web-app")
	cfg.Scope = "openid email profile"
	cfg.ExtraParams = map[string]any{"claims": claims}
	r := runFlow(t, dir, cfg)
	e.remember(r)
	e.distinctive = append(e.distinctive, marker)
	requireTokens(t, r)
	e.checkPARFlow(t, r, "web-app")
	sent, _ := json.Marshal(claims)
	if got := r.pushed("claims"); got != string(sent) {
		t.Errorf("pushed claims differ from the ones sent (%d vs %d bytes)", len(got), len(sent))
	}
	if len(sent) < size {
		t.Errorf("claims JSON is %d bytes, want >= %d", len(sent), size)
	}
	if r.ParRequest.BodyLength < size {
		t.Errorf("PAR body %d bytes, want >= %d", r.ParRequest.BodyLength, size)
	}
	if r.AuthorizationURLLen > 300 {
		t.Errorf("authorization URL is %d chars, want it short", r.AuthorizationURLLen)
	}
	if got := r.Tokens.IDTokenClaims["email"]; got != e.email {
		t.Errorf("id_token email = %v, want %s", got, e.email)
	}
	t.Logf("claims JSON %d bytes, PAR body %d bytes, authorization URL %d chars", len(sent), r.ParRequest.BodyLength, r.AuthorizationURLLen)
	if e.largeReached != nil {
		e.largeReached(t, e, r)
	}
	return r
}

// largeClaims builds an OpenID Connect claims request of at least size
// bytes of JSON: email as an essential id_token claim, padded with
// voluntary userinfo claims that carry a random marker.
func largeClaims(size int) (map[string]any, string) {
	marker := "mk" + randHex(8)
	userinfo := map[string]any{"email": nil}
	claims := map[string]any{"id_token": map[string]any{"email": map[string]any{"essential": true}}, "userinfo": userinfo}
	for i := 0; ; i++ {
		b, _ := json.Marshal(claims)
		if len(b) >= size {
			break
		}
		userinfo[fmt.Sprintf("x_%s_%04d", marker, i)] = map[string]any{"essential": false, "values": []string{"padding-value-a", "padding-value-b"}}
	}
	return claims, marker
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// testDiscovery: discovery through the gateway advertises the gateway's
// PAR endpoint and PAR as required; every other member is the upstream's,
// unchanged.
func (e *idpEnv) testDiscovery(t *testing.T) {
	viaGW := getJSON(t, e.origin()+e.discoveryPath)
	direct := getJSON(t, e.upstreamURL+e.discoveryPath)
	if viaGW["issuer"] != e.issuer {
		t.Errorf("issuer through the gateway = %v, want %s", viaGW["issuer"], e.issuer)
	}
	if viaGW["authorization_endpoint"] != e.authzURL() {
		t.Errorf("authorization_endpoint = %v, want %s", viaGW["authorization_endpoint"], e.authzURL())
	}
	if viaGW["pushed_authorization_request_endpoint"] != e.parURL() {
		t.Errorf("pushed_authorization_request_endpoint = %v, want %s", viaGW["pushed_authorization_request_endpoint"], e.parURL())
	}
	if viaGW["require_pushed_authorization_requests"] != true {
		t.Errorf("require_pushed_authorization_requests = %v, want true", viaGW["require_pushed_authorization_requests"])
	}
	t.Logf("upstream's own pushed_authorization_request_endpoint: %v", direct["pushed_authorization_request_endpoint"])
	// The upstream's own PAR endpoint must not survive as an mTLS alias
	// (Keycloak advertises one); every other alias stays as it was.
	if aliases, ok := viaGW["mtls_endpoint_aliases"].(map[string]any); ok && aliases["pushed_authorization_request_endpoint"] != nil {
		t.Errorf("mtls_endpoint_aliases still advertises the upstream's PAR endpoint: %v", aliases["pushed_authorization_request_endpoint"])
	}
	if aliases, ok := direct["mtls_endpoint_aliases"].(map[string]any); ok {
		delete(aliases, "pushed_authorization_request_endpoint")
	}
	for _, k := range []string{"pushed_authorization_request_endpoint", "require_pushed_authorization_requests"} {
		delete(viaGW, k)
		delete(direct, k)
	}
	if !reflect.DeepEqual(viaGW, direct) {
		var diff []string
		for k := range mergeKeys(viaGW, direct) {
			if !reflect.DeepEqual(viaGW[k], direct[k]) {
				diff = append(diff, k)
			}
		}
		sort.Strings(diff)
		t.Errorf("discovery members changed by the gateway: %v", diff)
	}
}

func mergeKeys(a, b map[string]any) map[string]bool {
	m := map[string]bool{}
	for k := range a {
		m[k] = true
	}
	for k := range b {
		m[k] = true
	}
	return m
}

func getJSON(t *testing.T, u string) map[string]any {
	t.Helper()
	resp, err := harness.HTTPClient.Get(u)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %s %s", u, resp.Status, clip(string(b), 300))
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	return m
}

// push sends a PAR request with client_secret_basic (secret != "") and
// returns the status and the decoded JSON body.
func push(t *testing.T, parURL, clientID, secret string, params url.Values) (int, map[string]any) {
	t.Helper()
	params.Set("client_id", clientID)
	req, _ := http.NewRequest(http.MethodPost, parURL, strings.NewReader(params.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if secret != "" {
		req.SetBasicAuth(url.QueryEscape(clientID), url.QueryEscape(secret))
	}
	resp, err := harness.HTTPClient.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", parURL, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var m map[string]any
	_ = json.Unmarshal(b, &m)
	if m == nil {
		m = map[string]any{"_raw": string(b)}
	}
	return resp.StatusCode, m
}

// browserGet is a browser-like GET (Accept: text/html) that follows no
// redirect.
func browserGet(t *testing.T, u string) (int, http.Header, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, u, nil)
	req.Header.Set("Accept", "text/html,application/xhtml+xml,*/*;q=0.8")
	resp, err := harness.HTTPClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", clip(u, 200), err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, resp.Header, string(b)
}

// pkceChallenge returns the S256 challenge of a random verifier (the
// verifier itself is not needed by the tests that use it).
func pkceChallenge() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	sum := sha256.Sum256(b)
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// checkGatewayLog: the gateway's log never holds the client secret, and
// no distinctive pushed value (nonce, code_challenge, request_uri
// reference, claims marker) appears in the gateway's own lines or in any
// line at level info or above. Caddy's reverse_proxy DEBUG lines do log
// the upstream request URI and response headers; with forward_method get
// that URI is the redeemed request, so such lines are counted and
// reported, not failed.
func (e *idpEnv) checkGatewayLog(t *testing.T) {
	data, err := os.ReadFile(e.gw.Config.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	if n := bytes.Count(data, []byte(e.secret)); n > 0 {
		t.Errorf("the client secret appears %d times in %s", n, e.gw.Config.LogPath)
	}
	if len(e.distinctive) == 0 {
		t.Skip("no pushed flow ran in this invocation (filtered with -run): nothing to look for")
	}
	msgs := map[string]int{}
	debugLeaks := map[string]int{}
	for _, l := range readLogLines(t, data) {
		if l.own() {
			msgs[l.Msg]++
		}
		v, ok := l.leaked(e.distinctive)
		switch {
		case !ok:
		case l.own() || l.Level != "debug":
			t.Errorf("pushed value %s… appears in a %s line of %s: %s", v[:8], l.Level, l.Logger, clip(string(l.raw), 400))
		default:
			debugLeaks[l.Logger+": "+l.Msg]++
		}
	}
	for _, m := range []string{"request issued", "request redeemed", "request rejected"} {
		if msgs[m] == 0 {
			t.Errorf("no %q line from oauth_par in the log (lines seen: %v)", m, msgs)
		}
	}
	t.Logf("oauth_par log lines: %v", msgs)
	if len(debugLeaks) > 0 {
		t.Logf("NOTE: pushed values appear in Caddy's own DEBUG lines (not the gateway's): %v. "+
			"reverse_proxy logs the upstream request URI and response headers at DEBUG; with forward_method get the URI is the redeemed request.", debugLeaks)
	}
}

// logLine is one line of the gateway's JSON log.
type logLine struct {
	Level  string `json:"level"`
	Logger string `json:"logger"`
	Msg    string `json:"msg"`
	raw    []byte
}

// readLogLines parses the gateway's JSON log; a line that is not JSON
// fails the test.
func readLogLines(t *testing.T, data []byte) []logLine {
	t.Helper()
	var out []logLine
	for _, line := range bytes.Split(data, []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		l := logLine{raw: line}
		if err := json.Unmarshal(line, &l); err != nil {
			t.Errorf("log line is not JSON: %s", clip(string(line), 200))
			continue
		}
		out = append(out, l)
	}
	return out
}

// own reports whether the oauth_par handler wrote the line.
func (l logLine) own() bool { return strings.HasPrefix(l.Logger, "http.handlers.oauth_par") }

// leaked returns the first of values the line holds, as sent or
// query-escaped.
func (l logLine) leaked(values []string) (string, bool) {
	for _, v := range values {
		if bytes.Contains(l.raw, []byte(v)) || bytes.Contains(l.raw, []byte(url.QueryEscape(v))) {
			return v, true
		}
	}
	return "", false
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// gatewayLogTail keeps the interesting lines of the gateway's JSON log:
// the handler's own and everything above debug level.
func gatewayLogTail(path string, n int) string {
	var keep []string
	for _, line := range strings.Split(harness.Tail(path, 400), "\n") {
		if strings.Contains(line, `"logger":"http.handlers.oauth_par`) || !strings.Contains(line, `"level":"debug"`) {
			keep = append(keep, line)
		}
	}
	if len(keep) > n {
		keep = keep[len(keep)-n:]
	}
	return clipLines(strings.Join(keep, "\n"), 400)
}

func clipLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		lines[i] = clip(l, n)
	}
	return strings.Join(lines, "\n")
}
