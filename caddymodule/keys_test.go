package caddymodule

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// Test keys, generated once per test binary (RSA generation is slow under
// -race).
var (
	ksRSAKey     = sync.OnceValue(func() *rsa.PrivateKey { return ksNewRSA(2048) })
	ksWeakRSA    = sync.OnceValue(func() *rsa.PrivateKey { return ksNewRSA(1024) })
	ksP256Key    = sync.OnceValue(func() *ecdsa.PrivateKey { return ksNewEC(elliptic.P256()) })
	ksP384Key    = sync.OnceValue(func() *ecdsa.PrivateKey { return ksNewEC(elliptic.P384()) })
	ksP521Key    = sync.OnceValue(func() *ecdsa.PrivateKey { return ksNewEC(elliptic.P521()) })
	ksEd25519Key = sync.OnceValue(func() ed25519.PrivateKey {
		_, k, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			panic(err)
		}
		return k
	})
)

func ksNewRSA(bits int) *rsa.PrivateKey {
	k, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		panic(err)
	}
	return k
}

func ksNewEC(c elliptic.Curve) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(c, rand.Reader)
	if err != nil {
		panic(err)
	}
	return k
}

// ksJWK is the JWK of key (public or private, as given) with kid, use and
// alg set when non-empty, plus extra members.
func ksJWK(t testing.TB, key any, kid, use, alg string, extra map[string]any) json.RawMessage {
	t.Helper()
	b, err := (&jose.JSONWebKey{Key: key, KeyID: kid, Use: use, Algorithm: alg}).MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	if len(extra) == 0 {
		return b
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for k, v := range extra {
		m[k] = v
	}
	if b, err = json.Marshal(m); err != nil {
		t.Fatal(err)
	}
	return b
}

func ksJWKS(keys ...json.RawMessage) []byte {
	b, err := json.Marshal(map[string][]json.RawMessage{"keys": keys})
	if err != nil {
		panic(err)
	}
	return b
}

// ksPubJWK is the public JWK of priv with kid and use "sig".
func ksPubJWK(t testing.TB, priv crypto.Signer, kid string) json.RawMessage {
	t.Helper()
	return ksJWK(t, priv.Public(), kid, "sig", "", nil)
}

// ksClock is the injectable clock of remote sets.
type ksClock struct {
	mu sync.Mutex
	t  time.Time
}

func newKSClock() *ksClock { return &ksClock{t: time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)} }

