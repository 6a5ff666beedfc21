package caddymodule

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"
)

// upstream records what reached the next handler.
type upstream struct {
	requests []*http.Request
	bodies   []string
	respond  func(w http.ResponseWriter, r *http.Request)
}

func (u *upstream) next(w http.ResponseWriter, r *http.Request) error {
	b, _ := io.ReadAll(r.Body)
	u.requests = append(u.requests, r)
	u.bodies = append(u.bodies, string(b))
	if u.respond != nil {
		u.respond(w, r)
		return nil
	}
	w.WriteHeader(http.StatusOK)
	return nil
}

func TestRedeemForwardsPushedParametersOnly(t *testing.T) {
	for _, method := range []string{http.MethodGet, http.MethodPost} {
		t.Run(method, func(t *testing.T) {
			g := newTestGateway(t, nil)
			uri := pushOK(t, g, validPush())
			browser := url.Values{"client_id": {"web-app"}, "request_uri": {uri}, "scope": {"evil"}, "extra": {"x"}}
			var r *http.Request
			if method == http.MethodGet {
				r = httptest.NewRequest(method, "/authorize?"+browser.Encode(), nil)
			} else {
				r = httptest.NewRequest(method, "/authorize", strings.NewReader(browser.Encode()))
				r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			}
			up := &upstream{}
			w := httptest.NewRecorder()
			if err := g.serveAuthorize(w, r, up.next); err != nil {
				t.Fatal(err)
			}
			if len(up.requests) != 1 {
				t.Fatalf("upstream got %d requests", len(up.requests))
			}
			got := up.requests[0]
			if got.Method != http.MethodGet || up.bodies[0] != "" {
				t.Fatalf("forwarded %s with body %q", got.Method, up.bodies[0])
			}
			if got.URL.RawQuery != validPush().Encode() {
				t.Fatalf("forwarded query %q\nwant %q", got.URL.RawQuery, validPush().Encode())
			}
			if n := strings.Count(got.URL.RawQuery, "client_id="); n != 1 {
				t.Fatalf("client_id appears %d times", n)
			}
		})
	}
}

func TestRedeemAsPOSTForm(t *testing.T) {
	g := newTestGateway(t, func(g *gateway) { g.forwardPOST = true })
	uri := pushOK(t, g, validPush())
	up := &upstream{}
	r := httptest.NewRequest(http.MethodGet, "/authorize?client_id=web-app&request_uri="+url.QueryEscape(uri), nil)
	if err := g.serveAuthorize(httptest.NewRecorder(), r, up.next); err != nil {
		t.Fatal(err)
	}
	got := up.requests[0]
	if got.Method != http.MethodPost || got.URL.RawQuery != "" || up.bodies[0] != validPush().Encode() {
		t.Fatalf("forwarded %s ?%s body %q", got.Method, got.URL.RawQuery, up.bodies[0])
	}
	if got.Header.Get("Content-Type") != "application/x-www-form-urlencoded" {
		t.Fatalf("Content-Type %q", got.Header.Get("Content-Type"))
	}
}

func TestRedeemFailures(t *testing.T) {
	g := newTestGateway(t, nil)
	uri := pushOK(t, g, validPush())
	tests := []struct {
		name  string
		query string
		json  bool
	}{
		{"client_id missing", "request_uri=" + url.QueryEscape(uri), false},
		{"other client", "client_id=spa&request_uri=" + url.QueryEscape(uri), true},
		{"unknown reference", "client_id=web-app&request_uri=" + url.QueryEscape(requestURIPrefix+strings.Repeat("A", 43)), false},
		{"malformed reference", "client_id=web-app&request_uri=" + url.QueryEscape(requestURIPrefix+"../x"), true},
		{"request_uri twice", "client_id=web-app&request_uri=" + url.QueryEscape(uri) + "&request_uri=" + url.QueryEscape(uri), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up := &upstream{}
			r := httptest.NewRequest(http.MethodGet, "/authorize?"+tt.query, nil)
			if tt.json {
				r.Header.Set("Accept", "application/json")
			}
			w := httptest.NewRecorder()
			if err := g.serveAuthorize(w, r, up.next); err != nil {
				t.Fatal(err)
			}
			if w.Code != http.StatusBadRequest || len(up.requests) != 0 {
				t.Fatalf("status %d, upstream requests %d", w.Code, len(up.requests))
			}
			if !strings.Contains(w.Body.String(), ErrInvalidRequestURI) {
				t.Fatalf("body %q", w.Body)
			}
			wantType := "text/html; charset=utf-8"
			if tt.json {
				wantType = "application/json"
			}
			if ct := w.Header().Get("Content-Type"); ct != wantType || w.Header().Get("Cache-Control") != "no-store" {
				t.Fatalf("headers %v", w.Header())
			}
		})
	}
	// None of the failures above consumed the entry.
	up := &upstream{}
	r := httptest.NewRequest(http.MethodGet, "/authorize?client_id=web-app&request_uri="+url.QueryEscape(uri), nil)
	if err := g.serveAuthorize(httptest.NewRecorder(), r, up.next); err != nil || len(up.requests) != 1 {
		t.Fatalf("rightful redemption after failures: %v, %d requests", err, len(up.requests))
	}
}

