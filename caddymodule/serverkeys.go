package caddymodule

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"

	"github.com/caddyserver/certmagic"
	"github.com/go-jose/go-jose/v4"
)

// maxEncryptedRequestObject caps the compact JWE decrypt accepts.
const maxEncryptedRequestObject = 64 << 10

// errDecrypt is the one error decrypt returns for a JWE it cannot open: it
// never tells which key or step failed, and never carries key material.
var errDecrypt = errors.New("the request object could not be decrypted")

// serverKeys are the gateway's own private keys that clients encrypt
// request objects to (RFC 9101 §6.1), with the algorithms allowed.
type serverKeys struct {
	keys []jose.JSONWebKey // private; each with KeyID and Algorithm set
	algs []jose.KeyAlgorithm
	encs []jose.ContentEncryption
	jwks []byte // public halves, computed once
}

// keyKind is the JWK key type an algorithm needs: "RSA", "EC" or "".
func keyKind(alg jose.KeyAlgorithm) string {
	switch alg {
	case jose.RSA1_5, jose.RSA_OAEP, jose.RSA_OAEP_256:
		return "RSA"
	case jose.ECDH_ES, jose.ECDH_ES_A128KW, jose.ECDH_ES_A192KW, jose.ECDH_ES_A256KW:
		return "EC"
	}
	return ""
}

// privateKind checks a private key is usable (RSA >= 2048 bits, EC P-256,
// P-384, P-521) and returns its kind. Messages hold no key material.
func privateKind(k any) (string, error) {
	switch k := k.(type) {
	case *rsa.PrivateKey:
		if k.N.BitLen() < 2048 {
			return "", fmt.Errorf("RSA key of %d bits (at least 2048 required)", k.N.BitLen())
		}
		return "RSA", nil
	case *ecdsa.PrivateKey:
		switch k.Curve {
		case elliptic.P256(), elliptic.P384(), elliptic.P521():
			return "EC", nil
		}
		return "", errors.New("EC key on an unsupported curve (P-256, P-384, P-521 only)")
	case *rsa.PublicKey, *ecdsa.PublicKey:
		return "", errors.New("public key only (a private key is required)")
	}
	return "", fmt.Errorf("unsupported key type %T", k)
}

// defaultAlg is the algorithm given to a key of the kind that has none:
// the first allowed one fitting it, preferring RSA-OAEP-256 and ECDH-ES.
func defaultAlg(kind string, algs []jose.KeyAlgorithm) jose.KeyAlgorithm {
	for _, pref := range []jose.KeyAlgorithm{jose.RSA_OAEP_256, jose.ECDH_ES} {
		if keyKind(pref) == kind && slices.Contains(algs, pref) {
			return pref
		}
	}
	for _, a := range algs {
		if keyKind(a) == kind {
			return a
		}
	}
	return ""
}

// prepareKey checks one key and fills in its alg and kid. The error holds
// no key material.
func prepareKey(k jose.JSONWebKey, algs []jose.KeyAlgorithm) (jose.JSONWebKey, error) {
	kind, err := privateKind(k.Key)
	if err != nil {
		return k, err
	}
	if k.Use != "" && k.Use != "enc" {
		return k, fmt.Errorf("key has use %q (enc required)", k.Use)
	}
	if k.Algorithm != "" {
		a := jose.KeyAlgorithm(k.Algorithm)
		if !slices.Contains(algs, a) {
			return k, fmt.Errorf("key alg %q is not one of the allowed algs", k.Algorithm)
		}
		if keyKind(a) != kind {
			return k, fmt.Errorf("key alg %q does not fit a %s key", k.Algorithm, kind)
		}
	} else {
		a := defaultAlg(kind, algs)
		if a == "" {
			return k, fmt.Errorf("no allowed alg fits a %s key", kind)
		}
		k.Algorithm = string(a)
	}
	if k.KeyID == "" {
		tp, err := k.Thumbprint(crypto.SHA256)
		if err != nil {
			return k, errors.New("key thumbprint failed")
		}
		k.KeyID = base64.RawURLEncoding.EncodeToString(tp)
	}
	k.Use = "enc"
	return k, nil
}