func (c *ksClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *ksClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// ksServer is a loopback JWKS endpoint whose answer the test changes.
type ksServer struct {
	*httptest.Server
	mu       sync.Mutex
	doc      []byte
	status   int
	header   http.Header
	requests atomic.Int32
}

func newKSServer(t testing.TB, doc []byte) *ksServer {
	t.Helper()
	s := &ksServer{doc: doc, status: http.StatusOK}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.requests.Add(1)
		s.mu.Lock()
		doc, status, header := s.doc, s.status, s.header
		s.mu.Unlock()
		for k, v := range header {
			w.Header()[k] = v
		}
		w.Header().Set("Content-Type", "application/jwk-set+json")
		w.WriteHeader(status)
		_, _ = w.Write(doc)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *ksServer) serve(status int, doc []byte, header http.Header) {
	s.mu.Lock()
	s.status, s.doc, s.header = status, doc, header
	s.mu.Unlock()
}

func (s *ksServer) count() int { return int(s.requests.Load()) }

// kids lists the kids of keys, for readable failures.
func ksKids(keys []jose.JSONWebKey) []string {
	out := []string{}
	for _, k := range keys {
		out = append(out, k.KeyID)
	}
	return out
}

func TestStaticKeySet_LookupByKid(t *testing.T) {
	ks, err := newStaticKeySet(ksJWKS(
		ksPubJWK(t, ksRSAKey(), "rsa"),
		ksPubJWK(t, ksP256Key(), "p256"),
		ksPubJWK(t, ksP384Key(), "p384"),
		ksPubJWK(t, ksP521Key(), "p521"),
		ksPubJWK(t, ksEd25519Key(), "ed"),
	))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		kid  string
		alg  jose.SignatureAlgorithm
		want crypto.PublicKey // nil: no key
	}{
		{"rsa", jose.RS256, ksRSAKey().Public()},
		{"rsa", jose.PS256, ksRSAKey().Public()},
		{"rsa", jose.PS512, ksRSAKey().Public()},
		{"p256", jose.ES256, ksP256Key().Public()},
		{"p384", jose.ES384, ksP384Key().Public()},
		{"p521", jose.ES512, ksP521Key().Public()},
		{"ed", jose.EdDSA, ksEd25519Key().Public()},
		{"p256", jose.ES384, nil}, // kid exists, curve does not fit alg
		{"rsa", jose.ES256, nil},
		{"ed", jose.PS256, nil},
		{"unknown", jose.ES256, nil},
		{"rsa", jose.HS256, nil}, // never HMAC with a key set
		{"rsa", "none", nil},
	}
	for _, tt := range tests {
		t.Run(tt.kid+"/"+string(tt.alg), func(t *testing.T) {
			got, err := ks.verificationKeys(context.Background(), tt.kid, tt.alg)
			if tt.want == nil {
				if !errors.Is(err, errNoMatchingKey) || len(got) != 0 {
					t.Fatalf("got keys %v, err %v; want errNoMatchingKey", ksKids(got), err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 1 || got[0].KeyID != tt.kid || !tt.want.(keySetEqualer).Equal(got[0].Key) {
				t.Fatalf("got %v, want the key %q", ksKids(got), tt.kid)
			}
		})
	}
}

func TestStaticKeySet_KidlessLookupByAlg(t *testing.T) {
	p256b := ksNewEC(elliptic.P256())
	ks, err := newStaticKeySet(ksJWKS(
		ksPubJWK(t, ksRSAKey(), "rsa"),
		ksPubJWK(t, ksP256Key(), "p256"),
		ksJWK(t, p256b.Public(), "", "", "", nil), // no kid, no use
		ksPubJWK(t, ksP384Key(), "p384"),
		ksPubJWK(t, ksEd25519Key(), "ed"),
	))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		alg  jose.SignatureAlgorithm
		want []string
	}{
		{jose.ES256, []string{"p256", ""}},
		{jose.ES384, []string{"p384"}},
		{jose.PS256, []string{"rsa"}},
		{jose.RS384, []string{"rsa"}},
		{jose.EdDSA, []string{"ed"}},
	}
	for _, tt := range tests {
		t.Run(string(tt.alg), func(t *testing.T) {
			got, err := ks.verificationKeys(context.Background(), "", tt.alg)
			if err != nil {
				t.Fatal(err)
			}
			if g := ksKids(got); fmt.Sprint(g) != fmt.Sprint(tt.want) {
				t.Fatalf("got kids %q, want %q", g, tt.want)
			}
		})
	}
	if _, err := ks.verificationKeys(context.Background(), "", jose.ES512); !errors.Is(err, errNoMatchingKey) {
		t.Fatalf("ES512 without a P-521 key: err %v, want errNoMatchingKey", err)
	}
}

func TestStaticKeySet_UseKeyOpsAndAlgAreHonoured(t *testing.T) {
	ec := func() crypto.PublicKey { return ksNewEC(elliptic.P256()).Public() }
	ks, err := newStaticKeySet(ksJWKS(
		ksJWK(t, ec(), "use-sig", "sig", "", nil),
		ksJWK(t, ec(), "use-enc", "enc", "", nil),
		ksJWK(t, ec(), "use-other", "tls", "", nil),
		ksJWK(t, ec(), "ops-verify", "", "", map[string]any{"key_ops": []string{"verify"}}),
		ksJWK(t, ec(), "ops-encrypt", "", "", map[string]any{"key_ops": []string{"encrypt", "wrapKey"}}),
		ksJWK(t, ec(), "ops-empty", "", "", map[string]any{"key_ops": []string{}}),
		ksJWK(t, ec(), "alg-es256", "", "ES256", nil),
		ksJWK(t, ec(), "alg-ecdh", "", "ECDH-ES", nil),
		ksJWK(t, ec(), "alg-mismatch", "", "ES384", nil), // P-256 key claiming ES384
		ksJWK(t, ksRSAKey().Public(), "rsa-rs256", "", "RS256", nil),
	))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		kid string
		alg jose.SignatureAlgorithm
		ok  bool
	}{
		{"use-sig", jose.ES256, true},
		{"use-enc", jose.ES256, false},
		{"use-other", jose.ES256, false},
		{"ops-verify", jose.ES256, true},
		{"ops-encrypt", jose.ES256, false},
		{"ops-empty", jose.ES256, false},
		{"alg-es256", jose.ES256, true},
		{"alg-ecdh", jose.ES256, false},
		{"alg-mismatch", jose.ES256, false},
		{"alg-mismatch", jose.ES384, false},
		{"rsa-rs256", jose.RS256, true},
		{"rsa-rs256", jose.PS256, false}, // the JWK's own alg must equal the JWS alg
	}
	for _, tt := range tests {
		t.Run(tt.kid+"/"+string(tt.alg), func(t *testing.T) {
			got, err := ks.verificationKeys(context.Background(), tt.kid, tt.alg)
			if tt.ok != (err == nil) || tt.ok != (len(got) == 1) {
				t.Fatalf("got %v, err %v; want usable=%v", ksKids(got), err, tt.ok)
			}
		})
	}
	// A kid-less lookup obeys the same rules.
	got, err := ks.verificationKeys(context.Background(), "", jose.ES256)
	if err != nil {
		t.Fatal(err)
	}
	if g := fmt.Sprint(ksKids(got)); g != "[use-sig ops-verify alg-es256]" {
		t.Fatalf("kid-less ES256 keys: %s", g)
	}
}

func TestStaticKeySet_SkipsKeysGoJoseCannotParse(t *testing.T) {
	good := ksPubJWK(t, ksP256Key(), "good")
	offCurve := ksJWK(t, ksNewEC(elliptic.P256()).Public(), "off-curve", "", "", map[string]any{
		"y": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAE", // 32 bytes, not on the curve
	})
	ks, err := newStaticKeySet(ksJWKS(
		json.RawMessage(`{"kty":"XYZ","kid":"unknown-kty","x":"AAAA"}`),
		json.RawMessage(`{"kty":"EC","crv":"secp256k1","kid":"k1","x":"AAAA","y":"AAAA"}`),
		json.RawMessage(`{"kty":"OKP","crv":"X25519","kid":"x25519","x":"3p7bfXt9wbTTW2HC7OQ1Nz-DQ8hbeGdNrfx-FG-IK08"}`),
		json.RawMessage(`{"kty":"RSA","kid":"no-n","e":"AQAB"}`),
		json.RawMessage(`{"kid":"no-kty"}`),
		json.RawMessage(`42`),
		ksJWK(t, ksNewEC(elliptic.P256()).Public(), "bad-key-ops", "", "", map[string]any{"key_ops": "verify"}),
		offCurve,
		ksJWK(t, ksWeakRSA().Public(), "rsa-1024", "sig", "", nil),
		good,
	))
	if err != nil {
		t.Fatal(err)
	}
	if n := ks.skipped(); n != 9 {
		t.Fatalf("skipped() = %d, want 9", n)
	}
	if got, err := ks.verificationKeys(context.Background(), "good", jose.ES256); err != nil || len(got) != 1 {
		t.Fatalf("the parseable key must stay usable: %v %v", ksKids(got), err)
	}
	if _, err := ks.verificationKeys(context.Background(), "rsa-1024", jose.RS256); !errors.Is(err, errNoMatchingKey) {
		t.Fatalf("RSA-1024 must not be usable: %v", err)
	}
}

func TestStaticKeySet_RejectsPrivateKeyMaterial(t *testing.T) {
	tests := []struct {
		name string
		key  json.RawMessage
	}{
		{"rsa", ksJWK(t, ksRSAKey(), "rsa-priv", "sig", "", nil)},
		{"ec", ksJWK(t, ksP256Key(), "ec-priv", "sig", "", nil)},
		{"ed25519", ksJWK(t, ksEd25519Key(), "ed-priv", "sig", "", nil)},
		{"oct", ksJWK(t, []byte("0123456789abcdef0123456789abcdef"), "hmac", "sig", "", nil)},
		{"uppercase member", json.RawMessage(strings.Replace(string(ksJWK(t, ksP256Key(), "ec-priv", "", "", nil)), `"d":`, `"D":`, 1))},
		{"unknown kty with d", json.RawMessage(`{"kty":"XYZ","kid":"odd","d":"c2VjcmV0LXNlY3JldC1zZWNyZXQ"}`)},
		{"malformed kid with d", json.RawMessage(`{"kty":"EC","kid":5,"key_ops":"sign","d":"c2VjcmV0LXNlY3JldC1zZWNyZXQ"}`)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := newStaticKeySet(ksJWKS(ksPubJWK(t, ksP384Key(), "public"), tt.key))
			if err == nil {
				t.Fatal("a set with private key material was accepted")
			}
			var m map[string]any
			_ = json.Unmarshal(tt.key, &m)
			for _, member := range []string{"d", "D", "p", "q", "dp", "dq", "qi", "k"} {
				if v, ok := m[member].(string); ok && strings.Contains(err.Error(), v) {
					t.Fatalf("error quotes member %s: %v", member, err)
				}
			}
			if !strings.Contains(err.Error(), "key #2") || !strings.Contains(err.Error(), "private") {
				t.Fatalf("error should name the key's position and the reason: %v", err)
			}
		})
	}
}

