package caddymodule

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
)

const testSecret = "s3cret+:%"

// newTestGateway builds a gateway with a confidential client "web-app" and a
// public client "spa" over a fresh memory store.
func newTestGateway(t testing.TB, mod func(g *gateway)) *gateway {
	t.Helper()
	cache := newTestCache(t, 1<<20)
	clients := map[string]*client{}
	for _, c := range []ClientConfig{
		{ClientID: "web-app", Secret: testSecret, RedirectURIs: []string{"https://app.example.com/cb"}, AllowedScopes: []string{"openid", "profile", "email"}},
		{ClientID: "spa", Public: true, RedirectURIs: []string{"http://127.0.0.1/cb"}},
	} {
		if err := c.validate(); err != nil {
			t.Fatal(err)
		}
		clients[c.ClientID] = mustClient(t, c)
	}
	g := &gateway{
		authorizationEndpoint: "/authorize",
		parEndpoint:           "/par",
		lifetime:              60 * time.Second,
		maxRequestSize:        4096,
		clients:               clients,
		auth:                  &clientAuthenticator{clients: clients},
		store:                 cache,
		partition:             "t/",
		logger:                zap.NewNop(),
		now:                   time.Now,
	}
	if mod != nil {
		mod(g)
	}
	return g
}

// mustClient provisions a client config for a test.
func mustClient(t testing.TB, c ClientConfig) *client {
	t.Helper()
	if err := c.validate(); err != nil {
		t.Fatal(err)
	}
	cl, err := newClient(c, keySource{})
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

// validPush is a push of web-app that passes validation.
func validPush() url.Values {
	return url.Values{
		"client_id":             {"web-app"},
		"response_type":         {"code"},
		"redirect_uri":          {"https://app.example.com/cb"},
		"scope":                 {"openid profile"},
		"state":                 {"STATE-1"},
		"nonce":                 {"NONCE-1"},
		"code_challenge":        {"E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGjSstw-cM"},
		"code_challenge_method": {"S256"},
	}
}

// parRequest builds a PAR request with Basic credentials when user != "".
func parRequest(form url.Values, user, pass string) *http.Request {
	r := httptest.NewRequest(http.MethodPost, "/par", strings.NewReader(form.Encode()))
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if user != "" {
		r.SetBasicAuth(url.QueryEscape(user), url.QueryEscape(pass))
	}
	return r
}

// pushOK pushes a valid request and returns the issued request_uri.
func pushOK(t testing.TB, g *gateway, form url.Values) string {
	t.Helper()
	_, resp, oerr := g.push(parRequest(form, "web-app", testSecret), nil)
	if oerr != nil {
		t.Fatalf("push failed: %v", oerr)
	}
	return resp.RequestURI
}
