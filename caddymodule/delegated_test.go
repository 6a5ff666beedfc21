package caddymodule

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// fakeTokenEndpoint stands in for an upstream token endpoint. It knows
// clients by secret and answers like Dex (401 invalid_client for a wrong
// secret) unless answer is set.
type fakeTokenEndpoint struct {
	srv     *httptest.Server
	secrets map[string]string
	probes  atomic.Int32
	// answer, when set, replaces the default logic.
	answer func(w http.ResponseWriter, r *http.Request)
	// block, when set, holds every probe until closed.
	block chan struct{}

	mu   sync.Mutex
	seen []probeSeen
}

type probeSeen struct {
	form          url.Values
	authorization string
	contentType   string
}

func newFakeTokenEndpoint(t *testing.T, secrets map[string]string) *fakeTokenEndpoint {
	t.Helper()
	f := &fakeTokenEndpoint{secrets: secrets}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.probes.Add(1)
		body, _ := io.ReadAll(r.Body)
		form, _ := url.ParseQuery(string(body))
		f.mu.Lock()
		f.seen = append(f.seen, probeSeen{form: form, authorization: r.Header.Get("Authorization"), contentType: r.Header.Get("Content-Type")})
		f.mu.Unlock()
		if f.block != nil {
			<-f.block
		}
		if f.answer != nil {
			f.answer(w, r)
			return
		}
		id, secret, ok := r.BasicAuth()
		if ok {
			id, _ = url.QueryUnescape(id)
			secret, _ = url.QueryUnescape(secret)
		} else {
			id, secret = form.Get("client_id"), form.Get("client_secret")
		}
		w.Header().Set("Content-Type", "application/json")
		if want, known := f.secrets[id]; !known || want != secret {
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = io.WriteString(w, `{"error":"invalid_client","error_description":"Invalid client credentials."}`)
			return
		}
		w.WriteHeader(http.StatusBadRequest)
		_, _ = io.WriteString(w, `{"error":"invalid_grant","error_description":"Invalid or expired code parameter."}`)
	}))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeTokenEndpoint) last(t *testing.T) probeSeen {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.seen) == 0 {
		t.Fatal("no probe reached the upstream")
	}
	return f.seen[len(f.seen)-1]
}

const (
	upID     = "upstream-app"
	upSecret = "up+secret%:x"
)

// newDelegatedGateway is newTestGateway with upstream_client_auth against
// f; mod adjusts the configuration before it is provisioned.
func newDelegatedGateway(t *testing.T, f *fakeTokenEndpoint, logger *zap.Logger, mod func(*UpstreamClientAuth)) *gateway {
	t.Helper()
	cfg := &UpstreamClientAuth{TokenEndpoint: f.srv.URL + "/token"}
	if mod != nil {
		mod(cfg)
	}
	if logger == nil {
		logger = zap.NewNop()
	}
	up, err := cfg.provision(context.Background(), &Handler{}, logger)
	if err != nil {
		t.Fatal(err)
	}
	return newTestGateway(t, func(g *gateway) {
		g.auth.upstream = up
		g.logger = logger
	})
}

// upPush is a valid push of the delegated client.
func upPush() url.Values {
	v := validPush()
	v.Set("client_id", upID)
	v.Set("redirect_uri", "https://upstream-app.example.com/cb")
	return v
}

func delegatedPush(g *gateway, form url.Values, user, pass string) (*parResponse, *oauthError) {
	_, resp, oerr := g.push(parRequest(form, user, pass), nil)
	return resp, oerr
}

