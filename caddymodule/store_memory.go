package caddymodule

import (
	"context"
	"crypto/subtle"
	"fmt"
	"hash/maphash"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/caddyserver/caddy/v2"
	"github.com/dgraph-io/ristretto/v2"
)

func init() {
	caddy.RegisterModule(MemoryStore{})
}

// DefaultMemoryStoreSize is the default byte budget of the memory store.
const DefaultMemoryStoreSize = 64 << 20

// minMemoryStoreSize keeps the store usable: one maximal entry must fit.
const minMemoryStoreSize = 16 << 10

// MemoryStore keeps pushed requests in process memory, in a ristretto cache
// bounded in bytes. The cache is shared through a caddy.UsagePool, so
// request_uris issued before a config reload stay valid after it.
//
// Entries are never evicted to make room for others: when the byte budget
// is used up, new pushes are refused (503) instead, so that a 201 always
// means the request_uri works until it expires.
type MemoryStore struct {
	// MaxSize is the byte budget for stored requests, bookkeeping included.
	// Default: 64MiB.
	MaxSize int64 `json:"max_size,omitempty"`

	poolKey string
	cache   *memoryCache
}

// CaddyModule returns the Caddy module information.
func (MemoryStore) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.oauth_par.stores.memory",
		New: func() caddy.Module { return new(MemoryStore) },
	}
}

// memoryPool holds one cache per byte budget across config reloads.
var memoryPool = caddy.NewUsagePool()

// Provision gets (or creates) the shared cache.
func (m *MemoryStore) Provision(caddy.Context) error {
	if m.MaxSize == 0 {
		m.MaxSize = DefaultMemoryStoreSize
	}
	if m.MaxSize < minMemoryStoreSize {
		return fmt.Errorf("store memory: max_size must be at least %d bytes, got %d", minMemoryStoreSize, m.MaxSize)
	}
	m.poolKey = "memory/" + strconv.FormatInt(m.MaxSize, 10)
	v, _, err := memoryPool.LoadOrNew(m.poolKey, func() (caddy.Destructor, error) {
		return newMemoryCache(m.MaxSize)
	})
	if err != nil {
		return fmt.Errorf("store memory: %w", err)
	}
	m.cache = v.(*memoryCache)
	return nil
}

// Cleanup releases this config's reference to the shared cache.
func (m *MemoryStore) Cleanup() error {
	if m.poolKey == "" {
		return nil
	}
	_, err := memoryPool.Delete(m.poolKey)
	return err
}

// Store returns the store for the handler.
func (m *MemoryStore) Store() Store { return m.cache }

// memoryEntry is the cached value. The full key is kept because ristretto
// stores only hashes of keys.
type memoryEntry struct {
	key      string
	req      PushedRequest
	cost     int64
	consumed atomic.Bool // set by the one Take that wins
	released atomic.Bool // budget returned exactly once
	// grace is set by the first Take when it keeps the entry for
	// redemptions by the same browser (reuse_grace); nil otherwise.
	grace atomic.Pointer[memoryGrace]
}

// memoryGrace is what a first redemption with a grace records on its entry.
type memoryGrace struct {
	binding [32]byte
	until   time.Time
}

// memoryCache is the Store over ristretto. ristretto may drop a Set under
// contention and may evict live entries when full; both would turn a 201 into
// a dead request_uri. So the cache keeps its own byte reservation, refuses
// pushes beyond the budget, gives ristretto headroom above that budget so its
// policy never has to evict, and confirms each write before reporting it.
type memoryCache struct {
	c      *ristretto.Cache[string, *memoryEntry]
	budget int64
	used   atomic.Int64
	now    func() time.Time
	// entries counts the pushed requests holding budget (metrics).
	entries atomic.Int64

	// claims are the single-use keys (jti) recorded by Claim. They share
	// the byte budget with pushed requests, so an attacker who can mint
	// valid JWTs still cannot grow memory past max_size.
	claims    [claimShards]claimShard
	claimSeed maphash.Seed
	stop      chan struct{}
	stopOnce  sync.Once

	// closeMu orders the deletions at the end of grace windows, which run
	// on timers, before ristretto's Close (a Del during Close panics).
	closeMu sync.RWMutex
	closed  bool
}

