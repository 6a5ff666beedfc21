package caddymodule

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/go-jose/go-jose/v4"
)

// fakeClock is a monotonic clock the test moves by hand.
type fakeClock struct{ ns atomic.Int64 }

func newFakeClock() *fakeClock {
	c := &fakeClock{}
	c.ns.Store(int64(time.Hour)) // anything but 0: a fresh process is never at 0
	return c
}
func (c *fakeClock) now() int64              { return c.ns.Load() }
func (c *fakeClock) advance(d time.Duration) { c.ns.Add(int64(d)) }

func mustRate(t testing.TB, events int, window time.Duration, burst int) gcra {
	t.Helper()
	g, err := (&Rate{Events: events, Window: caddy.Duration(window), Burst: burst}).gcra("test", nil)
	if err != nil || g == nil {
		t.Fatalf("rate %d/%s burst %d: %v", events, window, burst, err)
	}
	return *g
}

func TestLimiterGCRABurstAndRefill(t *testing.T) {
	type step struct {
		at   time.Duration // since the start
		want time.Duration // 0: admitted; else the wait reported
	}
	for _, tc := range []struct {
		name   string
		events int
		window time.Duration
		burst  int
		steps  []step
	}{
		{"burst then one per interval", 60, time.Minute, 3, []step{
			{0, 0}, {0, 0}, {0, 0}, {0, time.Second}, // the burst of 3, then a 1 s wait
			{500 * time.Millisecond, 500 * time.Millisecond},
			{time.Second, 0}, {time.Second, time.Second}, // one refilled
			{3 * time.Second, 0}, {3 * time.Second, 0}, {3 * time.Second, time.Second},
		}},
		{"an idle bucket holds no more than the burst", 1, time.Second, 2, []step{
			{0, 0}, {time.Hour, 0}, {time.Hour, 0}, {time.Hour, time.Second},
		}},
		{"burst defaults to events", 4, time.Minute, 0, []step{
			{0, 0}, {0, 0}, {0, 0}, {0, 0}, {0, 15 * time.Second},
			{15 * time.Second, 0}, {15 * time.Second, 15 * time.Second},
		}},
		{"burst of one is a plain rate", 2, time.Second, 1, []step{
			{0, 0}, {0, 500 * time.Millisecond}, {499 * time.Millisecond, time.Millisecond}, {500 * time.Millisecond, 0},
		}},
		{"refused requests cost nothing", 1, time.Minute, 1, []step{
			{0, 0}, {time.Second, 59 * time.Second}, {2 * time.Second, 58 * time.Second}, {time.Minute, 0},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := mustRate(t, tc.events, tc.window, tc.burst)
			start := int64(time.Hour)
			var tat int64
			for i, s := range tc.steps {
				if got := g.take(&tat, start+int64(s.at)); time.Duration(got) != s.want {
					t.Fatalf("step %d at %s: wait %s, want %s", i, s.at, time.Duration(got), s.want)
				}
			}
		})
	}
}

func TestLimiterRetryAfterRoundsUp(t *testing.T) {
	for _, tc := range []struct {
		wait time.Duration
		want int64
	}{
		{time.Nanosecond, 1}, {time.Millisecond, 1}, {time.Second, 1}, {time.Second + time.Nanosecond, 2},
		{1500 * time.Millisecond, 2}, {59*time.Second + time.Microsecond, 60}, {20 * time.Minute, 1200},
	} {
		if got := retryAfterSeconds(int64(tc.wait)); got != tc.want {
			t.Errorf("retryAfterSeconds(%s) = %d, want %d", tc.wait, got, tc.want)
		}
	}
	e := tooManyRequests("for this client", int64(1500*time.Millisecond))
	if e.Status != http.StatusTooManyRequests || e.Code != ErrTemporarilyUnavailable || e.header.Get("Retry-After") != "2" {
		t.Fatalf("got %d %s Retry-After %q", e.Status, e.Code, e.header.Get("Retry-After"))
	}
	w := httptest.NewRecorder()
	writeJSONError(w, e)
	if w.Code != 429 || w.Header().Get("Retry-After") != "2" || w.Header().Get("Cache-Control") != "no-store" ||
		!strings.Contains(w.Body.String(), `"error":"temporarily_unavailable"`) {
		t.Fatalf("response %d %v %s", w.Code, w.Header(), w.Body)
	}
}