func TestRedeemRechecksClientPolicy(t *testing.T) {
	// RFC 9126 §7.4: a redirect_uri deregistered after the push (config
	// reload) no longer works.
	g := newTestGateway(t, nil)
	uri := pushOK(t, g, validPush())
	g.clients["web-app"].redirectURIs = map[string]bool{"https://app.example.com/new": true}
	up := &upstream{}
	w := httptest.NewRecorder()
	r := httptest.NewRequest(http.MethodGet, "/authorize?client_id=web-app&request_uri="+url.QueryEscape(uri), nil)
	if err := g.serveAuthorize(w, r, up.next); err != nil {
		t.Fatal(err)
	}
	if w.Code != http.StatusBadRequest || len(up.requests) != 0 {
		t.Fatalf("status %d, upstream requests %d", w.Code, len(up.requests))
	}
}

func TestUnpushedRequests(t *testing.T) {
	plain := url.Values{"client_id": {"web-app"}, "response_type": {"code"}, "redirect_uri": {"https://app.example.com/cb"}, "state": {"S1"}}
	tests := []struct {
		name       string
		global     bool
		perClient  bool
		query      url.Values
		wantStatus int // 0: forwarded
		wantIss    string
	}{
		{name: "not required: forwarded unchanged", query: plain},
		{name: "required globally: error to registered redirect_uri", global: true, query: plain, wantStatus: http.StatusSeeOther},
		{name: "required for the client", perClient: true, query: plain, wantStatus: http.StatusSeeOther},
		{name: "required for another client only", perClient: true, query: with(plain, "client_id", "spa", "redirect_uri", "http://127.0.0.1/cb")},
		{name: "unregistered redirect_uri: page, never a redirect", global: true, query: with(plain, "redirect_uri", "https://evil.example/cb"), wantStatus: http.StatusBadRequest},
		{name: "unknown client: page", global: true, query: with(plain, "client_id", "ghost"), wantStatus: http.StatusBadRequest},
		{name: "JAR by reference rejected when required", global: true, query: with(plain, "request_uri", "https://app.example.com/req.jwt"), wantStatus: http.StatusSeeOther},
		{name: "JAR by reference passed through otherwise", query: with(plain, "request_uri", "https://app.example.com/req.jwt")},
		{name: "request object rejected when required", global: true, query: with(plain, "request", "eyJ.x.y"), wantStatus: http.StatusSeeOther},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := newTestGateway(t, func(g *gateway) { g.requirePAR = tt.global })
			g.clients["web-app"].requirePAR = tt.perClient
			up := &upstream{}
			w := httptest.NewRecorder()
			r := httptest.NewRequest(http.MethodGet, "/authorize?"+tt.query.Encode(), nil)
			if err := g.serveAuthorize(w, r, up.next); err != nil {
				t.Fatal(err)
			}
			if tt.wantStatus == 0 {
				if len(up.requests) != 1 || up.requests[0].URL.RawQuery != tt.query.Encode() {
					t.Fatalf("not forwarded unchanged: %d requests", len(up.requests))
				}
				return
			}
			if n := authorizeRequests(up); n != 0 || w.Code != tt.wantStatus {
				t.Fatalf("status %d, upstream authorization requests %d", w.Code, n)
			}
			loc := w.Header().Get("Location")
			if tt.wantStatus != http.StatusSeeOther {
				if loc != "" {
					t.Fatalf("redirected to %q", loc)
				}
				return
			}
			u, _ := url.Parse(loc)
			q := u.Query()
			if !strings.HasPrefix(loc, "https://app.example.com/cb?") || q.Get("error") != ErrInvalidRequest || q.Get("state") != "S1" || q.Get("error_description") == "" {
				t.Fatalf("Location %q", loc)
			}
		})
	}
}

