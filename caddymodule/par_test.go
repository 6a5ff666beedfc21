package caddymodule

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
)

func TestPushRejectsInvalidRequests(t *testing.T) {
	g := newTestGateway(t, nil)
	tests := []struct {
		name   string
		mutate func(url.Values)
		code   string
	}{
		{"request_uri in body", func(v url.Values) { v.Set("request_uri", "urn:x") }, ErrInvalidRequest},
		{"request object from a client without keys", func(v url.Values) { v.Set("request", "eyJ.x.y") }, ErrInvalidRequestObject},
		{"repeated parameter", func(v url.Values) { v.Add("scope", "email") }, ErrInvalidRequest},
		{"client_id missing", func(v url.Values) { v.Del("client_id") }, ErrInvalidRequest},
		{"client_id differs from Basic", func(v url.Values) { v.Set("client_id", "spa") }, ErrInvalidRequest},
		{"response_type missing", func(v url.Values) { v.Del("response_type") }, ErrInvalidRequest},
		{"response_type empty counts as missing", func(v url.Values) { v.Set("response_type", "") }, ErrInvalidRequest},
		{"response_type token", func(v url.Values) { v.Set("response_type", "token") }, ErrUnsupportedResponseType},
		{"redirect_uri missing", func(v url.Values) { v.Del("redirect_uri") }, ErrInvalidRequest},
		{"redirect_uri unregistered", func(v url.Values) { v.Set("redirect_uri", "https://evil.example/cb") }, ErrInvalidRequest},
		{"redirect_uri prefix of registered", func(v url.Values) { v.Set("redirect_uri", "https://app.example.com/cb/x") }, ErrInvalidRequest},
		{"scope not allowed", func(v url.Values) { v.Set("scope", "openid admin") }, ErrInvalidScope},
		{"scope malformed", func(v url.Values) { v.Set("scope", "openid  profile") }, ErrInvalidScope},
		{"PKCE plain", func(v url.Values) { v.Set("code_challenge_method", "plain") }, ErrInvalidRequest},
		{"PKCE challenge without method means plain", func(v url.Values) { v.Del("code_challenge_method") }, ErrInvalidRequest},
		{"PKCE method without challenge", func(v url.Values) { v.Del("code_challenge") }, ErrInvalidRequest},
		{"PKCE malformed challenge", func(v url.Values) { v.Set("code_challenge", "short") }, ErrInvalidRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			form := validPush()
			tt.mutate(form)
			_, _, oerr := g.push(parRequest(form, "web-app", testSecret), nil)
			if oerr == nil || oerr.Code != tt.code || oerr.Status != http.StatusBadRequest {
				t.Fatalf("got %v, want 400 %s", oerr, tt.code)
			}
		})
	}
}

func TestPushAuthenticatesBeforeValidating(t *testing.T) {
	// RFC 9126 §2.1: authentication comes first, so an unauthenticated
	// caller learns nothing about the request's validity.
	g := newTestGateway(t, nil)
	form := validPush()
	form.Set("request_uri", "urn:x")
	_, _, oerr := g.push(parRequest(form, "web-app", "wrong"), nil)
	if oerr == nil || oerr.Code != ErrInvalidClient || oerr.Status != http.StatusUnauthorized {
		t.Fatalf("got %v, want 401 invalid_client", oerr)
	}
}

func TestPublicClientNeedsS256(t *testing.T) {
	g := newTestGateway(t, nil)
	base := url.Values{
		"client_id":     {"spa"},
		"response_type": {"code"},
		"redirect_uri":  {"http://127.0.0.1/cb"},
	}
	noPKCE := parRequest(base, "", "")
	if _, _, oerr := g.push(noPKCE, nil); oerr == nil || oerr.Code != ErrInvalidRequest {
		t.Fatalf("public client without PKCE: got %v", oerr)
	}
	base.Set("code_challenge", "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGjSstw-cM")
	base.Set("code_challenge_method", "S256")
	if _, resp, oerr := g.push(parRequest(base, "", ""), nil); oerr != nil || resp == nil {
		t.Fatalf("public client with S256: got %v", oerr)
	}
}