func TestLimiterChargeAndRefund(t *testing.T) {
	g := mustRate(t, 1, time.Second, 10)
	start := int64(time.Hour)
	// A source that tries every 100 ms for 100 s. Each admitted request
	// that fails authentication costs 10: the first empties the burst,
	// then one gets through every 10 s, against 110 without the charge.
	for _, tc := range []struct {
		extra    int64
		min, max int
	}{{9, 10, 12}, {0, 109, 111}} {
		var tat int64
		admitted := 0
		for i := range 1000 {
			now := start + int64(i)*int64(100*time.Millisecond)
			if g.take(&tat, now) == 0 {
				admitted++
				g.charge(&tat, now, tc.extra)
			}
		}
		if admitted < tc.min || admitted > tc.max {
			t.Errorf("cost %d: %d failures admitted in 100 s, want %d..%d", tc.extra+1, admitted, tc.min, tc.max)
		}
	}
	now := start
	var tat int64
	g.take(&tat, now)
	g.charge(&tat, now, 9)
	if w := g.take(&tat, now); time.Duration(w) != time.Second {
		t.Fatalf("after a failure: wait %s, want 1s (the bucket is empty)", time.Duration(w))
	}
	// Debt never goes deeper than n beyond empty, however many charges.
	for range 100 {
		g.charge(&tat, now, 9)
	}
	if d := tat - now; d != g.tolerance+9*g.interval {
		t.Fatalf("debt %s, want %s", time.Duration(d), time.Duration(g.tolerance+9*g.interval))
	}
	// A refund gives one event back, never more than a full bucket.
	tat = 0
	g.take(&tat, now)
	g.refund(&tat, now)
	g.refund(&tat, now)
	if tat != now {
		t.Fatalf("refunds overfilled the bucket: tat-now = %d", tat-now)
	}
}

func TestLimiterSourceKeyGroupsAddresses(t *testing.T) {
	tab64 := newSourceTable(mustRate(t, 1, time.Second, 1), 64, 1024)
	tab48 := newSourceTable(mustRate(t, 1, time.Second, 1), 48, 1024)
	tab128 := newSourceTable(mustRate(t, 1, time.Second, 1), 128, 1024)
	for _, tc := range []struct {
		tab  *sourceTable
		a, b string
		same bool
	}{
		{tab64, "192.0.2.1", "192.0.2.1", true},
		{tab64, "192.0.2.1", "192.0.2.2", false}, // IPv4: /32
		{tab64, "::ffff:192.0.2.1", "192.0.2.1", true},
		{tab64, "2001:db8:1:2::1", "2001:db8:1:2:ffff:ffff:ffff:ffff", true},
		{tab64, "2001:db8:1:2::1", "2001:db8:1:3::1", false},
		{tab48, "2001:db8:1:2::1", "2001:db8:1:ff::1", true},
		{tab48, "2001:db8:1:2::1", "2001:db8:2:2::1", false},
		{tab128, "2001:db8:1:2::1", "2001:db8:1:2::2", false},
		{tab64, "fe80::1%eth0", "fe80::2", true},
		{tab64, "::1", "127.0.0.1", false},
	} {
		ka, kb := tc.tab.key(netip.MustParseAddr(tc.a)), tc.tab.key(netip.MustParseAddr(tc.b))
		if (ka == kb) != tc.same {
			t.Errorf("/%d: %s and %s: same bucket %v, want %v", tc.tab.prefix6, tc.a, tc.b, ka == kb, tc.same)
		}
		if int(ka.set) >= len(tc.tab.sets) {
			t.Errorf("set %d out of range", ka.set)
		}
	}
}

// withClientIP is r as Caddy's server hands it over, with its client IP.
func withClientIP(r *http.Request, ip string) *http.Request {
	return r.WithContext(context.WithValue(r.Context(), caddyhttp.VarsCtxKey, map[string]any{caddyhttp.ClientIPVarKey: ip}))
}

func TestLimiterSourceAddrIsCaddysClientIP(t *testing.T) {
	r := httptest.NewRequest(http.MethodPost, "/par", nil)
	r.RemoteAddr = "198.51.100.9:4711"
	r.Header.Set("X-Forwarded-For", "203.0.113.66")
	if got := sourceAddr(r); got != netip.MustParseAddr("198.51.100.9") {
		t.Errorf("without Caddy's vars: %s, want the peer (headers are not trusted)", got)
	}
	if got := sourceAddr(withClientIP(r, "2001:db8::7")); got != netip.MustParseAddr("2001:db8::7") {
		t.Errorf("with Caddy's client IP: %s", got)
	}
	r.RemoteAddr = "@"
	if got := sourceAddr(withClientIP(r, "@")); got.IsValid() {
		t.Errorf("unix socket: %s, want the zero address", got)
	}
}

