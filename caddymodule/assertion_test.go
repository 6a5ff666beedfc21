package caddymodule

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
)

func TestVerifyClientAssertionRules(t *testing.T) {
	keys := newTestKeys(t)
	ks := testKeySet(t, keys...)
	now := time.Unix(1_800_000_000, 0)
	const iss = "https://idp.example/realms/demo"
	const parURL = "https://idp.example/par"
	policy := assertionPolicy{Algs: asymmetricAlgs, Audiences: []string{iss, parURL}, MaxLifetime: 5 * time.Minute, Times: fixedTimes(now)}
	claims := func(mod func(map[string]any)) map[string]any {
		c := map[string]any{"iss": "app", "sub": "app", "aud": iss, "jti": "j1", "iat": now.Unix(), "exp": now.Add(time.Minute).Unix()}
		if mod != nil {
			mod(c)
		}
		return c
	}
	ec := keys[1]
	for _, tc := range []struct {
		name   string
		token  string
		policy func(assertionPolicy) assertionPolicy
		want   string
	}{
		{"valid ES256", signJWT(t, ec.priv, ec.alg, map[jose.HeaderKey]any{"kid": "ec"}, claims(nil)), nil, ""},
		{"valid PS256 without kid", signJWT(t, keys[0].priv, jose.PS256, nil, claims(nil)), nil, ""},
		{"valid EdDSA", signJWT(t, keys[2].priv, jose.EdDSA, map[jose.HeaderKey]any{"kid": "ed"}, claims(nil)), nil, ""},
		{"aud PAR URL in an array", signJWT(t, ec.priv, ec.alg, nil, claims(func(c map[string]any) { c["aud"] = []string{"x", parURL} })), nil, ""},
		{"aud elsewhere", signJWT(t, ec.priv, ec.alg, nil, claims(func(c map[string]any) { c["aud"] = "https://rp.example" })), nil, "aud"},
		{"issuer only: string accepted", signJWT(t, ec.priv, ec.alg, nil, claims(nil)), issuerOnly(iss), ""},
		{"issuer only: array refused", signJWT(t, ec.priv, ec.alg, nil, claims(func(c map[string]any) { c["aud"] = []string{iss} })), issuerOnly(iss), "single string"},
		{"issuer only: PAR URL refused", signJWT(t, ec.priv, ec.alg, nil, claims(func(c map[string]any) { c["aud"] = parURL })), issuerOnly(iss), "issuer alone"},
		{"iss differs", signJWT(t, ec.priv, ec.alg, nil, claims(func(c map[string]any) { c["iss"] = "other" })), nil, "iss and sub"},
		{"sub differs", signJWT(t, ec.priv, ec.alg, nil, claims(func(c map[string]any) { c["sub"] = "other" })), nil, "iss and sub"},
		{"no exp", signJWT(t, ec.priv, ec.alg, nil, claims(func(c map[string]any) { delete(c, "exp") })), nil, "exp is required"},
		{"expired", signJWT(t, ec.priv, ec.alg, nil, claims(func(c map[string]any) { c["exp"] = now.Add(-time.Minute).Unix() })), nil, "expired"},
		{"exp too far ahead", signJWT(t, ec.priv, ec.alg, nil, claims(func(c map[string]any) { c["exp"] = now.Add(10 * time.Minute).Unix() })), nil, "ahead"},
		{"iat 8s ahead accepted", signJWT(t, ec.priv, ec.alg, nil, claims(func(c map[string]any) { c["iat"] = now.Add(8 * time.Second).Unix() })), nil, ""},
		{"iat 60s ahead", signJWT(t, ec.priv, ec.alg, nil, claims(func(c map[string]any) { c["iat"] = now.Add(60 * time.Second).Unix() })), nil, "iat is in the future"},
		{"nbf 60s ahead", signJWT(t, ec.priv, ec.alg, nil, claims(func(c map[string]any) { c["nbf"] = now.Add(60 * time.Second).Unix() })), nil, "nbf"},
		{"no jti", signJWT(t, ec.priv, ec.alg, nil, claims(func(c map[string]any) { delete(c, "jti") })), nil, "jti"},
		{"aud of the wrong type", signJWT(t, ec.priv, ec.alg, nil, claims(func(c map[string]any) { c["aud"] = 7 })), nil, "malformed claims"},
		{"RS256 not on the list", signJWT(t, keys[0].priv, jose.RS256, nil, claims(nil)), func(p assertionPolicy) assertionPolicy {
			p.Algs = []jose.SignatureAlgorithm{jose.PS256, jose.ES256}
			return p
		}, "allowed algorithm"},
		{"HS256 keyed with the public key (alg confusion)", func() string {
			pub, _ := json.Marshal(jose.JSONWebKey{Key: ec.priv.Public()})
			return signJWT(t, pub, jose.HS256, nil, claims(nil))
		}(), nil, "allowed algorithm"},
		{"unknown kid", signJWT(t, ec.priv, ec.alg, map[jose.HeaderKey]any{"kid": "nope"}, claims(nil)), nil, "no matching client key"},
		{"signed by another key", signJWT(t, newTestKeys(t)[1].priv, jose.ES256, nil, claims(nil)), nil, "does not verify"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := policy
			if tc.policy != nil {
				p = tc.policy(p)
			}
			jti, until, err := verifyClientAssertion(t.Context(), tc.token, AuthPrivateKeyJWT, "app", ks, nil, p)
			wantErr(t, err, tc.want)
			if err == nil && (jti != "j1" || until.Before(now)) {
				t.Errorf("jti %q until %v", jti, until)
			}
		})
	}
}

