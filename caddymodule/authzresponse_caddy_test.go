package caddymodule_test

// In-process tests of iss in authorization responses (RFC 9207, issue 10
// §1): a stand-in IdP that answers its login form with the redirect to the
// client, at a path other than the authorization endpoint, as Keycloak
// (/login-actions/...) and Dex (/dex/approval) do.

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

const issIssuer = "https://idp.example.test/realms/demo"

// issRedirect is an upstream route answering with 302 to loc, an upstream
// cookie and a small body, as a login form's POST does.
func issRedirect(loc string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Location", loc)
		w.Header().Set("Set-Cookie", "KC_SESSION=upstream; Path=/")
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.WriteHeader(http.StatusFound)
		_, _ = io.WriteString(w, `<a href="`+loc+`">Found</a>`)
	}
}

func TestCaddyIssAddedToAuthorizationResponses(t *testing.T) {
	esc := url.QueryEscape(issIssuer)
	routes := map[string]http.HandlerFunc{
		"/login-actions/query":        issRedirect(ctAppRedirect + "?code=C0DE&state=S"),
		"/login-actions/fragment":     issRedirect(ctAppRedirect + "#code=C0DE&state=S"),
		"/login-actions/error":        issRedirect(ctAppRedirect + "?error=access_denied&state=S"),
		"/login-actions/second_uri":   issRedirect("https://app.example.test/cb2?code=C0DE"),
		"/login-actions/with_iss":     issRedirect(ctAppRedirect + "?code=C0DE&state=S&iss=" + esc),
		"/login-actions/wrong_iss":    issRedirect(ctAppRedirect + "?code=C0DE&state=S&iss=" + url.QueryEscape("https://evil.example.test")),
		"/login-actions/wrong_iss_fr": issRedirect(ctAppRedirect + "#code=C0DE&iss=https%3A%2F%2Fevil.example.test"),
		"/login-actions/two_iss":      issRedirect(ctAppRedirect + "?code=C0DE&iss=" + esc + "&iss=" + esc),
		"/login-actions/unregistered": issRedirect("https://evil.example.test/cb?code=C0DE"),
		"/login-actions/longer_path":  issRedirect(ctAppRedirect + "/x?code=C0DE"),
		"/login-actions/no_response":  issRedirect(ctAppRedirect + "?state=S"),
		"/login-actions/same_origin":  issRedirect("/login?code=C0DE"),
		"/login-actions/spa_fragment": issRedirect(ctSPARedirect + "#error=login_required"),
		"/login-actions/303": func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, ctAppRedirect+"?code=C", http.StatusSeeOther)
		},
		"/login-actions/200":                func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, strings.Repeat("page ", 20000)) },
		"/.well-known/openid-configuration": ctJSONHandler(`{"issuer":"` + issIssuer + `","authorization_endpoint":"https://idp.example.test/authorize","authorization_response_iss_parameter_supported":false}`),
		"/login-actions/two_locations": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Add("Location", ctAppRedirect+"?code=C0DE")
			w.Header().Add("Location", "https://evil.example.test/")
			w.WriteHeader(http.StatusFound)
		},
		"/login-actions/not_redirect_with_location": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Location", ctAppRedirect+"?code=C")
			w.WriteHeader(http.StatusCreated)
		},
	}
	up := ctNewUpstream(t, routes)
	c := ctStart(t, up, "", ctBlock("issuer "+issIssuer, "add_iss"))

	for _, tc := range []struct{ path, want string }{
		{"/login-actions/query", ctAppRedirect + "?code=C0DE&state=S&iss=" + esc},
		{"/login-actions/fragment", ctAppRedirect + "#code=C0DE&state=S&iss=" + esc},
		{"/login-actions/error", ctAppRedirect + "?error=access_denied&state=S&iss=" + esc},
		{"/login-actions/second_uri", "https://app.example.test/cb2?code=C0DE&iss=" + esc},
		{"/login-actions/spa_fragment", ctSPARedirect + "#error=login_required&iss=" + esc},
		{"/login-actions/303", ctAppRedirect + "?code=C&iss=" + esc},
		// An upstream iss equal to ours is verified, not doubled.
		{"/login-actions/with_iss", ctAppRedirect + "?code=C0DE&state=S&iss=" + esc},
		// Not authorization responses to a registered URI: untouched.
		{"/login-actions/unregistered", "https://evil.example.test/cb?code=C0DE"},
		{"/login-actions/longer_path", ctAppRedirect + "/x?code=C0DE"},
		{"/login-actions/no_response", ctAppRedirect + "?state=S"},
		{"/login-actions/same_origin", "/login?code=C0DE"},
	} {
		t.Run(strings.TrimPrefix(tc.path, "/login-actions/"), func(t *testing.T) {
			r := c.postForm(t, tc.path, "username=u&password=p", nil)
			if r.Status/100 != 3 {
				t.Fatalf("want a redirect, got %s", r)
			}
			if got := r.Header.Get("Location"); got != tc.want {
				t.Errorf("Location = %q, want %q", got, tc.want)
			}
			if r.Header.Get("Set-Cookie") == "" && tc.path != "/login-actions/303" {
				t.Errorf("the upstream's cookie was dropped")
			}
		})
	}

	for _, p := range []string{"/login-actions/wrong_iss", "/login-actions/wrong_iss_fr", "/login-actions/two_iss", "/login-actions/two_locations"} {
		t.Run("refused_"+strings.TrimPrefix(p, "/login-actions/"), func(t *testing.T) {
			r := c.postForm(t, p, "username=u&password=p", nil)
			ctWantHTMLError(t, r, http.StatusBadGateway, "server_error")
			if r.Header.Get("Set-Cookie") != "" || bytes.Contains(r.Body, []byte("C0DE")) {
				t.Errorf("the upstream's response leaked into the error page: %s", r)
			}
		})
	}

	t.Run("other_responses_pass_unchanged", func(t *testing.T) {
		r := c.get(t, "/login-actions/200", nil)
		if r.Status != http.StatusOK || len(r.Body) != 5*20000 {
			t.Errorf("200 page: status %d, %d bytes", r.Status, len(r.Body))
		}
		r = c.get(t, "/login-actions/not_redirect_with_location", nil)
		if r.Status != http.StatusCreated || r.Header.Get("Location") != ctAppRedirect+"?code=C" {
			t.Errorf("201 with Location: %s", r)
		}
	})

	t.Run("discovery_advertises_iss", func(t *testing.T) {
		r := c.get(t, "/.well-known/openid-configuration", nil)
		doc := ctDecode(t, r.Body)
		if doc["authorization_response_iss_parameter_supported"] != true {
			t.Errorf("authorization_response_iss_parameter_supported = %v, want true", doc["authorization_response_iss_parameter_supported"])
		}
		if n := bytes.Count(r.Body, []byte("authorization_response_iss_parameter_supported")); n != 1 {
			t.Errorf("member appears %d times", n)
		}
	})

	t.Run("form_post_refused_at_push", func(t *testing.T) {
		ctWantJSONError(t, c.pushApp(t, ctWith(ctAppForm(), "response_mode", "form_post")), http.StatusBadRequest, "invalid_request")
		if r := c.pushApp(t, ctWith(ctAppForm(), "response_mode", "query")); r.Status != http.StatusCreated {
			t.Errorf("response_mode query: %s", r)
		}
	})
}

