package caddymodule

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"
)

func TestHostileParamCharsRefuseWhatAnUpstreamCouldReadDifferently(t *testing.T) {
	for _, tc := range []struct {
		name string
		form url.Values
		ok   bool
	}{
		{"plain", url.Values{"state": {"abc"}, "x": {"é ✓"}}, true},
		{"JSON_whitespace_in_claims", url.Values{"claims": {"{\n\t\"a\": 1\r\n}"}}, true},
		{"JSON_whitespace_in_authorization_details", url.Values{"authorization_details": {"[\n{}]"}}, true},
		{"NUL_in_value", url.Values{"state": {"a\x00"}}, false},
		{"NUL_in_claims", url.Values{"claims": {"{\x00}"}}, false},
		{"NUL_in_name", url.Values{"state\x00": {"a"}}, false},
		{"invalid_UTF-8_value", url.Values{"nonce": {"\xff"}}, false},
		{"invalid_UTF-8_name", url.Values{"\xc0\xaf": {"a"}}, false},
		{"surrogate", url.Values{"x": {"\xed\xa0\x80"}}, false},
		{"LF_in_state", url.Values{"state": {"a\nb"}}, false},
		{"CR_in_redirect_uri", url.Values{"redirect_uri": {"https://a/\r"}}, false},
		{"HTAB_in_nonce", url.Values{"nonce": {"a\tb"}}, false},
		{"LF_in_name", url.Values{"a\nb": {"1"}}, false},
		{"ESC", url.Values{"x": {"\x1b[31m"}}, false},
		{"DEL", url.Values{"x": {"\x7f"}}, false},
		{"ESC_in_claims", url.Values{"claims": {"\x1b"}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			oerr := checkParamChars(tc.form)
			if (oerr == nil) != tc.ok {
				t.Fatalf("checkParamChars = %v, want ok=%v", oerr, tc.ok)
			}
			if oerr != nil && oerr.Code != ErrInvalidRequest {
				t.Errorf("code %s", oerr.Code)
			}
		})
	}
}

func TestHostileAuthorizationLookalikePaths(t *testing.T) {
	for _, ep := range []string{"/realms/demo/protocol/openid-connect/auth", "/auth/"} {
		g := &gateway{authorizationEndpoint: ep}
		base := "/realms/demo/protocol/openid-connect/auth"
		if ep == "/auth/" {
			base = "/auth"
		}
		for _, p := range []string{base + "/", base + "//", "/" + base, base + "/.", base + ";jsessionid=x", base + "\\", "/x/.." + base, "/." + base, strings.ToUpper(base)} {
			if p == ep {
				continue
			}
			if !g.isAuthorizationLookalike(p) {
				t.Errorf("endpoint %s: %q is not taken for a look-alike", ep, p)
			}
		}
		for _, p := range []string{ep, base + "/callback", base + "x", "/x" + base, "/", "/.well-known/openid-configuration"} {
			if g.isAuthorizationLookalike(p) {
				t.Errorf("endpoint %s: %q taken for a look-alike", ep, p)
			}
		}
	}
}

// Without a body, net/http is already reading the connection in the
// background; a read deadline would make that read fail and cancel the
// request while the handler still works (a redemption waiting for a slow
// upstream).
func TestHostileBodyReadBoundLeavesBodylessRequestsAlone(t *testing.T) {
	restore := SetBodyReadTimeoutForTest(100 * time.Millisecond)
	defer restore()
	errc := make(chan error, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		boundBodyRead(w, r)
		time.Sleep(400 * time.Millisecond)
		errc <- r.Context().Err()
	}))
	defer srv.Close()
	resp, err := http.Post(srv.URL, "application/x-www-form-urlencoded", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if err := <-errc; err != nil {
		t.Fatalf("the request was cancelled: %v", err)
	}
}
