package caddymodule

import (
	"net/url"
	"strings"
	"testing"
)

// FuzzAuthzResponse: whatever Location an upstream sends, recognising it
// never panics, only registered URIs are recognised, and adding iss
// changes nothing but appending that one parameter.
func FuzzAuthzResponse(f *testing.F) {
	for _, s := range []string{
		"https://app.example/cb?code=x&state=s",
		"https://app.example/cb#code=x",
		"https://app.example/cb?error=access_denied#",
		"https://q.example/cb?tenant=a&code=x",
		"https://app.example/cb?code=%zz",
		"https://app.example/cb?;code=x",
		"/relative?code=x",
		"",
	} {
		f.Add(s)
	}
	l := &lift{redirects: map[string][]redirectTarget{
		"https://app.example/cb": {{clientID: "c", uri: "https://app.example/cb"}},
		"https://q.example/cb":   {{clientID: "c", uri: "https://q.example/cb?tenant=a", query: "tenant=a"}},
	}}
	f.Fuzz(func(t *testing.T, loc string) {
		res, ok := l.parseAuthzResponse(loc)
		if !ok {
			return
		}
		if !strings.HasPrefix(loc, "https://app.example/cb") && !strings.HasPrefix(loc, "https://q.example/cb?tenant=a") {
			t.Fatalf("recognised %q", loc)
		}
		out := withParam(loc, res.fragment, "iss", "https://idp.example/a b")
		pair := "iss=" + url.QueryEscape("https://idp.example/a b")
		if res.fragment {
			if !strings.HasPrefix(out, loc) || !strings.HasSuffix(out, pair) {
				t.Fatalf("withParam(%q) = %q", loc, out)
			}
			return
		}
		before, frag, hasFrag := strings.Cut(loc, "#")
		ob, of, ohas := strings.Cut(out, "#")
		if ohas != hasFrag || of != frag || !strings.HasPrefix(ob, before) || !strings.HasSuffix(ob, pair) || len(ob) > len(before)+len(pair)+1 {
			t.Fatalf("withParam(%q) = %q", loc, out)
		}
	})
}
