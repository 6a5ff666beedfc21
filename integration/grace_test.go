package integration

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"
)

// defaultReuseGrace is the gateway's reuse_grace when the Caddyfile does
// not set it (caddymodule.DefaultReuseGrace); the gateways of the common
// flows use it.
const defaultReuseGrace = 10 * time.Second

// graceCookieName is the gateway's grace cookie for a request_uri: the
// prefix and the reference's log fingerprint (request_uri_fp).
func graceCookieName(requestURI string) string {
	return "__Secure-oauth_par_" + requestURIFingerprint(requestURI)
}

func requestURIFingerprint(requestURI string) string {
	sum := sha256.Sum256([]byte(strings.TrimPrefix(requestURI, "urn:ietf:params:oauth:request_uri:")))
	return hex.EncodeToString(sum[:6])
}

// reloadLoginPageWithinGrace (issue 9): an IdP that serves its login form
// at the authorization URL (Keycloak) gets that URL again when the user
// reloads the page. Within the default reuse_grace the browser that
// redeemed the request_uri (it holds the grace cookie, here over plain
// http on 127.0.0.1, which Chromium treats as a secure context) is shown
// the login page again and the login completes; a second browser context
// opening the same URL is refused with invalid_request_uri.
func (e *idpEnv) reloadLoginPageWithinGrace(t *testing.T) {
	dir := e.subtestDir(t)
	// A cold Keycloak takes seconds to render its first login page; the
	// reload must come within the grace, so render one first.
	params := url.Values{
		"response_type": {"code"}, "redirect_uri": {e.webRedirect}, "scope": {"openid"},
		"state": {randHex(8)}, "nonce": {randHex(16)},
		"code_challenge": {pkceChallenge()}, "code_challenge_method": {"S256"},
	}
	if status, body := push(t, e.parURL(), "web-app", e.secret, params); status == 201 {
		ru, _ := body["request_uri"].(string)
		code, _, _ := browserGet(t, e.authzURL()+"?"+url.Values{"client_id": {"web-app"}, "request_uri": {ru}}.Encode())
		t.Logf("warm-up redemption: %d", code)
	}
	cfg := e.flow("web-app")
	cfg.Scope = "openid email profile"
	cfg.ReloadLoginPage = true
	cfg.OtherContextVisit = true
	r := runFlow(t, dir, cfg)
	e.remember(r)
	requireTokens(t, r)
	e.checkPARFlow(t, r, "web-app")
	if r.RequestURI == nil {
		t.Fatal("no request_uri")
	}
	ru := *r.RequestURI

	// The cookie as Chromium stored it after the first redemption.
	rl := r.Reload
	if len(rl.GraceCookies) != 1 {
		t.Fatalf("grace cookies in the browser after the redemption: %+v, want one", rl.GraceCookies)
	}
	gc := rl.GraceCookies[0]
	if gc.Name != graceCookieName(ru) || !gc.Secure || !gc.HTTPOnly || gc.SameSite != "Lax" ||
		gc.Path != e.gw.Config.AuthorizationEndpoint || gc.Domain != "127.0.0.1" {
		t.Errorf("grace cookie %s: secure=%v httpOnly=%v sameSite=%s path=%s domain=%s; want %s, Secure, HttpOnly, Lax, path %s, host-only 127.0.0.1",
			gc.Name, gc.Secure, gc.HTTPOnly, gc.SameSite, gc.Path, gc.Domain, graceCookieName(ru), e.gw.Config.AuthorizationEndpoint)
	}
	if gc.ExpiresInS == nil || *gc.ExpiresInS <= 0 || *gc.ExpiresInS > defaultReuseGrace.Seconds()+0.5 {
		t.Errorf("grace cookie expires in %v s, want within the %s grace", gc.ExpiresInS, defaultReuseGrace)
	}

	// The reload: the same authorization URL, the login page again.
	if !rl.Attempted || rl.Result != "login" || !rl.LoginPageSeen || rl.Status == nil || *rl.Status != 200 || rl.URL != r.AuthorizationURL {
		t.Errorf("reload %d ms after the redemption: result=%s status=%v url=%s loginPageSeen=%v %q; want Keycloak's login page at the authorization URL",
			rl.AfterMs, rl.Result, rl.Status, clip(rl.URL, 200), rl.LoginPageSeen, clip(rl.Text, 300))
	}
	if len(rl.Requests) == 0 || rl.Requests[0].URL != r.AuthorizationURL || rl.Requests[0].Method != "GET" {
		t.Errorf("reload navigations: %+v, want a GET of the authorization URL first", rl.Requests)
	}

	// Another browser with the same URL, within the grace: refused.
	oc := r.OtherContext
	if !oc.Attempted || oc.LoginPageSeen || oc.Status == nil || *oc.Status != 400 ||
		!strings.Contains(oc.Text, "invalid_request_uri") || !strings.Contains(oc.Text, "Authorization request rejected") {
		t.Errorf("second browser context: result=%s status=%v loginPageSeen=%v %q; want the gateway's 400 invalid_request_uri page",
			oc.Result, oc.Status, oc.LoginPageSeen, clip(oc.Text, 300))
	}
	if oc.AfterMs >= int(defaultReuseGrace.Milliseconds()) {
		t.Errorf("the second context came %d ms after the redemption, after the grace: it shows nothing about the cookie binding", oc.AfterMs)
	}
	if len(oc.GraceCookies) != 0 {
		t.Errorf("the second browser context got grace cookies: %+v", oc.GraceCookies)
	}
	if r.CallbackHits != 1 || !r.Callback.StateMatches {
		t.Errorf("callback hits %d, state matches %v; want one callback, for this flow", r.CallbackHits, r.Callback.StateMatches)
	}
	t.Logf("reload %d ms and second context %d ms after the redemption; cookie %s expires in %v s", rl.AfterMs, oc.AfterMs, gc.Name, *gc.ExpiresInS)

	// The gateway logged one redemption, one within the grace and the
	// other context's refusal for this request_uri; the cookie value is
	// in no log, neither the gateway's nor the IdP's.
	fp := requestURIFingerprint(ru)
	want := map[string]int{"redeemed": 1, "redeemed_again": 1, "rejected/invalid_request_uri": 1}
	var got map[string]int
	var data []byte
	deadline := time.Now().Add(5 * time.Second)
	for {
		var err error
		if data, err = os.ReadFile(e.gw.Config.LogPath); err != nil {
			t.Fatal(err)
		}
		got = map[string]int{}
		for _, l := range readLogLines(t, data) {
			var f struct {
				Endpoint string `json:"endpoint"`
				Outcome  string `json:"outcome"`
				Error    string `json:"error"`
				FP       string `json:"request_uri_fp"`
			}
			if !l.own() || json.Unmarshal(l.raw, &f) != nil || f.FP != fp || f.Endpoint != "authorize" {
				continue
			}
			k := f.Outcome
			if f.Error != "" {
				k += "/" + f.Error
			}
			got[k]++
		}
		if mapsEqual(got, want) || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !mapsEqual(got, want) {
		t.Errorf("gateway log lines for request_uri_fp %s: %v, want %v", fp, got, want)
	}
	if bytes.Contains(data, []byte(gc.Value)) {
		t.Errorf("the grace cookie's value appears in the gateway log %s", e.gw.Config.LogPath)
	}
	if kc, err := os.ReadFile(e.upstream.LogPath); err == nil && bytes.Contains(kc, []byte(gc.Value)) {
		t.Errorf("the grace cookie's value reached %s's log", e.name)
	}
}

func mapsEqual(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}
