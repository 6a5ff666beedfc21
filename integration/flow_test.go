package integration

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/caddy-par/caddy-par/integration/internal/harness"
)

// FlowLogin is flow.mjs's login block.
type FlowLogin struct {
	Username         string `json:"username"`
	Password         string `json:"password"`
	UsernameSelector string `json:"usernameSelector,omitempty"`
	PasswordSelector string `json:"passwordSelector,omitempty"`
	SubmitSelector   string `json:"submitSelector,omitempty"`
}

// FlowConfig is the config file of integration/js/flow.mjs (see its NOTES.md).
type FlowConfig struct {
	Issuer       string         `json:"issuer"`
	ClientID     string         `json:"clientId"`
	ClientSecret string         `json:"clientSecret,omitempty"`
	RedirectURI  string         `json:"redirectUri"`
	Scope        string         `json:"scope,omitempty"`
	UsePAR       bool           `json:"usePAR"`
	ExtraParams  map[string]any `json:"extraParams,omitempty"`
	Login        FlowLogin      `json:"login"`
	SecondVisit  bool           `json:"secondVisit,omitempty"`
	// SecondVisitAfterMs delays the second visit until this long after the
	// first navigation to the authorization URL.
	SecondVisitAfterMs int `json:"secondVisitAfterMs,omitempty"`
	// ReloadLoginPage reloads the login page once when it first shows;
	// OtherContextVisit then opens the authorization URL in a second,
	// cookieless browser context before the login.
	ReloadLoginPage   bool   `json:"reloadLoginPage,omitempty"`
	OtherContextVisit bool   `json:"otherContextVisit,omitempty"`
	Refresh           bool   `json:"refresh,omitempty"`
	ArtifactsDir      string `json:"artifactsDir,omitempty"`
	TimeoutMs         int    `json:"timeoutMs,omitempty"`
	SettleMs          int    `json:"settleMs,omitempty"`
	// AuthorizationOrigin sends the browser to this origin instead of the
	// discovered one (push at gateway A, redeem at gateway B).
	AuthorizationOrigin string `json:"authorizationOrigin,omitempty"`

	// FAPI-shaped flows (see js/NOTES.md).
	ClientAuth              string          `json:"clientAuth,omitempty"` // private_key_jwt, client_secret_basic, ...
	ClientKey               *FlowKey        `json:"clientKey,omitempty"`
	TokenClientAuth         string          `json:"tokenClientAuth,omitempty"`
	TokenClientSecret       string          `json:"tokenClientSecret,omitempty"`
	RequestObjectKey        *FlowKey        `json:"requestObjectKey,omitempty"`
	RequestObjectEncryption *FlowEncryption `json:"requestObjectEncryption,omitempty"`
	DPoP                    *FlowDPoP       `json:"dpop,omitempty"`
	// Token endpoint refusals (issue 10): another code_verifier than the
	// pushed challenge's; the code redeemed again after the tokens came.
	WrongVerifier bool `json:"wrongVerifier,omitempty"`
	ReplayCode    bool `json:"replayCode,omitempty"`
}

// FlowKey is a private JWK and the JWS algorithm to sign with.
type FlowKey struct {
	JWK map[string]any `json:"jwk"`
	Alg string         `json:"alg"`
}

// FlowEncryption: encrypt the request object to a key from JWKSURI.
type FlowEncryption struct {
	JWKSURI string `json:"jwksUri"`
	Alg     string `json:"alg"`
	Enc     string `json:"enc"`
}

// FlowDPoP: a DPoP proof on the push, and on the token request when
// TokenRequest.
type FlowDPoP struct {
	Alg          string `json:"alg"`
	TokenRequest bool   `json:"tokenRequest"`
	// NoPush leaves the proof off the push; JKTParam sends the key's
	// thumbprint as the dpop_jkt parameter (RFC 9449 §10).
	NoPush   bool `json:"-"`
	JKTParam bool `json:"jktParam,omitempty"`
}

// MarshalJSON writes flow.mjs's "push" only when it is false.
func (d FlowDPoP) MarshalJSON() ([]byte, error) {
	type plain FlowDPoP
	if d.NoPush {
		return json.Marshal(struct {
			plain
			Push bool `json:"push"`
		}{plain(d), false})
	}
	return json.Marshal(plain(d))
}

// decodedJWT is flow.mjs's decoding of a JWS (no verification).
type decodedJWT struct {
	Header map[string]any `json:"header"`
	Claims map[string]any `json:"claims"`
}