func TestDelegatedProbeClassification(t *testing.T) {
	for _, tc := range []struct {
		name   string
		status int
		body   string
		want   probeVerdict
	}{
		{"400_invalid_grant_confirms", 400, `{"error":"invalid_grant","error_description":"Code not valid"}`, verdictConfirmed},
		{"400_invalid_grant_with_whitespace", 400, "\n {\"error\":\"invalid_grant\"}\n", verdictConfirmed},
		{"401_invalid_client_refuses", 401, `{"error":"invalid_client"}`, verdictRefused},
		{"400_invalid_client_refuses", 400, `{"error":"invalid_client"}`, verdictRefused},
		{"401_unauthorized_client_refuses_keycloak", 401, `{"error":"unauthorized_client","error_description":"Invalid client or Invalid client credentials"}`, verdictRefused},
		{"401_without_body_refuses", 401, ``, verdictRefused},
		{"400_unauthorized_client_cannot_tell", 400, `{"error":"unauthorized_client"}`, verdictUndetermined},
		{"400_unsupported_grant_type_cannot_tell", 400, `{"error":"unsupported_grant_type"}`, verdictUndetermined},
		{"400_invalid_request_cannot_tell", 400, `{"error":"invalid_request"}`, verdictUndetermined},
		{"400_non_json_cannot_tell", 400, `<html>Bad Request</html>`, verdictUndetermined},
		{"400_json_without_error_cannot_tell", 400, `{"message":"invalid_grant"}`, verdictUndetermined},
		{"400_error_not_a_string_cannot_tell", 400, `{"error":["invalid_grant"]}`, verdictUndetermined},
		{"400_invalid_grant_truncated_cannot_tell", 400, `{"error":"invalid_grant"`, verdictUndetermined},
		{"403_invalid_grant_cannot_tell", 403, `{"error":"invalid_grant"}`, verdictUndetermined},
		{"200_tokens_cannot_tell", 200, `{"access_token":"x"}`, verdictUndetermined},
		{"200_invalid_grant_cannot_tell", 200, `{"error":"invalid_grant"}`, verdictUndetermined},
		{"302_cannot_tell", 302, ``, verdictUndetermined},
		{"404_cannot_tell", 404, `404 page not found`, verdictUndetermined},
		{"429_unavailable", 429, `{"error":"invalid_grant"}`, verdictUnavailable},
		{"500_unavailable", 500, `{"error":"invalid_grant"}`, verdictUnavailable},
		{"502_unavailable", 502, ``, verdictUnavailable},
		{"503_unavailable", 503, `{"error":"temporarily_unavailable"}`, verdictUnavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := classifyProbe(tc.status, []byte(tc.body))
			if got.verdict != tc.want {
				t.Errorf("classifyProbe(%d, %q) = %s, want %s", tc.status, tc.body, got.verdict, tc.want)
			}
		})
	}
	if got := classifyProbe(400, []byte(`{"error":"bad\"code\u0001`+strings.Repeat("x", 100)+`"}`)); strings.ContainsAny(got.code, "\"\x01") || len(got.code) > 64 {
		t.Errorf("upstream error code not sanitized for the log: %q", got.code)
	}
}

func TestDelegatedPushConfirmedByUpstream(t *testing.T) {
	f := newFakeTokenEndpoint(t, map[string]string{upID: upSecret})
	g := newDelegatedGateway(t, f, nil, nil)

	resp, oerr := delegatedPush(g, upPush(), upID, upSecret)
	if oerr != nil {
		t.Fatalf("push of the delegated client: %v", oerr)
	}
	p := f.last(t)
	if p.form.Get("grant_type") != "authorization_code" || !strings.HasPrefix(p.form.Get("code"), probeCodePrefix) || len(p.form.Get("code")) != len(probeCodePrefix)+43 {
		t.Errorf("probe form = %v, want the code grant with a random caddy-par-probe- code", p.form)
	}
	if len(p.form) != 2 {
		t.Errorf("probe with Basic sent %v, want grant_type and code only", p.form)
	}
	// The client's Authorization header, as it sent it.
	wantAuth := "Basic " + base64.StdEncoding.EncodeToString([]byte(url.QueryEscape(upID)+":"+url.QueryEscape(upSecret)))
	if p.authorization != wantAuth || p.contentType != "application/x-www-form-urlencoded" {
		t.Errorf("probe Authorization %q Content-Type %q, want %q and a form", p.authorization, p.contentType, wantAuth)
	}

	// The request_uri is redeemed under the delegated policy.
	ref := strings.TrimPrefix(resp.RequestURI, requestURIPrefix)
	if _, err := g.store.Take(context.Background(), g.storeKey(ref), oneTime(upID)); err != nil {
		t.Fatalf("stored entry: %v", err)
	}
}

func TestDelegatedClientSecretPostProbesWithPost(t *testing.T) {
	f := newFakeTokenEndpoint(t, map[string]string{upID: upSecret})
	g := newDelegatedGateway(t, f, nil, nil)
	form := upPush()
	form.Set("client_secret", upSecret)
	if _, oerr := delegatedPush(g, form, "", ""); oerr != nil {
		t.Fatalf("client_secret_post push: %v", oerr)
	}
	p := f.last(t)
	if p.authorization != "" || p.form.Get("client_id") != upID || p.form.Get("client_secret") != upSecret || len(p.form) != 4 {
		t.Errorf("probe: Authorization %q form %v, want client_id and client_secret in the body only", p.authorization, p.form)
	}

	// methods client_secret_basic only: post is not delegated.
	f2 := newFakeTokenEndpoint(t, map[string]string{upID: upSecret})
	g2 := newDelegatedGateway(t, f2, nil, func(u *UpstreamClientAuth) { u.Methods = []string{AuthClientSecretBasic} })
	if _, oerr := delegatedPush(g2, form, "", ""); oerr == nil || oerr.Code != ErrInvalidClient || oerr.Status != 401 {
		t.Errorf("post with methods client_secret_basic: %v, want 401 invalid_client", oerr)
	}
	if n := f2.probes.Load(); n != 0 {
		t.Errorf("%d probes for a method that is not delegated", n)
	}
}