// TestLimiterFloodKeepsMemoryBoundedAndVictimsLimited: 200,000 distinct
// sources (IPv6 /64s and IPv4 addresses) into tables of 1024 and 65536
// buckets. The table does not grow, and a source that was being limited
// before the flood (the victim of the displacement an attacker would want:
// resetting a limited bucket) is still limited, with the same wait.
func TestLimiterFloodKeepsMemoryBoundedAndVictimsLimited(t *testing.T) {
	const flood = 200_000
	for _, tc := range []struct {
		name       string
		maxSources int
		perFlooder int // requests each flooding address sends
		v6         bool
	}{
		{"1024 buckets, IPv6 /64s, one request each", 1024, 1, true},
		{"1024 buckets, IPv4, three requests each", 1024, 3, false},
		{"65536 buckets, IPv6 /64s, one request each", DefaultMaxSources, 1, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clock := newFakeClock()
			// 60 per minute, burst 10: a victim at the limit waits 1 s per
			// request; a flooder's one request leaves a bucket 1 s deep.
			tab := newSourceTable(mustRate(t, 60, time.Minute, 10), 64, tc.maxSources)
			capBefore := tab.capacity()
			victims := []netip.Addr{netip.MustParseAddr("2001:db8:ffff:1::1"), netip.MustParseAddr("198.51.100.1")}
			var vkeys []sourceKey
			for _, v := range victims {
				k := tab.key(v)
				vkeys = append(vkeys, k)
				for tab.take(k, clock.now()) == 0 {
				}
			}
			// The victims then keep asking, as a limited client does.
			var ms runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&ms)
			heapBefore := ms.HeapAlloc
			for i := range flood {
				var a netip.Addr
				if tc.v6 {
					a = netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, byte(i >> 16), byte(i >> 8), byte(i), 0, 0, 0, 0, 0, 0, 0, 0, 1})
				} else {
					a = netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
				}
				k := tab.key(a)
				for range tc.perFlooder {
					tab.take(k, clock.now())
				}
				clock.advance(time.Microsecond) // 0.2 s for the whole flood
				if i%1000 == 0 {
					for _, vk := range vkeys {
						if tab.take(vk, clock.now()) == 0 {
							t.Fatalf("victim admitted after %d flooding sources: its bucket was reset", i)
						}
					}
				}
			}
			runtime.GC()
			runtime.ReadMemStats(&ms)
			grown := int64(ms.HeapAlloc) - int64(heapBefore)
			live := tab.live(clock.now())
			t.Logf("capacity %d buckets (%d KiB); live after the flood %d; live buckets displaced %d; heap change %d B",
				tab.capacity(), tab.capacity()*24/1024, live, tab.evicted.Load(), grown)
			if tab.capacity() != capBefore || len(tab.sets)*sourceWays != capBefore || live > capBefore {
				t.Fatalf("table grew: %d -> %d (live %d)", capBefore, tab.capacity(), live)
			}
			if grown > 256<<10 {
				t.Errorf("heap grew by %d bytes during the flood", grown)
			}
			if tc.maxSources == 1024 && tab.evicted.Load() == 0 {
				t.Errorf("no live bucket displaced: the flood did not fill the table")
			}
			for i, vk := range vkeys {
				w := tab.take(vk, clock.now())
				// Still at its limit: about one interval (1 s) to wait, the
				// flood took 0.2 s.
				if w <= 0 || time.Duration(w) > time.Second {
					t.Errorf("victim %s: wait %s after the flood, want (0, 1s]", victims[i], time.Duration(w))
				}
			}
		})
	}
}

// TestLimiterDisplacementPrefersFullBuckets: within one set, a new source
// takes a refilled bucket if there is one, else the fullest one; a
// limited bucket goes last.
func TestLimiterDisplacementPrefersFullBuckets(t *testing.T) {
	var s sourceSet
	var evicted atomic.Uint64
	now := int64(time.Hour)
	addr := func(i int) [16]byte { return [16]byte{15: byte(i)} }
	for i := range sourceWays {
		b := s.bucket(addr(i+1), now, &evicted)
		b.tat = now + int64(i+1)*int64(time.Second) // way i is i+1 seconds deep
	}
	s.ways[5].tat = now - 1 // refilled
	b := s.bucket(addr(100), now, &evicted)
	if b != &s.ways[5] || evicted.Load() != 0 {
		t.Fatalf("a refilled bucket was not reused first (%d displaced)", evicted.Load())
	}
	b.tat = now + int64(time.Hour) // the newcomer is now the most limited
	b = s.bucket(addr(101), now, &evicted)
	if b != &s.ways[0] || evicted.Load() != 1 {
		t.Fatalf("the fullest bucket (way 0) was not the one displaced (%d displaced)", evicted.Load())
	}
	if got := s.bucket(addr(100), now, &evicted); got != &s.ways[5] || got.tat != now+int64(time.Hour) {
		t.Fatal("the limited bucket lost its state")
	}
}