func TestCaddyIssAtTheAuthorizationEndpointAfterRedemption(t *testing.T) {
	// An IdP with a session answers the redeemed request at once.
	up := ctNewUpstream(t, map[string]http.HandlerFunc{"/authorize": issRedirect(ctAppRedirect + "?code=SSO&state=S")})
	c := ctStart(t, up, "", ctBlock("issuer "+issIssuer, "add_iss"))
	ru := c.mustPush(t, ctAppForm(), ctBasic(ctAppID, ctAppSecret))
	r := c.get(t, ctRedeemQuery(ctAppID, ru), nil)
	if got, want := r.Header.Get("Location"), ctAppRedirect+"?code=SSO&state=S&iss="+url.QueryEscape(issIssuer); r.Status != http.StatusFound || got != want {
		t.Errorf("redeemed: %d Location %q, want %q", r.Status, got, want)
	}
}

func TestCaddyIssLearnedFromDiscovery(t *testing.T) {
	// Dex-like: no iss support, issuer from discovery.
	const dexIss = "https://idp.example.test/dex"
	routes := map[string]http.HandlerFunc{
		"/dex/.well-known/openid-configuration": ctJSONHandler(`{"issuer":"` + dexIss + `","authorization_endpoint":"https://idp.example.test/dex/auth","token_endpoint":"https://idp.example.test/dex/token"}`),
		"/dex/approval":                         issRedirect(ctAppRedirect + "?code=C0DE&state=S"),
	}
	up := ctNewUpstream(t, routes)
	block := strings.Replace(ctBlock("add_iss", "require_par"), "authorization_endpoint /authorize", "authorization_endpoint /dex/auth", 1)
	c := ctStart(t, up, "", block)

	// No client fetched discovery: the gateway probes it itself.
	r := c.postForm(t, "/dex/approval", "approval=approve", nil)
	if got, want := r.Header.Get("Location"), ctAppRedirect+"?code=C0DE&state=S&iss="+url.QueryEscape(dexIss); got != want {
		t.Errorf("Location = %q, want %q", got, want)
	}
	// The gateway's own error redirects carry it too.
	r = c.get(t, "/dex/auth?"+url.Values{"response_type": {"code"}, "client_id": {ctAppID}, "redirect_uri": {ctAppRedirect}, "state": {"S"}}.Encode(), nil)
	loc, _ := url.Parse(r.Header.Get("Location"))
	if r.Status != http.StatusSeeOther || loc.Query().Get("iss") != dexIss || strings.Count(loc.RawQuery, "iss=") != 1 {
		t.Errorf("error redirect: %s", r)
	}
}

