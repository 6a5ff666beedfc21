package caddymodule

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/caddyserver/certmagic"
	"github.com/go-jose/go-jose/v4"
)

var skAlgs = []jose.KeyAlgorithm{jose.RSA_OAEP_256, jose.ECDH_ES, jose.ECDH_ES_A128KW, jose.ECDH_ES_A256KW}
var skEncs = []jose.ContentEncryption{jose.A128GCM, jose.A256GCM}

// skPublic parses publicJWKS.
func skPublic(t *testing.T, sk *serverKeys) jose.JSONWebKeySet {
	t.Helper()
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(sk.publicJWKS(), &set); err != nil {
		t.Fatalf("publicJWKS: %v", err)
	}
	return set
}

func skPublicKey(t *testing.T, sk *serverKeys, kty string) jose.JSONWebKey {
	t.Helper()
	for _, k := range skPublic(t, sk).Keys {
		switch k.Key.(type) {
		case *rsa.PublicKey:
			if kty == "RSA" {
				return k
			}
		case *ecdsa.PublicKey:
			if kty == "EC" {
				return k
			}
		}
	}
	t.Fatalf("no %s key in publicJWKS", kty)
	return jose.JSONWebKey{}
}

func skEncrypt(t *testing.T, alg jose.KeyAlgorithm, enc jose.ContentEncryption, key any, kid string, pt string) string {
	t.Helper()
	e, err := jose.NewEncrypter(enc, jose.Recipient{Algorithm: alg, Key: key, KeyID: kid}, nil)
	if err != nil {
		t.Fatalf("NewEncrypter: %v", err)
	}
	o, err := e.Encrypt([]byte(pt))
	if err != nil {
		t.Fatal(err)
	}
	s, err := o.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func skNew(t *testing.T) *serverKeys {
	t.Helper()
	sk, err := loadOrCreateServerKeys(context.Background(), &certmagic.FileStorage{Path: t.TempDir()}, "k/jwks.json", skAlgs, skEncs)
	if err != nil {
		t.Fatal(err)
	}
	return sk
}

func TestServerKeysRoundTrip(t *testing.T) {
	sk := skNew(t)
	for _, alg := range skAlgs {
		for _, enc := range skEncs {
			kty := keyKind(alg)
			pub := skPublicKey(t, sk, kty)
			for _, kid := range []string{pub.KeyID, ""} {
				name := string(alg) + "/" + string(enc) + "/kid=" + kid
				ct := skEncrypt(t, alg, enc, pub.Key, kid, "hello "+name)
				pt, err := sk.decrypt(ct)
				if err != nil {
					t.Errorf("%s: decrypt: %v", name, err)
					continue
				}
				if string(pt) != "hello "+name {
					t.Errorf("%s: got %q", name, pt)
				}
			}
		}
	}
}

func TestServerKeysRefusals(t *testing.T) {
	sk := skNew(t)
	rsaPub := skPublicKey(t, sk, "RSA")
	ecPub := skPublicKey(t, sk, "EC")

	// alg not on the list.
	if _, err := sk.decrypt(skEncrypt(t, jose.RSA_OAEP, jose.A128GCM, rsaPub.Key, rsaPub.KeyID, "x")); err == nil {
		t.Error("RSA-OAEP accepted")
	}
	// enc not on the list.
	if _, err := sk.decrypt(skEncrypt(t, jose.ECDH_ES, jose.A128CBC_HS256, ecPub.Key, ecPub.KeyID, "x")); err == nil {
		t.Error("A128CBC-HS256 accepted")
	}
	// wrong kid.
	if _, err := sk.decrypt(skEncrypt(t, jose.ECDH_ES, jose.A128GCM, ecPub.Key, "nope", "x")); err == nil {
		t.Error("unknown kid accepted")
	}
	// kid of a key of the wrong kind for the alg.
	if _, err := sk.decrypt(skEncrypt(t, jose.ECDH_ES, jose.A128GCM, ecPub.Key, rsaPub.KeyID, "x")); err == nil {
		t.Error("EC alg with RSA kid accepted")
	}
	// encrypted to some other key.
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if _, err := sk.decrypt(skEncrypt(t, jose.ECDH_ES, jose.A128GCM, &other.PublicKey, "", "x")); err == nil {
		t.Error("foreign key accepted")
	}
	// too large, garbage.
	if _, err := sk.decrypt(strings.Repeat("a", 65<<10)); err == nil {
		t.Error("oversized input accepted")
	}
	if _, err := sk.decrypt("not.a.jwe"); err == nil {
		t.Error("garbage accepted")
	}
	// a JWS is not a JWE.
	if _, err := sk.decrypt("eyJhbGciOiJub25lIn0.e30."); err == nil {
		t.Error("JWS accepted")
	}
}

func TestServerKeysPublicJWKS(t *testing.T) {
	sk := skNew(t)
	var raw struct {
		Keys []map[string]any `json:"keys"`
	}
	if err := json.Unmarshal(sk.publicJWKS(), &raw); err != nil {
		t.Fatal(err)
	}
	if len(raw.Keys) != 2 {
		t.Fatalf("got %d keys, want 2", len(raw.Keys))
	}
	algs := map[string]bool{}
	for _, k := range raw.Keys {
		for _, f := range []string{"d", "p", "q", "dp", "dq", "qi"} {
			if _, ok := k[f]; ok {
				t.Errorf("public key has %q", f)
			}
		}
		if k["use"] != "enc" {
			t.Errorf("use = %v", k["use"])
		}
		if kid, _ := k["kid"].(string); len(kid) != 22 {
			t.Errorf("kid = %v", k["kid"])
		}
		a, _ := k["alg"].(string)
		algs[a] = true
	}
	if !algs["RSA-OAEP-256"] || !algs["ECDH-ES"] {
		t.Errorf("algs = %v", algs)
	}
	if k := skPublicKey(t, sk, "RSA").Key.(*rsa.PublicKey); k.N.BitLen() != 2048 {
		t.Errorf("RSA key of %d bits", k.N.BitLen())
	}
}

func TestServerKeysOnlyFittingKinds(t *testing.T) {
	sk, err := loadOrCreateServerKeys(context.Background(), &certmagic.FileStorage{Path: t.TempDir()}, "k",
		[]jose.KeyAlgorithm{jose.ECDH_ES_A256KW}, skEncs)
	if err != nil {
		t.Fatal(err)
	}
	set := skPublic(t, sk)
	if len(set.Keys) != 1 || set.Keys[0].Algorithm != "ECDH-ES+A256KW" {
		t.Fatalf("keys = %s", sk.publicJWKS())
	}
	if _, ok := set.Keys[0].Key.(*ecdsa.PublicKey); !ok {
		t.Fatal("not an EC key")
	}
	sk, err = loadOrCreateServerKeys(context.Background(), &certmagic.FileStorage{Path: t.TempDir()}, "k",
		[]jose.KeyAlgorithm{jose.RSA_OAEP_256}, skEncs)
	if err != nil {
		t.Fatal(err)
	}
	if set := skPublic(t, sk); len(set.Keys) != 1 || set.Keys[0].Algorithm != "RSA-OAEP-256" {
		t.Fatalf("keys = %s", sk.publicJWKS())
	}
}

func TestServerKeysPersisted(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	a, err := loadOrCreateServerKeys(ctx, &certmagic.FileStorage{Path: dir}, "x/jwks.json", skAlgs, skEncs)
	if err != nil {
		t.Fatal(err)
	}
	b, err := loadOrCreateServerKeys(ctx, &certmagic.FileStorage{Path: dir}, "x/jwks.json", skAlgs, skEncs)
	if err != nil {
		t.Fatal(err)
	}
	if string(a.publicJWKS()) != string(b.publicJWKS()) {
		t.Fatal("second load made new keys")
	}
	// What a encrypts to, b decrypts.
	pub := skPublicKey(t, a, "EC")
	if _, err := b.decrypt(skEncrypt(t, jose.ECDH_ES, jose.A256GCM, pub.Key, pub.KeyID, "x")); err != nil {
		t.Fatal(err)
	}
	// Narrowing the algs later keeps the stored keys that still fit.
	c, err := loadOrCreateServerKeys(ctx, &certmagic.FileStorage{Path: dir}, "x/jwks.json", []jose.KeyAlgorithm{jose.ECDH_ES}, skEncs)
	if err != nil {
		t.Fatal(err)
	}
	if set := skPublic(t, c); len(set.Keys) != 1 || set.Keys[0].KeyID != pub.KeyID {
		t.Fatalf("keys = %s", c.publicJWKS())
	}
}

func TestServerKeysConcurrentCreate(t *testing.T) {
	dir := t.TempDir()
	var wg sync.WaitGroup
	out := make([]string, 2)
	errs := make([]error, 2)
	for i := range out {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sk, err := loadOrCreateServerKeys(context.Background(), &certmagic.FileStorage{Path: dir}, "c/jwks.json", skAlgs, skEncs)
			errs[i] = err
			if err == nil {
				out[i] = string(sk.publicJWKS())
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if out[0] != out[1] {
		t.Fatalf("concurrent loads disagree:\n%s\n%s", out[0], out[1])
	}
}

func skWrite(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "keys.json")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestServerKeysFromFile(t *testing.T) {
	rk, _ := rsa.GenerateKey(rand.Reader, 2048)
	ek, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	set := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{
		{Key: rk, KeyID: "r1", Algorithm: "RSA-OAEP-256"},
		{Key: ek}, // no kid, no alg: thumbprint kid, ECDH-ES
	}}
	p := skWrite(t, set)
	sk, err := newServerKeysFromFile(p, skAlgs, skEncs)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sk.decrypt(skEncrypt(t, jose.RSA_OAEP_256, jose.A128GCM, &rk.PublicKey, "r1", "hi")); err != nil {
		t.Fatal(err)
	}
	pt, err := sk.decrypt(skEncrypt(t, jose.ECDH_ES_A128KW, jose.A256GCM, &ek.PublicKey, "", "hi"))
	if err != nil || string(pt) != "hi" {
		t.Fatalf("EC P-384: %q %v", pt, err)
	}
	for _, k := range skPublic(t, sk).Keys {
		if k.KeyID == "" || k.Algorithm == "" || k.Use != "enc" {
			t.Errorf("key %+v lacks kid/alg/use", k)
		}
	}

	// A single JWK.
	if _, err := newServerKeysFromFile(skWrite(t, jose.JSONWebKey{Key: ek, KeyID: "e"}), skAlgs, skEncs); err != nil {
		t.Errorf("single JWK: %v", err)
	}

	bad := map[string]string{}
	bad["public only"] = skWrite(t, jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &rk.PublicKey, KeyID: "p"}}})
	bad["public single"] = skWrite(t, jose.JSONWebKey{Key: &ek.PublicKey, KeyID: "p"})
	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	bad["rsa 1024"] = skWrite(t, jose.JSONWebKey{Key: small, KeyID: "s"})
	bad["alg not allowed"] = skWrite(t, jose.JSONWebKey{Key: rk, KeyID: "a", Algorithm: "RSA-OAEP"})
	bad["alg kind mismatch"] = skWrite(t, jose.JSONWebKey{Key: rk, KeyID: "a", Algorithm: "ECDH-ES"})
	bad["use sig"] = skWrite(t, jose.JSONWebKey{Key: rk, KeyID: "a", Use: "sig"})
	bad["duplicate kid"] = skWrite(t, jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: rk, KeyID: "d"}, {Key: ek, KeyID: "d"}}})
	bad["empty set"] = skWrite(t, jose.JSONWebKeySet{})
	g := filepath.Join(t.TempDir(), "garbage")
	os.WriteFile(g, []byte("-----BEGIN garbage d=secret"), 0o600)
	bad["garbage"] = g
	bad["missing"] = filepath.Join(t.TempDir(), "none")
	for name, p := range bad {
		_, err := newServerKeysFromFile(p, skAlgs, skEncs)
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		if !strings.Contains(err.Error(), p) {
			t.Errorf("%s: error %q does not name the file", name, err)
		}
		if strings.Contains(err.Error(), "secret") {
			t.Errorf("%s: error %q quotes the file", name, err)
		}
	}
	// RSA only allowed: the EC key in the set does not fit.
	if _, err := newServerKeysFromFile(p, []jose.KeyAlgorithm{jose.RSA_OAEP_256}, skEncs); err == nil {
		t.Error("EC key accepted with RSA-only algs")
	}
}