func TestDelegatedWrongSecretIsInvalidClient(t *testing.T) {
	for _, tc := range []struct {
		name   string
		answer func(w http.ResponseWriter, r *http.Request)
	}{
		{"dex_401_invalid_client", nil},
		{"keycloak_401_unauthorized_client", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(401)
			_, _ = io.WriteString(w, `{"error":"unauthorized_client","error_description":"Invalid client or Invalid client credentials"}`)
		}},
		{"400_invalid_client", func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(400)
			_, _ = io.WriteString(w, `{"error":"invalid_client"}`)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeTokenEndpoint(t, map[string]string{upID: upSecret})
			f.answer = tc.answer
			g := newDelegatedGateway(t, f, nil, nil)
			_, oerr := delegatedPush(g, upPush(), upID, "wrong")
			if oerr == nil || oerr.Status != 401 || oerr.Code != ErrInvalidClient || !oerr.basicTried {
				t.Fatalf("wrong secret: %+v, want 401 invalid_client with WWW-Authenticate", oerr)
			}
		})
	}
}

func TestDelegatedUndeterminedAnswersRefuse(t *testing.T) {
	for _, tc := range []struct {
		name   string
		status int
		body   string
		want   int
		code   string
	}{
		{"unauthorized_client_400", 400, `{"error":"unauthorized_client"}`, 401, ErrInvalidClient},
		{"unsupported_grant_type", 400, `{"error":"unsupported_grant_type"}`, 401, ErrInvalidClient},
		{"not_json", 400, `nope`, 401, ErrInvalidClient},
		{"redirect_not_followed", 302, ``, 401, ErrInvalidClient},
		{"200", 200, `{"access_token":"a"}`, 401, ErrInvalidClient},
		{"server_error_is_503", 500, `{"error":"server_error"}`, 503, ErrTemporarilyUnavailable},
		{"429_is_503", 429, ``, 503, ErrTemporarilyUnavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeTokenEndpoint(t, nil)
			redirected := atomic.Bool{}
			f.answer = func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/elsewhere" {
					redirected.Store(true)
				}
				if tc.status == 302 {
					w.Header().Set("Location", "/elsewhere")
				}
				w.WriteHeader(tc.status)
				_, _ = io.WriteString(w, tc.body)
			}
			core, logs := observer.New(zap.DebugLevel)
			g := newDelegatedGateway(t, f, zap.New(core), nil)
			_, oerr := delegatedPush(g, upPush(), upID, upSecret)
			if oerr == nil || oerr.Status != tc.want || oerr.Code != tc.code {
				t.Fatalf("answer %d %q: %+v, want %d %s", tc.status, tc.body, oerr, tc.want, tc.code)
			}
			if redirected.Load() {
				t.Errorf("the probe followed the redirect")
			}
			if logs.FilterMessageSnippet("upstream client authentication").Len() == 0 {
				t.Errorf("no log line for the undetermined answer")
			}
			for _, e := range logs.All() {
				if strings.Contains(fmt.Sprint(e.ContextMap()), upSecret) {
					t.Errorf("log line holds the secret: %v", e.ContextMap())
				}
			}
		})
	}
}

func TestDelegatedProbeTimeoutIs503(t *testing.T) {
	f := newFakeTokenEndpoint(t, map[string]string{upID: upSecret})
	f.block = make(chan struct{})
	defer close(f.block)
	g := newDelegatedGateway(t, f, nil, func(u *UpstreamClientAuth) { u.Timeout = caddy.Duration(300 * time.Millisecond) })
	start := time.Now()
	_, oerr := delegatedPush(g, upPush(), upID, upSecret)
	took := time.Since(start)
	if oerr == nil || oerr.Status != 503 || oerr.Code != ErrTemporarilyUnavailable || oerr.header.Get("Retry-After") == "" {
		t.Fatalf("hung upstream: %+v, want 503 temporarily_unavailable with Retry-After", oerr)
	}
	if took > 2*time.Second {
		t.Errorf("took %s, want about the 300ms timeout", took)
	}
	// An outage does not count against the client's failure limit.
	if ok, _, _, _ := g.auth.upstream.limiter.reserve(upID, time.Now()); !ok {
		t.Errorf("a timeout counted as a failure")
	}
}

