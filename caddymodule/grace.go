package caddymodule

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Reuse grace (reuse_grace): browsers reload the page served at the
// authorization URL (Keycloak renders its login form there), retry after a
// SPNEGO 401 or a dropped connection. RFC 9126 §4 allows tolerating such
// duplicates; the gateway does so only for the browser that redeemed the
// request_uri first, identified by a cookie it sets on that redemption, and
// only for a short time that never outlasts the request_uri's expiry.
const (
	// DefaultReuseGrace covers reloads and automatic retries, which come
	// within seconds of the first redemption, while keeping the window in
	// which the first browser can have the request forwarded again short.
	DefaultReuseGrace = 10 * time.Second
	// MaxReuseGrace bounds the setting: longer windows are no longer about
	// retries.
	MaxReuseGrace = 60 * time.Second

	// graceCookiePrefix starts every grace cookie's name. __Secure- makes
	// browsers refuse the cookie unless it is set with Secure from a secure
	// origin, so it cannot be planted over plain http on the network.
	graceCookiePrefix = "__Secure-oauth_par_"
	// maxPresentedGrace bounds how many same-named cookies are checked.
	maxPresentedGrace = 4
)

// graceCookieName is the cookie of one request_uri: the prefix and the
// reference's log fingerprint (request_uri_fp), so that logins in parallel
// tabs each have their own cookie and an operator can match a cookie to
// its log lines. The name reveals nothing the browser does not know.
func graceCookieName(ref string) string {
	sum := sha256.Sum256([]byte(ref))
	return graceCookiePrefix + hex.EncodeToString(sum[:6])
}

// newGraceSecret is a fresh cookie value, 256 bits from crypto/rand, and
// its SHA-256, which is all the store keeps.
func newGraceSecret() (string, [32]byte) {
	var b [32]byte
	_, _ = rand.Read(b[:]) // never fails (Go 1.24+); it crashes the program instead
	v := base64.RawURLEncoding.EncodeToString(b[:])
	return v, sha256.Sum256([]byte(v))
}

// presentedGrace are the hashes of the values of the browser's cookies
// named name (a cookie set again by a sibling host may come twice).
func presentedGrace(r *http.Request, name string) [][32]byte {
	var out [][32]byte
	for _, c := range r.CookiesNamed(name) {
		if len(out) == maxPresentedGrace {
			break
		}
		out = append(out, sha256.Sum256([]byte(c.Value)))
	}
	return out
}

// graceCookie is the Set-Cookie of a first redemption: HttpOnly, Secure
// (always: browsers accept it from https origins and from http://localhost
// and http://127.0.0.1), SameSite=Lax (sent on top-level navigations to
// the authorization endpoint, as reloads are), scoped to the authorization
// endpoint's path, living as long as the grace does.
func (g *gateway) graceCookie(name, value string, maxAge time.Duration) *http.Cookie {
	secs := int((maxAge + time.Second - 1) / time.Second)
	return &http.Cookie{
		Name:     name,
		Value:    value,
		Path:     (&url.URL{Path: g.authorizationEndpoint}).EscapedPath(),
		MaxAge:   max(secs, 1),
		HttpOnly: true,
		Secure:   true,
		SameSite: http.SameSiteLaxMode,
	}
}

// gatewayCookieMark is in the name of every cookie the gateway sets: the
// grace cookies here, the PKCE binding cookies of pkce.go.
const gatewayCookieMark = "oauth_par_"

// isGatewayCookie reports whether a "name=value" pair of a Cookie header
// is one of the gateway's own cookies.
func isGatewayCookie(pair string) bool {
	name := strings.TrimSpace(pair)
	name = strings.TrimPrefix(name, "__Secure-")
	name = strings.TrimPrefix(name, "__Host-")
	return strings.HasPrefix(name, gatewayCookieMark)
}

// withoutGatewayCookies is r as it may go upstream: r itself when it
// carries none of the gateway's cookies, otherwise a copy without them. r
// keeps them: the authorization response watcher (authzresponse.go) reads
// the PKCE binding cookie from it.
func withoutGatewayCookies(r *http.Request) *http.Request {
	found := false
	for _, l := range r.Header["Cookie"] {
		if strings.Contains(l, gatewayCookieMark) {
			found = true
			break
		}
	}
	if !found {
		return r
	}
	r2 := new(http.Request)
	*r2 = *r
	r2.Header = r.Header.Clone()
	stripGraceCookies(r2.Header)
	return r2
}

// stripGraceCookies removes the gateway's own cookies (grace and PKCE
// binding) from a request about to go upstream: they are the gateway's
// business only, and their values must not reach the IdP's logs. Other
// cookies are left byte for byte as the browser sent them.
func stripGraceCookies(h http.Header) {
	lines := h["Cookie"]
	found := false
	for _, l := range lines {
		if strings.Contains(l, gatewayCookieMark) {
			found = true
			break
		}
	}
	if !found {
		return
	}
	var kept []string
	for _, l := range lines {
		var parts []string
		for _, p := range strings.Split(l, ";") {
			if isGatewayCookie(p) {
				continue
			}
			parts = append(parts, p)
		}
		if len(parts) > 0 {
			kept = append(kept, strings.TrimLeft(strings.Join(parts, ";"), " "))
		}
	}
	if len(kept) == 0 {
		h.Del("Cookie")
		return
	}
	h["Cookie"] = kept
}
