package caddymodule

// PKCE enforced by the gateway (issue 10 §2, RFC 7636 §4.6):
//
//  1. At redemption the pushed request (client, redirect_uri,
//     code_challenge) is stored under a random binding id, and the id is
//     set in a cookie named after (client, redirect_uri, state), so that
//     parallel logins in several tabs keep their own.
//  2. When the authorization response with a code passes through
//     (authzresponse.go), the browser's binding is consumed and the code is
//     bound to it, for a short time, in the same store: it works across
//     gateways sharing a Redis store. Keys are hashes, partitioned like
//     request_uris; the store never holds a code or a binding id.
//  3. At the token endpoint (token.go) a code is used once, and a code the
//     gateway bound needs the matching S256 code_verifier, redirect_uri and
//     client; a code it never saw is refused for clients that require
//     gateway PKCE.

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"
)

// Lifetimes of what gateway PKCE stores.
const (
	// bindingTTL: from redemption to the authorization response, i.e. how
	// long a user may take to log in.
	bindingTTL = 15 * time.Minute
	// codeTTL: from the authorization response to the token request.
	// Codes are meant to be redeemed at once (FAPI 2.0 §5.3.2.1: at most
	// 60 s at the authorization server).
	codeTTL = 5 * time.Minute
	// codeUsedTTL: how long a used code is remembered (longer than any
	// code lives at the gateway).
	codeUsedTTL = 10 * time.Minute
)

// browserBinding is what a redemption bound to the browser.
type browserBinding struct {
	id      string // random, the cookie's value
	subject string // bindingSubject
	cookie  string // the cookie's name
}

// storeTake is the one place issue 10 takes entries from the store.
func (g *gateway) storeTake(ctx context.Context, key, subject string) (PushedRequest, error) {
	rec, err := g.store.Take(ctx, key, Redemption{ClientID: subject})
	return rec.PushedRequest, err
}

// hashedKey is a store key for a secret value (a code, a binding id): the
// store never sees the value itself.
func (g *gateway) hashedKey(kind, secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return g.partition + kind + "/" + base64.RawURLEncoding.EncodeToString(sum[:])
}

// bindingSubject is what a binding is taken for: the store only hands it
// out to an authorization response for the same client, redirect URI and
// state.
func bindingSubject(clientID, redirectURI, state string) string {
	return clientID + "\x00" + redirectURI + "\x00" + state
}

// bindingCookie is the cookie's name for one login: __Host- on https.
func (g *gateway) bindingCookie(r *http.Request, subject string) string {
	sum := sha256.Sum256([]byte(g.partition + "\x00" + subject))
	name := "oauth_par_pkce_" + hex.EncodeToString(sum[:8])
	if r.TLS != nil {
		return "__Host-" + name
	}
	return name
}

// bindRedemption binds a redeemed request's code_challenge to the browser
// and returns the parameters to forward (without PKCE under
// upstream_pkce off).
func (g *gateway) bindRedemption(w http.ResponseWriter, r *http.Request, c *client, values url.Values, params string) (string, *oauthError) {
	l := g.lift
	if l == nil || !l.gatewayPKCE {
		return params, nil
	}
	challenge := values.Get("code_challenge")
	if challenge == "" {
		return params, nil
	}
	id, err := newRef()
	if err != nil {
		return "", newError(http.StatusInternalServerError, ErrServerError, "could not bind the request")
	}
	redirectURI := values.Get("redirect_uri")
	subject := bindingSubject(c.id, redirectURI, values.Get("state"))
	rec := PushedRequest{
		ClientID: subject,
		Params: url.Values{
			"client_id":             {c.id},
			"redirect_uri":          {redirectURI},
			"code_challenge":        {challenge},
			"code_challenge_method": {"S256"}, // validatePush allows no other
		}.Encode(),
		ExpiresAt: g.now().Add(bindingTTL),
	}
	if err := g.store.Put(r.Context(), g.hashedKey("pkce-b", id), rec); err != nil {
		return "", unavailable("the authorization request could not be bound")
	}
	b := &browserBinding{id: id, subject: subject, cookie: g.bindingCookie(r, subject)}
	http.SetCookie(w, &http.Cookie{
		Name: b.cookie, Value: id, Path: "/", MaxAge: int(bindingTTL / time.Second),
		HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteLaxMode,
	})
	if aw := authzWriterFrom(r.Context()); aw != nil {
		aw.redeemed = b
	}
	if !l.upstreamPKCE {
		params = withoutParams(params, "code_challenge", "code_challenge_method")
	}
	return params, nil
}

// withoutParams drops the named parameters from a form-encoded string,
// keeping every other pair as it is.
func withoutParams(s string, names ...string) string {
	var b strings.Builder
	for rest := s; rest != ""; {
		var pair string
		pair, rest, _ = strings.Cut(rest, "&")
		k, _, _ := strings.Cut(pair, "=")
		if key, err := url.QueryUnescape(k); err == nil && slices.Contains(names, key) {
			continue
		}
		if b.Len() > 0 {
			b.WriteByte('&')
		}
		b.WriteString(pair)
	}
	return b.String()
}

