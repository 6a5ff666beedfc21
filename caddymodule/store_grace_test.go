package caddymodule

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Reuse grace at the store level, the same table for the memory store and
// the Redis store (one gateway in clear, and two gateways with encryption
// in the middle of a key rotation, redeeming alternately).

// graceStore is a store under test: redeemers[i%len] serves the i-th Take,
// so that with two Redis gateways the grace is shown to be shared.
type graceStore struct {
	name      string
	pusher    Store
	redeemers []Store
}

func (s graceStore) take(ctx context.Context, i int, key string, rd Redemption) (Redeemed, error) {
	return s.redeemers[i%len(s.redeemers)].Take(ctx, key, rd)
}

// graceStores builds the stores of each kind; the Redis ones only when
// redis-server is there (StartTestRedis skips otherwise).
func graceStores(t *testing.T) []func(t *testing.T) graceStore {
	return []func(t *testing.T) graceStore{
		func(t *testing.T) graceStore {
			c := newTestCache(t, 1<<20)
			return graceStore{name: "memory", pusher: c, redeemers: []Store{c}}
		},
		func(t *testing.T) graceStore {
			r := StartTestRedis(t)
			b, _ := newTestRedisBackend(t, r)
			return graceStore{name: "redis", pusher: b, redeemers: []Store{b}}
		},
		func(t *testing.T) graceStore {
			r := StartTestRedis(t)
			k1, k2 := redisTestKey(1), redisTestKey(2)
			a, _ := newTestRedisBackend(t, r, withKeys(k1))
			b, _ := newTestRedisBackend(t, r, withKeys(k2, k1)) // rotated: k1 is old
			return graceStore{name: "redis_encrypted_two_gateways_rotating", pusher: a, redeemers: []Store{b, a}}
		},
	}
}

// graceSecret is one browser's cookie value and its hash.
type graceSecret struct {
	value string
	hash  [32]byte
}

func newTestGraceSecret() graceSecret {
	v, h := newGraceSecret()
	return graceSecret{v, h}
}

// errGone is ErrNotFound or ErrExpired: both are invalid_request_uri.
var errGone = errors.New("not found or expired")

type graceStep struct {
	wait    time.Duration
	client  string // default web-app; "none": no client_id
	present string // which cookies the browser sends: "", "winner", "other", "both"
	want    error  // nil: redeemed
	again   bool   // want Redeemed.Again
}

