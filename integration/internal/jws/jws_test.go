package jws

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"math/big"
	"strings"
	"testing"
)

// TestSignVerifies checks every algorithm's signature with the standard
// library's verifiers, and the thumbprint against RFC 7638's example.
func TestSignVerifies(t *testing.T) {
	for _, alg := range []string{"ES256", "PS256", "RS256", "EdDSA"} {
		k, err := New(alg, "k-"+alg)
		if err != nil {
			t.Fatal(err)
		}
		tok, err := k.Sign(map[string]any{"typ": "JWT"}, map[string]any{"iss": "x"})
		if err != nil {
			t.Fatal(err)
		}
		parts := strings.Split(tok, ".")
		if len(parts) != 3 {
			t.Fatalf("%s: %d parts", alg, len(parts))
		}
		var h map[string]any
		hb, _ := base64.RawURLEncoding.DecodeString(parts[0])
		_ = json.Unmarshal(hb, &h)
		if h["alg"] != alg || h["kid"] != "k-"+alg || h["typ"] != "JWT" {
			t.Errorf("%s: header %v", alg, h)
		}
		sig, _ := base64.RawURLEncoding.DecodeString(parts[2])
		input := []byte(parts[0] + "." + parts[1])
		sum := sha256.Sum256(input)
		ok := false
		switch p := k.priv.(type) {
		case *ecdsa.PrivateKey:
			ok = len(sig) == 64 && ecdsa.Verify(&p.PublicKey, sum[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:]))
		case *rsa.PrivateKey:
			if alg == "PS256" {
				ok = rsa.VerifyPSS(&p.PublicKey, crypto.SHA256, sum[:], sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash}) == nil
			} else {
				ok = rsa.VerifyPKCS1v15(&p.PublicKey, crypto.SHA256, sum[:], sig) == nil
			}
		case ed25519.PrivateKey:
			ok = ed25519.Verify(p.Public().(ed25519.PublicKey), input, sig)
		}
		if !ok {
			t.Errorf("%s: signature does not verify", alg)
		}
		if jwk := k.PrivateJWK(); jwk["d"] == nil || jwk["kid"] != "k-"+alg {
			t.Errorf("%s: private JWK %v", alg, jwk["kid"])
		}
	}
	// RFC 7638 §3.1 example key.
	n, _ := base64.RawURLEncoding.DecodeString("0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw")
	k := &Key{priv: &rsa.PrivateKey{PublicKey: rsa.PublicKey{N: new(big.Int).SetBytes(n), E: 65537}}}
	if got := k.Thumbprint(); got != "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs" {
		t.Errorf("RFC 7638 thumbprint = %s", got)
	}
}

func BenchmarkSign(b *testing.B) {
	for _, alg := range []string{"ES256", "PS256"} {
		k, _ := New(alg, "k")
		claims := map[string]any{"iss": "web-app", "sub": "web-app", "aud": "https://idp.example.com", "jti": RandomID(), "exp": 1}
		b.Run(alg, func(b *testing.B) {
			for b.Loop() {
				_, _ = k.Sign(nil, claims)
			}
		})
	}
}
