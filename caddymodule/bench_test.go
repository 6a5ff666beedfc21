package caddymodule

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// Micro-benchmarks of the per-request work. Compare runs with benchstat;
// the load suite in integration/bench measures the whole gateway.

func BenchmarkPushValidation(b *testing.B) {
	g := newTestGateway(b, nil)
	c := g.clients["web-app"]
	body := validPush().Encode()
	b.ReportAllocs()
	for b.Loop() {
		form, _ := url.ParseQuery(body)
		if oerr := validatePush(c, form); oerr != nil {
			b.Fatal(oerr)
		}
	}
}

func BenchmarkClientAuthenticationBasic(b *testing.B) {
	g := newTestGateway(b, nil)
	r := httptest.NewRequest(http.MethodPost, "/par", nil)
	r.Header.Set("Authorization", basicHeader("web-app", testSecret))
	form := url.Values{"client_id": {"web-app"}}
	b.ReportAllocs()
	for b.Loop() {
		if _, _, oerr := g.auth.authenticate(r, form, audiences{}); oerr != nil {
			b.Fatal(oerr)
		}
	}
}

func BenchmarkNewRef(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := newRef(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkMemoryStorePutTake(b *testing.B) {
	c := newTestCache(b, 256<<20)
	req := PushedRequest{ClientID: "web-app", Params: validPush().Encode(), ExpiresAt: time.Now().Add(time.Minute)}
	ctx := b.Context()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		key := fmt.Sprintf("k%d", i)
		i++
		if err := c.Put(ctx, key, req); err != nil {
			b.Fatal(err)
		}
		if _, err := c.Take(ctx, key, oneTime("web-app")); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkMemoryStorePutParallel(b *testing.B) {
	c := newTestCache(b, 1<<30)
	req := PushedRequest{ClientID: "web-app", Params: validPush().Encode(), ExpiresAt: time.Now().Add(time.Minute)}
	ctx := b.Context()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			key, _ := newRef()
			if err := c.Put(ctx, key, req); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkPARRequest is a whole push through servePAR, without HTTP I/O.
func BenchmarkPARRequest(b *testing.B) {
	benchPushes(b, newTestGateway(b, func(g *gateway) { g.store = newTestCache(b, 1<<30) }))
}

// benchPushes runs client_secret_basic pushes of validPush at g, each
// answered 201; the pushes stay held.
func benchPushes(b *testing.B, g *gateway) {
	body := validPush().Encode()
	auth := basicHeader("web-app", testSecret)
	b.ReportAllocs()
	for b.Loop() {
		r := httptest.NewRequest(http.MethodPost, "/par", strings.NewReader(body))
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		r.Header.Set("Authorization", auth)
		w := httptest.NewRecorder()
		g.servePAR(w, r, nil)
		if w.Code != http.StatusCreated {
			b.Fatal(w.Code, w.Body)
		}
	}
}

// BenchmarkRedeem redeems request_uris pushed before the timer starts.
func BenchmarkRedeem(b *testing.B) {
	benchRedeems(b, newTestGateway(b, func(g *gateway) { g.store = newTestCache(b, 1<<30) }))
}

// benchRedeems pushes b.N requests at g, then times redeeming each once
// (answered 200 by a stand-in upstream).
func benchRedeems(b *testing.B, g *gateway) {
	next := func(w http.ResponseWriter, r *http.Request) error { w.WriteHeader(http.StatusOK); return nil }
	reqs := make([]*http.Request, b.N)
	for i := range reqs {
		uri := pushOK(b, g, validPush())
		reqs[i] = httptest.NewRequest(http.MethodGet, "/authorize?client_id=web-app&request_uri="+url.QueryEscape(uri), nil)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		w := httptest.NewRecorder()
		if err := g.serveAuthorize(w, reqs[i], next); err != nil || w.Code != http.StatusOK {
			b.Fatal(err, w.Code)
		}
	}
}

// BenchmarkMemoryStoreHeapPerEntry reports the live heap one stored push of
// ~600 bytes costs, against the raw parameter bytes and the cost the store
// charges to its max_size budget.
func BenchmarkMemoryStoreHeapPerEntry(b *testing.B) {
	const n = 50000
	base := validPush()
	base.Set("claims", strings.Repeat("x", 300))
	raw := 0
	for b.Loop() {
		c := newTestCache(b, 1<<30)
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		reqs := make([]PushedRequest, n)
		for i := range reqs {
			v := with(base, "state", fmt.Sprintf("state-%08d", i))
			reqs[i] = PushedRequest{ClientID: "web-app", Params: v.Encode(), ExpiresAt: time.Now().Add(10 * time.Minute)}
			raw = len(reqs[i].Params)
		}
		keys := make([]string, n)
		for i := range keys {
			ref, _ := newRef()
			keys[i] = "partition123/" + ref
		}
		for i := range reqs {
			if err := c.Put(b.Context(), keys[i], reqs[i]); err != nil {
				b.Fatal(err)
			}
		}
		// Only the cache holds the entries now, once ristretto has applied
		// the writes Put does not wait for.
		reqs, keys = nil, nil
		c.c.Wait()
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "heapB/entry")
		b.ReportMetric(float64(c.used.Load())/n, "chargedB/entry")
		b.ReportMetric(float64(raw), "rawB/entry")
	}
}

// BenchmarkPARRequestPrivateKeyJWT is BenchmarkPARRequest with a
// private_key_jwt assertion per push (signed before the timer starts, each
// with its own jti), for ES256 and PS256.
func BenchmarkPARRequestPrivateKeyJWT(b *testing.B) {
	for _, alg := range []jose.SignatureAlgorithm{jose.ES256, jose.PS256} {
		b.Run(string(alg), func(b *testing.B) {
			key := benchKey(b, alg)
			g := newTestGateway(b, func(g *gateway) {
				g.store = newTestCache(b, 1<<30)
				g.issuer = "https://idp.example"
			})
			set, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: key.Public(), KeyID: "k1", Algorithm: string(alg), Use: "sig"}}})
			cl := mustClient(b, ClientConfig{ClientID: "jwt-app", JWKS: set, RedirectURIs: []string{"https://app.example.com/cb"}})
			g.clients["jwt-app"] = cl
			g.auth.clients["jwt-app"] = cl
			g.auth.claims, g.auth.algs, g.auth.maxLifetime = g.store, []jose.SignatureAlgorithm{alg}, 5*time.Minute
			push := with(validPush(), "client_id", "jwt-app")
			push.Set("client_assertion_type", jwtBearer)
			bodies := make([]string, b.N)
			for i := range bodies {
				push.Set("client_assertion", benchAssertion(b, key, alg, "jwt-app", g.issuer, i))
				bodies[i] = push.Encode()
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				r := httptest.NewRequest(http.MethodPost, "/par", strings.NewReader(bodies[i]))
				r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
				w := httptest.NewRecorder()
				g.servePAR(w, r, nil)
				if w.Code != http.StatusCreated {
					b.Fatal(w.Code, w.Body)
				}
			}
		})
	}
}

func benchKey(b *testing.B, alg jose.SignatureAlgorithm) crypto.Signer {
	b.Helper()
	var k crypto.Signer
	var err error
	if alg == jose.ES256 {
		k, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	} else {
		k, err = rsa.GenerateKey(rand.Reader, 2048)
	}
	if err != nil {
		b.Fatal(err)
	}
	return k
}

func benchAssertion(b *testing.B, key crypto.Signer, alg jose.SignatureAlgorithm, clientID, aud string, i int) string {
	b.Helper()
	sig, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, (&jose.SignerOptions{}).WithHeader("kid", "k1"))
	if err != nil {
		b.Fatal(err)
	}
	now := time.Now()
	s, err := jwt.Signed(sig).Claims(jwt.Claims{
		Issuer: clientID, Subject: clientID, Audience: jwt.Audience{aud}, ID: fmt.Sprintf("jti-%d", i),
		IssuedAt: jwt.NewNumericDate(now), Expiry: jwt.NewNumericDate(now.Add(4 * time.Minute)),
	}).Serialize()
	if err != nil {
		b.Fatal(err)
	}
	return s
}