// TestLimiterConcurrentTakesAreExact: with the clock stopped, goroutines
// racing on one source and one client get exactly the burst, however
// interleaved (run with -race).
func TestLimiterConcurrentTakesAreExact(t *testing.T) {
	clock := newFakeClock()
	rate := mustRate(t, 10, time.Hour, 100)
	l := newRateLimits(rateLimitSettings{source: &rate, prefix6: 64, maxSources: 1024, failCost: 4, clients: map[string]gcra{"web-app": rate}}, clock.now)
	c := &client{id: "web-app"}
	const workers, each = 8, 200
	var srcOK, cliOK atomic.Int64
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := withClientIP(httptest.NewRequest(http.MethodPost, "/par", nil), "203.0.113.5")
			other := withClientIP(httptest.NewRequest(http.MethodPost, "/par", nil), fmt.Sprintf("2001:db8:%x::1", w))
			for range each {
				if _, oerr := l.checkSource(r); oerr == nil {
					srcOK.Add(1)
				}
				k, _ := l.checkSource(other) // other sources, and penalties, alongside
				l.authFailed(k)
				if l.admitClient(c) == nil {
					cliOK.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if srcOK.Load() != 100 || cliOK.Load() != 100 {
		t.Fatalf("admitted %d from the source and %d for the client, want exactly the burst, 100", srcOK.Load(), cliOK.Load())
	}
}

// rlGateway is newTestGateway with rate limits on an injected clock and a
// private_key_jwt client "jwt-app".
func rlGateway(t *testing.T, s rateLimitSettings, clock *fakeClock) (*gateway, *memoryCache, testKey) {
	t.Helper()
	cache := newTestCache(t, 1<<20)
	key := newTestKeys(t)[1] // ES256
	g := newTestGateway(t, func(g *gateway) {
		g.store = cache
		g.issuer = "https://idp.example"
	})
	cl := mustClient(t, ClientConfig{ClientID: "jwt-app", JWKS: jwksOf(t, key), RedirectURIs: []string{"https://app.example.com/cb"}})
	g.clients["jwt-app"] = cl
	g.auth.clients["jwt-app"] = cl
	g.auth.claims, g.auth.claimPrefix = cache, g.partition
	g.auth.algs, g.auth.maxLifetime, g.auth.times = []jose.SignatureAlgorithm{key.alg}, 5*time.Minute, jwtTimes{Skew: DefaultClockSkew, Now: time.Now}
	g.limits = newRateLimits(s, clock.now)
	g.auth.limits = g.limits
	return g, cache, key
}

func jwksOf(t *testing.T, keys ...testKey) json.RawMessage {
	t.Helper()
	var set jose.JSONWebKeySet
	for _, k := range keys {
		set.Keys = append(set.Keys, jose.JSONWebKey{Key: k.priv.Public(), KeyID: k.kid, Algorithm: string(k.alg), Use: "sig"})
	}
	b, err := json.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

var rlJTI atomic.Int64

func rlAssertion(t *testing.T, key testKey, clientID string) string {
	t.Helper()
	now := time.Now()
	return signJWT(t, key.priv, key.alg, map[jose.HeaderKey]any{"kid": key.kid}, map[string]any{
		"iss": clientID, "sub": clientID, "aud": "https://idp.example", "jti": fmt.Sprintf("rl-%d", rlJTI.Add(1)),
		"iat": now.Unix(), "exp": now.Add(time.Minute).Unix(),
	})
}

// rlPush runs one push from ip and returns the status and the error code.
func rlPush(g *gateway, ip string, form url.Values, user, pass string) (int, string, http.Header) {
	r := withClientIP(parRequest(form, user, pass), ip)
	w := httptest.NewRecorder()
	g.servePAR(w, r, nil)
	var body struct {
		Error string `json:"error"`
	}
	_ = json.Unmarshal(w.Body.Bytes(), &body)
	return w.Code, body.Error, w.Header()
}

func jwtPush(assertion string) url.Values {
	f := with(validPush(), "client_id", "jwt-app")
	f.Set("client_assertion_type", jwtBearer)
	f.Set("client_assertion", assertion)
	return f
}

func storeState(c *memoryCache) (used int64, claims int) {
	for i := range c.claims {
		sh := &c.claims[i]
		sh.mu.Lock()
		claims += len(sh.m)
		sh.mu.Unlock()
	}
	return c.used.Load(), claims
}

func TestRateLimitPerSourceComesBeforeAuthentication(t *testing.T) {
	clock := newFakeClock()
	src := mustRate(t, 60, time.Hour, 3)
	g, cache, key := rlGateway(t, rateLimitSettings{source: &src, prefix6: 64, maxSources: 1024, clients: map[string]gcra{}}, clock)

	for i := range 3 {
		if st, code, _ := rlPush(g, "192.0.2.7", validPush(), "web-app", testSecret); st != http.StatusCreated {
			t.Fatalf("push %d: %d %s", i, st, code)
		}
	}
	used, claims := storeState(cache)
	// Over the limit, the answer is 429 whatever the credentials: nothing
	// of the request is looked at, no signature is checked.
	a := rlAssertion(t, key, "jwt-app")
	for _, tc := range []struct {
		name       string
		form       url.Values
		user, pass string
	}{
		{"valid secret", validPush(), "web-app", testSecret},
		{"wrong secret", validPush(), "web-app", "guess"},
		{"valid assertion", jwtPush(a), "", ""},
	} {
		st, code, h := rlPush(g, "192.0.2.7", tc.form, tc.user, tc.pass)
		if st != http.StatusTooManyRequests || code != ErrTemporarilyUnavailable || h.Get("Retry-After") != "60" || h.Get("Cache-Control") != "no-store" {
			t.Errorf("%s: got %d %s Retry-After %q", tc.name, st, code, h.Get("Retry-After"))
		}
	}
	if u, c := storeState(cache); u != used || c != claims {
		t.Fatalf("limited requests changed the store: used %d -> %d, claims %d -> %d", used, u, claims, c)
	}
	// Another source is not affected, and the limited assertion's jti was
	// not used up: it is accepted once the source may push again.
	if st, code, _ := rlPush(g, "192.0.2.8", validPush(), "web-app", testSecret); st != http.StatusCreated {
		t.Fatalf("another source: %d %s", st, code)
	}
	clock.advance(time.Minute)
	if st, code, _ := rlPush(g, "192.0.2.7", jwtPush(a), "", ""); st != http.StatusCreated {
		t.Fatalf("the assertion refused while limited, after the limit: %d %s", st, code)
	}
}

func TestRateLimitFailedAuthenticationCostsTheSourceMore(t *testing.T) {
	clock := newFakeClock()
	src := mustRate(t, 60, time.Minute, 20)
	g, _, _ := rlGateway(t, rateLimitSettings{source: &src, prefix6: 64, maxSources: 1024, failCost: 9, clients: map[string]gcra{}}, clock)
	// 20 tokens: two failures at 10 each use them up.
	for i := range 2 {
		if st, _, _ := rlPush(g, "2001:db8:1:2::1", validPush(), "web-app", "guess"); st != http.StatusUnauthorized {
			t.Fatalf("failure %d: %d", i, st)
		}
	}
	// The same /64, another address, with the right secret.
	if st, _, h := rlPush(g, "2001:db8:1:2::99", validPush(), "web-app", testSecret); st != http.StatusTooManyRequests || h.Get("Retry-After") != "1" {
		t.Fatalf("after two failures: %d Retry-After %q, want 429 after 1 s", st, h.Get("Retry-After"))
	}
	// Other failures cost one: a 400 is not a failed authentication.
	clock.advance(time.Hour)
	for i := range 20 {
		if st, _, _ := rlPush(g, "2001:db8:1:2::1", with(validPush(), "response_type", "token"), "web-app", testSecret); st != http.StatusBadRequest {
			t.Fatalf("bad request %d: %d", i, st)
		}
	}
	if st, _, _ := rlPush(g, "2001:db8:1:2::1", validPush(), "web-app", testSecret); st != http.StatusTooManyRequests {
		t.Fatalf("21st request: %d, want 429", st)
	}
}

func TestRateLimitPerClientCountsOnlyAuthenticatedPushes(t *testing.T) {
	clock := newFakeClock()
	cli := mustRate(t, 3, time.Hour, 3)
	g, cache, key := rlGateway(t, rateLimitSettings{clients: map[string]gcra{"web-app": cli, "jwt-app": cli}}, clock)

	// 100 pushes that name web-app without its secret, from many
	// addresses: all 401, none counted.
	for i := range 100 {
		user, pass := "web-app", fmt.Sprintf("guess-%d", i)
		form := validPush()
		if i%2 == 1 {
			user = "" // client_id alone
		}
		if st, _, _ := rlPush(g, fmt.Sprintf("203.0.113.%d", i), form, user, pass); st != http.StatusUnauthorized {
			t.Fatalf("unauthenticated push %d: %d", i, st)
		}
	}
	for i := range 3 {
		if st, code, _ := rlPush(g, "192.0.2.1", validPush(), "web-app", testSecret); st != http.StatusCreated {
			t.Fatalf("push %d after the unauthenticated ones: %d %s", i, st, code)
		}
	}
	st, code, h := rlPush(g, "192.0.2.2", validPush(), "web-app", testSecret)
	if st != http.StatusTooManyRequests || code != ErrTemporarilyUnavailable || h.Get("Retry-After") != "1200" {
		t.Fatalf("4th push: %d %s Retry-After %q, want 429 after 1200 s", st, code, h.Get("Retry-After"))
	}

	// private_key_jwt: a replayed assertion fails authentication and gives
	// its token back, and a limited push records nothing.
	a := rlAssertion(t, key, "jwt-app")
	if st, code, _ := rlPush(g, "192.0.2.1", jwtPush(a), "", ""); st != http.StatusCreated {
		t.Fatalf("jwt push: %d %s", st, code)
	}
	for range 10 {
		if st, _, _ := rlPush(g, "192.0.2.1", jwtPush(a), "", ""); st != http.StatusUnauthorized {
			t.Fatalf("replay: %d", st)
		}
	}
	for i := range 2 {
		if st, code, _ := rlPush(g, "192.0.2.1", jwtPush(rlAssertion(t, key, "jwt-app")), "", ""); st != http.StatusCreated {
			t.Fatalf("jwt push %d after replays: %d %s", i, st, code)
		}
	}
	used, claims := storeState(cache)
	limited := rlAssertion(t, key, "jwt-app")
	if st, code, _ := rlPush(g, "192.0.2.1", jwtPush(limited), "", ""); st != http.StatusTooManyRequests {
		t.Fatalf("4th jwt push: %d %s", st, code)
	}
	if u, c := storeState(cache); u != used || c != claims {
		t.Fatalf("a limited push changed the store: used %d -> %d, claims %d -> %d", used, u, claims, c)
	}
	clock.advance(20 * time.Minute)
	if st, code, _ := rlPush(g, "192.0.2.1", jwtPush(limited), "", ""); st != http.StatusCreated {
		t.Fatalf("the limited push's assertion after the wait: %d %s (its jti was used up)", st, code)
	}
}

func TestRateLimitSettings(t *testing.T) {
	clients := map[string]*client{"web-app": {id: "web-app"}, "spa": {id: "spa", public: true}, "own": {id: "own", public: true}}
	cfgs := []ClientConfig{{ClientID: "web-app"}, {ClientID: "spa"}, {ClientID: "own", RateLimit: &Rate{Events: 5, Window: caddy.Duration(time.Second)}}}
	h := &Handler{Clients: cfgs}
	s, err := h.rateLimitSettings(clients)
	if err != nil {
		t.Fatal(err)
	}
	if s.source == nil || *s.source != mustRate(t, DefaultPerSourceEvents, DefaultPerSourceWindow, DefaultPerSourceBurst) ||
		s.clients["web-app"] != mustRate(t, DefaultPerClientEvents, DefaultPerClientWindow, DefaultPerClientBurst) ||
		s.prefix6 != 64 || s.maxSources != DefaultMaxSources || s.failCost != DefaultAuthFailureCost-1 {
		t.Fatalf("defaults: %+v", s)
	}
	if _, ok := s.clients["spa"]; ok {
		t.Error("a public client got the default per-client limit")
	}
	if s.clients["own"] != mustRate(t, 5, time.Second, 5) {
		t.Errorf("a public client's own rate_limit: %+v", s.clients["own"])
	}
	h.RateLimit = &RateLimitConfig{Off: true}
	if s, err = h.rateLimitSettings(clients); err != nil || s.source != nil || len(s.clients) != 1 {
		t.Fatalf("off: %+v %v (want only the client's own limit)", s, err)
	}

	for _, tc := range []struct {
		name string
		cfg  RateLimitConfig
		cli  *Rate
		want string
	}{
		{"zero events", RateLimitConfig{PerClient: &Rate{Events: 0, Window: caddy.Duration(time.Minute)}}, nil, "rate_limit: per_client: the number of events"},
		{"no window", RateLimitConfig{PerSource: &Rate{Events: 10}}, nil, "rate_limit: per_source: the window"},
		{"window over a day", RateLimitConfig{PerSource: &Rate{Events: 10, Window: caddy.Duration(25 * time.Hour)}}, nil, "per_source: the window"},
		{"too fast", RateLimitConfig{PerClient: &Rate{Events: 2_000_000, Window: caddy.Duration(time.Second)}}, nil, "more than 1000000 per second"},
		{"negative burst", RateLimitConfig{PerClient: &Rate{Events: 1, Window: caddy.Duration(time.Second), Burst: -1}}, nil, "per_client: burst"},
		{"huge burst", RateLimitConfig{PerClient: &Rate{Events: 1, Window: caddy.Duration(time.Second), Burst: 2_000_000}}, nil, "per_client: burst"},
		{"slow refill", RateLimitConfig{PerClient: &Rate{Events: 1, Window: caddy.Duration(24 * time.Hour), Burst: 1000}}, nil, "longer than"},
		{"off with a rate", RateLimitConfig{PerClient: &Rate{Off: true, Events: 1}}, nil, "per_client: off takes no rate"},
		{"off and per_client", RateLimitConfig{Off: true, PerClient: &Rate{Events: 1, Window: caddy.Duration(time.Second)}}, nil, "rate_limit: off cannot be combined"},
		{"prefix too short", RateLimitConfig{SourceIPv6Prefix: 16}, nil, "rate_limit: source_ipv6_prefix"},
		{"prefix too long", RateLimitConfig{SourceIPv6Prefix: 129}, nil, "source_ipv6_prefix"},
		{"few sources", RateLimitConfig{MaxSources: 10}, nil, "rate_limit: max_sources"},
		{"many sources", RateLimitConfig{MaxSources: 1 << 30}, nil, "max_sources"},
		{"negative failure cost", RateLimitConfig{AuthFailureCost: -1}, nil, "rate_limit: auth_failure_cost"},
		{"client rate", RateLimitConfig{}, &Rate{Events: 1}, `client "web-app": rate_limit: the window`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := &Handler{RateLimit: &tc.cfg, Clients: []ClientConfig{{ClientID: "web-app", RateLimit: tc.cli}}}
			_, err := h.rateLimitSettings(clients)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one naming %q", err, tc.want)
			}
		})
	}
}

func TestRateLimitCaddyfile(t *testing.T) {
	parse := func(body string) (*Handler, error) {
		tokens, err := caddyfile.Tokenize([]byte("oauth_par {\n"+body+"\n}"), "Caddyfile")
		if err != nil {
			t.Fatal(err)
		}
		var h Handler
		return &h, h.UnmarshalCaddyfile(caddyfile.NewDispenser(tokens))
	}
	h, err := parse(`rate_limit {
		per_client 600/1m burst 50
		per_source 10/s
		source_ipv6_prefix 56
		max_sources 100000
		auth_failure_cost 5
	}
	client a {
		rate_limit 5/1h
	}
	client b {
		rate_limit off
	}
	client c {
		rate_limit 100/90s burst 7
	}`)
	if err != nil {
		t.Fatal(err)
	}
	want := &RateLimitConfig{
		PerClient:        &Rate{Events: 600, Window: caddy.Duration(time.Minute), Burst: 50},
		PerSource:        &Rate{Events: 10, Window: caddy.Duration(time.Second)},
		SourceIPv6Prefix: 56, MaxSources: 100000, AuthFailureCost: 5,
	}
	got, _ := json.Marshal(h.RateLimit)
	wantJSON, _ := json.Marshal(want)
	if string(got) != string(wantJSON) {
		t.Errorf("rate_limit: %s, want %s", got, wantJSON)
	}
	for i, w := range []Rate{{Events: 5, Window: caddy.Duration(time.Hour)}, {Off: true}, {Events: 100, Window: caddy.Duration(90 * time.Second), Burst: 7}} {
		if h.Clients[i].RateLimit == nil || *h.Clients[i].RateLimit != w {
			t.Errorf("client %s: rate_limit %+v, want %+v", h.Clients[i].ClientID, h.Clients[i].RateLimit, w)
		}
	}
	if h, err = parse("rate_limit off"); err != nil || h.RateLimit == nil || !h.RateLimit.Off {
		t.Fatalf("rate_limit off: %+v %v", h.RateLimit, err)
	}

	for _, tc := range []struct{ body, want string }{
		{"rate_limit", "rate_limit: expected 'off' or a block"},
		{"rate_limit on", `rate_limit: "on"`},
		{"rate_limit off extra", "rate_limit: too many arguments"},
		{"rate_limit off {\nper_client 1/s\n}", "rate_limit off: takes no block"},
		{"rate_limit {\nper_client\n}", "rate_limit: per_client: expected"},
		{"rate_limit {\nper_client 10\n}", "rate_limit: per_client: \"10\": expected <events>/<duration>"},
		{"rate_limit {\nper_client x/1m\n}", "per_client: \"x/1m\": the number of events"},
		{"rate_limit {\nper_client 0/1m\n}", "per_client: \"0/1m\": the number of events"},
		{"rate_limit {\nper_source 10/soon\n}", "rate_limit: per_source: \"10/soon\": \"soon\" is not a duration"},
		{"rate_limit {\nper_source 10/-1m\n}", "per_source: \"10/-1m\": the duration must be positive"},
		{"rate_limit {\nper_source 10/1m burst\n}", "per_source: expected"},
		{"rate_limit {\nper_source 10/1m burst 0\n}", "per_source: burst: \"0\""},
		{"rate_limit {\nper_source 10/1m bust 5\n}", "per_source: expected"},
		{"rate_limit {\nper_source 10/1m\nper_source 10/1m\n}", "per_source: specified more than once"},
		{"rate_limit {\nsource_ipv6_prefix\n}", "rate_limit: source_ipv6_prefix: expected one integer"},
		{"rate_limit {\nmax_sources lots\n}", "rate_limit: max_sources: \"lots\" is not a positive integer"},
		{"rate_limit {\nauth_failure_cost 0\n}", "rate_limit: auth_failure_cost: \"0\" is not a positive integer"},
		{"rate_limit {\nauth_failure_cost 1 2\n}", "rate_limit: auth_failure_cost: expected one integer"},
		{"rate_limit {\nper_clients 1/s\n}", `rate_limit: unknown subdirective "per_clients"`},
		{"rate_limit off\nrate_limit off", "rate_limit: specified more than once"},
		{"client a {\nrate_limit\n}", `client "a": rate_limit: expected`},
		{"client a {\nrate_limit 1/s burst x\n}", `client "a": rate_limit: burst: "x"`},
	} {
		if _, err := parse(tc.body); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want one containing %q", tc.body, err, tc.want)
		}
	}
}