func TestGraceStoreTable(t *testing.T) {
	cases := []struct {
		name  string
		ttl   time.Duration
		grace time.Duration
		// steps[0] is the first redemption attempt(s) until one succeeds;
		// the winner's binding is the one recorded.
		steps []graceStep
	}{
		{"same_cookie_within_grace_redeems_again", time.Minute, 5 * time.Second, []graceStep{
			{present: ""},
			{present: "winner", again: true},
			{present: "winner", again: true},
		}},
		{"same_cookie_after_grace_is_gone", time.Minute, 300 * time.Millisecond, []graceStep{
			{present: ""},
			{present: "winner", again: true},
			{wait: 500 * time.Millisecond, present: "winner", want: errGone},
		}},
		{"no_cookie_or_other_cookie_is_not_found", time.Minute, 5 * time.Second, []graceStep{
			{present: ""},
			{present: "", want: ErrNotFound},
			{present: "other", want: ErrNotFound},
			{present: "both", again: true},
		}},
		{"grace_capped_at_expiry", 600 * time.Millisecond, MaxReuseGrace, []graceStep{
			{present: ""},
			{present: "winner", again: true},
			{wait: 800 * time.Millisecond, present: "winner", want: errGone},
		}},
		{"client_mismatch_within_grace_is_refused_and_burns_nothing", time.Minute, 5 * time.Second, []graceStep{
			{client: "evil", want: ErrClientMismatch},
			{present: ""},
			{client: "evil", present: "winner", want: ErrClientMismatch},
			{client: "none", present: "winner", want: ErrClientMismatch},
			{client: "evil", present: "", want: ErrNotFound}, // no secret: just used
			{present: "winner", again: true},
		}},
		{"a_cookie_on_an_unredeemed_entry_changes_nothing", time.Minute, 5 * time.Second, []graceStep{
			{present: "other"}, // first redemption: binds the new secret
			{present: "other", want: ErrNotFound},
			{present: "winner", again: true},
		}},
		{"without_grace_one_time", time.Minute, 0, []graceStep{
			{present: ""},
			{present: "winner", want: ErrNotFound},
			{present: "", want: ErrNotFound},
		}},
	}
	for _, mk := range graceStores(t) {
		st := mk(t)
		t.Run(st.name, func(t *testing.T) {
			for _, tc := range cases {
				t.Run(tc.name, func(t *testing.T) {
					t.Parallel()
					key := testRef(t)
					if err := st.pusher.Put(t.Context(), key, testPushed("web-app", tc.ttl)); err != nil {
						t.Fatal(err)
					}
					winner, other := newTestGraceSecret(), newTestGraceSecret()
					first := true
					for i, s := range tc.steps {
						time.Sleep(s.wait)
						rd := Redemption{ClientID: "web-app", Grace: tc.grace}
						switch s.client {
						case "":
						case "none":
							rd.ClientID = ""
						default:
							rd.ClientID = s.client
						}
						// Each attempt brings a fresh secret, as the gateway
						// does; only the first successful one's is recorded.
						fresh := newTestGraceSecret()
						rd.Binding = fresh.hash
						if first && s.want == nil {
							rd.Binding = winner.hash
						}
						switch s.present {
						case "winner":
							rd.Presented = [][32]byte{winner.hash}
						case "other":
							rd.Presented = [][32]byte{other.hash}
						case "both":
							rd.Presented = [][32]byte{other.hash, winner.hash}
						}
						got, err := st.take(t.Context(), i, key, rd)
						switch {
						case s.want == errGone:
							if !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrExpired) {
								t.Fatalf("step %d: %v, want not found or expired", i, err)
							}
						case s.want != nil:
							if !errors.Is(err, s.want) {
								t.Fatalf("step %d: %v, want %v", i, err, s.want)
							}
						case err != nil:
							t.Fatalf("step %d: %v, want a redemption", i, err)
						default:
							if got.Again != s.again {
								t.Fatalf("step %d: Again = %v, want %v", i, got.Again, s.again)
							}
							if got.ClientID != "web-app" || got.Params != testPushed("web-app", 0).Params {
								t.Fatalf("step %d: redeemed %+v, want the pushed request", i, got.PushedRequest)
							}
							first = false
						}
					}
				})
			}
		})
	}
}

// Of concurrent first redemptions, over every gateway, exactly one wins;
// afterwards only the winner's secret redeems again, the losers' do not.
func TestGraceStoreConcurrentFirstRedemptionsOneWinner(t *testing.T) {
	for _, mk := range graceStores(t) {
		st := mk(t)
		t.Run(st.name, func(t *testing.T) {
			for round := range 10 {
				key := testRef(t)
				if err := st.pusher.Put(t.Context(), key, testPushed("web-app", time.Minute)); err != nil {
					t.Fatal(err)
				}
				const n = 16
				secrets := make([]graceSecret, n)
				for i := range secrets {
					secrets[i] = newTestGraceSecret()
				}
				var mu sync.Mutex
				winner := -1
				var start sync.WaitGroup
				start.Add(1)
				var wg sync.WaitGroup
				for i := range n {
					wg.Go(func() {
						start.Wait()
						got, err := st.take(t.Context(), i, key, Redemption{ClientID: "web-app", Grace: 5 * time.Second, Binding: secrets[i].hash})
						switch {
						case err == nil && !got.Again:
							mu.Lock()
							if winner >= 0 {
								t.Errorf("round %d: racers %d and %d both won", round, winner, i)
							}
							winner = i
							mu.Unlock()
						case errors.Is(err, ErrNotFound):
						default:
							t.Errorf("round %d: racer %d: %+v %v", round, i, got, err)
						}
					})
				}
				start.Done()
				wg.Wait()
				if winner < 0 {
					t.Fatalf("round %d: nobody won", round)
				}
				for i := range n {
					got, err := st.take(t.Context(), i, key, Redemption{ClientID: "web-app", Grace: 5 * time.Second, Binding: newTestGraceSecret().hash, Presented: [][32]byte{secrets[i].hash}})
					if i == winner {
						if err != nil || !got.Again {
							t.Fatalf("round %d: the winner's grace redemption: %+v %v", round, got, err)
						}
					} else if !errors.Is(err, ErrNotFound) {
						t.Fatalf("round %d: loser %d redeemed with its own secret: %+v %v", round, i, got, err)
					}
				}
			}
		})
	}
}

