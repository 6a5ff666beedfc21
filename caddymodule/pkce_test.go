package caddymodule

import (
	"strings"
	"testing"
)

func TestPKCEValidVerifier(t *testing.T) {
	for v, want := range map[string]bool{
		strings.Repeat("a", 42):             false,
		strings.Repeat("a", 43):             true,
		strings.Repeat("Z", 128):            true,
		strings.Repeat("a", 129):            false,
		"abc-._~" + strings.Repeat("0", 40): true,
		"abc+/=" + strings.Repeat("0", 40):  false,
		strings.Repeat("a", 42) + " ":       false,
		strings.Repeat("a", 42) + "\u00e9":  false,
		"":                                  false,
	} {
		if got := validVerifier(v); got != want {
			t.Errorf("validVerifier(%q) = %v, want %v", v, got, want)
		}
	}
}

func TestPKCEWithoutParamsKeepsOtherPairsAsSent(t *testing.T) {
	in := "client_id=a&code_challenge=X&scope=openid+email&code_challenge_method=S256&state=s%2Fx&code%5Fchallenge=Y"
	if got, want := withoutParams(in, "code_challenge", "code_challenge_method"), "client_id=a&scope=openid+email&state=s%2Fx"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestPKCEBindingSubjectSeparatesLogins(t *testing.T) {
	if bindingSubject("a", "https://x/cb", "s1") == bindingSubject("a", "https://x/cb", "s2") {
		t.Fatal("subjects of two states collide")
	}
	g := newTestGateway(t, nil)
	r1 := parRequest(nil, "", "")
	if g.bindingCookie(r1, bindingSubject("a", "u", "1")) == g.bindingCookie(r1, bindingSubject("a", "u", "2")) {
		t.Error("two logins share a cookie name")
	}
}