// claimShards spreads Claim's locking; claimOverhead is what one recorded
// key costs beyond its bytes (map slot, string header, expiry).
const (
	claimShards   = 32
	claimOverhead = 64
	claimSweep    = 30 * time.Second
)

type claimShard struct {
	mu sync.Mutex
	m  map[string]int64 // key -> expiry, Unix nanoseconds
}

// entryOverhead approximates what one entry costs beyond its strings: our
// struct, ristretto's per-item bookkeeping (store item, policy and expiry map
// entries) and allocator rounding. BenchmarkMemoryStoreHeapPerEntry checks it
// against the measured heap, so that max_size bounds the live heap.
const entryOverhead = int64(unsafe.Sizeof(memoryEntry{})) + 250

func newMemoryCache(budget int64) (*memoryCache, error) {
	m := &memoryCache{budget: budget, now: time.Now, claimSeed: maphash.MakeSeed(), stop: make(chan struct{})}
	for i := range m.claims {
		m.claims[i].m = map[string]int64{}
	}
	c, err := ristretto.NewCache(&ristretto.Config[string, *memoryEntry]{
		// The admission counters only matter when ristretto is full, which
		// our own budget prevents; keep them small and bounded, as they are
		// memory outside the budget.
		NumCounters: min(max(1024, budget/1024), 1<<20),
		// Headroom over our own budget: deletes reach ristretto's policy
		// asynchronously, so its view can briefly lag ours.
		MaxCost:            budget + budget/4,
		BufferItems:        64,
		IgnoreInternalCost: true,
		OnExit:             m.release,
	})
	if err != nil {
		return nil, err
	}
	m.c = c
	go m.sweepClaims()
	return m, nil
}

// release returns an entry's bytes to the budget when it leaves the cache
// (taken, expired, or refused by ristretto).
func (m *memoryCache) release(e *memoryEntry) {
	if e != nil && e.released.CompareAndSwap(false, true) {
		m.used.Add(-e.cost)
		m.entries.Add(-1)
	}
}

func (m *memoryCache) Put(_ context.Context, key string, req PushedRequest) error {
	ttl := req.ExpiresAt.Sub(m.now())
	if ttl <= 0 {
		return fmt.Errorf("%w: entry already expired", ErrStoreUnavailable)
	}
	e := &memoryEntry{key: key, req: req}
	e.cost = int64(len(key)+len(req.ClientID)+len(req.Params)) + entryOverhead
	if m.used.Add(e.cost) > m.budget {
		m.used.Add(-e.cost)
		return errMemoryStoreFull
	}
	m.entries.Add(1)
	if !m.c.SetWithTTL(key, e, e.cost, ttl) {
		m.release(e)
		return fmt.Errorf("%w: write dropped under contention", ErrStoreUnavailable)
	}
	// A Set is applied asynchronously; wait for it and check it stuck.
	m.c.Wait()
	if got, ok := m.c.Get(key); !ok || got != e {
		m.release(e)
		return fmt.Errorf("%w: write not admitted", ErrStoreUnavailable)
	}
	return nil
}

func (m *memoryCache) Take(_ context.Context, key string, rd Redemption) (Redeemed, error) {
	e, ok := m.c.Get(key)
	if !ok || e == nil || subtle.ConstantTimeCompare([]byte(e.key), []byte(key)) != 1 {
		return Redeemed{}, ErrNotFound
	}
	// RFC 9126 §4: an expired request_uri MUST be rejected; the cache's TTL
	// is only approximate, the stored absolute time is authoritative. A
	// grace never outlasts it.
	now := m.now()
	if !now.Before(e.req.ExpiresAt) {
		m.c.Del(key)
		return Redeemed{}, ErrExpired
	}
	if e.consumed.Load() {
		return m.takeAgain(e, rd, now)
	}
	if e.req.ClientID != rd.ClientID {
		return Redeemed{}, ErrClientMismatch
	}
	// ristretto has no atomic get-and-delete: the flag decides the winner.
	// A loser gets ErrNotFound even with a grace: it cannot hold the
	// winner's secret, which is handed out only after this returns.
	if !e.consumed.CompareAndSwap(false, true) {
		return Redeemed{}, ErrNotFound
	}
	if rd.Grace <= 0 {
		m.c.Del(key)
		return Redeemed{PushedRequest: e.req}, nil
	}
	until := now.Add(rd.Grace)
	if until.After(e.req.ExpiresAt) {
		until = e.req.ExpiresAt
	}
	e.grace.Store(&memoryGrace{binding: rd.Binding, until: until})
	m.dropAfter(key, until.Sub(now))
	return Redeemed{PushedRequest: e.req}, nil
}