func TestErrorRedirectCarriesIssuer(t *testing.T) {
	g := newTestGateway(t, func(g *gateway) { g.requirePAR = true })
	r := httptest.NewRequest(http.MethodGet, "/authorize?client_id=web-app&response_type=code&redirect_uri=https%3A%2F%2Fapp.example.com%2Fcb", nil)
	w := httptest.NewRecorder()
	_ = g.serveAuthorize(w, r, (&upstream{}).next)
	if strings.Contains(w.Header().Get("Location"), "iss=") {
		t.Fatal("iss sent before the issuer is known")
	}
	// Learned from a discovery document that promises RFC 9207.
	g.learnIssuer(metadataInfo{issuer: "https://idp.example/realms/demo", authorizationEndpoint: "https://idp.example/authorize", issParameterSupported: true})
	w = httptest.NewRecorder()
	_ = g.serveAuthorize(w, r, (&upstream{}).next)
	u, _ := url.Parse(w.Header().Get("Location"))
	if got := u.Query().Get("iss"); got != "https://idp.example/realms/demo" {
		t.Fatalf("iss = %q", got)
	}
}

// A Dex-like upstream bounces the forwarded request to another path with
// the full query; the gateway must follow that itself.
func TestSameOriginBounceWithPushedValuesIsFollowedServerSide(t *testing.T) {
	g := newTestGateway(t, nil)
	uri := pushOK(t, g, validPush())
	up := &upstream{respond: func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/authorize":
			http.SetCookie(w, &http.Cookie{Name: "hop1", Value: "v1"})
			w.Header().Set("Location", "/authorize/local?"+r.URL.RawQuery)
			w.WriteHeader(http.StatusFound)
		case "/authorize/local":
			if c, err := r.Cookie("hop1"); err != nil || c.Value != "v1" {
				w.WriteHeader(http.StatusTeapot)
				return
			}
			w.Header().Set("Location", "/authorize/local/login?state=opaque-id")
			w.WriteHeader(http.StatusFound)
		}
	}}
	w := httptest.NewRecorder()
	r := httptest.NewRequest(http.MethodGet, "/authorize?client_id=web-app&request_uri="+url.QueryEscape(uri), nil)
	if err := g.serveAuthorize(w, r, up.next); err != nil {
		t.Fatal(err)
	}
	if w.Code != http.StatusFound || w.Header().Get("Location") != "/authorize/local/login?state=opaque-id" {
		t.Fatalf("browser got %d %q", w.Code, w.Header().Get("Location"))
	}
	if len(up.requests) != 2 {
		t.Fatalf("upstream requests %d, want 2", len(up.requests))
	}
	if got := w.Header().Values("Set-Cookie"); len(got) != 1 || !strings.HasPrefix(got[0], "hop1=v1") {
		t.Fatalf("cookies from followed hops not passed on: %q", got)
	}
}

func TestRedirectLeakDetection(t *testing.T) {
	pushed := validPush()
	r := httptest.NewRequest(http.MethodGet, "http://idp.example/authorize", nil)
	tests := []struct {
		location string
		leaks    bool
	}{
		{"/authorize/local?" + pushed.Encode(), true},
		{"local?nonce=NONCE-1", true},
		{"http://idp.example/x?scope=openid+profile", true},
		{"http://IDP.example/x?code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGjSstw-cM", true},
		{"/login?state=STATE-1&client_id=web-app", false},
		{"/login?session=abc", false},
		{"https://other.example/x?" + pushed.Encode(), false},
		{"https://app.example.com/cb?code=c&state=STATE-1&scope=openid+profile", false},
		{"", false},
	}
	for _, tt := range tests {
		if got := leaksPushed(tt.location, r, pushed.Get("redirect_uri"), pushed); got != tt.leaks {
			t.Errorf("leaksPushed(%q) = %v, want %v", tt.location, got, tt.leaks)
		}
	}
}

