package integration

import (
	"net/url"
	"strings"
	"testing"
)

// TestLeakCheckCatchesLeaks checks the browser-URL check itself (no
// processes): Dex's bounce /dex/auth?q → /dex/auth/local?q, had the browser
// followed it, and a redirect_uri carried as a parameter are reported;
// the request_uri URL, the login page and the callback are not.
func TestLeakCheckCatchesLeaks(t *testing.T) {
	pushed := map[string]any{
		"client_id":             "web-app",
		"response_type":         "code",
		"state":                 "st4te-value-xyz",
		"redirect_uri":          "http://127.0.0.1:5555/callback",
		"scope":                 "openid email profile",
		"nonce":                 "n0nce-value-abc",
		"code_challenge":        "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
		"code_challenge_method": "S256",
		"claims":                `{"id_token":{"email":{"essential":true}}}`,
	}
	clean := []string{
		"http://127.0.0.1:4444/dex/auth?request_uri=urn%3Aietf%3Aparams%3Aoauth%3Arequest_uri%3Aabc&client_id=web-app",
		"http://127.0.0.1:4444/dex/auth/local/login?back=&state=ybsqw3dcykauu2xhfr7ch26py",
		"http://127.0.0.1:5555/callback?code=x27iq5pbrazdz4qv4h532ebcn&state=st4te-value-xyz",
	}
	if p := pushedValuesInURLs(pushed, clean); len(p) != 0 {
		t.Errorf("false positives: %v", p)
	}
	q := url.Values{}
	for k, v := range pushed {
		q.Set(k, v.(string))
	}
	bounce := "http://127.0.0.1:4444/dex/auth/local?" + q.Encode()
	p := pushedValuesInURLs(pushed, append(clean, bounce))
	for _, k := range []string{"redirect_uri", "scope", "nonce", "code_challenge", "code_challenge_method", "claims"} {
		if !strings.Contains(strings.Join(p, "\n"), "pushed "+k+" ") {
			t.Errorf("the bounce URL's %s was not reported; got:\n%s", k, strings.Join(p, "\n"))
		}
	}
	for _, k := range []string{"client_id", "response_type", "state"} {
		if strings.Contains(strings.Join(p, "\n"), "pushed "+k+" ") {
			t.Errorf("%s is reported although it is allowed in URLs", k)
		}
	}
	pathForm := "http://127.0.0.1:4444/x/" + url.PathEscape(pushed["claims"].(string))
	if p := pushedValuesInURLs(pushed, []string{pathForm}); len(p) == 0 {
		t.Errorf("a path-escaped claims value was not reported")
	}
}

// TestKeycloakClientDataCheck: Keycloak's client_data may carry only
// redirect_uri, response_type, state and response_mode.
func TestKeycloakClientDataCheck(t *testing.T) {
	ok := "http://127.0.0.1:1/realms/demo/login-actions/authenticate?client_id=web-app&client_data=eyJydSI6Imh0dHA6Ly8xMjcuMC4wLjE6MTgyMDIvY2FsbGJhY2siLCJydCI6ImNvZGUiLCJzdCI6IjBLdW1QNXdSMnBQUkQ3Mkc1MG9jaGdFTmZPSzlnb19aSGNnSVNWZHZJdHMifQ"
	if n, p := keycloakClientData([]string{ok}); n != 1 || len(p) != 0 {
		t.Errorf("seen=%d problems=%v", n, p)
	}
	// {"ru":"x","nonce":"y"}
	bad := "http://127.0.0.1:1/x?client_data=eyJydSI6IngiLCJub25jZSI6InkifQ"
	if _, p := keycloakClientData([]string{bad}); len(p) != 1 {
		t.Errorf("a nonce in client_data was not reported: %v", p)
	}
}
