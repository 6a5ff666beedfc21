package caddymodule

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// assertionPolicy is what a client assertion is checked against.
type assertionPolicy struct {
	// Algs is the private_key_jwt allow-list (asymmetric only).
	Algs []jose.SignatureAlgorithm
	// Audiences are the accepted aud values (RFC 9126 §2: the issuer, the
	// token endpoint URL, the PAR endpoint URL).
	Audiences []string
	// IssuerOnly, when set, is the only acceptable aud, as a single string
	// and not an array (FAPI 2.0 §5.3.2.1).
	IssuerOnly  string
	MaxLifetime time.Duration
	Times       jwtTimes
}

// verifyClientAssertion checks a jwt-bearer client assertion of clientID
// (RFC 7523 §3, OIDC Core §9). For private_key_jwt the signature is checked
// with the client's keys; for client_secret_jwt with the secret as HMAC key.
// It returns the jti and until when it must stay single-use; the caller
// records it.
func verifyClientAssertion(ctx context.Context, raw, method, clientID string, keys *keySet, secret []byte, p assertionPolicy) (string, time.Time, error) {
	if len(raw) > maxJWTSize {
		return "", time.Time{}, errors.New("the assertion is too large")
	}
	algs := p.Algs
	if method == AuthClientSecretJWT {
		algs = hmacAlgs
	}
	tok, err := jwt.ParseSigned(raw, algs)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("not a compact JWS signed with an allowed algorithm (%s)", algNames(algs))
	}
	// RFC 8725 §3.11: a DPoP proof or request object is no assertion.
	if typIsOneOf(headerType(tok.Headers[0]), explicitTypes) {
		return "", time.Time{}, errors.New("typ names another kind of JWT")
	}
	var payload json.RawMessage
	switch method {
	case AuthPrivateKeyJWT:
		if payload, err = verifyWithKeys(ctx, tok, keys); err != nil {
			return "", time.Time{}, err
		}
	case AuthClientSecretJWT:
		// RFC 7518 §3.2: the key must be at least as long as the hash.
		need := map[jose.SignatureAlgorithm]int{jose.HS256: 32, jose.HS384: 48, jose.HS512: 64}[jose.SignatureAlgorithm(tok.Headers[0].Algorithm)]
		// The same answer as a wrong secret: the secret's length is not
		// the caller's to learn.
		if len(secret) < need || tok.Claims(secret, &payload) != nil {
			return "", time.Time{}, errors.New("the signature does not verify with the client secret")
		}
	default:
		return "", time.Time{}, fmt.Errorf("%s is not an assertion method", method)
	}
	c, err := parseClaims(payload)
	if err != nil {
		return "", time.Time{}, err
	}
	// RFC 7523 §3 items 1-2: the client is the issuer and the subject.
	if c.Issuer != clientID || c.Subject != clientID {
		return "", time.Time{}, errors.New("iss and sub must both be the client_id")
	}
	if err := checkAssertionAudience(payload, c.Audience, p); err != nil {
		return "", time.Time{}, err
	}
	now := p.Times.now()
	if err := p.Times.checkExpiry(&c, now, p.MaxLifetime); err != nil {
		return "", time.Time{}, err
	}
	if err := p.Times.checkNotAhead(&c, now); err != nil {
		return "", time.Time{}, err
	}
	// RFC 7523 §3 item 7: jti, so that the assertion is used once.
	if c.ID == "" || len(c.ID) > maxJTI {
		return "", time.Time{}, errors.New("jti is required (at most 256 bytes)")
	}
	return c.ID, c.Expiry.Time().Add(p.Times.Skew), nil
}

// checkAssertionAudience applies RFC 7523 §3 item 3 with the audiences of
// RFC 9126 §2, or FAPI 2.0's issuer-only rule.
func checkAssertionAudience(payload json.RawMessage, aud jwt.Audience, p assertionPolicy) error {
	if p.IssuerOnly != "" {
		var claims struct {
			Aud json.RawMessage `json:"aud"`
		}
		var s string
		if json.Unmarshal(payload, &claims) != nil || json.Unmarshal(claims.Aud, &s) != nil || s != p.IssuerOnly {
			return errors.New("aud must be the issuer alone, as a single string")
		}
		return nil
	}
	for _, a := range aud {
		if slices.Contains(p.Audiences, a) {
			return nil
		}
	}
	return errors.New("aud must name the issuer, the token endpoint or the PAR endpoint")
}

// assertionSubject is the unverified sub of an assertion: it finds the
// client when client_id is not sent (RFC 7523 §3). The signature check that
// follows uses that client's keys and requires sub to match.
func assertionSubject(raw string) string {
	if len(raw) > maxJWTSize {
		return ""
	}
	tok, err := jwt.ParseSigned(raw, append(slices.Clone(asymmetricAlgs), hmacAlgs...))
	if err != nil {
		return ""
	}
	var c jwt.Claims
	if tok.UnsafeClaimsWithoutVerification(&c) != nil || len(c.Subject) > 256 {
		return ""
	}
	return c.Subject
}