// takeAgain is Take of a consumed entry: only a redemption within its
// grace, by the same client, presenting the first redeemer's secret.
func (m *memoryCache) takeAgain(e *memoryEntry, rd Redemption, now time.Time) (Redeemed, error) {
	g := e.grace.Load()
	if g == nil || !now.Before(g.until) || len(rd.Presented) == 0 {
		// No grace (or the winner has not recorded it yet), it is over, or
		// no secret to check: used, as far as this redeemer can tell.
		return Redeemed{}, ErrNotFound
	}
	if e.req.ClientID != rd.ClientID {
		return Redeemed{}, ErrClientMismatch
	}
	if !rd.presents(g.binding) {
		return Redeemed{}, ErrNotFound
	}
	return Redeemed{PushedRequest: e.req, Again: true}, nil
}

// dropAfter deletes a consumed entry when its grace ends, giving its bytes
// back to the budget then rather than at its expiry.
func (m *memoryCache) dropAfter(key string, d time.Duration) {
	time.AfterFunc(d, func() {
		m.closeMu.RLock()
		defer m.closeMu.RUnlock()
		if !m.closed {
			m.c.Del(key)
		}
	})
}

// Claim records key until expiresAt; see Store.
func (m *memoryCache) Claim(_ context.Context, key string, expiresAt time.Time) error {
	now := m.now().UnixNano()
	exp := expiresAt.UnixNano()
	if exp <= now {
		// Nothing to guard: the JWT's own expiry already refuses a replay.
		return nil
	}
	sh := &m.claims[maphash.String(m.claimSeed, key)%claimShards]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if old, ok := sh.m[key]; ok {
		if now < old {
			return ErrReplay
		}
		sh.m[key] = exp // an expired record is reused in place
		return nil
	}
	cost := int64(len(key)) + claimOverhead
	if m.used.Add(cost) > m.budget {
		m.used.Add(-cost)
		// Expired records of this shard may be what fills the budget.
		if m.sweepShard(sh, now) == 0 {
			return errMemoryStoreFull
		}
		if m.used.Add(cost) > m.budget {
			m.used.Add(-cost)
			return errMemoryStoreFull
		}
	}
	sh.m[key] = exp
	return nil
}

// sweepShard drops expired claims from a locked shard and returns how many
// bytes it gave back to the budget.
func (m *memoryCache) sweepShard(sh *claimShard, now int64) int64 {
	var freed int64
	for k, exp := range sh.m {
		if exp <= now {
			delete(sh.m, k)
			freed += int64(len(k)) + claimOverhead
		}
	}
	m.used.Add(-freed)
	return freed
}

// sweepClaims periodically returns expired claims' bytes to the budget.
func (m *memoryCache) sweepClaims() {
	t := time.NewTicker(claimSweep)
	defer t.Stop()
	for {
		select {
		case <-m.stop:
			return
		case <-t.C:
			now := m.now().UnixNano()
			for i := range m.claims {
				sh := &m.claims[i]
				sh.mu.Lock()
				m.sweepShard(sh, now)
				sh.mu.Unlock()
			}
		}
	}
}

// Destruct closes the cache when the last config using it is gone.
func (m *memoryCache) Destruct() error {
	m.stopOnce.Do(func() { close(m.stop) })
	m.closeMu.Lock()
	m.closed = true
	m.closeMu.Unlock()
	m.c.Close()
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner  = (*MemoryStore)(nil)
	_ caddy.CleanerUpper = (*MemoryStore)(nil)
	_ StoreProvider      = (*MemoryStore)(nil)
	_ Store              = (*memoryCache)(nil)
	_ caddy.Destructor   = (*memoryCache)(nil)
)
