package caddymodule

import (
	"crypto/sha256"
	"crypto/subtle"
	"net/http"
	"net/url"
	"strings"
)

// Parameters that carry client credentials. They authenticate the push and
// are never stored or forwarded upstream.
var clientAuthParams = []string{"client_secret", "client_assertion", "client_assertion_type"}

// clientAuthenticator identifies and authenticates the caller of the PAR
// endpoint the way a token endpoint would (RFC 9126 §2, RFC 6749 §2.3).
// Further methods (private_key_jwt, tls_client_auth, ...) are added by
// detecting their credentials in presented and verifying them in verify.
type clientAuthenticator struct {
	clients map[string]*client
}

// credentials is what a request presented, before verification.
type credentials struct {
	method   string
	clientID string
	secret   string
	basic    bool // the Authorization header was used
}

// authenticate returns the authenticated client and the method it used.
func (a *clientAuthenticator) authenticate(r *http.Request, form url.Values) (*client, string, *oauthError) {
	cred, oerr := presented(r, form)
	if oerr != nil {
		return nil, "", oerr
	}
	fail := func(desc string) (*client, string, *oauthError) {
		e := newError(http.StatusUnauthorized, ErrInvalidClient, desc)
		e.basicTried = cred.basic
		return nil, cred.method, e
	}
	if cred.clientID == "" {
		return fail("client authentication is required")
	}
	c := a.clients[cred.clientID]
	if c == nil {
		if cred.secret != "" {
			// Spend the same work as a real comparison, so response
			// timing does not reveal which client_ids exist.
			var dummy [32]byte
			h := sha256.Sum256([]byte(cred.secret))
			subtle.ConstantTimeCompare(h[:], dummy[:])
		}
		return fail("client authentication failed")
	}
	if !c.authMethods[cred.method] {
		return fail("authentication method " + cred.method + " is not allowed for this client")
	}
	switch cred.method {
	case AuthClientSecretBasic, AuthClientSecretPost:
		// Hashing first makes the comparison independent of secret length.
		h := sha256.Sum256([]byte(cred.secret))
		if subtle.ConstantTimeCompare(h[:], c.secretHash[:]) != 1 {
			return fail("client authentication failed")
		}
	case AuthNone:
		// A public client is identified, not authenticated; PKCE protects
		// its code (checked with the request).
	}
	return c, cred.method, nil
}

// presented finds the one authentication method a request uses. RFC 6749
// §2.3: a client MUST NOT use more than one method in a request.
func presented(r *http.Request, form url.Values) (credentials, *oauthError) {
	var found []credentials
	basic := false
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, _, _ := strings.Cut(h, " ")
		if strings.EqualFold(scheme, "Basic") {
			basic = true
			id, secret, ok := r.BasicAuth()
			var err1, err2 error
			if ok {
				// RFC 6749 §2.3.1: both parts are form-urlencoded.
				id, err1 = url.QueryUnescape(id)
				secret, err2 = url.QueryUnescape(secret)
			}
			if !ok || err1 != nil || err2 != nil || id == "" {
				e := newError(http.StatusUnauthorized, ErrInvalidClient, "malformed HTTP Basic credentials")
				e.basicTried = true
				return credentials{basic: true}, e
			}
			found = append(found, credentials{method: AuthClientSecretBasic, clientID: id, secret: secret, basic: true})
		}
	}
	if form.Get("client_secret") != "" {
		found = append(found, credentials{method: AuthClientSecretPost, clientID: form.Get("client_id"), secret: form.Get("client_secret")})
	}
	if form.Get("client_assertion") != "" || form.Get("client_assertion_type") != "" {
		e := newError(http.StatusUnauthorized, ErrInvalidClient, "client assertions are not supported by this gateway")
		e.basicTried = basic
		return credentials{basic: basic}, e
	}
	switch len(found) {
	case 0:
		return credentials{method: AuthNone, clientID: form.Get("client_id")}, nil
	case 1:
		return found[0], nil
	default:
		e := newError(http.StatusUnauthorized, ErrInvalidClient, "more than one client authentication method used")
		e.basicTried = basic
		return credentials{basic: basic}, e
	}
}
