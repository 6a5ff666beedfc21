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
	// rawSecret is the Basic secret as sent, for clients that do not
	// form-urlencode it (common, and a secret with '+' decodes differently).
	rawSecret string
	basic     bool // the Authorization header was used
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
		// Hashing first makes the comparison independent of secret length;
		// both forms are always compared, so timing does not tell which.
		h := sha256.Sum256([]byte(cred.secret))
		ok := subtle.ConstantTimeCompare(h[:], c.secretHash[:])
		if cred.basic {
			raw := sha256.Sum256([]byte(cred.rawSecret))
			ok |= subtle.ConstantTimeCompare(raw[:], c.secretHash[:])
		}
		if ok != 1 {
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
			rawID, rawSecret, ok := r.BasicAuth()
			if !ok || rawID == "" {
				e := newError(http.StatusUnauthorized, ErrInvalidClient, "malformed HTTP Basic credentials")
				e.basicTried = true
				return credentials{basic: true}, e
			}
			// RFC 6749 §2.3.1: both parts are form-urlencoded. Many
			// clients send them as they are; accept that too.
			id, err := url.QueryUnescape(rawID)
			if err != nil {
				id = rawID
			}
			secret, err := url.QueryUnescape(rawSecret)
			if err != nil {
				secret = rawSecret
			}
			found = append(found, credentials{method: AuthClientSecretBasic, clientID: id, secret: secret, rawSecret: rawSecret, basic: true})
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