// TestRateLimitStateIsPooledPerConfig: handlers with the same limits
// share state (a reload keeps it); another rate, or another endpoint pair,
// starts afresh; the last release frees it.
func TestRateLimitStateIsPooledPerConfig(t *testing.T) {
	rate := mustRate(t, 1, time.Hour, 1)
	s := rateLimitSettings{source: &rate, prefix6: 64, maxSources: 1024, clients: map[string]gcra{"web-app": rate}}
	a, err := acquireRateLimits("pA/", s)
	if err != nil {
		t.Fatal(err)
	}
	b, err := acquireRateLimits("pA/", s)
	if err != nil {
		t.Fatal(err)
	}
	other, _ := acquireRateLimits("pB/", s)
	rate2 := mustRate(t, 2, time.Hour, 1)
	changed, _ := acquireRateLimits("pA/", rateLimitSettings{source: &rate2, prefix6: 64, maxSources: 1024, clients: map[string]gcra{"web-app": rate2}})
	if a.sources != b.sources || a.clients["web-app"] != b.clients["web-app"] {
		t.Error("the same settings did not share state")
	}
	if a.sources == other.sources || a.clients["web-app"] == other.clients["web-app"] {
		t.Error("another endpoint pair shares state")
	}
	if a.sources == changed.sources || a.clients["web-app"] == changed.clients["web-app"] {
		t.Error("another rate shares state")
	}
	key := a.pooled[0]
	for _, l := range []*rateLimits{a, other, changed} {
		l.release()
	}
	if n, ok := rateLimitPool.References(key); !ok || n != 1 {
		t.Errorf("after one release: %d references (%v), want 1", n, ok)
	}
	b.release()
	b.release() // idempotent
	if _, ok := rateLimitPool.References(key); ok {
		t.Error("state kept after the last release")
	}
}

