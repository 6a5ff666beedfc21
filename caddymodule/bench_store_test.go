package caddymodule

import (
	"context"
	"crypto/subtle"
	"fmt"
	"hash/maphash"
	"runtime"
	"runtime/metrics"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dgraph-io/ristretto/v2"
)

// Benchmarks of the memory store against legacyCache, the store as it was
// before issue 9 (a Wait on every Put, an entry with four pointers), in the
// same run. Each reports the ratio current/legacy (below 1: faster).

// legacyEntry and legacyCache are the memory store's Put and Take as of
// commit fb795d3, kept only as the benchmarks' baseline.
type legacyEntry struct {
	key      string
	req      PushedRequest
	cost     int64
	consumed atomic.Bool
	released atomic.Bool
}

type legacyCache struct {
	c      *ristretto.Cache[string, *legacyEntry]
	budget int64
	used   atomic.Int64
}

func newLegacyCache(tb testing.TB, budget int64) *legacyCache {
	tb.Helper()
	m := openLegacyCache(tb, budget)
	tb.Cleanup(m.c.Close)
	return m
}

func openLegacyCache(tb testing.TB, budget int64) *legacyCache {
	tb.Helper()
	m := &legacyCache{budget: budget}
	c, err := ristretto.NewCache(&ristretto.Config[string, *legacyEntry]{
		NumCounters:        min(max(1024, budget/1024), 1<<20),
		MaxCost:            budget + budget/4,
		BufferItems:        64,
		IgnoreInternalCost: true,
		OnExit: func(e *legacyEntry) {
			if e != nil && e.released.CompareAndSwap(false, true) {
				m.used.Add(-e.cost)
			}
		},
	})
	if err != nil {
		tb.Fatal(err)
	}
	m.c = c
	return m
}

func (m *legacyCache) Put(_ context.Context, key string, req PushedRequest) error {
	ttl := req.ExpiresAt.Sub(time.Now())
	if ttl <= 0 {
		return ErrStoreUnavailable
	}
	e := &legacyEntry{key: key, req: req}
	e.cost = int64(len(key)+len(req.ClientID)+len(req.Params)) + int64(96+250)
	if m.used.Add(e.cost) > m.budget {
		m.used.Add(-e.cost)
		return ErrStoreUnavailable
	}
	if !m.c.SetWithTTL(key, e, e.cost, ttl) {
		return ErrStoreUnavailable
	}
	m.c.Wait()
	if got, ok := m.c.Get(key); !ok || got != e {
		return ErrStoreUnavailable
	}
	return nil
}

func (m *legacyCache) Take(_ context.Context, key string, rd Redemption) (Redeemed, error) {
	e, ok := m.c.Get(key)
	if !ok || e == nil || subtle.ConstantTimeCompare([]byte(e.key), []byte(key)) != 1 {
		return Redeemed{}, ErrNotFound
	}
	if !time.Now().Before(e.req.ExpiresAt) {
		m.c.Del(key)
		return Redeemed{}, ErrExpired
	}
	if e.req.ClientID != rd.ClientID {
		return Redeemed{}, ErrClientMismatch
	}
	if !e.consumed.CompareAndSwap(false, true) {
		return Redeemed{}, ErrNotFound
	}
	m.c.Del(key)
	return Redeemed{PushedRequest: e.req}, nil
}

func (m *legacyCache) Claim(context.Context, string, time.Time) error { return nil }

// storeKinds builds the two stores under comparison: new closes the store
// when the test ends, open returns a close function instead.
var storeKinds = []struct {
	name string
	new  func(testing.TB, int64) Store
	open func(testing.TB, int64) (Store, func())
}{
	{"legacy", func(tb testing.TB, budget int64) Store { return newLegacyCache(tb, budget) },
		func(tb testing.TB, budget int64) (Store, func()) {
			m := openLegacyCache(tb, budget)
			return m, m.c.Close
		}},
	{"current", func(tb testing.TB, budget int64) Store { return newTestCache(tb, budget) },
		func(tb testing.TB, budget int64) (Store, func()) {
			m, err := newMemoryCache(budget)
			if err != nil {
				tb.Fatal(err)
			}
			return m, func() { _ = m.Destruct() }
		}},
}