func TestStaticKeySet_RejectsBadDocuments(t *testing.T) {
	many := make([]json.RawMessage, keySetMaxKeys+1)
	for i := range many {
		many[i] = ksPubJWK(t, ksP256Key(), fmt.Sprint(i))
	}
	huge := ksJWKS(ksPubJWK(t, ksP256Key(), strings.Repeat("k", keySetMaxSize)))
	tests := []struct {
		name string
		doc  []byte
		want string
	}{
		{"not json", []byte(`{"keys": [`), "not a JSON object"},
		{"array", []byte(`[{"kty":"EC"}]`), "not a JSON object"},
		{"no keys member", []byte(`{"kty":"EC"}`), `no "keys" member`},
		{"keys not an array", []byte(`{"keys":"x"}`), "not a JSON object"},
		{"empty", []byte(`{"keys":[]}`), "no usable"},
		{"only unparseable", ksJWKS(json.RawMessage(`{"kty":"XYZ"}`)), "1 skipped"},
		{"only encryption keys", ksJWKS(ksJWK(t, ksP256Key().Public(), "e", "enc", "", nil)), "1 not for signing"},
		{"too many keys", ksJWKS(many...), "at most 100"},
		{"oversized", huge, "larger than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := newStaticKeySet(tt.doc)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err %v, want one containing %q", err, tt.want)
			}
			if len(err.Error()) > 200 {
				t.Fatalf("error message too long (document quoted?): %d bytes", len(err.Error()))
			}
		})
	}
}

