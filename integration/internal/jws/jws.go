// Package jws signs compact JWS (RFC 7515) for the end-to-end tests and the
// bench: client assertions (RFC 7523), request objects (RFC 9101) and DPoP
// proofs (RFC 9449) that the gateway must accept. It is written against
// the Go standard library on purpose: the gateway verifies with go-jose, so
// the tokens it is tested with come from an independent implementation
// (the browser flows use openid-client/jose, a third one), and the
// integration module keeps no third-party dependencies.
package jws

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math/big"
)

// Key is one signing key with its JWS algorithm and key ID.
type Key struct {
	Kid  string
	Alg  string // ES256, PS256, RS256, EdDSA
	priv crypto.Signer
}

// New generates a key for alg: EC P-256 for ES256, RSA 2048 for PS256 and
// RS256, Ed25519 for EdDSA.
func New(alg, kid string) (*Key, error) {
	k := &Key{Kid: kid, Alg: alg}
	var err error
	switch alg {
	case "ES256":
		k.priv, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "PS256", "RS256":
		k.priv, err = rsa.GenerateKey(rand.Reader, 2048)
	case "EdDSA":
		_, k.priv, err = ed25519.GenerateKey(rand.Reader)
	default:
		return nil, fmt.Errorf("jws: unsupported alg %q", alg)
	}
	if err != nil {
		return nil, err
	}
	return k, nil
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func pad(n *big.Int, size int) []byte {
	b := n.Bytes()
	if len(b) >= size {
		return b
	}
	out := make([]byte, size)
	copy(out[size-len(b):], b)
	return out
}

// publicMembers are the RFC 7638 required members of the public key.
func (k *Key) publicMembers() map[string]any {
	switch p := k.priv.(type) {
	case *ecdsa.PrivateKey:
		return map[string]any{"kty": "EC", "crv": "P-256", "x": b64(pad(p.X, 32)), "y": b64(pad(p.Y, 32))}
	case *rsa.PrivateKey:
		return map[string]any{"kty": "RSA", "n": b64(p.N.Bytes()), "e": b64(big.NewInt(int64(p.E)).Bytes())}
	case ed25519.PrivateKey:
		return map[string]any{"kty": "OKP", "crv": "Ed25519", "x": b64(p.Public().(ed25519.PublicKey))}
	}
	panic("jws: unknown key type")
}

// PublicJWK is the public key as a JWK with kid, alg and use=sig.
func (k *Key) PublicJWK() map[string]any {
	m := k.publicMembers()
	m["kid"], m["alg"], m["use"] = k.Kid, k.Alg, "sig"
	return m
}

// PrivateJWK is the key pair as a JWK (for the JavaScript client).
func (k *Key) PrivateJWK() map[string]any {
	m := k.PublicJWK()
	switch p := k.priv.(type) {
	case *ecdsa.PrivateKey:
		m["d"] = b64(pad(p.D, 32))
	case *rsa.PrivateKey:
		p.Precompute()
		m["d"] = b64(p.D.Bytes())
		m["p"] = b64(p.Primes[0].Bytes())
		m["q"] = b64(p.Primes[1].Bytes())
		m["dp"] = b64(p.Precomputed.Dp.Bytes())
		m["dq"] = b64(p.Precomputed.Dq.Bytes())
		m["qi"] = b64(p.Precomputed.Qinv.Bytes())
	case ed25519.PrivateKey:
		m["d"] = b64(p.Seed())
	}
	return m
}

// Thumbprint is the RFC 7638 SHA-256 JWK thumbprint, base64url.
func (k *Key) Thumbprint() string {
	// json.Marshal sorts map keys: the lexicographic order RFC 7638 asks for.
	b, _ := json.Marshal(k.publicMembers())
	sum := sha256.Sum256(b)
	return b64(sum[:])
}

// PublicJWKS is a JWK Set of the keys' public halves.
func PublicJWKS(keys ...*Key) []byte {
	set := struct {
		Keys []map[string]any `json:"keys"`
	}{}
	for _, k := range keys {
		set.Keys = append(set.Keys, k.PublicJWK())
	}
	b, _ := json.Marshal(set)
	return b
}

// Sign returns the compact JWS of claims. header gets alg and, unless it
// has one (or has "jwk"), kid.
func (k *Key) Sign(header map[string]any, claims any) (string, error) {
	h := map[string]any{}
	for n, v := range header {
		h[n] = v
	}
	h["alg"] = k.Alg
	if _, ok := h["kid"]; !ok && h["jwk"] == nil {
		h["kid"] = k.Kid
	}
	hb, err := json.Marshal(h)
	if err != nil {
		return "", err
	}
	cb, err := json.Marshal(claims)
	if err != nil {
		return "", err
	}
	input := b64(hb) + "." + b64(cb)
	sig, err := k.signInput([]byte(input))
	if err != nil {
		return "", err
	}
	return input + "." + b64(sig), nil
}

func (k *Key) signInput(input []byte) ([]byte, error) {
	if k.Alg == "EdDSA" {
		return ed25519.Sign(k.priv.(ed25519.PrivateKey), input), nil
	}
	sum := sha256.Sum256(input)
	switch k.Alg {
	case "ES256":
		r, s, err := ecdsa.Sign(rand.Reader, k.priv.(*ecdsa.PrivateKey), sum[:])
		if err != nil {
			return nil, err
		}
		return append(pad(r, 32), pad(s, 32)...), nil
	case "PS256":
		return rsa.SignPSS(rand.Reader, k.priv.(*rsa.PrivateKey), crypto.SHA256, sum[:], &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash})
	case "RS256":
		return rsa.SignPKCS1v15(rand.Reader, k.priv.(*rsa.PrivateKey), crypto.SHA256, sum[:])
	}
	return nil, fmt.Errorf("jws: unsupported alg %q", k.Alg)
}

// RandomID is a 128-bit random base64url string (jti values).
func RandomID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return b64(b)
}