func issuerOnly(iss string) func(assertionPolicy) assertionPolicy {
	return func(p assertionPolicy) assertionPolicy { p.IssuerOnly = iss; return p }
}

func TestVerifyClientSecretJWT(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	p := assertionPolicy{Audiences: []string{"https://idp.example"}, MaxLifetime: time.Minute, Times: fixedTimes(now)}
	secret := []byte("0123456789abcdef0123456789abcdef") // 32 bytes
	c := map[string]any{"iss": "app", "sub": "app", "aud": "https://idp.example", "jti": "j", "exp": now.Add(30 * time.Second).Unix()}
	for _, tc := range []struct {
		name  string
		token string
		want  string
	}{
		{"HS256 with the secret", signJWT(t, secret, jose.HS256, nil, c), ""},
		{"HS256 with another secret", signJWT(t, []byte("another-secret-of-at-least-32-bytes!"), jose.HS256, nil, c), "client secret"},
		{"HS512 with a secret shorter than 64 bytes", signJWT(t, append(secret, secret...), jose.HS512, nil, c), "client secret"},
		{"an asymmetric signature", signJWT(t, newTestKeys(t)[1].priv, jose.ES256, nil, c), "allowed algorithm"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := verifyClientAssertion(t.Context(), tc.token, AuthClientSecretJWT, "app", nil, secret, p)
			wantErr(t, err, tc.want)
		})
	}
}

func TestAssertionSubjectIsReadWithoutVerification(t *testing.T) {
	tok := signJWT(t, newTestKeys(t)[1].priv, jose.ES256, nil, map[string]any{"sub": "app"})
	if got := assertionSubject(tok); got != "app" {
		t.Errorf("assertionSubject = %q", got)
	}
	if got := assertionSubject("garbage"); got != "" {
		t.Errorf("assertionSubject(garbage) = %q", got)
	}
}

func TestVerifyClientAssertionRefusesOtherKindsOfJWT(t *testing.T) {
	k := newTestKeys(t)[1]
	now := time.Unix(1_800_000_000, 0)
	p := assertionPolicy{Algs: asymmetricAlgs, Audiences: []string{"https://idp.example"}, MaxLifetime: time.Minute, Times: fixedTimes(now)}
	c := map[string]any{"iss": "app", "sub": "app", "aud": "https://idp.example", "jti": "j", "exp": now.Add(30 * time.Second).Unix()}
	for _, typ := range []string{"dpop+jwt", "oauth-authz-req+jwt", "application/oauth-authz-req+jwt"} {
		tok := signJWT(t, k.priv, k.alg, map[jose.HeaderKey]any{"typ": typ}, c)
		_, _, err := verifyClientAssertion(t.Context(), tok, AuthPrivateKeyJWT, "app", testKeySet(t, k), nil, p)
		wantErr(t, err, "typ")
	}
}
