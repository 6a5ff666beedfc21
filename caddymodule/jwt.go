package caddymodule

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// Rules shared by the JWTs the gateway verifies: client assertions, request
// objects and DPoP proofs. go-jose parses and verifies; the claim rules are
// ours, because go-jose's Claims.Validate checks exp/nbf/iat only when they
// are present and allows a minute of leeway.

// hmacAlgs are the only algorithms of client_secret_jwt (RFC 7518 §3.2).
var hmacAlgs = []jose.SignatureAlgorithm{jose.HS256, jose.HS384, jose.HS512}

// maxJWTSize bounds a client assertion or DPoP proof before any parsing.
const maxJWTSize = 16 << 10

// maxJTI bounds a jti: it is hashed for the replay cache, but an absurd
// value is refused outright.
const maxJTI = 256

// maxCandidateKeys bounds the signature checks one JWT without a kid may
// cost.
const maxCandidateKeys = 8

// jwtTimes is the clock and how far in the future iat/nbf may lie.
type jwtTimes struct {
	Skew time.Duration
	Now  func() time.Time
}

func (t jwtTimes) now() time.Time {
	if t.Now == nil {
		return time.Now()
	}
	return t.Now()
}

// checkNotAhead refuses iat and nbf more than Skew in the future
// (FAPI 2.0 §5.3.2.1: up to 10 s accepted, 60 s or more rejected).
func (t jwtTimes) checkNotAhead(c *jwt.Claims, now time.Time) error {
	limit := now.Add(t.Skew)
	if c.IssuedAt != nil && c.IssuedAt.Time().After(limit) {
		return errors.New("iat is in the future")
	}
	if c.NotBefore != nil && c.NotBefore.Time().After(limit) {
		return errors.New("nbf is in the future: not valid yet")
	}
	return nil
}

// checkExpiry requires exp, in the future (Skew of tolerance), and at most
// maxAhead from now.
func (t jwtTimes) checkExpiry(c *jwt.Claims, now time.Time, maxAhead time.Duration) error {
	switch {
	case c.Expiry == nil:
		return errors.New("exp is required")
	case !now.Before(c.Expiry.Time().Add(t.Skew)):
		return errors.New("expired (exp is in the past)")
	case maxAhead > 0 && c.Expiry.Time().After(now.Add(maxAhead)):
		return fmt.Errorf("exp is more than %s ahead", maxAhead)
	}
	return nil
}

// verifyWithKeys checks tok's one signature against the client's keys (by
// kid, or each key that fits the algorithm) and returns the payload.
func verifyWithKeys(ctx context.Context, tok *jwt.JSONWebToken, keys *keySet) (json.RawMessage, error) {
	if keys == nil {
		return nil, errors.New("the client has no keys registered")
	}
	if len(tok.Headers) != 1 {
		return nil, errors.New("exactly one signature is expected")
	}
	h := tok.Headers[0]
	candidates, err := keys.verificationKeys(ctx, h.KeyID, jose.SignatureAlgorithm(h.Algorithm))
	if err != nil {
		return nil, err
	}
	var payload json.RawMessage
	for i, k := range candidates {
		if i == maxCandidateKeys {
			break
		}
		if tok.Claims(k.Key, &payload) == nil {
			return payload, nil
		}
	}
	return nil, errors.New("the signature does not verify with the client's keys")
}

// parseClaims reads the registered claims of a verified payload.
func parseClaims(payload json.RawMessage) (jwt.Claims, error) {
	var c jwt.Claims
	if err := json.Unmarshal(payload, &c); err != nil {
		return c, errors.New("malformed claims (iss, sub, aud, exp, nbf, iat or jti of the wrong type)")
	}
	return c, nil
}

// headerType is the JWS typ header, "" when absent. A typ that is not a
// string is returned as a value no check accepts.
func headerType(h jose.Header) string {
	v, ok := h.ExtraHeaders[jose.HeaderType]
	if !ok {
		return ""
	}
	if s, ok := v.(string); ok {
		return s
	}
	return "\x00not a string"
}

// explicitTypes are the typ values of the other JWTs the gateway takes: a
// JWT of one kind is never accepted as another (RFC 8725 §3.11).
var explicitTypes = []string{"dpop+jwt", "oauth-authz-req+jwt"}

// typIsOneOf reports whether typ names one of the media types.
func typIsOneOf(typ string, types []string) bool {
	for _, t := range types {
		if typIs(typ, t) {
			return true
		}
	}
	return false
}

// typIs compares a typ value with a media type, with or without the
// "application/" prefix and ignoring case (RFC 7515 §4.1.9).
func typIs(typ, want string) bool {
	typ = strings.ToLower(typ)
	return typ == want || typ == "application/"+want
}

// algNames lists algorithms for error messages.
func algNames(algs []jose.SignatureAlgorithm) string {
	s := make([]string, len(algs))
	for i, a := range algs {
		s[i] = string(a)
	}
	return strings.Join(s, ", ")
}