func TestDelegatedUnreachableUpstreamIs503(t *testing.T) {
	f := newFakeTokenEndpoint(t, nil)
	f.srv.Close()
	g := newDelegatedGateway(t, f, nil, nil)
	_, oerr := delegatedPush(g, upPush(), upID, upSecret)
	if oerr == nil || oerr.Status != 503 || oerr.Code != ErrTemporarilyUnavailable {
		t.Fatalf("unreachable upstream: %+v, want 503 temporarily_unavailable", oerr)
	}
}

func TestDelegatedLargeUpstreamAnswerIsBounded(t *testing.T) {
	f := newFakeTokenEndpoint(t, nil)
	f.answer = func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(400)
		_, _ = io.WriteString(w, `{"error":"invalid_grant","x":"`+strings.Repeat("a", 1<<20)+`"}`)
	}
	g := newDelegatedGateway(t, f, nil, nil)
	_, oerr := delegatedPush(g, upPush(), upID, upSecret)
	if oerr == nil || oerr.Status != 401 {
		t.Fatalf("1 MiB answer: %+v, want 401 (only %d bytes read, not valid JSON)", oerr, maxProbeResponse)
	}
}

func TestDelegatedCacheHitsSkipTheProbe(t *testing.T) {
	f := newFakeTokenEndpoint(t, map[string]string{upID: upSecret})
	core, logs := observer.New(zap.DebugLevel)
	g := newDelegatedGateway(t, f, zap.New(core), nil)
	for i := 0; i < 5; i++ {
		if _, oerr := delegatedPush(g, upPush(), upID, upSecret); oerr != nil {
			t.Fatalf("push %d: %v", i, oerr)
		}
	}
	if n := f.probes.Load(); n != 1 {
		t.Errorf("5 pushes with the same credentials: %d probes, want 1", n)
	}
	if n := logs.FilterMessage("upstream client authentication: cached").Len(); n != 4 {
		t.Errorf("%d cache-hit log lines, want 4", n)
	}
	// Another form-encoding of the same Basic credentials (openid-client
	// encodes '-' as %2D) is the same key; the probe would have sent the
	// header as it came.
	r := parRequest(upPush(), "", "")
	r.Header.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte("upstream%2Dapp:"+url.QueryEscape(upSecret))))
	if _, _, oerr := g.push(r, nil); oerr != nil {
		t.Fatalf("differently encoded Basic credentials: %v", oerr)
	}
	if n := f.probes.Load(); n != 1 {
		t.Errorf("another encoding of the same credentials: %d probes, want 1", n)
	}
	// Another secret, method or client is another key.
	form := upPush()
	form.Set("client_secret", upSecret)
	if _, oerr := delegatedPush(g, form, "", ""); oerr != nil {
		t.Fatal(oerr)
	}
	if _, oerr := delegatedPush(g, upPush(), upID, "other"); oerr == nil {
		t.Fatal("a wrong secret was accepted after the right one was cached")
	}
	if n := f.probes.Load(); n != 3 {
		t.Errorf("probes = %d, want 3 (post and the wrong secret are not cache hits)", n)
	}
	// Expiry: after cache_ttl the credentials are probed again.
	up := g.auth.upstream
	now := time.Now()
	up.now = func() time.Time { return now.Add(defaultProbeCacheTTL + time.Second) }
	if _, oerr := delegatedPush(g, upPush(), upID, upSecret); oerr != nil {
		t.Fatal(oerr)
	}
	if n := f.probes.Load(); n != 4 {
		t.Errorf("probes = %d, want 4 (the cached answer expired)", n)
	}
}

