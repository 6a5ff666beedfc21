package caddymodule

import (
	"encoding/json"
	"slices"
	"testing"
)

func TestClientDefaultAuthMethodsFollowWhatTheClientHas(t *testing.T) {
	jwks := json.RawMessage(`{"keys":[]}`)
	long := "a-secret-long-enough-for-hs256-0123456789"
	for _, tc := range []struct {
		name string
		cfg  ClientConfig
		want []string
	}{
		{"public", ClientConfig{Public: true}, []string{AuthNone}},
		{"short secret", ClientConfig{Secret: "s"}, []string{AuthClientSecretBasic, AuthClientSecretPost}},
		{"long secret", ClientConfig{Secret: long}, []string{AuthClientSecretBasic, AuthClientSecretPost, AuthClientSecretJWT}},
		{"keys", ClientConfig{JWKS: jwks}, []string{AuthPrivateKeyJWT}},
		{"jwks_uri", ClientConfig{JWKSURI: "https://k.example/jwks"}, []string{AuthPrivateKeyJWT}},
		{"certificate name", ClientConfig{TLSClientAuthSANDNS: "c.example"}, []string{AuthTLSClientAuth}},
		{"keys and certificate name", ClientConfig{JWKS: jwks, TLSClientAuthSubjectDN: "CN=c"}, []string{AuthPrivateKeyJWT, AuthTLSClientAuth}},
		{"listed methods win", ClientConfig{Secret: "s", JWKS: jwks, AuthMethods: []string{AuthPrivateKeyJWT}}, []string{AuthPrivateKeyJWT}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.cfg.methods(); !slices.Equal(got, tc.want) {
				t.Errorf("methods() = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestClientValidateRefusesAmbiguousOrUnusableCredentials(t *testing.T) {
	ok := []string{"https://c.example/cb"}
	jwks := json.RawMessage(`{"keys":[]}`)
	for _, tc := range []struct {
		name string
		cfg  ClientConfig
	}{
		{"nothing to authenticate with", ClientConfig{}},
		{"secret and keys, methods not listed", ClientConfig{Secret: "s", JWKS: jwks}},
		{"public with a certificate name", ClientConfig{Public: true, TLSClientAuthSANDNS: "c.example"}},
		{"public listing private_key_jwt", ClientConfig{Public: true, JWKS: jwks, AuthMethods: []string{AuthPrivateKeyJWT}}},
		{"self-signed mTLS without keys", ClientConfig{Secret: "s", AuthMethods: []string{AuthSelfSignedTLSClientAuth}}},
		{"tls_client_auth without a name", ClientConfig{JWKS: jwks, AuthMethods: []string{AuthTLSClientAuth}}},
		{"jwks and jwks_uri", ClientConfig{JWKS: jwks, JWKSURI: "https://k.example/jwks"}},
		{"jwks_uri over http elsewhere than loopback", ClientConfig{JWKSURI: "http://k.example/jwks"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.ClientID, tc.cfg.RedirectURIs = "c", ok
			if err := tc.cfg.validate(); err == nil {
				t.Fatal("validate accepted it")
			}
		})
	}
	for _, cfg := range []ClientConfig{
		{JWKSURI: "http://127.0.0.1:8080/jwks"},
		{Secret: "s", JWKS: jwks, AuthMethods: []string{AuthClientSecretBasic, AuthPrivateKeyJWT}},
		{Public: true, JWKS: jwks},
	} {
		cfg.ClientID, cfg.RedirectURIs = "c", ok
		if err := cfg.validate(); err != nil {
			t.Errorf("%+v: %v", cfg, err)
		}
	}
}
