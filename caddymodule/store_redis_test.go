package caddymodule

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

type redisTestOpt func(*redisConfig)

func withKeys(keys ...[]byte) redisTestOpt {
	return func(c *redisConfig) { c.Keys = keys }
}

// newTestRedisBackend is a backend over r, as one gateway would have it;
// two of them over the same r are two gateways. logs sees what it logs.
func newTestRedisBackend(t *testing.T, r *TestRedis, opts ...redisTestOpt) (*redisBackend, *observer.ObservedLogs) {
	t.Helper()
	cfg := redisConfig{Address: r.Addr, KeyPrefix: "test:", DialTimeout: DefaultRedisDialTimeout, ReadTimeout: DefaultRedisReadTimeout, PoolSize: 16}
	for _, o := range opts {
		o(&cfg)
	}
	core, logs := observer.New(zapcore.DebugLevel)
	b, err := newRedisBackend(cfg, zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Destruct() })
	return b, logs
}

func redisTestKey(n byte) []byte { return bytes.Repeat([]byte{n}, 32) }

// testRef is a fresh reference with the gateway's shape.
func testRef(t *testing.T) string {
	t.Helper()
	ref, err := newRef()
	if err != nil {
		t.Fatal(err)
	}
	return "partition/" + ref
}

const secretParam = "SECRET-NONCE-4f1c9a"

func testPushed(client string, ttl time.Duration) PushedRequest {
	return PushedRequest{ClientID: client, Params: "response_type=code&nonce=" + secretParam + "&scope=openid", ExpiresAt: time.Now().Add(ttl)}
}

