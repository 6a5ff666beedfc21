package caddymodule

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"testing"
	"time"
)

func TestGraceStripCookiesKeepsOthersByteForByte(t *testing.T) {
	g := graceCookiePrefix + "0123456789ab=secret"
	for _, tc := range []struct {
		in, want []string
	}{
		{[]string{"a=1; b=2"}, []string{"a=1; b=2"}},
		{[]string{g}, nil},
		{[]string{g + "; a=1"}, []string{"a=1"}},
		{[]string{"a=1; " + g}, []string{"a=1"}},
		{[]string{"a=1; " + g + "; b=\"q v\""}, []string{"a=1; b=\"q v\""}},
		{[]string{"a=1;" + g + ";" + graceCookiePrefix + "x=y;b=2"}, []string{"a=1;b=2"}},
		{[]string{"a=1", g, "b=2"}, []string{"a=1", "b=2"}}, // HTTP/2 may split them
		// PKCE binding cookies (pkce.go), plain and __Host-.
		{[]string{"a=1; oauth_par_pkce_0123=v; __Host-oauth_par_pkce_4567=w"}, []string{"a=1"}},
		// Names that merely contain the mark stay.
		{[]string{"my_oauth_par_x=1; a=oauth_par_y"}, []string{"my_oauth_par_x=1; a=oauth_par_y"}},
	} {
		h := http.Header{"Cookie": tc.in}
		stripGraceCookies(h)
		if got := h["Cookie"]; !reflect.DeepEqual(got, tc.want) {
			t.Errorf("strip(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestGraceCookieAttributes(t *testing.T) {
	g := &gateway{authorizationEndpoint: "/realms/demo/protocol/openid-connect/auth"}
	v, h := newGraceSecret()
	v2, h2 := newGraceSecret()
	if v == v2 || h == h2 || len(v) != 43 {
		t.Fatalf("secrets %q %q", v, v2)
	}
	name := graceCookieName("ref-1")
	if name == graceCookieName("ref-2") || len(name) != len(graceCookiePrefix)+12 {
		t.Fatalf("cookie names %q %q", name, graceCookieName("ref-2"))
	}
	for _, tc := range []struct {
		life time.Duration
		want string
	}{
		{10 * time.Second, "Max-Age=10"},
		{4100 * time.Millisecond, "Max-Age=5"}, // rounded up, never 0 (which would delete it)
		{time.Millisecond, "Max-Age=1"},
	} {
		got := g.graceCookie(name, v, tc.life).String()
		want := name + "=" + v + "; Path=/realms/demo/protocol/openid-connect/auth; " + tc.want + "; HttpOnly; Secure; SameSite=Lax"
		if got != want {
			t.Errorf("Set-Cookie\n got %s\nwant %s", got, want)
		}
	}
}

// BenchmarkRedeemWithGrace is BenchmarkRedeem with reuse_grace on: the
// first redemption also draws a secret, hashes it and sets the cookie.
func BenchmarkRedeemWithGrace(b *testing.B) {
	g := newTestGateway(b, func(g *gateway) { g.store = newTestCache(b, 1<<30); g.reuseGrace = DefaultReuseGrace })
	next := func(w http.ResponseWriter, r *http.Request) error { w.WriteHeader(http.StatusOK); return nil }
	reqs := make([]*http.Request, b.N)
	for i := range reqs {
		uri := pushOK(b, g, validPush())
		reqs[i] = httptest.NewRequest(http.MethodGet, "/authorize?client_id=web-app&request_uri="+url.QueryEscape(uri), nil)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		w := httptest.NewRecorder()
		if err := g.serveAuthorize(w, reqs[i], next); err != nil || w.Code != http.StatusOK || w.Header().Get("Set-Cookie") == "" {
			b.Fatal(err, w.Code)
		}
	}
}
