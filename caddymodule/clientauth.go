package caddymodule

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// Parameters that carry client credentials. They authenticate the push and
// are never stored or forwarded upstream.
var clientAuthParams = []string{"client_secret", "client_assertion", "client_assertion_type"}

// jwtBearer is the only client_assertion_type (RFC 7523 §2.2).
const jwtBearer = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

// methodAssertion marks presented credentials as a JWT client assertion,
// before it is known whether it is private_key_jwt or client_secret_jwt.
const methodAssertion = "client_assertion"

// clientAuthenticator identifies and authenticates the caller of the PAR
// endpoint the way a token endpoint would (RFC 9126 §2, RFC 6749 §2.3):
// client secrets, JWT assertions (RFC 7523) and mutual TLS (RFC 8705).
type clientAuthenticator struct {
	clients map[string]*client
	// claims records assertion jti values (RFC 7523 §3 item 7), under
	// claimPrefix.
	claims      Store
	claimPrefix string
	// algs is the private_key_jwt allow-list; client_secret_jwt uses
	// hmacAlgs.
	algs        []jose.SignatureAlgorithm
	maxLifetime time.Duration
	times       jwtTimes
	// issuerOnly: assertion aud must be the issuer alone (FAPI 2.0 §5.3.2.1).
	issuerOnly bool
	// clientCAs validates tls_client_auth chains that Caddy did not.
	clientCAs *x509.CertPool
	// limits holds the per-client rate limit, asked once a client has
	// proved who it is and before its assertion's jti is recorded.
	limits *rateLimits
	// upstream authenticates clients that are not configured
	// (upstream_client_auth); nil when off.
	upstream *upstreamAuth
}

// audiences is what an endpoint accepts as a client assertion's aud: the
// issuer, the token endpoint and the endpoint's own URLs (RFC 9126 §2).
// The endpoint URLs are also what a DPoP proof's htu may be.
type audiences struct {
	issuer        string
	tokenEndpoint string
	endpointURLs  []string
}

// credentials is what a request presented, before verification.
type credentials struct {
	method   string
	clientID string
	secret   string
	// rawSecret is the Basic secret as sent, for clients that do not
	// form-urlencode it (common, and a secret with '+' decodes differently).
	rawSecret string
	basic     bool   // the Authorization header was used
	assertion string // methodAssertion
}

// authenticate returns the authenticated client and the method it used.
func (a *clientAuthenticator) authenticate(r *http.Request, form url.Values, aud audiences) (*client, string, *oauthError) {
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
	if c == nil && a.upstream != nil {
		// Configured clients take precedence; others are the upstream's.
		return a.upstream.authenticate(r, cred)
	}
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
	switch cred.method {
	case methodAssertion:
		cred.method = c.assertionMethod(cred.assertion)
	case AuthNone:
		if m := c.tlsMethod(r); m != "" {
			cred.method = m
		}
	}
	if !c.authMethods[cred.method] {
		if cred.method == AuthNone {
			return fail("client authentication is required for this client (" + strings.Join(c.authMethodList(), ", ") + ")")
		}
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
	case AuthPrivateKeyJWT, AuthClientSecretJWT:
		// The per-client limit is asked inside, before the jti is recorded.
		if oerr := a.verifyAssertion(r.Context(), c, cred, aud); oerr != nil {
			return nil, cred.method, oerr
		}
		return c, cred.method, nil
	case AuthTLSClientAuth, AuthSelfSignedTLSClientAuth:
		if desc := a.verifyCertificate(r, c, cred.method); desc != "" {
			return fail(desc)
		}
	case AuthNone:
		// A public client is identified, not authenticated; PKCE protects
		// its code (checked with the request).
	}
	if oerr := a.limits.admitClient(c); oerr != nil {
		return nil, cred.method, oerr
	}
	return c, cred.method, nil
}

// assertionMethod tells private_key_jwt from client_secret_jwt. A client
// allowed one of them uses that one (its verification then refuses the
// other's algorithms); only a client allowed both needs the header.
func (c *client) assertionMethod(raw string) string {
	pk, cs := c.authMethods[AuthPrivateKeyJWT], c.authMethods[AuthClientSecretJWT]
	if pk && cs {
		if jws, err := jose.ParseSigned(raw, hmacAlgs); err == nil && len(jws.Signatures) == 1 {
			return AuthClientSecretJWT
		}
		return AuthPrivateKeyJWT
	}
	if cs {
		return AuthClientSecretJWT
	}
	return AuthPrivateKeyJWT
}

