package caddymodule

import (
	"crypto/ecdsa"
	"crypto/sha256"
	"encoding/base64"
	"math/big"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
)

func TestVerifyDPoPProofRules(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	p := dpopPolicy{Algs: asymmetricAlgs, MaxAge: 60 * time.Second, Times: fixedTimes(now)}
	htu := "https://idp.example/par"
	keys := newTestKeys(t)
	ec := keys[1]
	pubJWK := func(k testKey) jose.JSONWebKey { return jose.JSONWebKey{Key: k.priv.Public()} }
	proof := func(k testKey, header map[jose.HeaderKey]any, mod func(map[string]any)) string {
		c := map[string]any{"htm": "POST", "htu": htu, "iat": now.Unix(), "jti": "p1"}
		if mod != nil {
			mod(c)
		}
		h := map[jose.HeaderKey]any{"typ": "dpop+jwt", "jwk": pubJWK(k)}
		for hk, v := range header {
			if v == nil {
				delete(h, hk)
			} else {
				h[hk] = v
			}
		}
		return signJWT(t, k.priv, k.alg, h, c)
	}
	for _, tc := range []struct {
		name, proof, want string
	}{
		{"valid ES256", proof(ec, nil, nil), ""},
		{"valid PS256", proof(keys[0], nil, nil), ""},
		{"valid EdDSA", proof(keys[2], nil, nil), ""},
		{"htu with default port, query and fragment", proof(ec, nil, func(c map[string]any) { c["htu"] = "HTTPS://IDP.example:443/par?x=1#f" }), ""},
		{"typ JWT", proof(ec, map[jose.HeaderKey]any{"typ": "JWT"}, nil), "typ"},
		{"typ application/dpop+jwt", proof(ec, map[jose.HeaderKey]any{"typ": "application/dpop+jwt"}, nil), ""},
		{"typ not a string", proof(ec, map[jose.HeaderKey]any{"typ": 7}, nil), "typ"},
		{"htu with userinfo", proof(ec, nil, func(c map[string]any) { c["htu"] = "https://u@idp.example/par" }), "htu"},
		{"htu of another scheme", proof(ec, nil, func(c map[string]any) { c["htu"] = "ftp://idp.example/par" }), "htu"},
		{"no jwk", proof(ec, map[jose.HeaderKey]any{"jwk": nil}, nil), "jwk"},
		{"jwk of another key", proof(ec, map[jose.HeaderKey]any{"jwk": pubJWK(newTestKeys(t)[1])}, nil), "does not verify"},
		{"jwk of another type", proof(ec, map[jose.HeaderKey]any{"jwk": pubJWK(keys[2])}, nil), "does not fit"},
		{"htm GET", proof(ec, nil, func(c map[string]any) { c["htm"] = "GET" }), "htm"},
		{"htu elsewhere", proof(ec, nil, func(c map[string]any) { c["htu"] = "https://idp.example/token" }), "htu"},
		{"no iat", proof(ec, nil, func(c map[string]any) { delete(c, "iat") }), "iat"},
		{"iat 2 minutes old", proof(ec, nil, func(c map[string]any) { c["iat"] = now.Add(-2 * time.Minute).Unix() }), "old"},
		{"iat 60s ahead", proof(ec, nil, func(c map[string]any) { c["iat"] = now.Add(time.Minute).Unix() }), "future"},
		{"no jti", proof(ec, nil, func(c map[string]any) { delete(c, "jti") }), "jti"},
		{"HMAC", signJWT(t, []byte("0123456789abcdef0123456789abcdef"), jose.HS256, map[jose.HeaderKey]any{"typ": "dpop+jwt"}, map[string]any{"htm": "POST"}), "allowed algorithm"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			jkt, jti, until, err := verifyDPoPProof(tc.proof, "POST", []string{htu}, p)
			wantErr(t, err, tc.want)
			if err != nil {
				return
			}
			if len(jkt) != 43 || jti != "p1" || !until.After(now) {
				t.Errorf("jkt %q jti %q until %v", jkt, jti, until)
			}
		})
	}
}

// The thumbprint is RFC 7638's: SHA-256 over the required members in
// lexicographic order, computed here by hand for an EC key.
func TestDPoPThumbprintIsRFC7638(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	k := newTestKeys(t)[1]
	pub := k.priv.Public().(*ecdsa.PublicKey)
	b := func(i *big.Int) string { return base64.RawURLEncoding.EncodeToString(i.FillBytes(make([]byte, 32))) }
	sum := sha256.Sum256([]byte(`{"crv":"P-256","kty":"EC","x":"` + b(pub.X) + `","y":"` + b(pub.Y) + `"}`))
	proof := signJWT(t, k.priv, k.alg, map[jose.HeaderKey]any{"typ": "dpop+jwt", "jwk": jose.JSONWebKey{Key: pub}},
		map[string]any{"htm": "POST", "htu": "https://idp.example/par", "iat": now.Unix(), "jti": "x"})
	jkt, _, _, err := verifyDPoPProof(proof, "POST", []string{"https://idp.example/par"}, dpopPolicy{Algs: asymmetricAlgs, MaxAge: time.Minute, Times: fixedTimes(now)})
	if err != nil {
		t.Fatal(err)
	}
	if want := base64.RawURLEncoding.EncodeToString(sum[:]); jkt != want {
		t.Errorf("jkt %s, want %s", jkt, want)
	}
}