// pairParallel runs legacy and current in alternation, rounds times each
// with RunParallel (so with b.SetParallelism(p), p×GOMAXPROCS goroutines),
// and reports per-op time and allocations of both, and the time ratio.
func pairParallel(b *testing.B, rounds int, legacy, current func(pb *testing.PB)) {
	compareParallel(b, rounds, []namedOp{{"legacy", legacy}, {"current", current}})
}

type namedOp struct {
	name string
	op   func(pb *testing.PB)
}

// compareParallel is pairParallel for any number of variants, each
// compared with the first.
func compareParallel(b *testing.B, rounds int, ops []namedOp) {
	t := make([]time.Duration, len(ops))
	allocs := make([]uint64, len(ops))
	bytes := make([]uint64, len(ops))
	var ms runtime.MemStats
	for range rounds {
		for k, o := range ops {
			runtime.ReadMemStats(&ms)
			m0, b0 := ms.Mallocs, ms.TotalAlloc
			t0 := time.Now()
			b.RunParallel(o.op)
			t[k] += time.Since(t0)
			runtime.ReadMemStats(&ms)
			allocs[k] += ms.Mallocs - m0
			bytes[k] += ms.TotalAlloc - b0
		}
	}
	n := float64(b.N * rounds)
	for k, o := range ops {
		b.ReportMetric(float64(t[k].Nanoseconds())/n, o.name+"-ns/op")
		b.ReportMetric(float64(allocs[k])/n, o.name+"-allocs/op")
		b.ReportMetric(float64(bytes[k])/n, o.name+"-B/op")
		if k > 0 {
			b.ReportMetric(float64(t[k])/float64(t[0]), o.name+"/"+ops[0].name)
		}
	}
	b.ReportMetric(0, "ns/op")
}

// BenchmarkMemoryStorePutVsLegacy: concurrent pushes into one store, with 1,
// 4 and 16 goroutines per GOMAXPROCS (-cpu 1,2 gives 1 to 32 goroutines).
func BenchmarkMemoryStorePutVsLegacy(b *testing.B) {
	req := PushedRequest{ClientID: "web-app", Params: validPush().Encode(), ExpiresAt: time.Now().Add(time.Hour)}
	for _, par := range []int{1, 4, 16} {
		b.Run(fmt.Sprintf("goroutines=%dxGOMAXPROCS", par), func(b *testing.B) {
			legacy, current := newLegacyCache(b, 1<<40), newTestCache(b, 1<<40)
			put := func(s Store) func(pb *testing.PB) {
				return func(pb *testing.PB) {
					for pb.Next() {
						ref, _ := newRef()
						if err := s.Put(b.Context(), "t/"+ref, req); err != nil {
							b.Error(err)
							return
						}
					}
				}
			}
			b.SetParallelism(par)
			pairParallel(b, 3, put(legacy), put(current))
		})
	}
}

// BenchmarkMemoryStorePutTakeVsLegacy: each goroutine pushes and redeems
// the request_uri it pushed lag pushes earlier, so the store stays small (no
// garbage-collection effect of held entries). lag=0 redeems right after the
// push, racing ristretto's admission: the worst case for the current store,
// whose Take then waits for the write (a browser's redirect takes far
// longer than ristretto's buffer).
func BenchmarkMemoryStorePutTakeVsLegacy(b *testing.B) {
	req := PushedRequest{ClientID: "web-app", Params: validPush().Encode(), ExpiresAt: time.Now().Add(time.Hour)}
	for _, lag := range []int{0, 256} {
		for _, par := range []int{1, 16} {
			b.Run(fmt.Sprintf("lag=%d/goroutines=%dxGOMAXPROCS", lag, par), func(b *testing.B) {
				legacy, current := newLegacyCache(b, 1<<30), newTestCache(b, 1<<30)
				cycle := func(s Store) func(pb *testing.PB) {
					return func(pb *testing.PB) {
						ring := make([]string, lag+1)
						i := 0
						for pb.Next() {
							ref, _ := newRef()
							ring[i%len(ring)] = "t/" + ref
							if err := s.Put(b.Context(), ring[i%len(ring)], req); err != nil {
								b.Error(err)
								return
							}
							i++
							if old := ring[i%len(ring)]; old != "" {
								if _, err := s.Take(b.Context(), old, oneTime("web-app")); err != nil {
									b.Error(err)
									return
								}
							}
						}
					}
				}
				b.SetParallelism(par)
				pairParallel(b, 3, cycle(legacy), cycle(current))
				b.ReportMetric(float64(current.lateReads.Load())/float64(3*b.N), "current-lateReads/op")
			})
		}
	}
}