func TestDelegatedProbeCacheKeysAreHMACsAndBounded(t *testing.T) {
	up, err := (&UpstreamClientAuth{TokenEndpoint: "http://127.0.0.1:1/token"}).provision(context.Background(), &Handler{}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	a := delegatedCredentials{method: AuthClientSecretPost, clientID: "a", secret: "b\x00c"}
	b := delegatedCredentials{method: AuthClientSecretPost, clientID: "a\x00b", secret: "c"}
	if up.cacheKey(a) == up.cacheKey(b) {
		t.Errorf("client_id and secret are not separated in the key")
	}
	k := up.cacheKey(a)
	if bytes.Contains(k[:], []byte("b\x00c")) {
		t.Errorf("key holds the secret")
	}
	other, _ := (&UpstreamClientAuth{TokenEndpoint: "http://127.0.0.1:1/token"}).provision(context.Background(), &Handler{}, zap.NewNop())
	if other.cacheKey(a) == k {
		t.Errorf("two configurations share the HMAC key")
	}

	c := newProbeCache(time.Minute, 3)
	now := time.Now()
	keys := make([][32]byte, 5)
	for i := range keys {
		keys[i][0] = byte(i + 1)
		c.put(keys[i], now.Add(time.Duration(i)*time.Second))
	}
	if c.len() != 3 || c.hit(keys[0], now) || c.hit(keys[1], now) || !c.hit(keys[4], now) {
		t.Errorf("a full cache must drop its oldest entries: len %d", c.len())
	}
	if c.hit(keys[4], now.Add(2*time.Minute)) {
		t.Errorf("an expired entry hit")
	}
	// Refilling after expiry keeps the queue bounded.
	for i := 0; i < 1000; i++ {
		var k [32]byte
		k[1] = byte(i)
		k[2] = byte(i >> 8)
		c.put(k, now.Add(time.Duration(i)*time.Minute))
	}
	if c.len() > 3 || len(c.queue)-c.head > 3 {
		t.Errorf("cache grew past its bound: %d entries, %d queued", c.len(), len(c.queue)-c.head)
	}
}

func TestDelegatedSingleflightOneProbeForConcurrentPushes(t *testing.T) {
	f := newFakeTokenEndpoint(t, map[string]string{upID: upSecret})
	f.block = make(chan struct{})
	g := newDelegatedGateway(t, f, nil, nil)
	const n = 20
	var wg sync.WaitGroup
	errs := make(chan *oauthError, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, oerr := delegatedPush(g, upPush(), upID, upSecret)
			errs <- oerr
		}()
	}
	deadline := time.Now().Add(5 * time.Second)
	for f.probes.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // let the others join the flight
	close(f.block)
	wg.Wait()
	close(errs)
	for oerr := range errs {
		if oerr != nil {
			t.Errorf("push: %v", oerr)
		}
	}
	if got := f.probes.Load(); got != 1 {
		t.Errorf("%d concurrent pushes with the same credentials: %d probes, want 1", n, got)
	}
}

func TestDelegatedNegativeRateLimit(t *testing.T) {
	f := newFakeTokenEndpoint(t, map[string]string{upID: upSecret, "other-app": "other-secret"})
	g := newDelegatedGateway(t, f, nil, func(u *UpstreamClientAuth) {
		u.FailureLimit, u.FailureWindow = 3, caddy.Duration(time.Minute)
		u.GlobalFailureLimit, u.GlobalFailureWindow = 5, caddy.Duration(time.Minute)
	})
	up := g.auth.upstream
	now := time.Now()
	up.now = func() time.Time { return now }

	// Right secret first: cached.
	if _, oerr := delegatedPush(g, upPush(), upID, upSecret); oerr != nil {
		t.Fatal(oerr)
	}
	for i := 0; i < 3; i++ {
		if _, oerr := delegatedPush(g, upPush(), upID, fmt.Sprint("wrong-", i)); oerr == nil || oerr.Status != 401 {
			t.Fatalf("wrong secret %d: %+v, want 401", i, oerr)
		}
	}
	probes := f.probes.Load()
	_, oerr := delegatedPush(g, upPush(), upID, "wrong-again")
	if oerr == nil || oerr.Status != http.StatusTooManyRequests || oerr.header.Get("Retry-After") == "" {
		t.Fatalf("4th wrong secret: %+v, want 429 with Retry-After", oerr)
	}
	if f.probes.Load() != probes {
		t.Errorf("a probe was sent beyond the client's failure limit")
	}
	// The cached right secret still works, without a probe.
	if _, oerr := delegatedPush(g, upPush(), upID, upSecret); oerr != nil {
		t.Errorf("cached credentials refused during the client's lockout: %v", oerr)
	}
	// Another client is not affected by this client's limit...
	otherPush := upPush()
	otherPush.Set("client_id", "other-app")
	for i := 0; i < 2; i++ {
		if _, oerr := delegatedPush(g, otherPush, "other-app", fmt.Sprint("bad-", i)); oerr == nil || oerr.Status != 401 {
			t.Fatalf("other-app wrong secret %d: %+v, want 401", i, oerr)
		}
	}
	// ...but the global limit (5 failures) is now reached for everyone
	// without cached credentials.
	if _, oerr := delegatedPush(g, otherPush, "other-app", "other-secret"); oerr == nil || oerr.Status != http.StatusTooManyRequests {
		t.Fatalf("after 5 failures in all: %+v, want 429 (global limit)", oerr)
	}
	if _, oerr := delegatedPush(g, upPush(), upID, upSecret); oerr != nil {
		t.Errorf("cached credentials refused at the global limit: %v", oerr)
	}
	// The windows end.
	now = now.Add(time.Minute + time.Second)
	if _, oerr := delegatedPush(g, otherPush, "other-app", "other-secret"); oerr != nil {
		t.Errorf("after the window: %v", oerr)
	}
}