// BenchmarkLimiterAllow is the cost the limits add to every push: the
// source check as push makes it (Caddy's client IP from the request
// context, grouping, the table), and the client check.
func BenchmarkLimiterAllow(b *testing.B) {
	// One event per nanosecond: never limited, so the path measured is
	// the admitting one, on the real clock.
	rate := gcra{interval: 1, tolerance: 1 << 40}
	l := newRateLimits(rateLimitSettings{source: &rate, prefix6: 64, maxSources: DefaultMaxSources, clients: map[string]gcra{"web-app": rate}}, monoNow)
	c := &client{id: "web-app"}
	for _, ip := range []string{"203.0.113.5", "2001:db8:1:2::5"} {
		b.Run("source_"+map[bool]string{true: "ipv6", false: "ipv4"}[strings.Contains(ip, ":")], func(b *testing.B) {
			r := withClientIP(httptest.NewRequest(http.MethodPost, "/par", nil), ip)
			b.ReportAllocs()
			for b.Loop() {
				if _, oerr := l.checkSource(r); oerr != nil {
					b.Fatal(oerr)
				}
			}
		})
	}
	b.Run("source_distinct_ipv6", func(b *testing.B) {
		reqs := make([]*http.Request, 4096)
		for i := range reqs {
			reqs[i] = withClientIP(httptest.NewRequest(http.MethodPost, "/par", nil), fmt.Sprintf("2001:db8:%x:%x::1", i>>8, i&0xff))
		}
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if _, oerr := l.checkSource(reqs[i&4095]); oerr != nil {
				b.Fatal(oerr)
			}
			i++
		}
	})
	b.Run("client", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if oerr := l.admitClient(c); oerr != nil {
				b.Fatal(oerr)
			}
		}
	})
	b.Run("parallel_source_and_client", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			r := withClientIP(httptest.NewRequest(http.MethodPost, "/par", nil), "203.0.113.5")
			for pb.Next() {
				if _, oerr := l.checkSource(r); oerr != nil {
					b.Fatal(oerr)
				}
				if oerr := l.admitClient(c); oerr != nil {
					b.Fatal(oerr)
				}
			}
		})
	})
}