func TestKeySet_HasPublicKey(t *testing.T) {
	other := ksNewEC(elliptic.P256())
	encOnly := ksNewEC(elliptic.P256())
	ks, err := newStaticKeySet(ksJWKS(
		ksPubJWK(t, ksRSAKey(), "rsa"),
		ksPubJWK(t, ksP256Key(), "p256"),
		ksPubJWK(t, ksEd25519Key(), "ed"),
		ksJWK(t, encOnly.Public(), "enc", "enc", "", nil),
	))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		pub  crypto.PublicKey
		want bool
	}{
		{"rsa", ksRSAKey().Public(), true},
		{"rsa copy", &rsa.PublicKey{N: ksRSAKey().N, E: ksRSAKey().E}, true},
		{"ec", ksP256Key().Public(), true},
		{"ed25519", ksEd25519Key().Public(), true},
		{"other ec", other.Public(), false},
		{"unrelated ed25519", ed25519.PublicKey(make([]byte, ed25519.PublicKeySize)), false},
		{"encryption key", encOnly.Public(), false},
		{"weak rsa", ksWeakRSA().Public(), false},
		{"nil rsa", (*rsa.PublicKey)(nil), false},
		{"nil ecdsa", (*ecdsa.PublicKey)(nil), false},
		{"nil", nil, false},
		{"private key", ksP256Key(), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ks.hasPublicKey(context.Background(), tt.pub)
			if err != nil || got != tt.want {
				t.Fatalf("hasPublicKey = %v, %v; want %v", got, err, tt.want)
			}
		})
	}
}

func TestRemoteKeySet_HasPublicKeyRefetchesOnceOnMiss(t *testing.T) {
	clk := newKSClock()
	a, b := ksNewEC(elliptic.P256()), ksNewEC(elliptic.P256())
	srv := newKSServer(t, ksJWKS(ksPubJWK(t, a, "a")))
	ks := newRemoteKeySet(srv.URL, remoteKeySetOptions{Now: clk.Now})
	ctx := context.Background()
	if ok, err := ks.hasPublicKey(ctx, a.Public()); !ok || err != nil {
		t.Fatalf("a: %v %v", ok, err)
	}
	srv.serve(http.StatusOK, ksJWKS(ksPubJWK(t, a, "a"), ksPubJWK(t, b, "b")), nil)
	if ok, _ := ks.hasPublicKey(ctx, b.Public()); ok || srv.count() != 1 {
		t.Fatalf("within MinRefetch: found=%v after %d requests, want no refetch", ok, srv.count())
	}
	clk.Advance(keySetMinRefetch)
	if ok, err := ks.hasPublicKey(ctx, b.Public()); !ok || err != nil || srv.count() != 2 {
		t.Fatalf("after MinRefetch: found=%v err=%v requests=%d, want found after one refetch", ok, err, srv.count())
	}
}

func TestRemoteKeySet_IsLazy(t *testing.T) {
	srv := newKSServer(t, ksJWKS(ksPubJWK(t, ksP256Key(), "k")))
	ks := newRemoteKeySet(srv.URL, remoteKeySetOptions{})
	if srv.count() != 0 || ks.skipped() != 0 {
		t.Fatalf("construction fetched %d times", srv.count())
	}
	if _, err := ks.verificationKeys(context.Background(), "k", jose.ES256); err != nil {
		t.Fatal(err)
	}
	if _, err := ks.verificationKeys(context.Background(), "k", jose.ES256); err != nil {
		t.Fatal(err)
	}
	if srv.count() != 1 {
		t.Fatalf("two lookups made %d requests, want 1 (cached)", srv.count())
	}
}

func TestRemoteKeySet_UnknownKidRefetchIsRateLimited(t *testing.T) {
	clk := newKSClock()
	srv := newKSServer(t, ksJWKS(ksPubJWK(t, ksP256Key(), "a")))
	ks := newRemoteKeySet(srv.URL, remoteKeySetOptions{Now: clk.Now, MinRefetch: 30 * time.Second})
	ctx := context.Background()
	lookup := func(kid string) error {
		_, err := ks.verificationKeys(ctx, kid, jose.ES256)
		return err
	}
	step := func(desc string, advance time.Duration, kid string, wantOK bool, wantRequests int) {
		t.Helper()
		clk.Advance(advance)
		err := lookup(kid)
		if wantOK != (err == nil) || (!wantOK && !errors.Is(err, errNoMatchingKey)) {
			t.Fatalf("%s: lookup(%q) err = %v, want ok=%v", desc, kid, err, wantOK)
		}
		if n := srv.count(); n != wantRequests {
			t.Fatalf("%s: %d requests, want %d", desc, n, wantRequests)
		}
	}
	step("first use fetches", 0, "a", true, 1)
	step("unknown kid right after a fetch", 0, "x", false, 1)
	step("unknown kid after MinRefetch refetches once", 30*time.Second, "x", false, 2)
	step("again at once: rate limited", 0, "x", false, 2)
	step("still inside MinRefetch", 29*time.Second, "x", false, 2)
	step("known kid never refetches", 0, "a", true, 2)
	step("MinRefetch over", time.Second, "x", false, 3)
	if !strings.Contains(lookup("x").Error(), `"x"`) {
		t.Fatalf("error should name the kid: %v", lookup("x"))
	}
}

