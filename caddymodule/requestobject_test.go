package caddymodule

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
)

func TestDecodeRequestObjectRules(t *testing.T) {
	keys := newTestKeys(t)
	ks := testKeySet(t, keys...)
	now := time.Unix(1_800_000_000, 0)
	const iss = "https://idp.example"
	p := requestObjectPolicy{Algs: asymmetricAlgs, Issuer: iss, MaxLifetime: time.Hour, Times: fixedTimes(now)}
	claims := func(mod func(map[string]any)) map[string]any {
		c := map[string]any{
			"iss": "app", "aud": iss, "exp": now.Add(5 * time.Minute).Unix(), "nbf": now.Unix(), "jti": "r1",
			"client_id": "app", "response_type": "code", "redirect_uri": "https://app.example/cb", "scope": "openid",
			"max_age": 300, "claims": map[string]any{"id_token": map[string]any{"acr": map[string]any{"essential": true}}},
			"authorization_details": []any{map[string]any{"type": "payment_initiation"}},
		}
		if mod != nil {
			mod(c)
		}
		return c
	}
	ec := keys[1]
	sign := func(typ string, c map[string]any) string {
		h := map[jose.HeaderKey]any{"kid": "ec"}
		if typ != "" {
			h["typ"] = typ
		}
		return signJWT(t, ec.priv, ec.alg, h, c)
	}
	for _, tc := range []struct {
		name, token string
		requireTyp  bool
		want        string
	}{
		{"typ oauth-authz-req+jwt", sign("oauth-authz-req+jwt", claims(nil)), true, ""},
		{"typ with application/ prefix", sign("application/oauth-authz-req+jwt", claims(nil)), true, ""},
		{"typ absent", sign("", claims(nil)), false, ""},
		{"typ JWT", sign("JWT", claims(nil)), false, ""},
		{"typ absent when required", sign("", claims(nil)), true, "typ"},
		{"typ of a DPoP proof", sign("dpop+jwt", claims(nil)), false, "typ"},
		{"aud elsewhere", sign("", claims(func(c map[string]any) { c["aud"] = "https://rp.example" })), false, "aud"},
		{"iss of another client", sign("", claims(func(c map[string]any) { c["iss"] = "other" })), false, "iss"},
		{"client_id missing", sign("", claims(func(c map[string]any) { delete(c, "client_id") })), false, "client_id"},
		{"client_id of another client", sign("", claims(func(c map[string]any) { c["client_id"] = "other" })), false, "client_id"},
		{"no exp", sign("", claims(func(c map[string]any) { delete(c, "exp") })), false, "exp is required"},
		{"expired", sign("", claims(func(c map[string]any) { c["exp"] = now.Add(-time.Minute).Unix() })), false, "expired"},
		{"lifetime over an hour", sign("", claims(func(c map[string]any) { c["exp"] = now.Add(61 * time.Minute).Unix() })), false, "lifetime"},
		{"nbf in the future", sign("", claims(func(c map[string]any) { c["nbf"] = now.Add(time.Minute).Unix() })), false, "nbf"},
		{"request inside", sign("", claims(func(c map[string]any) { c["request"] = "x" })), false, "request"},
		{"request_uri inside", sign("", claims(func(c map[string]any) { c["request_uri"] = "x" })), false, "request_uri"},
		{"unsigned (alg none)", "eyJhbGciOiJub25lIn0.eyJpc3MiOiJhcHAifQ.", false, "allowed algorithm"},
		{"signed by another key", signJWT(t, newTestKeys(t)[1].priv, jose.ES256, nil, claims(nil)), false, "does not verify"},
		{"encrypted although encryption is off", "a.b.c.d.e", false, "encrypted"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pp := p
			pp.RequireTyp = tc.requireTyp
			params, err := decodeRequestObject(t.Context(), tc.token, "app", ks, pp)
			wantErr(t, err, tc.want)
			if err != nil {
				return
			}
			for k, want := range map[string]string{
				"client_id": "app", "response_type": "code", "scope": "openid", "max_age": "300",
				"claims":                `{"id_token":{"acr":{"essential":true}}}`,
				"authorization_details": `[{"type":"payment_initiation"}]`,
			} {
				if got := params.Get(k); got != want {
					t.Errorf("%s = %q, want %q", k, got, want)
				}
			}
			for _, k := range []string{"iss", "aud", "exp", "nbf", "iat", "jti"} {
				if params.Has(k) {
					t.Errorf("JWT claim %s returned as a parameter", k)
				}
			}
		})
	}
}

func TestDecodeRequestObjectDecryptsThenRequiresTheSignature(t *testing.T) {
	keys := newTestKeys(t)
	ks := testKeySet(t, keys...)
	now := time.Unix(1_800_000_000, 0)
	encKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	decrypt := func(compact string) ([]byte, error) {
		jwe, err := jose.ParseEncryptedCompact(compact, []jose.KeyAlgorithm{jose.ECDH_ES}, []jose.ContentEncryption{jose.A128GCM})
		if err != nil {
			return nil, err
		}
		return jwe.Decrypt(encKey)
	}
	seal := func(plain string) string {
		enc, err := jose.NewEncrypter(jose.A128GCM, jose.Recipient{Algorithm: jose.ECDH_ES, Key: &encKey.PublicKey}, nil)
		if err != nil {
			t.Fatal(err)
		}
		obj, _ := enc.Encrypt([]byte(plain))
		s, _ := obj.CompactSerialize()
		return s
	}
	p := requestObjectPolicy{Algs: asymmetricAlgs, Issuer: "https://idp.example", MaxLifetime: time.Hour, Times: fixedTimes(now), Decrypt: decrypt}
	c := map[string]any{"iss": "app", "aud": "https://idp.example", "exp": now.Add(time.Minute).Unix(), "client_id": "app", "state": "s"}
	signed := signJWT(t, keys[2].priv, jose.EdDSA, map[jose.HeaderKey]any{"kid": "ed"}, c)

	params, err := decodeRequestObject(t.Context(), seal(signed), "app", ks, p)
	if err != nil || params.Get("state") != "s" {
		t.Fatalf("nested JWT: %v %v", params, err)
	}
	_, err = decodeRequestObject(t.Context(), seal(`{"iss":"app","client_id":"app"}`), "app", ks, p)
	wantErr(t, err, "signed JWT")
	p.Decrypt = func(string) ([]byte, error) { return nil, errors.New("wrong key") }
	_, err = decodeRequestObject(t.Context(), seal(signed), "app", ks, p)
	wantErr(t, err, "could not be decrypted")
}
