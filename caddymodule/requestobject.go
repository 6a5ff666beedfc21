package caddymodule

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// requestObjectPolicy is what a pushed request object is checked against
// (RFC 9101, RFC 9126 §3).
type requestObjectPolicy struct {
	Algs []jose.SignatureAlgorithm
	// Issuer is the one acceptable aud (RFC 9101 §4).
	Issuer string
	// MaxLifetime bounds exp - nbf (FAPI 2.0 Message Signing §5.3.1).
	MaxLifetime time.Duration
	// RequireTyp demands typ oauth-authz-req+jwt (RFC 9101 §10.8).
	RequireTyp bool
	Times      jwtTimes
	// Decrypt opens a JWE addressed to the gateway; nil refuses encrypted
	// objects.
	Decrypt func(compact string) ([]byte, error)
}

// jwtOnlyClaims are claims of the JWT itself, not authorization request
// parameters: they are checked here and never forwarded.
var jwtOnlyClaims = map[string]bool{"iss": true, "aud": true, "exp": true, "nbf": true, "iat": true, "jti": true}

// decodeRequestObject verifies a request object of clientID and returns its
// authorization request parameters, the only ones that count (RFC 9101
// §6.3).
func decodeRequestObject(ctx context.Context, raw, clientID string, keys *keySet, p requestObjectPolicy) (url.Values, error) {
	// RFC 9101 §6.1: a nested JWT is decrypted first; the signature inside
	// is required all the same (RFC 9126 §3).
	if strings.Count(raw, ".") == 4 {
		if p.Decrypt == nil {
			return nil, errors.New("encrypted request objects are not accepted here")
		}
		plain, err := p.Decrypt(raw)
		if err != nil {
			return nil, errors.New("the encrypted request object could not be decrypted with the gateway's keys")
		}
		raw = string(plain)
		if strings.Count(raw, ".") != 2 {
			return nil, errors.New("the encrypted request object must contain a signed JWT")
		}
	}
	tok, err := jwt.ParseSigned(raw, p.Algs)
	if err != nil {
		return nil, fmt.Errorf("not a compact JWS signed with an allowed algorithm (%s)", algNames(p.Algs))
	}
	switch typ := headerType(tok.Headers[0]); {
	case typIs(typ, "oauth-authz-req+jwt"):
	case p.RequireTyp:
		return nil, errors.New("typ must be oauth-authz-req+jwt")
	case typ != "" && !typIs(typ, "jwt"):
		return nil, errors.New("typ must be oauth-authz-req+jwt")
	}
	payload, err := verifyWithKeys(ctx, tok, keys)
	if err != nil {
		return nil, err
	}
	c, err := parseClaims(payload)
	if err != nil {
		return nil, err
	}
	if c.Issuer != clientID {
		return nil, errors.New("iss must be the client_id")
	}
	if !c.Audience.Contains(p.Issuer) {
		return nil, errors.New("aud must be the issuer")
	}
	now := p.Times.now()
	if err := p.Times.checkExpiry(&c, now, 0); err != nil {
		return nil, err
	}
	if err := p.Times.checkNotAhead(&c, now); err != nil {
		return nil, err
	}
	start := now
	switch {
	case c.NotBefore != nil:
		start = c.NotBefore.Time()
	case c.IssuedAt != nil:
		start = c.IssuedAt.Time()
	}
	if c.Expiry.Time().Sub(start) > p.MaxLifetime {
		return nil, fmt.Errorf("lifetime (exp - nbf) is more than %s", p.MaxLifetime)
	}

	var claims map[string]json.RawMessage
	if err := json.Unmarshal(payload, &claims); err != nil {
		return nil, errors.New("malformed claims")
	}
	// RFC 9101 §4: no request or request_uri inside a request object.
	if _, ok := claims["request"]; ok {
		return nil, errors.New("a request object must not contain request")
	}
	if _, ok := claims["request_uri"]; ok {
		return nil, errors.New("a request object must not contain request_uri")
	}
	// RFC 9126 §3: the object's client_id is the authenticated client.
	var id string
	if json.Unmarshal(claims["client_id"], &id) != nil || id != clientID {
		return nil, errors.New("client_id must be present and be the authenticated client")
	}
	params := url.Values{}
	for k, v := range claims {
		if jwtOnlyClaims[k] || bytes.Equal(v, []byte("null")) {
			continue
		}
		var s string
		if json.Unmarshal(v, &s) == nil {
			params.Set(k, s)
			continue
		}
		// Objects, arrays, numbers and booleans (claims,
		// authorization_details, max_age...) go upstream as compact JSON,
		// as they would be sent in a query.
		var b bytes.Buffer
		if err := json.Compact(&b, v); err != nil {
			return nil, errors.New("malformed claims")
		}
		params.Set(k, b.String())
	}
	return params, nil
}