// gcMarkCPU is the CPU time the garbage collector has spent marking (and in
// its pauses) so far.
func gcMarkCPU() time.Duration {
	s := []metrics.Sample{
		{Name: "/cpu/classes/gc/mark/assist:cpu-seconds"},
		{Name: "/cpu/classes/gc/mark/dedicated:cpu-seconds"},
		{Name: "/cpu/classes/gc/mark/idle:cpu-seconds"},
		{Name: "/cpu/classes/gc/pause:cpu-seconds"},
	}
	metrics.Read(s)
	var t float64
	for _, x := range s {
		t += x.Value.Float64()
	}
	return time.Duration(t * 1e9)
}

// BenchmarkMemoryStoreGCMarkVsLegacy: what one held entry costs each
// garbage-collection cycle (mark CPU per entry), with 100,000 pushes of
// about 600 bytes held, legacy and current in alternation. Run with -cpu 1
// for the least noise.
func BenchmarkMemoryStoreGCMarkVsLegacy(b *testing.B) {
	const n = 100000
	base := validPush()
	base.Set("claims", strings.Repeat("x", 60))
	var mark [2]time.Duration
	for b.Loop() {
		for k, kind := range storeKinds {
			s, closeStore := kind.open(b, 1<<32)
			for i := range n {
				ref, _ := newRef()
				req := PushedRequest{ClientID: "web-app", Params: with(base, "state", fmt.Sprintf("state-%08d", i)).Encode(), ExpiresAt: time.Now().Add(time.Hour)}
				if err := s.Put(b.Context(), "t/"+ref, req); err != nil {
					b.Fatal(err)
				}
			}
			runtime.GC()
			m0 := gcMarkCPU()
			for range 3 {
				runtime.GC()
			}
			mark[k] += (gcMarkCPU() - m0) / 3
			closeStore()
			s = nil
			runtime.GC()
		}
	}
	b.ReportMetric(float64(mark[0].Nanoseconds())/float64(b.N*n), "legacy-markns/entry")
	b.ReportMetric(float64(mark[1].Nanoseconds())/float64(b.N*n), "current-markns/entry")
	b.ReportMetric(float64(mark[1])/float64(mark[0]), "current/legacy")
}

// BenchmarkPARRequestStores is BenchmarkPARRequest over each store; the
// pushes stay held, as in the bench's par-push.
func BenchmarkPARRequestStores(b *testing.B) {
	for _, kind := range storeKinds {
		b.Run("store="+kind.name, func(b *testing.B) {
			benchPushes(b, newTestGateway(b, func(g *gateway) { g.store = kind.new(b, 1<<32) }))
		})
	}
}

// BenchmarkRedeemStores is BenchmarkRedeem over each store.
func BenchmarkRedeemStores(b *testing.B) {
	for _, kind := range storeKinds {
		b.Run("store="+kind.name, func(b *testing.B) {
			benchRedeems(b, newTestGateway(b, func(g *gateway) { g.store = kind.new(b, 1<<32) }))
		})
	}
}

// The alternatives to a Wait per push that issue 9 weighed, as benchmark
// variants of legacyCache.Put (not used by the store): (a) shards, K
// ristretto instances each with its own processing goroutine, so that a Wait
// covers one shard; (b) group commit, where concurrent Puts share one Wait.