func TestDelegatedFailureLimiterReservesConcurrentProbes(t *testing.T) {
	l := &failureLimiter{perLimit: 2, perWindow: time.Minute, globalLimit: 100, globalWindow: time.Minute, maxEntries: 2, per: map[string]*failWindow{}}
	now := time.Now()
	if ok, tracked, _, _ := l.reserve("a", now); !ok || !tracked {
		t.Fatal("first reservation refused")
	}
	if ok, _, _, _ := l.reserve("a", now); !ok {
		t.Fatal("second reservation refused")
	}
	if ok, _, _, scope := l.reserve("a", now); ok || scope != "client" {
		t.Fatalf("third concurrent probe of a client with limit 2 allowed (%q)", scope)
	}
	l.done("a", true, false, now)
	l.done("a", true, false, now)
	if len(l.per) != 0 {
		t.Errorf("records without failures kept: %v", l.per)
	}
	// Bounded: with the table full, new client_ids are not tracked one by
	// one (the global limit still applies).
	for _, id := range []string{"x", "y"} {
		_, tracked, _, _ := l.reserve(id, now)
		l.done(id, tracked, true, now)
	}
	ok, tracked, _, _ := l.reserve("z", now)
	if !ok || tracked || len(l.per) != 2 {
		t.Errorf("full table: ok=%v tracked=%v entries=%d, want allowed, untracked, still 2 entries", ok, tracked, len(l.per))
	}
	l.done("z", tracked, true, now)
	if l.global.failures != 3 {
		t.Errorf("global failures = %d, want 3", l.global.failures)
	}
	// After the window, the full table is swept.
	later := now.Add(2 * time.Minute)
	if ok, tracked, _, _ := l.reserve("w", later); !ok || !tracked || l.per["w"] == nil {
		t.Errorf("the sweep did not make room: entries %v", l.per)
	}
}

func TestDelegatedPushTimeChecks(t *testing.T) {
	f := newFakeTokenEndpoint(t, map[string]string{upID: upSecret})
	g := newDelegatedGateway(t, f, nil, nil)
	ok := func(name string, form url.Values) {
		t.Run(name, func(t *testing.T) {
			if _, oerr := delegatedPush(g, form, upID, upSecret); oerr != nil {
				t.Errorf("want 201, got %v", oerr)
			}
		})
	}
	bad := func(name string, form url.Values, code string) {
		t.Run(name, func(t *testing.T) {
			_, oerr := delegatedPush(g, form, upID, upSecret)
			if oerr == nil || oerr.Code != code {
				t.Errorf("want %s, got %v", code, oerr)
			}
		})
	}
	with := func(kv ...string) url.Values {
		v := upPush()
		for i := 0; i+1 < len(kv); i += 2 {
			if kv[i+1] == "" {
				v.Del(kv[i])
			} else {
				v.Set(kv[i], kv[i+1])
			}
		}
		return v
	}
	// Not checked: registration of the redirect_uri, the scope allow-list.
	ok("any_absolute_redirect_uri", with("redirect_uri", "https://anything.example.net/cb?x=1"))
	ok("any_scope", with("scope", "openid anything:you:like"))
	ok("authorization_details_any_type", with("authorization_details", `[{"type":"payment_initiation"}]`))
	// Checked.
	bad("relative_redirect_uri", with("redirect_uri", "/cb"), ErrInvalidRequest)
	bad("redirect_uri_with_fragment", with("redirect_uri", "https://a.example/cb#f"), ErrInvalidRequest)
	bad("no_redirect_uri", with("redirect_uri", ""), ErrInvalidRequest)
	bad("pkce_missing", with("code_challenge", "", "code_challenge_method", ""), ErrInvalidRequest)
	bad("pkce_plain", with("code_challenge_method", "plain"), ErrInvalidRequest)
	bad("malformed_scope", with("scope", "openid \"x\""), ErrInvalidScope)
	bad("response_type_token", with("response_type", "token"), ErrUnsupportedResponseType)
	bad("request_uri_in_push", with("request_uri", "urn:x"), ErrInvalidRequest)
	bad("client_id_mismatch", with("client_id", "web-app"), ErrInvalidRequest)
	bad("authorization_details_malformed", with("authorization_details", `{"type":"x"}`), ErrInvalidAuthorizationDetails)
	bad("request_object_without_keys", with("request", "e30.e30."), ErrInvalidRequestObject)
}

