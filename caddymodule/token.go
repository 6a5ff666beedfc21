package caddymodule

// The token endpoint behind the gateway (issue 10 §2-3): clients
// authenticate with any method the gateway supports, under the same rules
// and replay caches as at the PAR endpoint; the gateway checks PKCE and
// one-time use of the codes it bound (pkce.go), then forwards the request
// upstream with the credentials the upstream knows the client by.

import (
	"encoding/base64"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// ErrInvalidGrant is RFC 6749 §5.2's invalid_grant.
const ErrInvalidGrant = "invalid_grant"

// serveToken is the token endpoint.
func (g *gateway) serveToken(w http.ResponseWriter, r *http.Request, next nextHandler) error {
	boundBodyRead(w, r)
	var method string
	fwd, clientID, oerr := g.tokenRequest(r, next, &method)
	if oerr != nil {
		g.logOutcome(r, epToken, logID(clientID), method, "rejected", oerr.Code, "")
		writeJSONError(w, oerr)
		return nil
	}
	g.logOutcome(r, epToken, clientID, method, "forwarded", "", "")
	return next(w, fwd)
}

// tokenRequest authenticates and checks a token request and returns the
// request to forward upstream.
// *method is set to the client authentication method used or tried.
func (g *gateway) tokenRequest(r *http.Request, next nextHandler, method *string) (*http.Request, string, *oauthError) {
	// The PAR endpoint's per-source limit guards the same work here
	// (secret comparison, assertion signatures); the address's bucket is
	// the one its pushes use.
	src, oerr := g.limits.checkSource(r)
	if oerr != nil {
		return nil, "", oerr
	}
	if r.Method != http.MethodPost {
		e := newError(http.StatusMethodNotAllowed, ErrInvalidRequest, "the token endpoint accepts only POST")
		e.header = http.Header{"Allow": {http.MethodPost}}
		return nil, "", e
	}
	body, form, oerr := g.readForm(r)
	if oerr != nil {
		return nil, "", oerr
	}
	// RFC 6749 §3.2: parameters MUST NOT be included more than once.
	for k, v := range form {
		if len(v) > 1 {
			return nil, logID(form.Get("client_id")), badRequest(ErrInvalidRequest, "parameter "+strconv.Quote(k)+" is repeated")
		}
	}
	var aud audiences
	if form.Has("client_assertion") {
		aud = g.tokenAudiences(r, next)
	}
	c, m, oerr := g.auth.authenticate(r, form, aud)
	*method = m
	if oerr != nil {
		if oerr.Code == ErrInvalidClient {
			g.limits.authFailed(src)
		}
		return nil, attemptedClientID(r, form), oerr
	}
	// With HTTP Basic the body's client_id is optional, but it must not
	// name another client (RFC 6749 §3.2.1).
	if id := form.Get("client_id"); id != "" && id != c.id {
		e := newError(http.StatusUnauthorized, ErrInvalidClient, "client_id does not match the authenticated client")
		e.basicTried = r.Header.Get("Authorization") != ""
		return nil, c.id, e
	}
	if form.Get("grant_type") == "" {
		return nil, c.id, badRequest(ErrInvalidRequest, "grant_type is required")
	}
	if g.lift.gatewayPKCE && form.Get("grant_type") == "authorization_code" {
		if oerr := g.checkCode(r, c, form); oerr != nil {
			return nil, c.id, oerr
		}
	}
	return g.upstreamTokenRequest(r, c, body), c.id, nil
}

// tokenAudiences are the aud values a client assertion at the token
// endpoint may carry: the issuer, the token endpoint as discovery states it
// and as the client addressed it.
func (g *gateway) tokenAudiences(r *http.Request, next nextHandler) audiences {
	a := g.audiences(r, next)
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	a.endpointURLs = []string{scheme + "://" + strings.ToLower(r.Host) + g.lift.tokenEndpoint}
	return a
}

// upstreamTokenRequest is r with the client's credentials replaced by the
// upstream's (those of a client authenticated by upstream_client_auth are
// the upstream's already, and are kept): client_assertion*, client_secret and Authorization removed,
// upstream_secret sent as configured; the DPoP header and every other
// parameter pass as sent (code_verifier is dropped under upstream_pkce
// off).
func (g *gateway) upstreamTokenRequest(r *http.Request, c *client, body string) *http.Request {
	lc := g.lift.client(c.id)
	var secret string
	post := false
	if lc != nil {
		secret, post = lc.upstreamSecret, lc.upstreamPost
	}
	basic := secret != "" && !post
	var b strings.Builder
	b.Grow(len(body) + 64)
	add := func(pair string) {
		if b.Len() > 0 {
			b.WriteByte('&')
		}
		b.WriteString(pair)
	}
	for rest := body; rest != ""; {
		var pair string
		pair, rest, _ = strings.Cut(rest, "&")
		k, _, _ := strings.Cut(pair, "=")
		key, err := url.QueryUnescape(k)
		if err != nil || key == "" {
			continue
		}
		switch {
		case key == "code_verifier" && !g.lift.upstreamPKCE:
			continue
		case c.delegated:
			// upstream_client_auth: the upstream knows this client by
			// the secret it just presented, which goes on unchanged.
		case isClientAuthParam(key), key == "client_id":
			continue // set below
		}
		add(pair)
	}
	if !basic && !c.delegated {
		add("client_id=" + url.QueryEscape(c.id))
	}
	if secret != "" && post {
		add("client_secret=" + url.QueryEscape(secret))
	}
	out := b.String()

	fwd := r.Clone(r.Context())
	if !c.delegated {
		fwd.Header.Del("Authorization")
	}
	if basic {
		// RFC 6749 §2.3.1: both parts form-urlencoded.
		cred := url.QueryEscape(c.id) + ":" + url.QueryEscape(secret)
		fwd.Header.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(cred)))
	}
	fwd.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	fwd.Header.Del("Content-Length")
	fwd.Body = io.NopCloser(strings.NewReader(out))
	fwd.ContentLength = int64(len(out))
	fwd.GetBody = nil
	return fwd
}

// isTokenEndpoint reports whether p is the token endpoint behind the
// gateway.
func (g *gateway) isTokenEndpoint(p string) bool {
	return g.lift != nil && g.lift.tokenEndpoint != "" && p == g.lift.tokenEndpoint
}