// captureCode binds the code of an authorization response on its way to
// the browser to the pushed request the browser's binding names, and
// clears that binding. It returns an error to show instead when the code
// cannot be bound because the store failed.
func (g *gateway) captureCode(aw *authzResponseWriter, h http.Header, res authzResponse) *oauthError {
	state := res.params.Get("state")
	code := res.params.Get("code")
	if len(res.params["code"]) > 1 || len(res.params["state"]) > 1 {
		return newError(http.StatusBadGateway, ErrServerError, "the authorization server's response repeats code or state")
	}
	seen := map[string]bool{}
	for _, t := range res.targets {
		subject := bindingSubject(t.clientID, t.uri, state)
		if seen[subject] {
			continue
		}
		seen[subject] = true
		var id string
		if rb := aw.redeemed; rb != nil && rb.subject == subject {
			// Redeemed and answered in one response: the cookie was
			// never set in the browser.
			id = rb.id
			dropSetCookie(h, rb.cookie)
		} else {
			name := g.bindingCookie(aw.r, subject)
			ck, err := aw.r.Cookie(name)
			if err != nil {
				continue
			}
			id = ck.Value
			h.Add("Set-Cookie", (&http.Cookie{Name: name, Value: "", Path: "/", MaxAge: -1, HttpOnly: true, Secure: aw.r.TLS != nil, SameSite: http.SameSiteLaxMode}).String())
		}
		if !validRef(id) {
			continue
		}
		rec, err := g.storeTake(aw.r.Context(), g.hashedKey("pkce-b", id), subject)
		switch {
		case err == nil:
		case errors.Is(err, ErrStoreUnavailable):
			g.logOutcome(aw.r, epAuthzResponse, t.clientID, "", "rejected", ErrTemporarilyUnavailable, "")
			return newError(http.StatusServiceUnavailable, ErrTemporarilyUnavailable, "the authorization response could not be completed; start the sign-in again")
		default:
			continue // expired, or another login's
		}
		if code == "" {
			return nil // an error response: the binding is used up
		}
		bound := PushedRequest{ClientID: t.clientID, Params: rec.Params, ExpiresAt: g.now().Add(codeTTL)}
		if err := g.store.Put(aw.r.Context(), g.hashedKey("pkce-c", code), bound); err != nil {
			g.logOutcome(aw.r, epAuthzResponse, t.clientID, "", "rejected", ErrTemporarilyUnavailable, "")
			return newError(http.StatusServiceUnavailable, ErrTemporarilyUnavailable, "the authorization response could not be completed; start the sign-in again")
		}
		g.logOutcome(aw.r, epAuthzResponse, t.clientID, "", "code_bound", "", "")
		return nil
	}
	if code != "" {
		for _, t := range res.targets {
			if g.lift.requiresGatewayPKCE(t.clientID) {
				g.logger.Info("authorization code passed without a browser binding; the token endpoint will refuse it",
					zap.String("client_id", t.clientID))
				break
			}
		}
	}
	return nil
}

// dropSetCookie removes the Set-Cookie lines for name from h.
func dropSetCookie(h http.Header, name string) {
	vs := h.Values("Set-Cookie")
	h.Del("Set-Cookie")
	for _, v := range vs {
		if !strings.HasPrefix(v, name+"=") {
			h.Add("Set-Cookie", v)
		}
	}
}

// checkCode is the token endpoint's PKCE and one-time-use check of an
// authorization_code grant.
func (g *gateway) checkCode(r *http.Request, c *client, form url.Values) *oauthError {
	code := form.Get("code")
	if code == "" {
		return badRequest(ErrInvalidRequest, "code is required")
	}
	ctx := r.Context()
	// FAPI 2.0 §5.3.2.2 (one-time use), as defence in depth: the first
	// use records the code, whether the gateway bound it or not.
	switch err := g.store.Claim(ctx, g.hashedKey("pkce-used", code), g.now().Add(codeUsedTTL)); {
	case errors.Is(err, ErrReplay):
		return badRequest(ErrInvalidGrant, "the authorization code was already used")
	case err != nil:
		return unavailable("the authorization code could not be recorded")
	}
	rec, err := g.storeTake(ctx, g.hashedKey("pkce-c", code), c.id)
	switch {
	case err == nil:
	case errors.Is(err, ErrNotFound):
		if g.lift.requiresGatewayPKCE(c.id) {
			return badRequest(ErrInvalidGrant, "the authorization code was not issued through this gateway's PKCE binding")
		}
		return nil
	case errors.Is(err, ErrClientMismatch):
		return badRequest(ErrInvalidGrant, "the authorization code was issued to another client")
	case errors.Is(err, ErrExpired):
		return badRequest(ErrInvalidGrant, "the authorization code has expired")
	default:
		return unavailable("the authorization code could not be checked")
	}
	bound, err := url.ParseQuery(rec.Params)
	if err != nil || bound.Get("client_id") != c.id {
		return badRequest(ErrInvalidGrant, "the authorization code was issued to another client")
	}
	// RFC 6749 §4.1.3: redirect_uri as in the authorization request.
	if form.Get("redirect_uri") != bound.Get("redirect_uri") {
		return badRequest(ErrInvalidGrant, "redirect_uri does not match the authorization request")
	}
	// RFC 7636 §4.6.
	v := form.Get("code_verifier")
	if !validVerifier(v) {
		return badRequest(ErrInvalidGrant, "code_verifier is missing or malformed (RFC 7636 §4.1: 43 to 128 unreserved characters)")
	}
	sum := sha256.Sum256([]byte(v))
	got := base64.RawURLEncoding.EncodeToString(sum[:])
	if subtle.ConstantTimeCompare([]byte(got), []byte(bound.Get("code_challenge"))) != 1 {
		return badRequest(ErrInvalidGrant, "code_verifier does not match the code_challenge")
	}
	return nil
}

// validVerifier is RFC 7636 §4.1's code_verifier syntax.
func validVerifier(v string) bool {
	if len(v) < 43 || len(v) > 128 {
		return false
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~') {
			return false
		}
	}
	return true
}