func TestRemoteKeySet_EndpointThatRotatesKeys(t *testing.T) {
	clk := newKSClock()
	a, b, c := ksNewEC(elliptic.P256()), ksNewEC(elliptic.P256()), ksNewEC(elliptic.P256())
	srv := newKSServer(t, ksJWKS(ksPubJWK(t, a, "a")))
	ks := newRemoteKeySet(srv.URL, remoteKeySetOptions{Now: clk.Now})
	ctx := context.Background()
	has := func(kid string) bool {
		got, err := ks.verificationKeys(ctx, kid, jose.ES256)
		return err == nil && len(got) == 1
	}
	if !has("a") {
		t.Fatal("a missing")
	}

	// The client rotates a out and b in: the new kid is picked up by the
	// kid-miss refetch, and the retired key stops verifying.
	srv.serve(http.StatusOK, ksJWKS(ksPubJWK(t, b, "b")), http.Header{"Cache-Control": {"public, max-age=300"}})
	clk.Advance(keySetMinRefetch)
	if !has("b") || srv.count() != 2 {
		t.Fatalf("b after rotation: %d requests", srv.count())
	}
	if has("a") {
		t.Fatal("the retired key a still verifies")
	}
	if got, err := ks.verificationKeys(ctx, "", jose.ES256); err != nil || fmt.Sprint(ksKids(got)) != "[b]" {
		t.Fatalf("kid-less lookup after rotation: %v %v", ksKids(got), err)
	}

	// Expiry per max-age=300: c is served from now on, but b stays cached
	// until the document expires, and is replaced then without a kid miss.
	srv.serve(http.StatusOK, ksJWKS(ksPubJWK(t, c, "c")), nil)
	clk.Advance(299 * time.Second)
	if !has("b") || srv.count() != 2 {
		t.Fatalf("fresh document refetched: %d requests", srv.count())
	}
	clk.Advance(time.Second)
	if has("b") || srv.count() != 3 {
		t.Fatalf("expired document not refetched: %d requests", srv.count())
	}
	if !has("c") || srv.count() != 3 {
		t.Fatalf("c after expiry: %d requests", srv.count())
	}
	// No Cache-Control: the TTL option (default 1h).
	clk.Advance(keySetTTL - time.Second)
	has("c")
	if srv.count() != 3 {
		t.Fatalf("refetched before the TTL: %d requests", srv.count())
	}
	clk.Advance(time.Second)
	has("c")
	if srv.count() != 4 {
		t.Fatalf("not refetched at the TTL: %d requests", srv.count())
	}

	// An empty set is a valid document: the client revoked every key, so
	// once the cached document expires nothing verifies any more (not
	// "unavailable", and no stale keys).
	srv.serve(http.StatusOK, []byte(`{"keys":[]}`), nil)
	clk.Advance(keySetTTL)
	if _, err := ks.verificationKeys(ctx, "c", jose.ES256); !errors.Is(err, errNoMatchingKey) || srv.count() != 5 {
		t.Fatalf("after revocation: %v, %d requests", err, srv.count())
	}
}

func TestRemoteKeySet_UnparseableKeySkippedOthersUsable(t *testing.T) {
	srv := newKSServer(t, ksJWKS(
		json.RawMessage(`{"kty":"OKP","crv":"Ed448","kid":"ed448","x":"AAAA"}`),
		json.RawMessage(`{"kty":"RSA","kid":"bad-n","n":"!!","e":"AQAB"}`),
		ksPubJWK(t, ksEd25519Key(), "ed"),
		ksPubJWK(t, ksRSAKey(), "rsa"),
	))
	ks := newRemoteKeySet(srv.URL, remoteKeySetOptions{})
	for kid, alg := range map[string]jose.SignatureAlgorithm{"ed": jose.EdDSA, "rsa": jose.PS256} {
		if got, err := ks.verificationKeys(context.Background(), kid, alg); err != nil || len(got) != 1 {
			t.Fatalf("%s: %v %v", kid, ksKids(got), err)
		}
	}
	if ks.skipped() != 2 {
		t.Fatalf("skipped() = %d, want 2", ks.skipped())
	}
}