func TestDelegatedConfiguredClientsTakePrecedence(t *testing.T) {
	// The upstream would accept web-app with this secret; the gateway's
	// own configuration decides.
	f := newFakeTokenEndpoint(t, map[string]string{"web-app": "upstream-secret", "spa": "x"})
	g := newDelegatedGateway(t, f, nil, nil)
	if _, oerr := delegatedPush(g, validPush(), "web-app", "upstream-secret"); oerr == nil || oerr.Status != 401 {
		t.Fatalf("configured client with the upstream's secret: %v, want 401", oerr)
	}
	if _, oerr := delegatedPush(g, validPush(), "web-app", testSecret); oerr != nil {
		t.Fatalf("configured client with its secret: %v", oerr)
	}
	spa := url.Values{"client_id": {"spa"}, "response_type": {"code"}, "redirect_uri": {"http://127.0.0.1/cb"},
		"code_challenge": {"E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGjSstw-cM"}, "code_challenge_method": {"S256"}}
	if _, oerr := delegatedPush(g, spa, "spa", "x"); oerr == nil {
		t.Fatalf("configured public client pushed with a secret the upstream knows")
	}
	if n := f.probes.Load(); n != 0 {
		t.Errorf("%d probes for configured clients", n)
	}
}

func TestDelegatedCredentialsThatAreNeverProbed(t *testing.T) {
	f := newFakeTokenEndpoint(t, map[string]string{upID: ""})
	g := newDelegatedGateway(t, f, nil, nil)
	for _, tc := range []struct {
		name string
		req  *http.Request
	}{
		{"empty_basic_secret", parRequest(upPush(), upID, "")},
		{"no_credentials", parRequest(upPush(), "", "")},
		{"client_assertion", parRequest(func() url.Values {
			v := upPush()
			v.Set("client_assertion_type", jwtBearer)
			v.Set("client_assertion", "e30.e30.sig")
			return v
		}(), "", "")},
		{"control_character_in_client_id", parRequest(func() url.Values { v := upPush(); v.Set("client_id", "a\nb"); return v }(), "a\nb", "s")},
		{"client_id_too_long", parRequest(func() url.Values { v := upPush(); v.Set("client_id", strings.Repeat("a", 256)); return v }(), strings.Repeat("a", 256), "s")},
		{"secret_too_long", parRequest(upPush(), upID, strings.Repeat("s", 1025))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, oerr := g.push(tc.req, nil)
			if oerr == nil || oerr.Status != 401 || oerr.Code != ErrInvalidClient {
				t.Errorf("want 401 invalid_client, got %v", oerr)
			}
		})
	}
	if n := f.probes.Load(); n != 0 {
		t.Errorf("%d probes, want none", n)
	}
}

func TestDelegatedPublicClientsOnlyWithAllowPublic(t *testing.T) {
	f := newFakeTokenEndpoint(t, nil)
	noSecret := upPush()
	g := newDelegatedGateway(t, f, nil, nil)
	if _, oerr := delegatedPush(g, noSecret, "", ""); oerr == nil || oerr.Status != 401 {
		t.Fatalf("unknown client without credentials: %v, want 401", oerr)
	}
	g = newDelegatedGateway(t, f, nil, func(u *UpstreamClientAuth) { u.AllowPublic = true })
	if _, oerr := delegatedPush(g, noSecret, "", ""); oerr != nil {
		t.Fatalf("allow_public: %v", oerr)
	}
	noPKCE := upPush()
	noPKCE.Del("code_challenge")
	noPKCE.Del("code_challenge_method")
	if _, oerr := delegatedPush(g, noPKCE, "", ""); oerr == nil || oerr.Code != ErrInvalidRequest {
		t.Fatalf("allow_public without PKCE: %v, want invalid_request", oerr)
	}
	if n := f.probes.Load(); n != 0 {
		t.Errorf("%d probes for public clients", n)
	}
}