// CallbackInfo is the first callback hit.
type CallbackInfo struct {
	Received         bool              `json:"received"`
	URL              string            `json:"url"`
	Params           map[string]string `json:"params"`
	CodePresent      bool              `json:"codePresent"`
	StateMatches     bool              `json:"stateMatches"`
	Iss              *string           `json:"iss"`
	Error            *string           `json:"error"`
	ErrorDescription *string           `json:"error_description"`
}

// FlowResult is the part of flow.mjs's JSON report the tests assert on.
type FlowResult struct {
	OK        bool   `json:"ok"`
	Outcome   string `json:"outcome"`
	Stage     string `json:"stage"`
	Error     any    `json:"error"`
	Discovery struct {
		Issuer                                     string  `json:"issuer"`
		AuthorizationEndpoint                      string  `json:"authorization_endpoint"`
		TokenEndpoint                              string  `json:"token_endpoint"`
		JwksURI                                    string  `json:"jwks_uri"`
		PushedAuthorizationRequestEndpoint         *string `json:"pushed_authorization_request_endpoint"`
		RequirePushedAuthorizationRequests         *bool   `json:"require_pushed_authorization_requests"`
		AuthorizationResponseIssParameterSupported *bool   `json:"authorization_response_iss_parameter_supported"`
	} `json:"discovery"`
	Nonce                 string            `json:"nonce"`
	State                 string            `json:"state"`
	RequestedParams       map[string]string `json:"requestedParams"`
	AuthorizationURL      string            `json:"authorizationUrl"`
	AuthorizationURLLen   int               `json:"authorizationUrlLength"`
	AuthorizationURLParam map[string]string `json:"authorizationUrlParams"`
	RequestURI            *string           `json:"requestUri"`
	PushedParams          map[string]any    `json:"pushedParams"`
	ParRequest            *struct {
		URL             string      `json:"url"`
		AuthScheme      *string     `json:"authScheme"`
		BodyLength      int         `json:"bodyLength"`
		DPoP            *decodedJWT `json:"dpop"`
		ClientAssertion *decodedJWT `json:"clientAssertion"`
	} `json:"parRequest"`
	RequestObject *struct {
		Signed    *decodedJWT `json:"signed"`
		Length    int         `json:"length"`
		Encrypted *struct {
			Header map[string]any `json:"header"`
			KeyKid *string        `json:"keyKid"`
			KeyAlg *string        `json:"keyAlg"`
			Parts  int            `json:"parts"`
		} `json:"encrypted"`
	} `json:"requestObject"`
	DPoP *struct {
		Alg          string `json:"alg"`
		JKT          string `json:"jkt"`
		TokenRequest bool   `json:"tokenRequest"`
	} `json:"dpop"`
	ParResponse *struct {
		Status int            `json:"status"`
		Body   map[string]any `json:"body"`
	} `json:"parResponse"`
	HTTPExchanges []struct {
		Method     string      `json:"method"`
		URL        string      `json:"url"`
		Status     int         `json:"status"`
		AuthScheme any         `json:"authScheme"`
		GrantType  string      `json:"grantType"`
		DPoP       *decodedJWT `json:"dpop"`
	} `json:"httpExchanges"`
	BrowserURLs    []string     `json:"browserUrls"`
	LoginPageSeen  bool         `json:"loginPageSeen"`
	LoginPageURL   *string      `json:"loginPageUrl"`
	Callback       CallbackInfo `json:"callback"`
	CallbackHits   int          `json:"callbackHits"`
	BlockedReqs    []any        `json:"blockedRequests"`
	NavigationErrs []any        `json:"navigationErrors"`
	Tokens         struct {
		Present                  bool           `json:"present"`
		TokenType                *string        `json:"tokenType"`
		AccessTokenCnf           map[string]any `json:"accessTokenCnf"`
		Scope                    *string        `json:"scope"`
		RefreshTokenPresent      bool           `json:"refreshTokenPresent"`
		IDTokenClaims            map[string]any `json:"idTokenClaims"`
		IDTokenSignatureVerified bool           `json:"idTokenSignatureVerified"`
	} `json:"tokens"`
	NonceMatches bool `json:"nonceMatches"`
	AudMatches   bool `json:"audMatches"`
	IssMatches   bool `json:"issMatches"`
	Refresh      struct {
		Attempted             bool    `json:"attempted"`
		OK                    bool    `json:"ok"`
		NewAccessTokenDiffers bool    `json:"newAccessTokenDiffers"`
		IDTokenPresent        bool    `json:"idTokenPresent"`
		Scope                 *string `json:"scope"`
		Error                 any     `json:"error"`
	} `json:"refresh"`
	Reload       PageVisit `json:"reload"`
	OtherContext PageVisit `json:"otherContext"`
	Replay       struct {
		Attempted bool    `json:"attempted"`
		OK        bool    `json:"ok"`
		Error     any     `json:"error"`
		ErrorCode *string `json:"errorCode"`
		Status    *int    `json:"status"`
	} `json:"replay"`
	SecondVisit struct {
		Attempted     bool          `json:"attempted"`
		AfterMs       int           `json:"afterMs"`
		Result        string        `json:"result"`
		Status        *int          `json:"status"`
		URL           string        `json:"url"`
		Text          string        `json:"text"`
		LoginPageSeen bool          `json:"loginPageSeen"`
		Callback      *CallbackInfo `json:"callback"`
		CodeIssued    bool          `json:"codeIssued"`
		URLs          []string      `json:"urls"`
	} `json:"secondVisit"`
	FinalPage struct {
		URL    string `json:"url"`
		Status *int   `json:"status"`
		Title  string `json:"title"`
		Text   string `json:"text"`
	} `json:"finalPage"`
	Artifacts []string       `json:"artifacts"`
	Timings   map[string]int `json:"timings"`
}