// shardedLegacy is (a): legacyCache.Put on one of k caches, by key hash.
type shardedLegacy struct {
	shards []*legacyCache
	seed   maphash.Seed
}

func newShardedLegacy(tb testing.TB, k int, budget int64) *shardedLegacy {
	s := &shardedLegacy{seed: maphash.MakeSeed()}
	for range k {
		s.shards = append(s.shards, newLegacyCache(tb, budget/int64(k)))
	}
	return s
}

func (s *shardedLegacy) Put(ctx context.Context, key string, req PushedRequest) error {
	return s.shards[maphash.String(s.seed, key)%uint64(len(s.shards))].Put(ctx, key, req)
}

// groupLegacy is (b): legacyCache.Put whose Wait is shared. A Put counts its
// write after SetWithTTL has enqueued it; a leader reads the count, Waits,
// and so confirms every write counted before it read. A Wait enqueued before
// a write does not cover it, so a Put whose write was counted after the
// leader's read waits for the next round.
type groupLegacy struct {
	*legacyCache
	enq       atomic.Uint64
	mu        sync.Mutex
	confirmed uint64
	leading   bool
	round     chan struct{}
}

func newGroupLegacy(tb testing.TB, budget int64) *groupLegacy {
	return &groupLegacy{legacyCache: newLegacyCache(tb, budget), round: make(chan struct{})}
}

func (g *groupLegacy) wait(seq uint64) {
	g.mu.Lock()
	for g.confirmed < seq {
		round := g.round
		if g.leading {
			g.mu.Unlock()
			<-round
			g.mu.Lock()
			continue
		}
		g.leading = true
		target := g.enq.Load()
		g.mu.Unlock()
		g.c.Wait()
		g.mu.Lock()
		g.confirmed = max(g.confirmed, target)
		g.leading = false
		close(round)
		g.round = make(chan struct{})
	}
	g.mu.Unlock()
}

func (g *groupLegacy) Put(_ context.Context, key string, req PushedRequest) error {
	ttl := time.Until(req.ExpiresAt)
	e := &legacyEntry{key: key, req: req}
	e.cost = int64(len(key)+len(req.ClientID)+len(req.Params)) + int64(96+250)
	if g.used.Add(e.cost) > g.budget {
		g.used.Add(-e.cost)
		return ErrStoreUnavailable
	}
	if !g.c.SetWithTTL(key, e, e.cost, ttl) {
		return ErrStoreUnavailable
	}
	g.wait(g.enq.Add(1))
	if got, ok := g.c.Get(key); !ok || got != e {
		return ErrStoreUnavailable
	}
	return nil
}

// BenchmarkMemoryStorePutAlternatives: concurrent pushes with each way of
// confirming a write, in alternation, compared with legacy (a Wait each).
func BenchmarkMemoryStorePutAlternatives(b *testing.B) {
	req := PushedRequest{ClientID: "web-app", Params: validPush().Encode(), ExpiresAt: time.Now().Add(time.Hour)}
	for _, par := range []int{1, 16} {
		b.Run(fmt.Sprintf("goroutines=%dxGOMAXPROCS", par), func(b *testing.B) {
			put := func(s interface {
				Put(context.Context, string, PushedRequest) error
			}) func(pb *testing.PB) {
				return func(pb *testing.PB) {
					for pb.Next() {
						ref, _ := newRef()
						if err := s.Put(b.Context(), "t/"+ref, req); err != nil {
							b.Error(err)
							return
						}
					}
				}
			}
			b.SetParallelism(par)
			compareParallel(b, 3, []namedOp{
				{"legacy", put(newLegacyCache(b, 1<<40))},
				{"sharded4", put(newShardedLegacy(b, 4, 1<<40))},
				{"groupcommit", put(newGroupLegacy(b, 1<<40))},
				{"current", put(newTestCache(b, 1<<40))},
			})
		})
	}
}