func TestDelegatedRedemptionRechecksPolicy(t *testing.T) {
	f := newFakeTokenEndpoint(t, map[string]string{upID: upSecret})
	g := newDelegatedGateway(t, f, nil, nil)
	redeem := func(g *gateway, ru string) *httptest.ResponseRecorder {
		t.Helper()
		rec := httptest.NewRecorder()
		r := httptest.NewRequest(http.MethodGet, "/authorize?"+url.Values{"client_id": {upID}, "request_uri": {ru}}.Encode(), nil)
		var forwarded string
		next := func(w http.ResponseWriter, r *http.Request) error {
			forwarded = r.URL.RawQuery
			w.WriteHeader(200)
			return nil
		}
		if err := g.serveAuthorize(rec, r, next); err != nil {
			t.Fatal(err)
		}
		if rec.Code == 200 && !strings.Contains(forwarded, "client_id="+upID) {
			t.Errorf("forwarded %q", forwarded)
		}
		return rec
	}
	resp, oerr := delegatedPush(g, upPush(), upID, upSecret)
	if oerr != nil {
		t.Fatal(oerr)
	}
	if rec := redeem(g, resp.RequestURI); rec.Code != 200 {
		t.Fatalf("redemption of a delegated client's request: %d %s", rec.Code, rec.Body)
	}
	// A reload without upstream_client_auth (same store): pending
	// requests of delegated clients are no longer redeemable.
	resp, oerr = delegatedPush(g, upPush(), upID, upSecret)
	if oerr != nil {
		t.Fatal(oerr)
	}
	g2 := newTestGateway(t, func(g2 *gateway) { g2.store = g.store })
	if rec := redeem(g2, resp.RequestURI); rec.Code != 400 || !strings.Contains(rec.Body.String(), "no longer registered") {
		t.Errorf("without upstream_client_auth: %d %s, want 400 no longer registered", rec.Code, rec.Body)
	}
}

func TestDelegatedUnpushedRequestIsNeverRedirected(t *testing.T) {
	f := newFakeTokenEndpoint(t, nil)
	g := newDelegatedGateway(t, f, nil, nil)
	g.requirePAR = true
	rec := httptest.NewRecorder()
	r := httptest.NewRequest(http.MethodGet, "/authorize?"+url.Values{"client_id": {upID}, "response_type": {"code"}, "redirect_uri": {"https://upstream-app.example.com/cb"}, "state": {"s"}}.Encode(), nil)
	if err := g.serveAuthorize(rec, r, func(http.ResponseWriter, *http.Request) error {
		t.Error("an unpushed request reached the upstream")
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if rec.Code != 400 || rec.Header().Get("Location") != "" || !strings.Contains(rec.Body.String(), "registered only at the authorization server") {
		t.Errorf("unpushed request of a delegated client: %d Location=%q %s", rec.Code, rec.Header().Get("Location"), rec.Body)
	}
}

func TestDelegatedConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		h    Handler
		u    UpstreamClientAuth
		want string
	}{
		{"no_token_endpoint", Handler{}, UpstreamClientAuth{}, "token_endpoint is required"},
		{"relative_token_endpoint", Handler{}, UpstreamClientAuth{TokenEndpoint: "/token"}, "token_endpoint"},
		{"ftp_token_endpoint", Handler{}, UpstreamClientAuth{TokenEndpoint: "ftp://idp/token"}, "token_endpoint"},
		{"user_info_in_token_endpoint", Handler{}, UpstreamClientAuth{TokenEndpoint: "http://a:b@idp/token"}, "token_endpoint"},
		{"method_jwt", Handler{}, UpstreamClientAuth{TokenEndpoint: "http://idp/token", Methods: []string{"private_key_jwt"}}, "methods"},
		{"timeout_too_long", Handler{}, UpstreamClientAuth{TokenEndpoint: "http://idp/token", Timeout: caddy.Duration(time.Minute)}, "timeout"},
		{"cache_ttl_too_long", Handler{}, UpstreamClientAuth{TokenEndpoint: "http://idp/token", CacheTTL: caddy.Duration(2 * time.Hour)}, "cache_ttl"},
		{"cache_size_negative", Handler{}, UpstreamClientAuth{TokenEndpoint: "http://idp/token", CacheSize: -1}, "cache_size"},
		{"failure_window_too_long", Handler{}, UpstreamClientAuth{TokenEndpoint: "http://idp/token", FailureWindow: caddy.Duration(2 * time.Hour)}, "failure_limit"},
		{"global_failure_limit_negative", Handler{}, UpstreamClientAuth{TokenEndpoint: "http://idp/token", GlobalFailureLimit: -1}, "global_failure_limit"},
		{"fapi2", Handler{Profile: ProfileFAPI2}, UpstreamClientAuth{TokenEndpoint: "http://idp/token"}, "profile fapi2: upstream_client_auth is not allowed"},
		{"fapi2_message_signing", Handler{Profile: ProfileFAPI2MessageSigning}, UpstreamClientAuth{TokenEndpoint: "http://idp/token"}, "upstream_client_auth is not allowed"},
		{"require_signed_request_object", Handler{RequireSignedRequestObject: true}, UpstreamClientAuth{TokenEndpoint: "http://idp/token"}, "require_signed_request_object"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.u.provision(context.Background(), &tc.h, zap.NewNop())
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "upstream_client_auth") {
				t.Errorf("error %v, want one naming upstream_client_auth and %q", err, tc.want)
			}
		})
	}
}
