package caddymodule

import (
	"crypto"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// dpopPolicy is what a DPoP proof at the PAR endpoint is checked against.
type dpopPolicy struct {
	Algs []jose.SignatureAlgorithm
	// MaxAge is how old iat may be (RFC 9449 §11.1).
	MaxAge time.Duration
	Times  jwtTimes
}

// verifyDPoPProof checks a DPoP proof (RFC 9449 §4.3) sent with method to
// one of the URLs in htus, and returns the RFC 7638 SHA-256 thumbprint of
// its key, its jti and until when the jti must stay single-use.
func verifyDPoPProof(proof, method string, htus []string, p dpopPolicy) (jkt, jti string, until time.Time, err error) {
	fail := func(msg string) (string, string, time.Time, error) { return "", "", time.Time{}, errors.New(msg) }
	if len(proof) > maxJWTSize {
		return fail("the proof is too large")
	}
	// §4.3 steps 2-6: a JWS with an allowed asymmetric algorithm, typ
	// dpop+jwt, and a public jwk that the signature verifies with.
	tok, err := jwt.ParseSigned(proof, p.Algs)
	if err != nil {
		return "", "", time.Time{}, fmt.Errorf("not a compact JWS signed with an allowed algorithm (%s)", algNames(p.Algs))
	}
	h := tok.Headers[0]
	if !typIs(headerType(h), "dpop+jwt") {
		return fail("typ must be dpop+jwt")
	}
	jwk := h.JSONWebKey
	if jwk == nil || !jwk.Valid() {
		return fail("the jwk header is missing or invalid")
	}
	if !jwk.IsPublic() {
		return fail("the jwk header must hold a public key only")
	}
	if !keySetKeyFitsAlg(jwk.Key, jose.SignatureAlgorithm(h.Algorithm)) {
		return fail("the jwk header does not fit the algorithm")
	}
	if k, ok := jwk.Key.(*rsa.PublicKey); ok && (k.N.BitLen() < keySetMinRSABits || k.N.BitLen() > keySetMaxRSABits) {
		return fail("RSA keys must have 2048 to 8192 bits")
	}
	var c struct {
		jwt.Claims
		HTM string `json:"htm"`
		HTU string `json:"htu"`
	}
	var payload json.RawMessage
	if err := tok.Claims(jwk.Key, &payload); err != nil {
		return fail("the signature does not verify with the jwk header")
	}
	if json.Unmarshal(payload, &c) != nil {
		return fail("malformed claims")
	}
	// §4.3 steps 8-9.
	if c.HTM != method {
		return fail("htm must be " + method)
	}
	if !htuMatches(c.HTU, htus) {
		return fail("htu must be the PAR endpoint URL")
	}
	// §4.3 step 11: iat within an acceptable window.
	now := p.Times.now()
	if c.IssuedAt == nil {
		return fail("iat is required")
	}
	iat := c.IssuedAt.Time()
	if iat.After(now.Add(p.Times.Skew)) {
		return fail("iat is in the future")
	}
	if now.Sub(iat) > p.MaxAge {
		return fail(fmt.Sprintf("iat is more than %s old", p.MaxAge))
	}
	if c.ID == "" || len(c.ID) > maxJTI {
		return fail("jti is required (at most 256 bytes)")
	}
	tp, err := jwk.Thumbprint(crypto.SHA256)
	if err != nil {
		return fail("the jwk cannot be thumbprinted")
	}
	return base64.RawURLEncoding.EncodeToString(tp), c.ID, iat.Add(p.MaxAge + p.Times.Skew), nil
}

// htuMatches compares htu with the endpoint URLs ignoring query and
// fragment (RFC 9449 §4.3 step 9), with scheme and host compared without
// case and default ports dropped (RFC 3986 §6.2.3).
func htuMatches(htu string, htus []string) bool {
	got, ok := normalizeHTU(htu)
	if !ok {
		return false
	}
	for _, w := range htus {
		if want, ok := normalizeHTU(w); ok && want == got {
			return true
		}
	}
	return false
}

func normalizeHTU(s string) (string, bool) {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" || u.User != nil {
		return "", false
	}
	scheme, host := strings.ToLower(u.Scheme), strings.ToLower(u.Host)
	if scheme != "https" && scheme != "http" {
		return "", false
	}
	host = strings.TrimSuffix(host, map[string]string{"https": ":443", "http": ":80"}[scheme])
	path := u.EscapedPath()
	if path == "" {
		path = "/"
	}
	return scheme + "://" + host + path, true
}
