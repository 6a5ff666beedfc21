package caddymodule

import (
	"net/http"
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
