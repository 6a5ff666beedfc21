package caddymodule

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dgraph-io/ristretto/v2/z"
)

func newTestCache(t testing.TB, budget int64) *memoryCache {
	t.Helper()
	c, err := newMemoryCache(budget)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Destruct() })
	return c
}

// race starts n goroutines on f at once and counts those that won.
func race(n int, f func() bool) int {
	var wins atomic.Int32
	var wg sync.WaitGroup
	start := make(chan struct{})
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			if f() {
				wins.Add(1)
			}
		}()
	}
	close(start)
	wg.Wait()
	return int(wins.Load())
}

// oneTime is a redemption without a reuse grace.
func oneTime(clientID string) Redemption { return Redemption{ClientID: clientID} }

func entry(client string, ttl time.Duration) PushedRequest {
	return PushedRequest{ClientID: client, Params: "client_id=" + client + "&response_type=code", ExpiresAt: time.Now().Add(ttl)}
}

func TestMemoryStoreTakeIsOneTime(t *testing.T) {
	c := newTestCache(t, 1<<20)
	ctx := t.Context()
	if err := c.Put(ctx, "k", entry("a", time.Minute)); err != nil {
		t.Fatal(err)
	}
	got, err := c.Take(ctx, "k", oneTime("a"))
	if err != nil || got.ClientID != "a" {
		t.Fatalf("first take: %v %v", got, err)
	}
	if _, err := c.Take(ctx, "k", oneTime("a")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second take: %v, want ErrNotFound", err)
	}
}

func TestMemoryStoreConcurrentTakeHasOneWinner(t *testing.T) {
	c := newTestCache(t, 1<<20)
	ctx := t.Context()
	for round := range 20 {
		key := fmt.Sprintf("k%d", round)
		if err := c.Put(ctx, key, entry("a", time.Minute)); err != nil {
			t.Fatal(err)
		}
		wins := race(32, func() bool {
			_, err := c.Take(ctx, key, oneTime("a"))
			return err == nil
		})
		if wins != 1 {
			t.Fatalf("round %d: %d winners, want 1", round, wins)
		}
	}
}