// BenchmarkPARRequestRateLimited is BenchmarkPARRequest without and with
// both limits (never reached, so the admitting path is measured), for the
// limits' share of a whole push.
func BenchmarkPARRequestRateLimited(b *testing.B) {
	rate := gcra{interval: 1, tolerance: 1 << 40}
	for _, on := range []bool{false, true} {
		b.Run(map[bool]string{false: "off", true: "on"}[on], func(b *testing.B) {
			g := newTestGateway(b, func(g *gateway) { g.store = newTestCache(b, 1<<30) })
			if on {
				g.limits = newRateLimits(rateLimitSettings{source: &rate, prefix6: 64, maxSources: DefaultMaxSources, failCost: 9, clients: map[string]gcra{"web-app": rate}}, monoNow)
				g.auth.limits = g.limits
			}
			body := validPush().Encode()
			auth := basicHeader("web-app", testSecret)
			b.ReportAllocs()
			for b.Loop() {
				r := httptest.NewRequest(http.MethodPost, "/par", strings.NewReader(body))
				r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
				r.Header.Set("Authorization", auth)
				r = withClientIP(r, "203.0.113.5")
				w := httptest.NewRecorder()
				g.servePAR(w, r, nil)
				if w.Code != http.StatusCreated {
					b.Fatal(w.Code, w.Body)
				}
			}
		})
	}
}
