package caddymodule

// Placeholders for the issue 7 helpers' files; removed when they merge.

import (
	"context"
	"errors"
	"net/url"
	"time"

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

var hmacAlgs = []jose.SignatureAlgorithm{jose.HS256, jose.HS384, jose.HS512}

func (t jwtTimes) now() time.Time {
	if t.Now == nil {
		return time.Now()
	}
	return t.Now()
}
