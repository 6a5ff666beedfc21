package caddymodule

import (
	"context"
	"crypto/subtle"
	"fmt"
	"strconv"
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
}

// entryOverhead approximates what one entry costs beyond its strings: our
// struct, ristretto's per-item bookkeeping (store item, policy and expiry map
// entries) and allocator rounding. BenchmarkMemoryStoreHeapPerEntry checks it
// against the measured heap, so that max_size bounds the live heap.
const entryOverhead = int64(unsafe.Sizeof(memoryEntry{})) + 250

func newMemoryCache(budget int64) (*memoryCache, error) {
	m := &memoryCache{budget: budget, now: time.Now}
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
	e := &memoryEntry{key: key, req: req}
	e.cost = int64(len(key)+len(req.ClientID)+len(req.Params)) + entryOverhead
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

func (m *memoryCache) Take(_ context.Context, key, clientID string) (PushedRequest, error) {
	e, ok := m.c.Get(key)
	if !ok || e == nil || subtle.ConstantTimeCompare([]byte(e.key), []byte(key)) != 1 {
		return PushedRequest{}, ErrNotFound
	}
	// RFC 9126 §4: an expired request_uri MUST be rejected; the cache's TTL
	// is only approximate, the stored absolute time is authoritative.
	if !m.now().Before(e.req.ExpiresAt) {
		m.c.Del(key)
		return PushedRequest{}, ErrExpired
	}
	if e.req.ClientID != clientID {
		return PushedRequest{}, ErrClientMismatch
	}
	// ristretto has no atomic get-and-delete: the flag decides the winner.
	if !e.consumed.CompareAndSwap(false, true) {
		return PushedRequest{}, ErrNotFound
	}
	m.c.Del(key)
	return e.req, nil
}

// Destruct closes the cache when the last config using it is gone.
func (m *memoryCache) Destruct() error {
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