func TestAuthorizeRejectsOtherMethods(t *testing.T) {
	g := newTestGateway(t, nil)
	w := httptest.NewRecorder()
	_ = g.serveAuthorize(w, httptest.NewRequest(http.MethodPut, "/authorize", nil), (&upstream{}).next)
	if w.Code != http.StatusMethodNotAllowed || w.Header().Get("Allow") != "GET, POST" {
		t.Fatalf("status %d Allow %q", w.Code, w.Header().Get("Allow"))
	}
}

// with returns a copy of v with the given key/value pairs set.
func with(v url.Values, kv ...string) url.Values {
	out := url.Values{}
	for k, vs := range v {
		out[k] = append([]string(nil), vs...)
	}
	for i := 0; i+1 < len(kv); i += 2 {
		out.Set(kv[i], kv[i+1])
	}
	return out
}

// A client that cached discovery expects iss on the gateway's error
// redirect even when no discovery request has passed through the gateway
// since it started: the gateway finds the document itself.
func TestErrorRedirectProbesDiscoveryForIssuer(t *testing.T) {
	g := newTestGateway(t, func(g *gateway) {
		g.requirePAR = true
		g.authorizationEndpoint = "/realms/demo/protocol/openid-connect/auth"
	})
	up := &upstream{respond: func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/realms/demo/.well-known/openid-configuration" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"issuer":"http://idp.test/realms/demo","authorization_endpoint":"http://idp.test/realms/demo/protocol/openid-connect/auth","authorization_response_iss_parameter_supported":true}`)
	}}
	reject := func() string {
		w := httptest.NewRecorder()
		r := httptest.NewRequest(http.MethodGet, "/realms/demo/protocol/openid-connect/auth?client_id=web-app&redirect_uri=https%3A%2F%2Fapp.example.com%2Fcb", nil)
		if err := g.serveAuthorize(w, r, up.next); err != nil || w.Code != http.StatusSeeOther {
			t.Fatalf("status %d, %v", w.Code, err)
		}
		u, _ := url.Parse(w.Header().Get("Location"))
		return u.Query().Get("iss")
	}
	if got := reject(); got != "http://idp.test/realms/demo" {
		t.Fatalf("iss = %q", got)
	}
	probes := len(up.requests)
	if probes == 0 || up.requests[probes-1].URL.Path != "/realms/demo/.well-known/openid-configuration" {
		t.Fatalf("probe requests: %d", probes)
	}
	if got := reject(); got != "http://idp.test/realms/demo" || len(up.requests) != probes {
		t.Fatalf("second rejection: iss %q, %d more upstream requests", got, len(up.requests)-probes)
	}
}

func TestDiscoveryCandidates(t *testing.T) {
	got := discoveryCandidates("/dex/auth")
	want := []string{"/dex/.well-known/openid-configuration", "/.well-known/oauth-authorization-server/dex",
		"/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("got %q", got)
	}
}

// authorizeRequests counts what reached the upstream's authorization
// endpoint (discovery probes for iss may also go upstream).
func authorizeRequests(up *upstream) int {
	n := 0
	for _, r := range up.requests {
		if !isDiscoveryPath(r.URL.Path) {
			n++
		}
	}
	return n
}

// A hanging upstream must not hold up a rejection for longer than the probe
// allows, nor make concurrent rejections wait.
func TestIssuerProbeIsBoundedAndDoesNotQueue(t *testing.T) {
	g := newTestGateway(t, func(g *gateway) { g.requirePAR = true })
	release := make(chan struct{})
	defer close(release)
	hang := func(w http.ResponseWriter, r *http.Request) error {
		select {
		case <-r.Context().Done():
		case <-release:
		}
		return r.Context().Err()
	}
	r := httptest.NewRequest(http.MethodGet, "/authorize?client_id=web-app&redirect_uri=https%3A%2F%2Fapp.example.com%2Fcb", nil)
	g.probeMu.Lock() // a probe is under way
	w := httptest.NewRecorder()
	done := make(chan struct{})
	go func() { _ = g.serveAuthorize(w, r, hang); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("rejection waited behind a running probe")
	}
	g.probeMu.Unlock()
	if w.Code != http.StatusSeeOther || strings.Contains(w.Header().Get("Location"), "iss=") {
		t.Fatalf("status %d Location %q", w.Code, w.Header().Get("Location"))
	}
}