// newServerKeys builds the set and its public JWKS.
func newServerKeys(keys []jose.JSONWebKey, algs []jose.KeyAlgorithm, encs []jose.ContentEncryption) (*serverKeys, error) {
	if len(keys) == 0 {
		return nil, errors.New("no usable key")
	}
	if len(algs) == 0 || len(encs) == 0 {
		return nil, errors.New("no algs or encs allowed")
	}
	seen := map[string]bool{}
	pub := jose.JSONWebKeySet{Keys: make([]jose.JSONWebKey, 0, len(keys))}
	for _, k := range keys {
		if seen[k.KeyID] {
			return nil, fmt.Errorf("duplicate kid %q", k.KeyID)
		}
		seen[k.KeyID] = true
		p := k.Public()
		if !p.Valid() {
			return nil, errors.New("invalid key")
		}
		p.KeyID, p.Algorithm, p.Use = k.KeyID, k.Algorithm, "enc"
		p.Certificates = nil
		pub.Keys = append(pub.Keys, p)
	}
	b, err := json.Marshal(pub)
	if err != nil {
		return nil, errors.New("public keys could not be encoded")
	}
	return &serverKeys{
		keys: keys,
		algs: slices.Clone(algs),
		encs: slices.Clone(encs),
		jwks: b,
	}, nil
}

// parseJWKs reads a JWK Set or a single JWK. The error holds no key
// material (the JSON decoder's messages can quote input).
func parseJWKs(b []byte) ([]jose.JSONWebKey, error) {
	var probe map[string]json.RawMessage
	if err := json.Unmarshal(b, &probe); err != nil {
		return nil, errors.New("not a JSON object (a JWK or JWK Set is required)")
	}
	if _, ok := probe["keys"]; ok {
		var set jose.JSONWebKeySet
		if err := json.Unmarshal(b, &set); err != nil {
			return nil, errors.New("not a valid JWK Set")
		}
		return set.Keys, nil
	}
	var k jose.JSONWebKey
	if err := json.Unmarshal(b, &k); err != nil {
		return nil, errors.New("not a valid JWK")
	}
	return []jose.JSONWebKey{k}, nil
}

// newServerKeysFromFile loads a JWK or JWK Set of private keys. Every key
// must be usable: a public-only, weak or unfitting key is an error.
func newServerKeysFromFile(path string, algs []jose.KeyAlgorithm, encs []jose.ContentEncryption) (*serverKeys, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("key file %s: cannot be read", path)
	}
	keys, err := parseJWKs(b)
	if err != nil {
		return nil, fmt.Errorf("key file %s: %w", path, err)
	}
	out := make([]jose.JSONWebKey, 0, len(keys))
	for i, k := range keys {
		k, err := prepareKey(k, algs)
		if err != nil {
			return nil, fmt.Errorf("key file %s: key %d: %w", path, i, err)
		}
		out = append(out, k)
	}
	sk, err := newServerKeys(out, algs, encs)
	if err != nil {
		return nil, fmt.Errorf("key file %s: %w", path, err)
	}
	return sk, nil
}

