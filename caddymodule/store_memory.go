package caddymodule

import (
	"context"
	"crypto/subtle"
	"fmt"
	"hash/maphash"
	"math"
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

// memoryEntry is the cached value. It is laid out for the garbage
// collector, which marks every held entry in each cycle: one pointer, to a
// single allocation without pointers that holds the full key (ristretto
// stores only hashes of keys), the client ID and the params. The expiry is a
// number, not a time.Time (which carries a *Location).
type memoryEntry struct {
	data     string // key, then ClientID, then Params
	klen     uint32
	clen     uint32
	exp      int64 // ExpiresAt as nanoseconds since memoryCache.epoch
	cost     int64
	consumed atomic.Bool // set by the one Take that wins
	released atomic.Bool // budget returned exactly once
}

func (e *memoryEntry) key() string      { return e.data[:e.klen] }
func (e *memoryEntry) clientID() string { return e.data[e.klen : e.klen+e.clen] }
func (e *memoryEntry) params() string   { return e.data[e.klen+e.clen:] }

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
	epoch  time.Time // origin of memoryEntry.exp, with a monotonic reading

	// claims are the single-use keys (jti) recorded by Claim. They share
	// the byte budget with pushed requests, so an attacker who can mint
	// valid JWTs still cannot grow memory past max_size.
	claims    [claimShards]claimShard
	claimSeed maphash.Seed
	stop      chan struct{}
	stopOnce  sync.Once
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
const entryOverhead = int64(unsafe.Sizeof(memoryEntry{})) + 190

func newMemoryCache(budget int64) (*memoryCache, error) {
	m := &memoryCache{budget: budget, now: time.Now, epoch: time.Now(), claimSeed: maphash.MakeSeed(), stop: make(chan struct{})}
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
	}
}

func (m *memoryCache) Put(_ context.Context, key string, req PushedRequest) error {
	ttl := req.ExpiresAt.Sub(m.now())
	if ttl <= 0 {
		return fmt.Errorf("%w: entry already expired", ErrStoreUnavailable)
	}
	if len(key) > math.MaxUint32 || len(req.ClientID) > math.MaxUint32 {
		return fmt.Errorf("%w: key too long", ErrStoreUnavailable)
	}
	e := &memoryEntry{
		data: key + req.ClientID + req.Params,
		klen: uint32(len(key)),
		clen: uint32(len(req.ClientID)),
		exp:  int64(req.ExpiresAt.Sub(m.epoch)),
	}
	e.cost = int64(len(e.data)) + entryOverhead
	if m.used.Add(e.cost) > m.budget {
		m.used.Add(-e.cost)
		return fmt.Errorf("%w: memory store is full", ErrStoreUnavailable)
	}
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

// expired reports whether e's ExpiresAt has passed (RFC 9126 §4: an expired
// request_uri MUST be rejected; the cache's TTL is only approximate).
func (m *memoryCache) expired(e *memoryEntry) bool {
	return m.now().Sub(m.epoch) >= time.Duration(e.exp)
}

// request rebuilds the stored request from e.
func (m *memoryCache) request(e *memoryEntry) PushedRequest {
	return PushedRequest{ClientID: e.clientID(), Params: e.params(), ExpiresAt: m.epoch.Add(time.Duration(e.exp))}
}

func (m *memoryCache) Take(_ context.Context, key, clientID string) (PushedRequest, error) {
	e, ok := m.c.Get(key)
	if !ok || e == nil || subtle.ConstantTimeCompare([]byte(e.key()), []byte(key)) != 1 {
		return PushedRequest{}, ErrNotFound
	}
	if m.expired(e) {
		m.c.Del(key)
		return PushedRequest{}, ErrExpired
	}
	if e.clientID() != clientID {
		return PushedRequest{}, ErrClientMismatch
	}
	// ristretto has no atomic get-and-delete: the flag decides the winner.
	if !e.consumed.CompareAndSwap(false, true) {
		return PushedRequest{}, ErrNotFound
	}
	m.c.Del(key)
	return m.request(e), nil
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
			return fmt.Errorf("%w: memory store is full", ErrStoreUnavailable)
		}
		if m.used.Add(cost) > m.budget {
			m.used.Add(-cost)
			return fmt.Errorf("%w: memory store is full", ErrStoreUnavailable)
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