// The memory store gives a redeemed entry's bytes back when its grace ends,
// not at its expiry, and never twice.
func TestGraceMemoryStoreReturnsBudgetAtGraceEnd(t *testing.T) {
	c := newTestCache(t, 1<<20)
	ctx := t.Context()
	s := newTestGraceSecret()
	if err := c.Put(ctx, "k", entry("a", time.Minute)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Take(ctx, "k", Redemption{ClientID: "a", Grace: 200 * time.Millisecond, Binding: s.hash}); err != nil {
		t.Fatal(err)
	}
	if c.used.Load() == 0 {
		t.Fatal("the entry's bytes were returned although it is kept for the grace")
	}
	deadline := time.Now().Add(5 * time.Second)
	for c.used.Load() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("budget still used %d bytes 5 s after a 200 ms grace", c.used.Load())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := c.Take(ctx, "k", Redemption{ClientID: "a", Grace: time.Second, Presented: [][32]byte{s.hash}}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("after the grace: %v, want ErrNotFound", err)
	}
}

// In Redis the first redemption moves the entry to its grace key (one
// round trip, the entry key gone, PX at most the grace), a grace
// redemption is one round trip too, and nothing is left after the grace.
// The binding is stored hashed: the cookie value is nowhere in Redis.
func TestGraceRedisStoreKeysAndRoundTrips(t *testing.T) {
	r := StartTestRedis(t)
	b, _ := newTestRedisBackend(t, r, withKeys(redisTestKey(7)))
	ctx := t.Context()
	key := testRef(t)
	if err := b.Put(ctx, key, testPushed("web-app", time.Minute)); err != nil {
		t.Fatal(err)
	}
	s := newTestGraceSecret()
	// Warm the script cache, so that the counts below are EVALSHA only.
	if _, err := b.Take(ctx, testRef(t), oneTime("web-app")); !errors.Is(err, ErrNotFound) {
		t.Fatal(err)
	}
	before := r.CommandCalls()
	if _, err := b.Take(ctx, key, Redemption{ClientID: "web-app", Grace: 2 * time.Second, Binding: s.hash}); err != nil {
		t.Fatal(err)
	}
	if got, err := b.Take(ctx, key, Redemption{ClientID: "web-app", Grace: 2 * time.Second, Binding: newTestGraceSecret().hash, Presented: [][32]byte{s.hash}}); err != nil || !got.Again {
		t.Fatalf("grace redemption: %+v %v", got, err)
	}
	// Commands the scripts run count too; what the client sent is the
	// EVALSHAs: one round trip per redemption.
	for cmd, n := range CallsSince(before, r.CommandCalls()) {
		switch cmd {
		case "evalsha":
			if n != 2 {
				t.Errorf("%d EVALSHA for two redemptions, want 2", n)
			}
		case "get", "set", "del":
		default:
			t.Errorf("two redemptions sent %d %s", n, cmd)
		}
	}
	keys := strings.Fields(r.MustCLI("--scan", "--pattern", "test:*"))
	if len(keys) != 1 || !strings.HasPrefix(keys[0], "test:g:") {
		t.Fatalf("keys during the grace: %q, want only one grace key", keys)
	}
	if pttl, err := strconv.Atoi(strings.TrimSpace(r.MustCLI("PTTL", keys[0]))); err != nil || pttl <= 0 || pttl > 2000 {
		t.Errorf("PTTL of the grace key: %d %v, want 1..2000 ms", pttl, err)
	}
	rec := r.MustCLI("GET", keys[0])
	if strings.Contains(rec, s.value) || strings.Contains(rec, secretParam) {
		t.Errorf("the grace record shows the cookie value or a pushed value in clear")
	}
	if !strings.HasPrefix(rec, string(s.hash[:])) {
		t.Errorf("the grace record does not start with the binding's SHA-256")
	}
	time.Sleep(2200 * time.Millisecond)
	if keys := strings.TrimSpace(r.MustCLI("--scan", "--pattern", "test:*")); keys != "" {
		t.Errorf("keys left after the grace: %q", keys)
	}
	if _, err := b.Take(ctx, key, Redemption{ClientID: "web-app", Grace: 2 * time.Second, Presented: [][32]byte{s.hash}}); !errors.Is(err, ErrNotFound) {
		t.Errorf("after the grace: %v, want ErrNotFound", err)
	}
}

// A grace never outlasts the request_uri (RFC 9126 §4: an expired
// request_uri MUST be rejected): the memory store records min(now + grace,
// expiry), and Redis's grace key lives no longer than the entry would have.
func TestGraceIsCappedAtExpiry(t *testing.T) {
	t.Run("memory", func(t *testing.T) {
		c := newTestCache(t, 1<<20)
		ctx := t.Context()
		now := time.Now()
		c.now = func() time.Time { return now }
		exp := now.Add(time.Minute)
		if err := c.Put(ctx, "k", PushedRequest{ClientID: "a", Params: "x=1", ExpiresAt: exp}); err != nil {
			t.Fatal(err)
		}
		s := newTestGraceSecret()
		now = now.Add(30 * time.Second)
		if _, err := c.Take(ctx, "k", Redemption{ClientID: "a", Grace: MaxReuseGrace, Binding: s.hash}); err != nil {
			t.Fatal(err)
		}
		e, _ := c.c.Get("k")
		if !e.graceSet.Load() || time.Duration(e.graceUntil) != exp.Sub(c.epoch) {
			t.Fatalf("grace until %v after the epoch, want the expiry, %v", time.Duration(e.graceUntil), exp.Sub(c.epoch))
		}
		again := Redemption{ClientID: "a", Presented: [][32]byte{s.hash}}
		now = exp.Add(-time.Millisecond)
		if got, err := c.Take(ctx, "k", again); err != nil || !got.Again {
			t.Fatalf("just before expiry: %+v %v", got, err)
		}
		now = exp
		if _, err := c.Take(ctx, "k", again); !errors.Is(err, ErrExpired) {
			t.Fatalf("at expiry: %v, want ErrExpired", err)
		}
	})
	t.Run("redis", func(t *testing.T) {
		r := StartTestRedis(t)
		b, _ := newTestRedisBackend(t, r)
		ctx := t.Context()
		key := testRef(t)
		if err := b.Put(ctx, key, testPushed("web-app", time.Second)); err != nil {
			t.Fatal(err)
		}
		if _, err := b.Take(ctx, key, Redemption{ClientID: "web-app", Grace: MaxReuseGrace, Binding: newTestGraceSecret().hash}); err != nil {
			t.Fatal(err)
		}
		keys := strings.Fields(r.MustCLI("--scan", "--pattern", "test:g:*"))
		if len(keys) != 1 {
			t.Fatalf("grace keys %q", keys)
		}
		if pttl, err := strconv.Atoi(strings.TrimSpace(r.MustCLI("PTTL", keys[0]))); err != nil || pttl <= 0 || pttl > 1000 {
			t.Errorf("PTTL of the grace key: %d %v, want at most the entry's remaining 1000 ms, not the 60 s grace", pttl, err)
		}
	})
}