// randomKID is 16 random bytes, base64url.
func randomKID() (string, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// generateKey makes a new key of the kind with its default alg.
func generateKey(kind string, algs []jose.KeyAlgorithm) (jose.JSONWebKey, error) {
	var priv any
	var err error
	switch kind {
	case "RSA":
		priv, err = rsa.GenerateKey(rand.Reader, 2048)
	case "EC":
		priv, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	default:
		err = fmt.Errorf("unknown key kind %q", kind)
	}
	if err != nil {
		return jose.JSONWebKey{}, err
	}
	kid, err := randomKID()
	if err != nil {
		return jose.JSONWebKey{}, err
	}
	return jose.JSONWebKey{Key: priv, KeyID: kid, Algorithm: string(defaultAlg(kind, algs)), Use: "enc"}, nil
}

// loadOrCreateServerKeys keeps the keys as a JWK Set in storage, so that
// reloads, restarts and instances sharing storage use the same keys. Under
// the storage lock it loads the set, generates an RSA 2048 key
// (RSA-OAEP-256) and an EC P-256 key (ECDH-ES) when the allowed algs need
// a kind the set lacks, and stores the set back when it changed. Stored
// keys not fitting the allowed algs are kept in storage but not used.
func loadOrCreateServerKeys(ctx context.Context, st certmagic.Storage, storageKey string, algs []jose.KeyAlgorithm, encs []jose.ContentEncryption) (*serverKeys, error) {
	if st == nil {
		return nil, errors.New("no storage")
	}
	lock := storageKey + ".lock"
	if err := st.Lock(ctx, lock); err != nil {
		return nil, fmt.Errorf("locking %s: %w", storageKey, err)
	}
	defer func() { _ = st.Unlock(context.WithoutCancel(ctx), lock) }()

	var stored []jose.JSONWebKey
	b, err := st.Load(ctx, storageKey)
	switch {
	case err == nil:
		stored, err = parseJWKs(b)
		if err != nil {
			return nil, fmt.Errorf("stored keys %s: %w", storageKey, err)
		}
	case errors.Is(err, fs.ErrNotExist):
	default:
		return nil, fmt.Errorf("loading %s: %w", storageKey, err)
	}

	var use []jose.JSONWebKey
	have := map[string]bool{}
	for _, k := range stored {
		p, err := prepareKey(k, algs)
		if err != nil {
			continue
		}
		use = append(use, p)
		have[keyKind(jose.KeyAlgorithm(p.Algorithm))] = true
	}
	changed := false
	for _, kind := range []string{"RSA", "EC"} {
		if have[kind] || defaultAlg(kind, algs) == "" {
			continue
		}
		k, err := generateKey(kind, algs)
		if err != nil {
			return nil, fmt.Errorf("generating a %s key: %w", kind, err)
		}
		stored = append(stored, k)
		use = append(use, k)
		changed = true
	}
	if changed {
		out, err := json.Marshal(jose.JSONWebKeySet{Keys: stored})
		if err != nil {
			return nil, errors.New("keys could not be encoded")
		}
		if err := st.Store(ctx, storageKey, out); err != nil {
			return nil, fmt.Errorf("storing %s: %w", storageKey, err)
		}
	}
	sk, err := newServerKeys(use, algs, encs)
	if err != nil {
		return nil, fmt.Errorf("keys %s: %w", storageKey, err)
	}
	return sk, nil
}

// decrypt opens a compact JWE encrypted to one of the keys, with an
// allowed alg and enc. The key is the one named by the kid header, else
// those of the kind the alg needs. Errors never carry key material.
func (s *serverKeys) decrypt(compact string) ([]byte, error) {
	if s == nil || len(s.keys) == 0 {
		return nil, errors.New("request object decryption is not configured")
	}
	if len(compact) > maxEncryptedRequestObject {
		return nil, errors.New("the encrypted request object is too large")
	}
	obj, err := jose.ParseEncryptedCompact(compact, s.algs, s.encs)
	if err != nil {
		return nil, errors.New("the request object is not a JWE with an allowed alg and enc")
	}
	alg := jose.KeyAlgorithm(obj.Header.Algorithm)
	kind := keyKind(alg)
	if kind == "" {
		return nil, errDecrypt
	}
	if kid := obj.Header.KeyID; kid != "" {
		for _, k := range s.keys {
			if k.KeyID != kid {
				continue
			}
			if keyKind(jose.KeyAlgorithm(k.Algorithm)) != kind {
				return nil, errDecrypt
			}
			pt, err := obj.Decrypt(k.Key)
			if err != nil {
				return nil, errDecrypt
			}
			return pt, nil
		}
		return nil, errors.New("the request object is encrypted to an unknown key")
	}
	for _, k := range s.keys {
		if keyKind(jose.KeyAlgorithm(k.Algorithm)) != kind {
			continue
		}
		if pt, err := obj.Decrypt(k.Key); err == nil {
			return pt, nil
		}
	}
	return nil, errDecrypt
}

// publicJWKS is {"keys":[...]}: the public halves, with use and alg.
func (s *serverKeys) publicJWKS() []byte {
	if s == nil {
		return []byte(`{"keys":[]}`)
	}
	return s.jwks
}
