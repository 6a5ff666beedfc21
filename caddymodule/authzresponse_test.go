package caddymodule

import (
	"net/url"
	"testing"
)

func TestIssParseAuthzResponse(t *testing.T) {
	l := &lift{redirects: map[string][]redirectTarget{}}
	for _, u := range []string{"https://app.example/cb", "https://q.example/cb?tenant=a"} {
		base, q, _ := cutQuery(u)
		l.redirects[base] = append(l.redirects[base], redirectTarget{clientID: "c", uri: u, query: q})
	}
	for _, tc := range []struct {
		loc      string
		ok       bool
		fragment bool
	}{
		{"https://app.example/cb?code=x&state=s", true, false},
		{"https://app.example/cb?error=access_denied", true, false},
		{"https://app.example/cb#code=x&state=s", true, true},
		{"https://app.example/cb?state=s#error=login_required", true, true},
		{"https://app.example/cb?state=s", false, false},        // no code or error: not a response
		{"https://app.example/cb/more?code=x", false, false},    // another URI
		{"https://app.example/cb2?code=x", false, false},        // another URI
		{"https://evil.example/cb?code=x", false, false},        // unregistered
		{"/cb?code=x", false, false},                            // relative
		{"https://q.example/cb?tenant=a&code=x", true, false},   // registered query kept first
		{"https://q.example/cb?code=x&tenant=a", false, false},  // registered query not first
		{"https://q.example/cb?tenant=ab&code=x", false, false}, // another query
		{"HTTPS://APP.EXAMPLE/cb?code=x", false, false},         // exact match only
		{"https://app.example/cb?code=x#frag-without-params", true, false},
	} {
		res, ok := l.parseAuthzResponse(tc.loc)
		if ok != tc.ok || (ok && res.fragment != tc.fragment) {
			t.Errorf("%s: ok=%v fragment=%v, want ok=%v fragment=%v", tc.loc, ok, res.fragment, tc.ok, tc.fragment)
		}
	}
}

func cutQuery(u string) (string, string, bool) {
	for i := 0; i < len(u); i++ {
		if u[i] == '?' {
			return u[:i], u[i+1:], true
		}
	}
	return u, "", false
}

func TestIssWithParamAddsOnlyThatParameter(t *testing.T) {
	const iss = "https://idp.example/realms/a b"
	esc := url.QueryEscape(iss)
	for _, tc := range []struct {
		loc      string
		fragment bool
		want     string
	}{
		{"https://app/cb?code=a%2Fb&state=x", false, "https://app/cb?code=a%2Fb&state=x&iss=" + esc},
		{"https://app/cb?code=a#keep", false, "https://app/cb?code=a&iss=" + esc + "#keep"},
		{"https://app/cb?", false, "https://app/cb?iss=" + esc},
		{"https://app/cb", false, "https://app/cb?iss=" + esc},
		{"https://app/cb#code=a&state=x", true, "https://app/cb#code=a&state=x&iss=" + esc},
		{"https://app/cb?q=1#code=a", true, "https://app/cb?q=1#code=a&iss=" + esc},
	} {
		if got := withParam(tc.loc, tc.fragment, "iss", iss); got != tc.want {
			t.Errorf("withParam(%q) = %q, want %q", tc.loc, got, tc.want)
		}
	}
}