func TestPushStoresParametersWithoutCredentials(t *testing.T) {
	g := newTestGateway(t, nil)
	form := validPush()
	form.Set("client_secret", testSecret)
	form.Set("prompt", "") // empty means omitted (RFC 6749 §3.1)
	form.Set("claims", `{"id_token":{"acr":{"essential":true}}}`)
	_, resp, oerr := g.push(parRequest(form, "", ""), nil)
	if oerr != nil {
		t.Fatal(oerr)
	}
	ref := strings.TrimPrefix(resp.RequestURI, requestURIPrefix)
	got, err := g.store.Take(t.Context(), g.storeKey(ref), oneTime("web-app"))
	if err != nil {
		t.Fatal(err)
	}
	stored, _ := url.ParseQuery(got.Params)
	want := validPush()
	want.Set("claims", form.Get("claims"))
	if stored.Encode() != want.Encode() {
		t.Fatalf("stored %q\nwant   %q", stored.Encode(), want.Encode())
	}
	if got.ClientID != "web-app" || !got.ExpiresAt.After(g.now()) {
		t.Fatalf("binding: %+v", got)
	}
}

func TestPARSuccessResponseShape(t *testing.T) {
	g := newTestGateway(t, nil)
	w := httptest.NewRecorder()
	g.servePAR(w, parRequest(validPush(), "web-app", testSecret), nil)
	if w.Code != http.StatusCreated {
		t.Fatalf("status %d: %s", w.Code, w.Body)
	}
	if ct := w.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	if cc := w.Header().Get("Cache-Control"); cc != "no-store" {
		t.Errorf("Cache-Control %q", cc)
	}
	var body map[string]any
	if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil {
		t.Fatal(err)
	}
	if len(body) != 2 || body["expires_in"] != float64(60) {
		t.Fatalf("body %v", body)
	}
	uri, _ := body["request_uri"].(string)
	if !strings.HasPrefix(uri, requestURIPrefix) || !validRef(strings.TrimPrefix(uri, requestURIPrefix)) {
		t.Fatalf("request_uri %q", uri)
	}
}

