package caddymodule

// Placeholders for the issue 7 helpers' files; removed when they merge.

import (
	"context"
	"crypto/x509"
	"errors"
	"net/url"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/go-jose/go-jose/v4"
)

var errPlaceholder = errors.New("not implemented yet")

type jwtTimes struct {
	Skew time.Duration
	Now  func() time.Time
}

type assertionPolicy struct {
	Algs        []jose.SignatureAlgorithm
	Audiences   []string
	IssuerOnly  string
	MaxLifetime time.Duration
	Times       jwtTimes
}

func verifyClientAssertion(ctx context.Context, raw, method, clientID string, keys *keySet, secret []byte, p assertionPolicy) (string, time.Time, error) {
	return "", time.Time{}, errPlaceholder
}
func assertionSubject(raw string) string { return "" }

type requestObjectPolicy struct {
	Algs        []jose.SignatureAlgorithm
	Issuer      string
	MaxLifetime time.Duration
	RequireTyp  bool
	Times       jwtTimes
	Decrypt     func(compact string) ([]byte, error)
}

func decodeRequestObject(ctx context.Context, raw, clientID string, keys *keySet, p requestObjectPolicy) (url.Values, error) {
	return nil, errPlaceholder
}

type dpopPolicy struct {
	Algs   []jose.SignatureAlgorithm
	MaxAge time.Duration
	Times  jwtTimes
}

func verifyDPoPProof(proof, method string, wantHTU []string, p dpopPolicy) (string, string, time.Time, error) {
	return "", "", time.Time{}, errPlaceholder
}

type serverKeys struct{}

func newServerKeysFromFile(path string, algs []jose.KeyAlgorithm, encs []jose.ContentEncryption) (*serverKeys, error) {
	return &serverKeys{}, nil
}
func loadOrCreateServerKeys(ctx context.Context, st certmagic.Storage, storageKey string, algs []jose.KeyAlgorithm, encs []jose.ContentEncryption) (*serverKeys, error) {
	return &serverKeys{}, nil
}
func (s *serverKeys) decrypt(compact string) ([]byte, error) { return nil, errPlaceholder }
func (s *serverKeys) publicJWKS() []byte                     { return []byte(`{"keys":[]}`) }

type tlsClientAuthName struct{ Kind, Value string }

func matchTLSClientAuth(cert *x509.Certificate, n tlsClientAuthName) bool { return false }
func verifyClientChain(certs []*x509.Certificate, pool *x509.CertPool, now time.Time) error {
	return errPlaceholder
}

var hmacAlgs = []jose.SignatureAlgorithm{jose.HS256, jose.HS384, jose.HS512}

func (t jwtTimes) now() time.Time {
	if t.Now == nil {
		return time.Now()
	}
	return t.Now()
}