func TestRemoteKeySet_FetchFailureKeepsCachedKeys(t *testing.T) {
	clk := newKSClock()
	a, b := ksNewEC(elliptic.P256()), ksNewEC(elliptic.P256())
	srv := newKSServer(t, ksJWKS(ksPubJWK(t, a, "a")))
	ks := newRemoteKeySet(srv.URL, remoteKeySetOptions{Now: clk.Now, MaxSize: 4096})
	ctx := context.Background()
	mustHaveA := func(desc string, wantRequests int) {
		t.Helper()
		if got, err := ks.verificationKeys(ctx, "a", jose.ES256); err != nil || len(got) != 1 {
			t.Fatalf("%s: cached key lost: %v", desc, err)
		}
		if ok, err := ks.hasPublicKey(ctx, a.Public()); !ok || err != nil {
			t.Fatalf("%s: hasPublicKey = %v, %v", desc, ok, err)
		}
		if srv.count() != wantRequests {
			t.Fatalf("%s: %d requests, want %d", desc, srv.count(), wantRequests)
		}
	}
	mustHaveA("first fetch", 1)

	failures := []struct {
		name   string
		status int
		doc    []byte
	}{
		{"server error", http.StatusInternalServerError, []byte(`oops`)},
		{"not found", http.StatusNotFound, nil},
		{"not a JWK Set", http.StatusOK, []byte(`<html>maintenance</html>`)},
		{"private key published", http.StatusOK, ksJWKS(ksJWK(t, b, "b", "sig", "", nil))},
		{"oversized", http.StatusOK, bytes.Repeat([]byte(" "), 5000)},
	}
	want := 1
	for i, f := range failures {
		srv.serve(f.status, f.doc, nil)
		if i == 0 {
			clk.Advance(keySetTTL) // expiry: the refetch fails
		} else {
			clk.Advance(keySetMinRefetch) // next attempt allowed
		}
		want++
		mustHaveA(f.name, want)
		mustHaveA(f.name+", no retry inside MinRefetch", want)
	}

	// The endpoint recovers with a rotated set: replaced at the next attempt.
	srv.serve(http.StatusOK, ksJWKS(ksPubJWK(t, b, "b")), nil)
	clk.Advance(keySetMinRefetch)
	if got, err := ks.verificationKeys(ctx, "b", jose.ES256); err != nil || len(got) != 1 || srv.count() != want+1 {
		t.Fatalf("recovery: %v %v after %d requests", ksKids(got), err, srv.count())
	}
	if _, err := ks.verificationKeys(ctx, "a", jose.ES256); !errors.Is(err, errNoMatchingKey) {
		t.Fatalf("a after recovery: %v", err)
	}
}

func TestRemoteKeySet_FailureWithoutCachedKeysFailsFast(t *testing.T) {
	clk := newKSClock()
	srv := newKSServer(t, nil)
	srv.serve(http.StatusServiceUnavailable, []byte("down"), nil)
	ks := newRemoteKeySet(srv.URL, remoteKeySetOptions{Now: clk.Now})
	ctx := context.Background()
	_, err := ks.verificationKeys(ctx, "a", jose.ES256)
	if !errors.Is(err, errKeySetUnavailable) || !strings.Contains(err.Error(), "HTTP 503") {
		t.Fatalf("err %v, want errKeySetUnavailable naming the status", err)
	}
	if strings.Contains(err.Error(), "down") {
		t.Fatalf("error quotes the body: %v", err)
	}
	// Until MinRefetch has passed, the error comes back without a request.
	if _, err := ks.hasPublicKey(ctx, ksP256Key().Public()); !errors.Is(err, errKeySetUnavailable) {
		t.Fatalf("second lookup: %v", err)
	}
	if srv.count() != 1 {
		t.Fatalf("%d requests, want 1", srv.count())
	}
	srv.serve(http.StatusOK, ksJWKS(ksPubJWK(t, ksP256Key(), "a")), nil)
	clk.Advance(keySetMinRefetch)
	if _, err := ks.verificationKeys(ctx, "a", jose.ES256); err != nil || srv.count() != 2 {
		t.Fatalf("after recovery: %v, %d requests", err, srv.count())
	}

	// Nothing listening: refused at once, not after Timeout.
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()
	ks = newRemoteKeySet(closed.URL, remoteKeySetOptions{Timeout: 10 * time.Second})
	start := time.Now()
	if _, err := ks.verificationKeys(ctx, "a", jose.ES256); !errors.Is(err, errKeySetUnavailable) {
		t.Fatalf("closed port: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("closed port took %v", d)
	}
}

func TestRemoteKeySet_OversizedDocumentRefused(t *testing.T) {
	big := ksJWKS(ksPubJWK(t, ksP256Key(), strings.Repeat("k", 2000)))
	for _, chunked := range []bool{false, true} {
		t.Run(fmt.Sprintf("chunked=%v", chunked), func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if chunked {
					// No Content-Length: the limit applies while reading.
					for i := 0; i < len(big); i += 100 {
						_, _ = w.Write(big[i:min(i+100, len(big))])
						w.(http.Flusher).Flush()
					}
					return
				}
				_, _ = w.Write(big)
			}))
			defer srv.Close()
			ks := newRemoteKeySet(srv.URL, remoteKeySetOptions{MaxSize: 1024})
			_, err := ks.verificationKeys(context.Background(), "", jose.ES256)
			if !errors.Is(err, errKeySetUnavailable) || !strings.Contains(err.Error(), "larger than 1024 bytes") {
				t.Fatalf("err %v", err)
			}
		})
	}
	// Too many keys is refused as a whole, not truncated.
	many := make([]json.RawMessage, keySetMaxKeys+1)
	for i := range many {
		many[i] = ksPubJWK(t, ksP256Key(), fmt.Sprint(i))
	}
	srv := newKSServer(t, ksJWKS(many...))
	ks := newRemoteKeySet(srv.URL, remoteKeySetOptions{MaxSize: 1 << 20})
	if _, err := ks.verificationKeys(context.Background(), "0", jose.ES256); !errors.Is(err, errKeySetUnavailable) || !strings.Contains(err.Error(), "at most 100") {
		t.Fatalf("101 keys: %v", err)
	}
}