// GraceCookie is a gateway grace cookie as the browser stored it.
type GraceCookie struct {
	Name       string   `json:"name"`
	Value      string   `json:"value"`
	Domain     string   `json:"domain"`
	Path       string   `json:"path"`
	Secure     bool     `json:"secure"`
	HTTPOnly   bool     `json:"httpOnly"`
	SameSite   string   `json:"sameSite"`
	ExpiresInS *float64 `json:"expiresInS"`
}

// PageVisit is flow.mjs's report of the login page reload or of the visit
// from a second browser context.
type PageVisit struct {
	Attempted     bool          `json:"attempted"`
	Result        string        `json:"result"` // login, settled, callback, timeout
	Status        *int          `json:"status"`
	URL           string        `json:"url"`
	Title         string        `json:"title"`
	Text          string        `json:"text"`
	LoginPageSeen bool          `json:"loginPageSeen"`
	AfterMs       int           `json:"afterMs"` // since the first navigation to the authorization URL
	GraceCookies  []GraceCookie `json:"graceCookies"`
	URLs          []string      `json:"urls"`
	Requests      []struct {
		Method string `json:"method"`
		URL    string `json:"url"`
		Status *int   `json:"status"`
	} `json:"requests"`
}

// pushed returns a pushed parameter as a string ("" if absent).
func (r *FlowResult) pushed(k string) string {
	switch v := r.PushedParams[k].(type) {
	case string:
		return v
	case []any:
		if len(v) > 0 {
			s, _ := v[0].(string)
			return s
		}
	}
	return ""
}