func TestMemoryStoreClientMismatchDoesNotConsume(t *testing.T) {
	c := newTestCache(t, 1<<20)
	ctx := t.Context()
	if err := c.Put(ctx, "k", entry("a", time.Minute)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Take(ctx, "k", oneTime("b")); !errors.Is(err, ErrClientMismatch) {
		t.Fatalf("got %v, want ErrClientMismatch", err)
	}
	if _, err := c.Take(ctx, "k", oneTime("a")); err != nil {
		t.Fatalf("rightful client after mismatch: %v", err)
	}
}

func TestMemoryStoreChecksAbsoluteExpiry(t *testing.T) {
	c := newTestCache(t, 1<<20)
	ctx := t.Context()
	now := time.Now()
	c.now = func() time.Time { return now }
	if err := c.Put(ctx, "k", PushedRequest{ClientID: "a", ExpiresAt: now.Add(time.Minute)}); err != nil {
		t.Fatal(err)
	}
	// ristretto's own TTL has not run out; the stored time has.
	c.now = func() time.Time { return now.Add(time.Minute) }
	if _, err := c.Take(ctx, "k", oneTime("a")); !errors.Is(err, ErrExpired) {
		t.Fatalf("got %v, want ErrExpired", err)
	}
}

func TestMemoryStoreRefusesInsteadOfEvicting(t *testing.T) {
	const budget = 16 << 10
	c := newTestCache(t, budget)
	ctx := t.Context()
	params := strings.Repeat("p", 600)
	var stored []string
	full := false
	for i := range 500 {
		key := fmt.Sprintf("key-%03d", i)
		err := c.Put(ctx, key, PushedRequest{ClientID: "a", Params: params, ExpiresAt: time.Now().Add(time.Minute)})
		if errors.Is(err, ErrStoreUnavailable) {
			full = true
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		stored = append(stored, key)
	}
	if !full || len(stored) == 0 {
		t.Fatalf("budget never reached (stored %d)", len(stored))
	}
	if used := c.used.Load(); used > budget {
		t.Fatalf("used %d exceeds budget %d", used, budget)
	}
	// Every entry that was accepted is still there.
	for _, key := range stored {
		if _, err := c.Take(ctx, key, oneTime("a")); err != nil {
			t.Fatalf("accepted entry %s vanished: %v", key, err)
		}
	}
	if used := c.used.Load(); used != 0 {
		t.Fatalf("budget not returned after takes: %d", used)
	}
	if err := c.Put(ctx, "after", PushedRequest{ClientID: "a", Params: params, ExpiresAt: time.Now().Add(time.Minute)}); err != nil {
		t.Fatalf("push after freeing space: %v", err)
	}
}

func TestMemoryStoreRejectsExpiredPut(t *testing.T) {
	c := newTestCache(t, 1<<20)
	err := c.Put(t.Context(), "k", PushedRequest{ClientID: "a", ExpiresAt: time.Now().Add(-time.Second)})
	if !errors.Is(err, ErrStoreUnavailable) {
		t.Fatalf("got %v", err)
	}
}

func TestMemoryStoreClaimIsSingleUseUntilExpiry(t *testing.T) {
	c := newTestCache(t, 1<<20)
	ctx := t.Context()
	now := time.Now()
	c.now = func() time.Time { return now }
	exp := now.Add(time.Minute)
	if err := c.Claim(ctx, "jti/a/1", exp); err != nil {
		t.Fatalf("first claim: %v", err)
	}
	if err := c.Claim(ctx, "jti/a/1", exp); !errors.Is(err, ErrReplay) {
		t.Fatalf("replayed claim: %v, want ErrReplay", err)
	}
	if err := c.Claim(ctx, "jti/a/2", exp); err != nil {
		t.Fatalf("other key: %v", err)
	}
	now = exp.Add(time.Second)
	if err := c.Claim(ctx, "jti/a/1", now.Add(time.Minute)); err != nil {
		t.Fatalf("claim after expiry: %v", err)
	}
}

func TestMemoryStoreConcurrentClaimHasOneWinner(t *testing.T) {
	c := newTestCache(t, 1<<20)
	wins := race(32, func() bool { return c.Claim(t.Context(), "jti/x", time.Now().Add(time.Minute)) == nil })
	if wins != 1 {
		t.Fatalf("%d claims won, want 1", wins)
	}
}

func TestMemoryStoreClaimsAreBoundedByTheBudget(t *testing.T) {
	const budget = minMemoryStoreSize
	c := newTestCache(t, budget)
	ctx := t.Context()
	exp := time.Now().Add(time.Minute)
	var n int
	var err error
	for n = 0; n < budget; n++ {
		if err = c.Claim(ctx, fmt.Sprintf("jti/%08d", n), exp); err != nil {
			break
		}
	}
	if !errors.Is(err, ErrStoreUnavailable) {
		t.Fatalf("after %d claims: %v, want ErrStoreUnavailable", n, err)
	}
	if used := c.used.Load(); used > budget {
		t.Fatalf("used %d bytes of a %d budget", used, budget)
	}
	// A full store refuses pushes too: the budget is shared.
	if err := c.Put(ctx, "k", entry("a", time.Minute)); !errors.Is(err, ErrStoreUnavailable) {
		t.Fatalf("put into a store full of claims: %v", err)
	}
	// Once the claims expire, their room comes back.
	c.now = func() time.Time { return exp.Add(time.Second) }
	if err := c.Claim(ctx, "jti/new", exp.Add(time.Hour)); err != nil {
		t.Fatalf("claim after expiry freed the shard: %v", err)
	}
}

// TestMemoryStoreTakeRightAfterPut redeems each request_uri as soon as Put
// returns, before ristretto's goroutine has applied the write: Take must
// still find it.
func TestMemoryStoreTakeRightAfterPut(t *testing.T) {
	c := newTestCache(t, 64<<20)
	ctx := t.Context()
	var failed atomic.Int32
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 2000 {
				key := fmt.Sprintf("g%d/k%d", g, i)
				if err := c.Put(ctx, key, entry("a", time.Minute)); err != nil {
					t.Error(err)
					return
				}
				if _, err := c.Take(ctx, key, oneTime("a")); err != nil {
					failed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if n := failed.Load(); n != 0 {
		t.Fatalf("%d request_uris not found right after their push", n)
	}
	if c.lateReads.Load() == 0 {
		t.Log("no Take raced ristretto's admission this time")
	}
}

// collidingCache is a memory store whose keys starting with "collide/" all
// have the same 64-bit ristretto key hash (and different conflict hashes),
// so that ristretto's admission refuses all but the first one held.
func collidingCache(t *testing.T, budget int64) *memoryCache {
	t.Helper()
	c, err := newMemoryCacheHash(budget, func(k string) (uint64, uint64) {
		h, conflict := z.KeyToHash(k)
		if strings.HasPrefix(k, "collide/") {
			return 42, conflict
		}
		return h, conflict
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Destruct() })
	return c
}

func TestMemoryStoreKeepsEntriesRistrettoRefuses(t *testing.T) {
	c := collidingCache(t, 1<<20)
	ctx := t.Context()
	keys := []string{"collide/a", "collide/b", "collide/c"}
	for _, k := range keys {
		if err := c.Put(ctx, k, entry("a", time.Minute)); err != nil {
			t.Fatal(err)
		}
	}
	c.c.Wait()
	if n := c.spills.Load(); n != 2 {
		t.Fatalf("%d entries spilled, want 2 (ristretto admits one per key hash)", n)
	}
	// A spilled entry bound to another client is left in place.
	if _, err := c.Take(ctx, "collide/b", oneTime("b")); !errors.Is(err, ErrClientMismatch) {
		t.Fatalf("take by another client: %v, want ErrClientMismatch", err)
	}
	for _, k := range keys {
		wins := race(8, func() bool {
			_, err := c.Take(ctx, k, oneTime("a"))
			return err == nil
		})
		if wins != 1 {
			t.Fatalf("%s: %d winners, want 1", k, wins)
		}
		if _, err := c.Take(ctx, k, oneTime("a")); !errors.Is(err, ErrNotFound) {
			t.Fatalf("%s taken twice: %v", k, err)
		}
	}
	if used := c.used.Load(); used != 0 {
		t.Fatalf("budget not returned after takes: %d", used)
	}
	if len(c.spill) != 0 {
		t.Fatalf("%d entries left in spill", len(c.spill))
	}
}

func TestMemoryStoreSpilledEntriesExpire(t *testing.T) {
	c := collidingCache(t, 1<<20)
	ctx := t.Context()
	now := time.Now()
	c.now = func() time.Time { return now }
	for _, k := range []string{"collide/a", "collide/b"} {
		if err := c.Put(ctx, k, PushedRequest{ClientID: "a", ExpiresAt: now.Add(time.Minute)}); err != nil {
			t.Fatal(err)
		}
	}
	c.c.Wait()
	held := c.used.Load()
	c.now = func() time.Time { return now.Add(time.Minute) }
	if _, err := c.Take(ctx, "collide/b", oneTime("a")); !errors.Is(err, ErrExpired) {
		t.Fatalf("expired spilled entry: %v, want ErrExpired", err)
	}
	if used := c.used.Load(); used >= held || len(c.spill) != 0 {
		t.Fatalf("expired spilled entry still held: used %d of %d, %d in spill", used, held, len(c.spill))
	}
	// One that nobody redeems is dropped by the sweep.
	c.now = func() time.Time { return now }
	if err := c.Put(ctx, "collide/c", PushedRequest{ClientID: "a", ExpiresAt: now.Add(time.Minute)}); err != nil {
		t.Fatal(err)
	}
	c.c.Wait()
	if len(c.spill) != 1 {
		t.Fatalf("%d entries in spill, want 1", len(c.spill))
	}
	c.now = func() time.Time { return now.Add(2 * time.Minute) }
	c.sweepSpill()
	if len(c.spill) != 0 {
		t.Fatalf("sweep left %d expired entries in spill", len(c.spill))
	}
}

// The memory store allocates entries without pointers: the check that
// guards memoryEntry finds pointers where they hide.
func TestMemoryEntryPointerCheck(t *testing.T) {
	if f := pointerField(reflect.TypeFor[memoryEntry](), "memoryEntry"); f != "" {
		t.Fatalf("memoryEntry holds a pointer: %s", f)
	}
	type withTime struct {
		n  int64
		at [2]time.Time
	}
	if f := pointerField(reflect.TypeFor[withTime](), "withTime"); f != "withTime.at[].loc" {
		t.Fatalf("pointerField(withTime) = %q", f)
	}
	if f := pointerField(reflect.TypeFor[struct{ s string }](), "x"); f != "x.s" {
		t.Fatalf("pointerField(string field) = %q", f)
	}
	e := newMemoryEntry("key", "", "p=1")
	if e.key() != "key" || e.clientID() != "" || e.params() != "p=1" {
		t.Fatalf("entry bytes: %q %q %q", e.key(), e.clientID(), e.params())
	}
}