// tlsMethod is the RFC 8705 method a request without other credentials
// uses: the client's mTLS method when it has one and a certificate came.
func (c *client) tlsMethod(r *http.Request) string {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return ""
	}
	switch {
	case c.authMethods[AuthTLSClientAuth]:
		return AuthTLSClientAuth
	case c.authMethods[AuthSelfSignedTLSClientAuth]:
		return AuthSelfSignedTLSClientAuth
	}
	return ""
}

// verifyAssertion checks a JWT client assertion and records its jti, so
// that it is used once (RFC 7523 §3 item 7).
func (a *clientAuthenticator) verifyAssertion(ctx context.Context, c *client, cred credentials, aud audiences) *oauthError {
	p := assertionPolicy{Algs: a.algs, MaxLifetime: a.maxLifetime, Times: a.times}
	if a.issuerOnly {
		p.IssuerOnly = aud.issuer
	} else {
		if aud.issuer != "" {
			p.Audiences = append(p.Audiences, aud.issuer)
		}
		if aud.tokenEndpoint != "" {
			p.Audiences = append(p.Audiences, aud.tokenEndpoint)
		}
		p.Audiences = append(p.Audiences, aud.endpointURLs...)
	}
	if p.IssuerOnly == "" && len(p.Audiences) == 0 {
		return newError(http.StatusServiceUnavailable, ErrTemporarilyUnavailable, "the issuer is not known yet, so client assertions cannot be checked; set 'issuer'")
	}
	jti, until, err := verifyClientAssertion(ctx, cred.assertion, cred.method, c.id, c.keys, c.hmacKey, p)
	if err != nil {
		return newError(http.StatusUnauthorized, ErrInvalidClient, "client assertion rejected: "+err.Error())
	}
	// A push refused by the client's rate limit records nothing.
	if oerr := a.limits.admitClient(c); oerr != nil {
		return oerr
	}
	sum := sha256.Sum256([]byte(jti))
	err = a.claims.Claim(ctx, a.claimPrefix+"jti/"+c.id+"/"+hex.EncodeToString(sum[:16]), until)
	if err != nil {
		a.limits.refundClient(c)
	}
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrReplay):
		return newError(http.StatusUnauthorized, ErrInvalidClient, "client assertion rejected: its jti was already used")
	default:
		return unavailable("the client assertion could not be recorded")
	}
}

// verifyCertificate checks the TLS client certificate of an mTLS client
// (RFC 8705 §2) and returns what failed, or "".
func (a *clientAuthenticator) verifyCertificate(r *http.Request, c *client, method string) string {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return "a TLS client certificate is required"
	}
	leaf := r.TLS.PeerCertificates[0]
	if method == AuthSelfSignedTLSClientAuth {
		// RFC 8705 §2.2: no chain, the key must be one the client
		// registered.
		ok, err := c.keys.hasPublicKey(r.Context(), leaf.PublicKey)
		if err != nil {
			return "the client's keys could not be loaded"
		}
		if !ok {
			return "the TLS client certificate is not one of the client's registered keys"
		}
		return ""
	}
	// RFC 8705 §2.1: PKI method, the chain must be validated: by Caddy
	// (client_auth with trusted CAs) or here against client_ca_file.
	if len(r.TLS.VerifiedChains) == 0 {
		if a.clientCAs == nil {
			return "the TLS client certificate chain was not validated (configure trusted CAs in client_auth, or client_ca_file)"
		}
		if err := verifyClientChain(r.TLS.PeerCertificates, a.clientCAs, a.times.now()); err != nil {
			return "the TLS client certificate chain is not trusted"
		}
	}
	if !matchTLSClientAuth(leaf, *c.tlsName) {
		return "the TLS client certificate does not match the client's registered " + c.tlsName.Kind
	}
	return ""
}

// presented finds the one authentication method a request uses. RFC 6749
// §2.3: a client MUST NOT use more than one method in a request. A TLS
// client certificate is not a method of its own here: it is what a client
// registered for mTLS authenticates with when it sends nothing else.
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
	if form.Has("client_assertion") || form.Has("client_assertion_type") {
		fail := func(desc string) (credentials, *oauthError) {
			e := newError(http.StatusUnauthorized, ErrInvalidClient, desc)
			e.basicTried = basic
			return credentials{basic: basic}, e
		}
		// RFC 7521 §4.2: both parameters, and the one type RFC 7523 defines.
		switch {
		case form.Get("client_assertion_type") != jwtBearer:
			return fail("client_assertion_type must be " + jwtBearer)
		case form.Get("client_assertion") == "":
			return fail("client_assertion is required with client_assertion_type")
		}
		raw := form.Get("client_assertion")
		id := form.Get("client_id")
		if id == "" {
			// RFC 7523 §3: client_id is optional here; the assertion's
			// subject names the client (verified against it below).
			id = assertionSubject(raw)
		}
		found = append(found, credentials{method: methodAssertion, clientID: id, assertion: raw})
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