func TestPARErrorsAreNoStoreJSON(t *testing.T) {
	g := newTestGateway(t, nil)
	tests := []struct {
		name   string
		req    *http.Request
		status int
		header map[string]string
	}{
		{"GET", httptest.NewRequest(http.MethodGet, "/par", nil), http.StatusMethodNotAllowed, map[string]string{"Allow": "POST"}},
		{"JSON body", func() *http.Request {
			r := httptest.NewRequest(http.MethodPost, "/par", strings.NewReader("{}"))
			r.Header.Set("Content-Type", "application/json")
			return r
		}(), http.StatusBadRequest, nil},
		{"too large", parRequest(url.Values{"x": {strings.Repeat("a", 5000)}}, "web-app", testSecret), http.StatusRequestEntityTooLarge, nil},
		{"wrong secret", parRequest(validPush(), "web-app", "nope"), http.StatusUnauthorized, map[string]string{"WWW-Authenticate": `Basic realm="oauth_par", charset="UTF-8"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := httptest.NewRecorder()
			g.servePAR(w, tt.req, nil)
			if w.Code != tt.status {
				t.Fatalf("status %d, want %d", w.Code, tt.status)
			}
			if w.Header().Get("Cache-Control") != "no-store" {
				t.Error("missing Cache-Control: no-store")
			}
			for k, v := range tt.header {
				if got := w.Header().Get(k); got != v {
					t.Errorf("%s = %q, want %q", k, got, v)
				}
			}
			var body struct{ Error, ErrorDescription string }
			if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil || body.Error == "" {
				t.Fatalf("body %q", w.Body)
			}
		})
	}
}

func TestNewRefIsRandomAndWellFormed(t *testing.T) {
	seen := map[string]bool{}
	for range 1000 {
		ref, err := newRef()
		if err != nil {
			t.Fatal(err)
		}
		if !validRef(ref) || len(ref) < 43 {
			t.Fatalf("malformed ref %q", ref)
		}
		if seen[ref] {
			t.Fatalf("duplicate ref %q", ref)
		}
		seen[ref] = true
	}
}

// A form body may carry bytes that are not valid in a URL (curl -d sends a
// space as is); what is forwarded upstream must be a valid query with the
// same values.
func TestStoredParamsAreAValidQuery(t *testing.T) {
	body := "client_id=web-app&scope=openid profile&claims={\"a\":1}&nonce=n%2B1&prompt=&client_secret=x&login_hint=j\u00fcrgen"
	got := storedParams(body)
	if strings.ContainsAny(got, " {}\"") || strings.Contains(got, "client_secret") || strings.Contains(got, "prompt") {
		t.Fatalf("stored %q", got)
	}
	v, err := url.ParseQuery(got)
	if err != nil {
		t.Fatal(err)
	}
	want := url.Values{"client_id": {"web-app"}, "scope": {"openid profile"}, "claims": {`{"a":1}`}, "nonce": {"n+1"}, "login_hint": {"j\u00fcrgen"}}
	if v.Encode() != want.Encode() {
		t.Fatalf("got %v, want %v", v, want)
	}
	if _, err := http.NewRequest(http.MethodGet, "http://idp.test/auth?"+got, nil); err != nil {
		t.Fatal(err)
	}
}

func TestStoredParamsKeepValidPairsAsSent(t *testing.T) {
	body := "client_id=web-app&claims=%7B%22a%22%3A1%7D&scope=openid+profile&x=a~b.c_d-e"
	if got := storedParams(body); got != body {
		t.Fatalf("got %q, want %q", got, body)
	}
}

func TestErrorDescriptionsKeepToRFC6749Syntax(t *testing.T) {
	for in, want := range map[string]string{
		`parameter "scope" is repeated`: `parameter 'scope' is repeated`,
		"kid é\\x\n":                    "kid ??x?",
		"plain":                         "plain",
	} {
		if got := describe(in); got != want {
			t.Errorf("describe(%q) = %q, want %q", in, got, want)
		}
	}
	g := newTestGateway(t, nil)
	form := validPush()
	form.Add("scope", "again")
	w := httptest.NewRecorder()
	g.servePAR(w, parRequest(form, "web-app", testSecret), nil)
	if strings.ContainsAny(w.Body.String()[strings.Index(w.Body.String(), "error_description"):], `\`) {
		t.Errorf("escaped quote in %s", w.Body)
	}
}

func TestPushValidatesAuthorizationDetails(t *testing.T) {
	g := newTestGateway(t, func(g *gateway) {
		g.clients["web-app"].authorizationDetailsTypes = map[string]bool{"payment_initiation": true, "account_information": true}
	})
	for _, tc := range []struct {
		name, details, code string
	}{
		{"allowed types", `[{"type":"payment_initiation","instructedAmount":{"currency":"EUR","amount":"1.00"}},{"type":"account_information"}]`, ""},
		{"not JSON", `[{"type":`, ErrInvalidAuthorizationDetails},
		{"an object, not an array", `{"type":"payment_initiation"}`, ErrInvalidAuthorizationDetails},
		{"empty array", `[]`, ErrInvalidAuthorizationDetails},
		{"element without type", `[{"locations":["https://rs.example"]}]`, ErrInvalidAuthorizationDetails},
		{"type not a string", `[{"type":7}]`, ErrInvalidAuthorizationDetails},
		{"element not an object", `["payment_initiation"]`, ErrInvalidAuthorizationDetails},
		{"type outside the client's list", `[{"type":"payment_initiation"},{"type":"admin"}]`, ErrInvalidAuthorizationDetails},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := g.store.(*memoryCache).used.Load()
			form := validPush()
			form.Set("authorization_details", tc.details)
			_, _, oerr := g.push(parRequest(form, "web-app", testSecret), nil)
			switch {
			case tc.code == "" && oerr != nil:
				t.Fatalf("rejected: %v", oerr)
			case tc.code != "" && (oerr == nil || oerr.Code != tc.code || oerr.Status != http.StatusBadRequest):
				t.Fatalf("got %v, want 400 %s", oerr, tc.code)
			case tc.code != "" && g.store.(*memoryCache).used.Load() != before:
				t.Errorf("a rejected push changed the store")
			}
		})
	}
	// Without a per-client list, any type is accepted.
	form := validPush()
	form.Set("authorization_details", `[{"type":"anything"}]`)
	g.clients["web-app"].authorizationDetailsTypes = nil
	if _, _, oerr := g.push(parRequest(form, "web-app", testSecret), nil); oerr != nil {
		t.Errorf("rejected: %v", oerr)
	}
}