// ksSlowServer never answers until the test ends.
func ksSlowServer(t *testing.T) *httptest.Server {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) }) // runs first: handlers return, Close does not hang
	return srv
}

func TestRemoteKeySet_SlowEndpointBoundedByTimeout(t *testing.T) {
	srv := ksSlowServer(t)
	ks := newRemoteKeySet(srv.URL, remoteKeySetOptions{Timeout: 300 * time.Millisecond})
	start := time.Now()
	_, err := ks.verificationKeys(context.Background(), "a", jose.ES256)
	elapsed := time.Since(start)
	if !errors.Is(err, errKeySetUnavailable) {
		t.Fatalf("err %v", err)
	}
	if elapsed < 250*time.Millisecond || elapsed > 3*time.Second {
		t.Fatalf("lookup took %v, want about the 300ms Timeout", elapsed)
	}
}

// ksRoundTrip serves a remote set without a socket, so that synctest
// can see every goroutine block.
type ksRoundTrip func(*http.Request) (*http.Response, error)

func (f ksRoundTrip) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func ksResponse(r *http.Request, doc []byte) *http.Response {
	return &http.Response{
		StatusCode: http.StatusOK,
		Header:     http.Header{"Content-Type": {"application/json"}},
		Body:       io.NopCloser(bytes.NewReader(doc)),
		Request:    r,
	}
}

func TestRemoteKeySet_ConcurrentMissesShareOneFetch(t *testing.T) {
	doc := ksJWKS(ksPubJWK(t, ksP256Key(), "k"))
	synctest.Test(t, func(t *testing.T) {
		var calls atomic.Int32
		release := make(chan struct{})
		client := &http.Client{Transport: ksRoundTrip(func(r *http.Request) (*http.Response, error) {
			calls.Add(1)
			select {
			case <-release:
				return ksResponse(r, doc), nil
			case <-r.Context().Done():
				return nil, r.Context().Err()
			}
		})}
		ks := newRemoteKeySet("https://127.0.0.1/jwks", remoteKeySetOptions{Client: client, Timeout: 10 * time.Second})
		const n = 50
		errs := make(chan error, n)
		for range n {
			go func() {
				_, err := ks.verificationKeys(context.Background(), "k", jose.ES256)
				errs <- err
			}()
		}
		synctest.Wait() // every caller is waiting, the fetch is blocked
		if c := calls.Load(); c != 1 {
			t.Fatalf("%d concurrent misses started %d fetches, want 1", n, c)
		}
		close(release)
		for range n {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
		if c := calls.Load(); c != 1 {
			t.Fatalf("%d fetches, want 1", c)
		}
	})
}

func TestRemoteKeySet_WaitingCallerRespectsCtxAndTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var calls atomic.Int32
		client := &http.Client{Transport: ksRoundTrip(func(r *http.Request) (*http.Response, error) {
			calls.Add(1)
			<-r.Context().Done() // hangs until the fetch's own deadline
			return nil, r.Context().Err()
		})}
		ks := newRemoteKeySet("https://127.0.0.1/jwks", remoteKeySetOptions{Client: client, Timeout: 3 * time.Second})

		// A caller whose request is cancelled after 1s stops waiting then.
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		start := time.Now()
		_, err := ks.verificationKeys(ctx, "k", jose.ES256)
		if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, errKeySetUnavailable) || time.Since(start) != time.Second {
			t.Fatalf("cancelled caller: err %v after %v", err, time.Since(start))
		}
		// A second caller joins the same fetch and waits at most Timeout
		// (here the rest of the fetch's own 3s).
		_, err = ks.verificationKeys(context.Background(), "k", jose.ES256)
		if !errors.Is(err, errKeySetUnavailable) || time.Since(start) > 4*time.Second {
			t.Fatalf("second caller: err %v after %v", err, time.Since(start))
		}
		synctest.Wait()
		if c := calls.Load(); c != 1 {
			t.Fatalf("%d fetches, want 1", c)
		}
	})
}

func TestRemoteKeySet_SetsAreIndependent(t *testing.T) {
	slow := ksSlowServer(t)
	fast := newKSServer(t, ksJWKS(ksPubJWK(t, ksP256Key(), "k")))
	slowSet := newRemoteKeySet(slow.URL, remoteKeySetOptions{Timeout: 5 * time.Second})
	fastSet := newRemoteKeySet(fast.URL, remoteKeySetOptions{Timeout: 5 * time.Second})

	slowDone := make(chan error, 1)
	go func() {
		_, err := slowSet.verificationKeys(context.Background(), "k", jose.ES256)
		slowDone <- err
	}()
	if _, err := fastSet.verificationKeys(context.Background(), "k", jose.ES256); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-slowDone:
		t.Fatalf("the slow set finished first (%v): the test proves nothing", err)
	default:
	}
}