func TestRedisStorePutTakeOnceAndClientBinding(t *testing.T) {
	r := StartTestRedis(t)
	a, _ := newTestRedisBackend(t, r)
	b, _ := newTestRedisBackend(t, r) // a second gateway
	ctx := t.Context()
	key := testRef(t)
	want := testPushed("web-app", time.Minute)
	if err := a.Put(ctx, key, want); err != nil {
		t.Fatal(err)
	}
	// A wrong client neither gets the entry nor burns it.
	for range 3 {
		if _, err := b.Take(ctx, key, oneTime("evil")); !errors.Is(err, ErrClientMismatch) {
			t.Fatalf("take by another client: %v, want ErrClientMismatch", err)
		}
	}
	got, err := b.Take(ctx, key, oneTime("web-app"))
	if err != nil {
		t.Fatal(err)
	}
	if got.ClientID != want.ClientID || got.Params != want.Params || got.ExpiresAt.UnixMilli() != want.ExpiresAt.UnixMilli() {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	for _, s := range []*redisBackend{a, b} {
		if _, err := s.Take(ctx, key, oneTime("web-app")); !errors.Is(err, ErrNotFound) {
			t.Fatalf("second take: %v, want ErrNotFound", err)
		}
	}
	if _, err := a.Take(ctx, testRef(t), oneTime("web-app")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown: %v", err)
	}
	// A collision never overwrites: the same key cannot be put twice.
	if err := a.Put(ctx, key+"x", want); err != nil {
		t.Fatal(err)
	}
	if err := b.Put(ctx, key+"x", testPushed("other", time.Minute)); !errors.Is(err, ErrStoreUnavailable) {
		t.Fatalf("put over an existing key: %v, want ErrStoreUnavailable", err)
	}
	if got, err := a.Take(ctx, key+"x", oneTime("web-app")); err != nil || got.ClientID != "web-app" {
		t.Fatalf("the first entry was overwritten: %+v %v", got, err)
	}
}

func TestRedisStoreConcurrentTakesHaveOneWinner(t *testing.T) {
	r := StartTestRedis(t)
	gws := make([]*redisBackend, 4)
	for i := range gws {
		gws[i], _ = newTestRedisBackend(t, r)
	}
	ctx := t.Context()
	for round := range 30 {
		key := testRef(t)
		if err := gws[round%len(gws)].Put(ctx, key, testPushed("web-app", time.Minute)); err != nil {
			t.Fatal(err)
		}
		var wins, notFound atomic.Int32
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range 32 {
			wg.Go(func() {
				<-start
				_, err := gws[i%len(gws)].Take(ctx, key, oneTime("web-app"))
				switch {
				case err == nil:
					wins.Add(1)
				case errors.Is(err, ErrNotFound):
					notFound.Add(1)
				default:
					t.Errorf("take: %v", err)
				}
			})
		}
		close(start)
		wg.Wait()
		if wins.Load() != 1 || notFound.Load() != 31 {
			t.Fatalf("round %d: %d winners, %d not found; want 1 and 31", round, wins.Load(), notFound.Load())
		}
	}
}

func TestRedisStoreExpiry(t *testing.T) {
	r := StartTestRedis(t)
	a, _ := newTestRedisBackend(t, r)
	b, _ := newTestRedisBackend(t, r)
	ctx := t.Context()

	// Redis drops the key at its PX.
	key := testRef(t)
	if err := a.Put(ctx, key, testPushed("web-app", 300*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if pttl := r.MustCLI("--scan", "--pattern", "test:r:*"); strings.Count(pttl, "\n") != 1 {
		t.Fatalf("want one key, got %q", pttl)
	}
	time.Sleep(400 * time.Millisecond)
	if _, err := b.Take(ctx, key, oneTime("web-app")); !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrExpired) {
		t.Fatalf("after expiry: %v", err)
	}

	// The stored absolute expiry is authoritative even where Redis has not
	// dropped the key yet (a gateway whose clock is ahead): the script
	// refuses and deletes it.
	key = testRef(t)
	if err := a.Put(ctx, key, testPushed("web-app", time.Minute)); err != nil {
		t.Fatal(err)
	}
	b.now = func() time.Time { return time.Now().Add(61 * time.Second) }
	if _, err := b.Take(ctx, key, oneTime("web-app")); !errors.Is(err, ErrExpired) {
		t.Fatalf("expired by the stored time: %v, want ErrExpired", err)
	}
	if _, err := a.Take(ctx, key, oneTime("web-app")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("an expired entry must be gone: %v", err)
	}
	if err := a.Put(ctx, testRef(t), testPushed("web-app", -time.Second)); !errors.Is(err, ErrStoreUnavailable) {
		t.Fatalf("put of an expired entry: %v", err)
	}
	// PX is the remaining lifetime.
	key = testRef(t)
	if err := a.Put(ctx, key, testPushed("web-app", 30*time.Second)); err != nil {
		t.Fatal(err)
	}
	k := a.rings[0].requestKey(a.prefix, key)
	if ms := strings.TrimSpace(r.MustCLI("PTTL", k)); len(ms) != 5 || ms[:2] != "29" && ms[:2] != "30" {
		t.Fatalf("PTTL = %s, want about 30000", ms)
	}
}

func TestRedisStoreClaim(t *testing.T) {
	r := StartTestRedis(t)
	a, _ := newTestRedisBackend(t, r)
	b, _ := newTestRedisBackend(t, r)
	ctx := t.Context()
	exp := time.Now().Add(time.Minute)
	if err := a.Claim(ctx, "jti/abc", exp); err != nil {
		t.Fatal(err)
	}
	if err := b.Claim(ctx, "jti/abc", exp); !errors.Is(err, ErrReplay) {
		t.Fatalf("replay on another gateway: %v, want ErrReplay", err)
	}
	var ok atomic.Int32
	var wg sync.WaitGroup
	for i := range 32 {
		wg.Go(func() {
			s := a
			if i%2 == 1 {
				s = b
			}
			if err := s.Claim(ctx, "jti/race", exp); err == nil {
				ok.Add(1)
			} else if !errors.Is(err, ErrReplay) {
				t.Errorf("claim: %v", err)
			}
		})
	}
	wg.Wait()
	if ok.Load() != 1 {
		t.Fatalf("%d concurrent claims succeeded, want 1", ok.Load())
	}
	if err := a.Claim(ctx, "jti/short", time.Now().Add(200*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	if err := b.Claim(ctx, "jti/short", exp); err != nil {
		t.Fatalf("claim after the first expired: %v", err)
	}
	if err := a.Claim(ctx, "jti/past", time.Now().Add(-time.Second)); err != nil {
		t.Fatalf("claim of an expired JWT: %v", err)
	}
	// The claim key is hashed too.
	if keys := r.MustCLI("--scan"); strings.Contains(keys, "abc") || strings.Contains(keys, "jti") {
		t.Fatalf("claim keys reveal the jti: %q", keys)
	}
}

// dump is every key and value in Redis, as a reader of the server sees it.
func dump(t *testing.T, r *TestRedis) string {
	t.Helper()
	var sb strings.Builder
	for _, k := range strings.Fields(r.MustCLI("--scan")) {
		sb.WriteString(k + " = " + r.MustCLI("--no-raw", "GET", k))
	}
	return sb.String()
}

func TestRedisStoreEncryptionHidesValuesAndReferences(t *testing.T) {
	r := StartTestRedis(t)
	ctx := t.Context()
	key := testRef(t)
	ref := strings.TrimPrefix(key, "partition/")

	// Without encryption_key: keys are one-way hashes, values readable.
	plain, _ := newTestRedisBackend(t, r)
	if err := plain.Put(ctx, key, testPushed("web-app", time.Minute)); err != nil {
		t.Fatal(err)
	}
	d := dump(t, r)
	if strings.Contains(d, ref) || strings.Contains(d, "partition") {
		t.Fatalf("the dump reveals the reference: %s", d)
	}
	if !strings.Contains(d, secretParam) {
		t.Fatalf("without encryption_key the parameters are expected in clear (the README says so): %s", d)
	}
	r.MustCLI("FLUSHALL")

	enc, _ := newTestRedisBackend(t, r, withKeys(redisTestKey(1)))
	if err := enc.Put(ctx, key, testPushed("web-app", time.Minute)); err != nil {
		t.Fatal(err)
	}
	d = dump(t, r)
	for _, s := range []string{ref, "partition", secretParam, "nonce", "web-app", "openid"} {
		if strings.Contains(d, s) {
			t.Fatalf("the encrypted dump reveals %q: %s", s, d)
		}
	}
	// A key that does not open: neither a different hash key finds it nor
	// could it decrypt.
	wrong, _ := newTestRedisBackend(t, r, withKeys(redisTestKey(2)))
	if _, err := wrong.Take(ctx, key, oneTime("web-app")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("take with a wrong key: %v, want ErrNotFound", err)
	}
	if got, err := enc.Take(ctx, key, oneTime("web-app")); err != nil || !strings.Contains(got.Params, secretParam) {
		t.Fatalf("take with the right key after the wrong one: %+v %v", got, err)
	}
}

func TestRedisStoreValueTamperingIsRefused(t *testing.T) {
	r := StartTestRedis(t)
	ctx := t.Context()
	enc, _ := newTestRedisBackend(t, r, withKeys(redisTestKey(1)))
	k1, k2 := testRef(t), testRef(t)
	for _, k := range []string{k1, k2} {
		if err := enc.Put(ctx, k, testPushed("web-app", time.Minute)); err != nil {
			t.Fatal(err)
		}
	}
	// Moving a sealed value under another key fails (the key is the AAD).
	rk1, rk2 := enc.rings[0].requestKey(enc.prefix, k1), enc.rings[0].requestKey(enc.prefix, k2)
	r.MustCLI("COPY", rk1, rk2, "REPLACE")
	if _, err := enc.Take(ctx, k2, oneTime("web-app")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("take of a moved value: %v, want ErrNotFound", err)
	}
}

func TestRedisStoreKeyRotation(t *testing.T) {
	r := StartTestRedis(t)
	ctx := t.Context()
	old, _ := newTestRedisBackend(t, r, withKeys(redisTestKey(1)))
	key := testRef(t)
	if err := old.Put(ctx, key, testPushed("web-app", time.Minute)); err != nil {
		t.Fatal(err)
	}
	if err := old.Claim(ctx, "jti/rot", time.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	rotated, _ := newTestRedisBackend(t, r, withKeys(redisTestKey(3), redisTestKey(1)))
	if _, err := rotated.Take(ctx, key, oneTime("evil")); !errors.Is(err, ErrClientMismatch) {
		t.Fatalf("mismatch under the old key: %v", err)
	}
	got, err := rotated.Take(ctx, key, oneTime("web-app"))
	if err != nil || !strings.Contains(got.Params, secretParam) {
		t.Fatalf("take of an entry written under the old key: %+v %v", got, err)
	}
	if err := rotated.Claim(ctx, "jti/rot", time.Now().Add(time.Minute)); !errors.Is(err, ErrReplay) {
		t.Fatalf("a jti claimed under the old key: %v, want ErrReplay", err)
	}
	// New entries are written under the new key: the old key alone cannot
	// read them.
	key2 := testRef(t)
	if err := rotated.Put(ctx, key2, testPushed("web-app", time.Minute)); err != nil {
		t.Fatal(err)
	}
	if _, err := old.Take(ctx, key2, oneTime("web-app")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("old key reads a new entry: %v", err)
	}
	if _, err := rotated.Take(ctx, key2, oneTime("web-app")); err != nil {
		t.Fatal(err)
	}
}

// TestRedisStoreOutage: a dead or hung Redis makes every operation fail with
// ErrStoreUnavailable within the configured timeouts; the outage is logged
// once, its end once; service resumes by itself.
func TestRedisStoreOutage(t *testing.T) {
	r := StartTestRedis(t)
	a, logs := newTestRedisBackend(t, r)
	b, _ := newTestRedisBackend(t, r)
	ctx := t.Context()
	before := testRef(t)
	if err := a.Put(ctx, before, testPushed("web-app", time.Minute)); err != nil {
		t.Fatal(err)
	}
	// The bound of one operation: dial + write + read timeouts, plus slack
	// for a loaded test machine.
	bound := DefaultRedisDialTimeout + 2*DefaultRedisReadTimeout + 300*time.Millisecond

	baseGoroutines := runtime.NumGoroutine()
	ops := func(phase string) {
		t.Helper()
		var slowest atomic.Int64
		defer func() {
			t.Logf("%s: 40 concurrent operations failed, the slowest in %s", phase, time.Duration(slowest.Load()))
			// No pile-up: nothing the failed operations started outlives them
			// (a few go-redis background dials at most).
			if n := runtime.NumGoroutine(); n > baseGoroutines+10 {
				t.Errorf("%s: %d goroutines after the operations returned, %d before", phase, n, baseGoroutines)
			}
		}()
		var wg sync.WaitGroup
		for i := range 40 {
			wg.Go(func() {
				start := time.Now()
				var err error
				switch i % 3 {
				case 0:
					err = a.Put(ctx, testRef(t), testPushed("web-app", time.Minute))
				case 1:
					_, err = a.Take(ctx, before, oneTime("web-app"))
				case 2:
					err = a.Claim(ctx, fmt.Sprintf("jti/%d", i), time.Now().Add(time.Minute))
				}
				el := time.Since(start)
				for {
					old := slowest.Load()
					if int64(el) <= old || slowest.CompareAndSwap(old, int64(el)) {
						break
					}
				}
				if el > bound {
					t.Errorf("%s: op %d took %s, want under %s", phase, i, el, bound)
				}
				if !errors.Is(err, ErrStoreUnavailable) {
					t.Errorf("%s: op %d: %v, want ErrStoreUnavailable", phase, i, err)
				}
			})
		}
		wg.Wait()
	}

	// Hung: SIGSTOP. The kernel still accepts connections; nothing answers.
	r.Pause()
	ops("paused")
	ops("paused again")
	r.Resume()
	// Entries pushed before the outage and still valid are redeemable after
	// it (same process: nothing was lost).
	waitUp(t, b)
	if got, err := b.Take(ctx, before, oneTime("web-app")); err != nil || got.ClientID != "web-app" {
		t.Fatalf("entry pushed before the hang: %+v %v", got, err)
	}
	waitUp(t, a)

	// Dead: killed, and restarted empty (persistence is off in the tests;
	// with persistence off in production a Redis restart loses pending
	// pushes too).
	r.Stop()
	ops("stopped")
	r.Restart()
	waitUp(t, a)
	key := testRef(t)
	if err := a.Put(ctx, key, testPushed("web-app", time.Minute)); err != nil {
		t.Fatalf("push after the restart: %v", err)
	}
	if _, err := b.Take(ctx, key, oneTime("web-app")); err != nil {
		t.Fatalf("redeem after the restart: %v", err)
	}

	// Two outages (pause, stop): each logged once as it starts and once as
	// it ends, not per failed operation (120 of them each).
	var down, up int
	for _, e := range logs.All() {
		switch {
		case strings.HasPrefix(e.Message, "Redis store unavailable"):
			down++
		case strings.HasPrefix(e.Message, "Redis store still unavailable"):
			// allowed once per interval; the test is shorter than that
			down += 100
		case strings.HasPrefix(e.Message, "Redis store available again"):
			up++
		}
		for _, f := range e.Context {
			if strings.Contains(f.String, secretParam) || strings.Contains(fmt.Sprint(f.Interface), secretParam) {
				t.Errorf("log line reveals a parameter: %+v", e)
			}
		}
	}
	if down != 2 || up != 2 {
		t.Fatalf("outage log lines: %d down, %d up; want 2 and 2: %v", down, up, logs.All())
	}
}

// waitUp retries a cheap operation until Redis answers (go-redis redials
// in the background after an outage; it takes up to about a second).
func waitUp(t *testing.T, b *redisBackend) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := b.Claim(t.Context(), "probe/"+time.Now().String(), time.Now().Add(time.Second))
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("Redis store did not come back within 5s: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestRedisStoreOneRoundTripPerOperation(t *testing.T) {
	r := StartTestRedis(t)
	a, _ := newTestRedisBackend(t, r, withKeys(redisTestKey(1)))
	ctx := t.Context()
	// Warm: the first EVALSHA after a start is a NOSCRIPT and an EVAL.
	k := testRef(t)
	_ = a.Put(ctx, k, testPushed("web-app", time.Minute))
	_, _ = a.Take(ctx, k, oneTime("web-app"))

	const n = 50
	keys := make([]string, n)
	c0 := r.CommandCalls()
	for i := range keys {
		keys[i] = testRef(t)
		if err := a.Put(ctx, keys[i], testPushed("web-app", time.Minute)); err != nil {
			t.Fatal(err)
		}
	}
	c1 := r.CommandCalls()
	for _, k := range keys {
		if _, err := a.Take(ctx, k, oneTime("web-app")); err != nil {
			t.Fatal(err)
		}
	}
	c2 := r.CommandCalls()
	push, take := CallsSince(c0, c1), CallsSince(c1, c2)
	if len(push) != 1 || push["set"] != n {
		t.Errorf("commands for %d pushes: %v, want %d SET only", n, push, n)
	}
	// The script's GET and DEL run inside Redis and are counted there too,
	// but they are not round trips.
	if take["evalsha"] != n || take["eval"] != 0 {
		t.Errorf("commands for %d takes: %v, want %d EVALSHA", n, take, n)
	}
	t.Logf("per push: %v; per take: %v (GET/DEL inside the script)", push, take)
}

func TestRedisStoreWarnsWithoutNoeviction(t *testing.T) {
	r := StartTestRedis(t, "--maxmemory-policy", "allkeys-lru")
	_, logs := newTestRedisBackend(t, r)
	deadline := time.Now().Add(5 * time.Second)
	for logs.FilterMessageSnippet("maxmemory-policy is not noeviction").Len() == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no warning about maxmemory-policy: %v", logs.All())
		}
		time.Sleep(20 * time.Millisecond)
	}
	r2 := StartTestRedis(t)
	_, logs2 := newTestRedisBackend(t, r2)
	time.Sleep(300 * time.Millisecond)
	if n := logs2.FilterLevelExact(zapcore.WarnLevel).Len(); n != 0 {
		t.Fatalf("warnings with noeviction: %v", logs2.All())
	}
}

// TestRedisStoreProvision: secrets from {env.*}/{file.*}; Provision does no
// network I/O (an unreachable Redis does not fail the load); one client
// per distinct config, shared, closed with its last user.
func TestRedisStoreProvision(t *testing.T) {
	t.Setenv("CADDY_PAR_TEST_REDIS_KEY", base64.StdEncoding.EncodeToString(redisTestKey(7)))
	t.Setenv("CADDY_PAR_TEST_REDIS_PASSWORD", "pw-from-env")
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	mk := func(prefix string) *RedisStore {
		return &RedisStore{Address: "127.0.0.1:1", Password: "{env.CADDY_PAR_TEST_REDIS_PASSWORD}", KeyPrefix: prefix,
			EncryptionKey: "{env.CADDY_PAR_TEST_REDIS_KEY}"}
	}
	s1, s2, s3 := mk("p1:"), mk("p1:"), mk("p2:")
	start := time.Now()
	for _, s := range []*RedisStore{s1, s2, s3} {
		if err := s.Provision(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if el := time.Since(start); el > 100*time.Millisecond {
		t.Fatalf("Provision took %s against an unreachable address: it must not do network I/O", el)
	}
	if s1.backend != s2.backend || s1.backend == s3.backend {
		t.Fatal("want one backend per distinct config")
	}
	if strings.Contains(s1.poolKey, "pw-from-env") || s1.Password != "{env.CADDY_PAR_TEST_REDIS_PASSWORD}" {
		t.Fatal("the password must be neither in the pool key nor written back to the config")
	}
	if !bytes.Equal(s1.backend.rings[0].hashKey, mustRing(t, redisTestKey(7)).hashKey) {
		t.Fatal("encryption_key from {env.*} not used")
	}
	_ = s1.Cleanup()
	if err := s2.backend.client.Ping(t.Context()).Err(); err != nil && strings.Contains(err.Error(), "closed") {
		t.Fatal("client closed while still in use")
	}
	_ = s2.Cleanup()
	if err := s2.backend.client.Ping(t.Context()).Err(); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Fatalf("client not closed after its last user: %v", err)
	}
	_ = s3.Cleanup()

	for _, bad := range []*RedisStore{
		{Address: "nohostport"},
		{EncryptionKey: "c2hvcnQ="},
		{OldEncryptionKeys: []string{base64.StdEncoding.EncodeToString(redisTestKey(1))}},
		{EncryptionKey: "{env.CADDY_PAR_TEST_UNSET_VAR}"},
		{TLSCAFile: "/x"},
		{Address: "127.0.0.1:1", SentinelMaster: "m", SentinelAddresses: []string{"127.0.0.1:2"}},
		{SentinelMaster: "m"},
		{SentinelAddresses: []string{"127.0.0.1:2"}},
		{SentinelMaster: "m", SentinelAddresses: []string{"nohostport"}},
	} {
		if err := bad.Provision(ctx); err == nil {
			t.Errorf("%+v: want a provision error", bad)
			_ = bad.Cleanup()
		}
	}
}

func mustRing(t *testing.T, k []byte) keyring {
	t.Helper()
	r, err := newKeyring(k)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// BenchmarkRedisStorePut is one push's store work against a local
// redis-server (encryption on), for profiling the client side.
func BenchmarkRedisStorePut(b *testing.B) {
	r := StartTestRedis(b)
	core, _ := observer.New(zapcore.InfoLevel)
	s, err := newRedisBackend(redisConfig{Address: r.Addr, KeyPrefix: "bench:", DialTimeout: DefaultRedisDialTimeout, ReadTimeout: DefaultRedisReadTimeout, PoolSize: 16, Keys: [][]byte{redisTestKey(1)}}, zap.New(core))
	if err != nil {
		b.Fatal(err)
	}
	defer s.Destruct()
	req := testPushed("web-app", time.Minute)
	req.Params = strings.Repeat("x", 560)
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			ref, _ := newRef()
			if err := s.Put(ctx, ref, req); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func TestRedisStoreTLS(t *testing.T) {
	r := StartTestRedisTLS(t)
	ctx := t.Context()
	ok, _ := newTestRedisBackend(t, r, func(c *redisConfig) { c.TLS, c.TLSCAFile = true, r.CAFile })
	key := testRef(t)
	if err := ok.Put(ctx, key, testPushed("web-app", time.Minute)); err != nil {
		t.Fatalf("put over TLS: %v", err)
	}
	if _, err := ok.Take(ctx, key, oneTime("web-app")); err != nil {
		t.Fatalf("take over TLS: %v", err)
	}
	// An unverifiable server (system roots, no CA) and a plaintext client
	// both fail, as outages.
	for name, o := range map[string]redisTestOpt{
		"untrusted CA": func(c *redisConfig) { c.TLS = true },
		"wrong name":   func(c *redisConfig) { c.TLS, c.TLSCAFile, c.TLSServerName = true, r.CAFile, "redis.example" },
		"plaintext":    func(c *redisConfig) {},
	} {
		bad, _ := newTestRedisBackend(t, r, o)
		if err := bad.Put(ctx, testRef(t), testPushed("web-app", time.Minute)); !errors.Is(err, ErrStoreUnavailable) {
			t.Errorf("%s: %v, want ErrStoreUnavailable", name, err)
		}
	}
}

// TestRedisStoreLeastPrivilegeACL: the ACL the README recommends is enough
// (db 0, no old keys; then with old keys and db 1), and nothing else is
// needed: ACL LOG stays empty.
func TestRedisStoreLeastPrivilegeACL(t *testing.T) {
	r := StartTestRedis(t)
	r.MustCLI("ACL", "SETUSER", "par-gateway", "on", ">gw-pass", "resetkeys", "~test:*", "resetchannels", "-@all",
		"+set", "+get", "+del", "+exists", "+evalsha", "+eval", "+select", "+config|get")
	r.MustCLI("ACL", "SETUSER", "test-admin", "on", ">admin-pass", "~*", "&*", "+@all")
	r.MustCLI("ACL", "SETUSER", "default", "off")
	r.cliArgs = []string{"--user", "test-admin", "--pass", "admin-pass", "--no-auth-warning"}
	ctx := t.Context()
	for _, o := range []redisTestOpt{
		func(c *redisConfig) { c.Username, c.Password = "par-gateway", "gw-pass" },
		func(c *redisConfig) {
			c.Username, c.Password, c.DB, c.Keys = "par-gateway", "gw-pass", 1, [][]byte{redisTestKey(5), redisTestKey(6)}
		},
	} {
		s, logs := newTestRedisBackend(t, r, o)
		key := testRef(t)
		if err := s.Put(ctx, key, testPushed("web-app", time.Minute)); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Take(ctx, key, oneTime("evil")); !errors.Is(err, ErrClientMismatch) {
			t.Fatal(err)
		}
		if _, err := s.Take(ctx, key, oneTime("web-app")); err != nil {
			t.Fatal(err)
		}
		if err := s.Claim(ctx, "jti/acl", time.Now().Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
		if err := s.Claim(ctx, "jti/acl", time.Now().Add(time.Minute)); !errors.Is(err, ErrReplay) {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond) // the background CONFIG GET
		if n := logs.FilterMessageSnippet("cannot check").Len(); n != 0 {
			t.Errorf("CONFIG GET refused: %v", logs.All())
		}
	}
	if out := r.MustCLI("ACL", "LOG"); strings.TrimSpace(out) != "" {
		t.Fatalf("ACL denials:\n%s", out)
	}
	// A wrong password is an outage, and the password is not in the log.
	s, logs := newTestRedisBackend(t, r, func(c *redisConfig) { c.Username, c.Password = "par-gateway", "not-the-pass-xyz" })
	if err := s.Put(ctx, testRef(t), testPushed("web-app", time.Minute)); !errors.Is(err, ErrStoreUnavailable) || strings.Contains(err.Error(), "not-the-pass-xyz") {
		t.Fatalf("wrong password: %v", err)
	}
	for _, e := range logs.All() {
		if strings.Contains(fmt.Sprint(e.Context), "not-the-pass-xyz") || strings.Contains(e.Message, "not-the-pass-xyz") {
			t.Fatalf("password in the log: %+v", e)
		}
	}
}

// TestRedisStoreSentinelFailover: through Sentinel the store writes and
// reads the primary; when the primary dies, Sentinel promotes the replica
// and the store follows by itself; entries replicated before the failover
// are redeemable after it.
func TestRedisStoreSentinelFailover(t *testing.T) {
	primary := StartTestRedis(t)
	replica := StartTestRedis(t, "--replicaof", "127.0.0.1", strconv.Itoa(primary.Port))
	sentinel := StartTestSentinel(t, "parmaster", primary)
	viaSentinel := func(c *redisConfig) {
		c.Address, c.SentinelMaster, c.SentinelAddresses = "", "parmaster", []string{sentinel.Addr}
	}
	a, logs := newTestRedisBackend(t, sentinel, viaSentinel)
	b, _ := newTestRedisBackend(t, sentinel, viaSentinel)
	ctx := t.Context()
	key, kept := testRef(t), testRef(t)
	for _, k := range []string{key, kept} {
		if err := a.Put(ctx, k, testPushed("web-app", time.Minute)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := b.Take(ctx, key, oneTime("web-app")); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(primary.MustCLI("--scan", "--pattern", "test:*"), "\n"); n != 1 {
		t.Fatalf("want one entry on the primary, got %d", n)
	}
	// Let the replica catch up, then kill the primary.
	deadline := time.Now().Add(5 * time.Second)
	for strings.Count(replica.MustCLI("--scan", "--pattern", "test:*"), "\n") != 1 {
		if time.Now().After(deadline) {
			t.Fatal("replica did not catch up")
		}
		time.Sleep(20 * time.Millisecond)
	}
	primary.Stop()
	start := time.Now()
	deadline = time.Now().Add(20 * time.Second)
	for {
		err := a.Claim(ctx, "probe/"+time.Now().String(), time.Now().Add(time.Minute))
		if err == nil {
			break
		}
		if !errors.Is(err, ErrStoreUnavailable) {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("no failover within 20s: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("store usable again %s after the primary died", time.Since(start).Round(10*time.Millisecond))
	if role := replica.MustCLI("ROLE"); !strings.HasPrefix(role, "master") {
		t.Fatalf("the replica was not promoted: %q", role)
	}
	if got, err := b.Take(ctx, kept, oneTime("web-app")); err != nil || got.ClientID != "web-app" {
		t.Fatalf("entry pushed before the failover: %+v %v", got, err)
	}
	key = testRef(t)
	if err := b.Put(ctx, key, testPushed("web-app", time.Minute)); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Take(ctx, key, oneTime("web-app")); err != nil {
		t.Fatal(err)
	}
	t.Logf("outage log: %d lines", logs.FilterMessageSnippet("Redis store").Len())
}

// TestRedisStoreFullRedisRefusesPushesKeepsEntries: with noeviction and
// maxmemory reached, pushes (and claims) get ErrStoreUnavailable, every
// entry that got a 201 stays redeemable (a redemption only deletes, which
// a full Redis allows), and pushes work again once memory is freed.
func TestRedisStoreFullRedisRefusesPushesKeepsEntries(t *testing.T) {
	r := StartTestRedis(t, "--maxmemory", "3mb", "--maxmemory-policy", "noeviction")
	s, _ := newTestRedisBackend(t, r, withKeys(redisTestKey(1)))
	ctx := t.Context()
	req := testPushed("web-app", time.Minute)
	req.Params = strings.Repeat("p", 2000)
	var stored []string
	for i := 0; ; i++ {
		if i == 100000 {
			t.Fatal("Redis never filled up")
		}
		k := testRef(t)
		err := s.Put(ctx, k, req)
		if errors.Is(err, ErrStoreUnavailable) {
			if !strings.Contains(err.Error(), "OOM") {
				t.Fatalf("full Redis: %v, want an OOM refusal", err)
			}
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		stored = append(stored, k)
	}
	if len(stored) < 100 {
		t.Fatalf("only %d entries fit", len(stored))
	}
	// Claims are small: a few may still fit at the edge, then they are
	// refused too (a JWT is then refused, never accepted unrecorded).
	for i := 0; ; i++ {
		err := s.Claim(ctx, fmt.Sprintf("jti/full/%d", i), time.Now().Add(time.Minute))
		if errors.Is(err, ErrStoreUnavailable) {
			break
		}
		if err != nil || i == 10000 {
			t.Fatalf("claim %d in a full Redis: %v, want ErrStoreUnavailable eventually", i, err)
		}
	}
	for _, k := range stored {
		if _, err := s.Take(ctx, k, oneTime("web-app")); err != nil {
			t.Fatalf("an entry that got a 201 is not redeemable in a full Redis: %v", err)
		}
	}
	if err := s.Put(ctx, testRef(t), req); err != nil {
		t.Fatalf("push after redemptions freed memory: %v", err)
	}
	t.Logf("%d entries of %d bytes filled 3mb; all redeemed while full", len(stored), len(req.Params))
}