// runFlow writes cfg to dir/config.json, runs `node integration/js/flow.mjs`
// and returns the parsed report (also kept as dir/result.json, with the
// flow's log in dir/flow.stderr.log). A harness-level failure is fatal.
func runFlow(t *testing.T, dir string, cfg FlowConfig) *FlowResult {
	t.Helper()
	root, err := harness.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ArtifactsDir == "" {
		cfg.ArtifactsDir = dir
	}
	if cfg.TimeoutMs == 0 {
		cfg.TimeoutMs = 60000
	}
	b, _ := json.MarshalIndent(cfg, "", "  ")
	cfgPath := filepath.Join(dir, "config.json")
	if err := os.WriteFile(cfgPath, b, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(suiteCtx, time.Duration(cfg.TimeoutMs)*time.Millisecond+45*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", filepath.Join(root, "integration", "js", "flow.mjs"), cfgPath)
	cmd.Dir = dir
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	start := time.Now()
	runErr := cmd.Run()
	_ = os.WriteFile(filepath.Join(dir, "result.json"), stdout.Bytes(), 0o644)
	_ = os.WriteFile(filepath.Join(dir, "flow.stderr.log"), stderr.Bytes(), 0o644)
	t.Logf("flow.mjs (%s, %s, usePAR=%v) ran in %s; artifacts: %s", cfg.ClientID, cfg.Issuer, cfg.UsePAR, time.Since(start).Round(100*time.Millisecond), dir)
	var r FlowResult
	line := bytes.TrimSpace(stdout.Bytes())
	if i := bytes.LastIndexByte(line, '\n'); i >= 0 {
		line = line[i+1:]
	}
	if err := json.Unmarshal(line, &r); err != nil {
		t.Fatalf("flow.mjs gave no JSON report (exit: %v, parse: %v)\nstderr tail:\n%s", runErr, err, tailString(stderr.String(), 30))
	}
	if runErr != nil {
		t.Fatalf("flow.mjs failed at harness level (%v): %v\nstderr tail:\n%s", runErr, r.Error, tailString(stderr.String(), 30))
	}
	return &r
}

func tailString(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// checkNothingPushedInBrowserURLs is PAR's promise: for every pushed
// parameter except client_id, response_type and state (state comes back on
// the callback by design), neither the value nor its URL-encoded forms
// appear in any URL the browser requested or was redirected through. For
// redirect_uri, whose raw value is the callback URL itself, only the
// encoded forms, and any query parameter equal to it, count.
func checkNothingPushedInBrowserURLs(t *testing.T, r *FlowResult) {
	t.Helper()
	if r.PushedParams == nil {
		return
	}
	if len(r.BrowserURLs) == 0 {
		t.Errorf("no browser URLs recorded")
	}
	for _, p := range pushedValuesInURLs(r.PushedParams, r.BrowserURLs) {
		t.Error(p)
	}
}

// pushedValuesInURLs lists where pushed values show up in urls.
func pushedValuesInURLs(pushed map[string]any, urls []string) []string {
	var problems []string
	for k, x := range pushed {
		switch k {
		case "client_id", "response_type", "state":
			continue
		}
		v, _ := x.(string)
		if v == "" {
			continue
		}
		forms := map[string]string{"query-escaped": url.QueryEscape(v), "path-escaped": url.PathEscape(v)}
		if k != "redirect_uri" {
			forms["raw"] = v
		}
		for _, u := range urls {
			for how, f := range forms {
				if strings.Contains(u, f) {
					problems = append(problems, fmt.Sprintf("pushed %s (%s) appears in a browser URL: %s", k, how, clip(u, 300)))
				}
			}
			if k == "redirect_uri" {
				if pu, err := url.Parse(u); err == nil {
					for name, vals := range pu.Query() {
						for _, pv := range vals {
							if pv == v {
								problems = append(problems, fmt.Sprintf("pushed redirect_uri appears as parameter %s of a browser URL: %s", name, clip(u, 300)))
							}
						}
					}
				}
			}
		}
	}
	sort.Strings(problems)
	return problems
}

// keycloakClientData checks Keycloak's client_data URL parameter (its
// login-actions URLs carry base64url JSON of the request's redirect_uri,
// response_type, state and response_mode): nothing else of the pushed
// request may travel in it.
func keycloakClientData(urls []string) (seen int, problems []string) {
	allowed := map[string]bool{"ru": true, "rt": true, "st": true, "rm": true}
	for _, u := range urls {
		pu, err := url.Parse(u)
		if err != nil {
			continue
		}
		for _, cd := range pu.Query()["client_data"] {
			seen++
			raw, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(cd, "="))
			var m map[string]any
			if err == nil {
				err = json.Unmarshal(raw, &m)
			}
			if err != nil {
				problems = append(problems, fmt.Sprintf("undecodable client_data in %s: %v", clip(u, 200), err))
				continue
			}
			for k := range m {
				if !allowed[k] {
					problems = append(problems, fmt.Sprintf("client_data carries %q: %s", k, raw))
				}
			}
		}
	}
	return seen, problems
}

func clip(s string, n int) string {
	if len(s) > n {
		return s[:n] + fmt.Sprintf("…(%d chars)", len(s))
	}
	return s
}

// checkOnlyRequestURIInAuthorizationURL: the front-channel request is
// client_id + request_uri and nothing else (RFC 9126 §4).
func checkOnlyRequestURIInAuthorizationURL(t *testing.T, r *FlowResult, gatewayAuthz string) {
	t.Helper()
	if len(r.AuthorizationURLParam) != 2 || r.AuthorizationURLParam["client_id"] == "" || !strings.HasPrefix(r.AuthorizationURLParam["request_uri"], "urn:ietf:params:oauth:request_uri:") {
		t.Errorf("authorization URL params = %v, want only client_id and our request_uri", r.AuthorizationURLParam)
	}
	if !strings.HasPrefix(r.AuthorizationURL, gatewayAuthz+"?") {
		t.Errorf("authorization URL %s does not start with the gateway's authorization endpoint %s", clip(r.AuthorizationURL, 200), gatewayAuthz)
	}
}