func TestRemoteKeySet_RedirectPolicy(t *testing.T) {
	doc := ksJWKS(ksPubJWK(t, ksP256Key(), "k"))
	mux := http.NewServeMux()
	mux.HandleFunc("/jwks", func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write(doc) })
	mux.HandleFunc("/moved", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/jwks", http.StatusFound) })
	mux.HandleFunc("/offsite", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://203.0.113.7/jwks", http.StatusFound) // never contacted
	})
	mux.HandleFunc("/loop", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/loop", http.StatusFound) })
	plain := httptest.NewServer(mux)
	defer plain.Close()
	tlsSrv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, plain.URL+"/jwks", http.StatusFound) // https -> http
	}))
	defer tlsSrv.Close()

	tests := []struct {
		name   string
		uri    string
		client *http.Client
		ok     bool
	}{
		{"http loopback to http loopback", plain.URL + "/moved", nil, true},
		{"http loopback to http elsewhere", plain.URL + "/offsite", nil, false},
		{"https to http loopback", tlsSrv.URL + "/jwks", tlsSrv.Client(), false},
		{"redirect loop", plain.URL + "/loop", nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ks := newRemoteKeySet(tt.uri, remoteKeySetOptions{Client: tt.client, Timeout: 2 * time.Second})
			_, err := ks.verificationKeys(context.Background(), "k", jose.ES256)
			if tt.ok != (err == nil) {
				t.Fatalf("err %v, want ok=%v", err, tt.ok)
			}
		})
	}
	if tlsSrv.Client().CheckRedirect != nil {
		t.Fatal("the caller's http.Client was modified")
	}
}

func TestRemoteKeySet_URIValidation(t *testing.T) {
	tests := []struct {
		uri string
		ok  bool
	}{
		{"https://client.example.com/jwks.json", true},
		{"https://client.example.com:8443/.well-known/jwks?v=2", true},
		{"http://127.0.0.1:8080/jwks", true},
		{"http://[::1]/jwks", true},
		{"http://localhost/jwks", true},
		{"http://client.example.com/jwks", false},
		{"http://10.0.0.1/jwks", false},
		{"ftp://client.example.com/jwks", false},
		{"file:///etc/jwks.json", false},
		{"/jwks", false},
		{"https:///jwks", false},
		{"https://user:pass@client.example.com/jwks", false},
		{"https://client.example.com/jwks#frag", false},
		{"https://client.example.com/%zz", false},
		{"", false},
	}
	for _, tt := range tests {
		t.Run(tt.uri, func(t *testing.T) {
			if err := checkJWKSURI(tt.uri); tt.ok != (err == nil) {
				t.Fatalf("checkJWKSURI(%q) = %v, want ok=%v", tt.uri, err, tt.ok)
			}
			if tt.ok {
				return
			}
			// A set with a bad URI fails every lookup without network.
			ks := newRemoteKeySet(tt.uri, remoteKeySetOptions{})
			_, err := ks.verificationKeys(context.Background(), "k", jose.ES256)
			if !errors.Is(err, errKeySetUnavailable) {
				t.Fatalf("lookup: %v", err)
			}
			if strings.Contains(err.Error(), "pass") {
				t.Fatalf("error quotes credentials: %v", err)
			}
		})
	}
}

func TestKeySet_CacheControlTTL(t *testing.T) {
	const def = time.Hour
	tests := []struct {
		header []string
		want   time.Duration
	}{
		{nil, def},
		{[]string{"public"}, def},
		{[]string{"max-age=600"}, 10 * time.Minute},
		{[]string{"public, max-age=7200, must-revalidate"}, 2 * time.Hour},
		{[]string{`max-age="120"`}, 2 * time.Minute},
		{[]string{"MAX-AGE=120"}, 2 * time.Minute},
		{[]string{"max-age=0"}, keySetMinTTL},
		{[]string{"max-age=5"}, keySetMinTTL},
		{[]string{"max-age=999999999999"}, keySetMaxTTL},
		{[]string{"max-age=99999999999999999999999"}, def}, // unparseable: ignored
		{[]string{"max-age=-5"}, def},
		{[]string{"max-age=abc"}, def},
		{[]string{"max-age=300", "max-age=9000"}, 5 * time.Minute},
		{[]string{"no-store"}, keySetMinTTL},
		{[]string{"max-age=3600, no-cache"}, keySetMinTTL},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.header, " | "), func(t *testing.T) {
			h := http.Header{}
			for _, v := range tt.header {
				h.Add("Cache-Control", v)
			}
			if got := keySetCacheTTL(h, def); got != tt.want {
				t.Fatalf("keySetCacheTTL = %v, want %v", got, tt.want)
			}
		})
	}
}

func BenchmarkKeySetVerificationKeys(b *testing.B) {
	doc := ksJWKS(ksPubJWK(b, ksRSAKey(), "rsa"), ksPubJWK(b, ksP256Key(), "p256"), ksPubJWK(b, ksEd25519Key(), "ed"))
	static, err := newStaticKeySet(doc)
	if err != nil {
		b.Fatal(err)
	}
	srv := newKSServer(b, doc)
	remote := newRemoteKeySet(srv.URL, remoteKeySetOptions{})
	for name, ks := range map[string]*keySet{"static": static, "remote": remote} {
		b.Run(name, func(b *testing.B) {
			ctx := context.Background()
			for b.Loop() {
				if _, err := ks.verificationKeys(ctx, "p256", jose.ES256); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