func TestCaddyIssUnknownIssuerIsAnErrorPage(t *testing.T) {
	up := ctNewUpstream(t, map[string]http.HandlerFunc{"/cb-post": issRedirect(ctAppRedirect + "?code=C0DE")})
	c := ctStart(t, up, "", ctBlock("add_iss"))
	ctWantHTMLError(t, c.postForm(t, "/cb-post", "", nil), http.StatusBadGateway, "server_error")
}

func TestCaddyIssConfigErrorsNameTheDirective(t *testing.T) {
	up := ctNewUpstream(t, nil)
	storage := t.TempDir()
	ctWantLoadError(t, up, storage, ctBlock("add_iss on"), "add_iss")
}

// The wrapper that watches every response must not buffer: a streamed
// response arrives while the upstream is still writing, and a connection
// upgrade (Hijack, through http.ResponseController and Unwrap) works.
func TestCaddyIssWatchingKeepsStreamingAndUpgrades(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	routes := map[string]http.HandlerFunc{
		"/events": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/event-stream")
			_, _ = io.WriteString(w, "data: first\n\n")
			_ = http.NewResponseController(w).Flush()
			select {
			case <-release:
			case <-time.After(5 * time.Second):
			}
		},
		"/ws": func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get("Upgrade") != "websocket" {
				http.Error(w, "no upgrade", http.StatusBadRequest)
				return
			}
			conn, brw, err := http.NewResponseController(w).Hijack()
			if err != nil {
				return
			}
			defer conn.Close()
			_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
			_ = brw.Flush()
			line, _ := brw.ReadString('\n')
			_, _ = brw.WriteString("echo " + line)
			_ = brw.Flush()
		},
	}
	up := ctNewUpstream(t, routes)
	c := ctStart(t, up, "", ctBlock("issuer "+issIssuer, "add_iss"))

	t.Run("streamed", func(t *testing.T) {
		resp, err := c.client.Get(c.base + "/events")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		got := make(chan string, 1)
		go func() {
			line, _ := bufio.NewReader(resp.Body).ReadString('\n')
			got <- line
		}()
		select {
		case line := <-got:
			if line != "data: first\n" {
				t.Errorf("first line %q", line)
			}
		case <-time.After(3 * time.Second):
			t.Fatal("the first event did not arrive while the upstream was still writing: buffered")
		}
	})

	t.Run("upgraded", func(t *testing.T) {
		conn, err := net.DialTimeout("tcp", strings.TrimPrefix(c.base, "http://"), 3*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		_, _ = io.WriteString(conn, "GET /ws HTTP/1.1\r\nHost: "+strings.TrimPrefix(c.base, "http://")+"\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
		br := bufio.NewReader(conn)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusSwitchingProtocols {
			t.Fatalf("status %d", resp.StatusCode)
		}
		_, _ = io.WriteString(conn, "ping\n")
		if line, _ := br.ReadString('\n'); line != "echo ping\n" {
			t.Errorf("after the upgrade: %q", line)
		}
	})
}
