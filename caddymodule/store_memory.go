package caddymodule

import (
	"context"
	"crypto/subtle"
	"fmt"
	"hash/maphash"
	"math"
	"reflect"
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

// memoryEntry is the cached value, laid out for the garbage collector, which
// marks every held entry in each cycle: an entry is one allocation without
// pointers, this header followed by the full key (ristretto stores only
// hashes of keys), the client ID and the params (see newMemoryEntry). The
// collector then only marks it, and never scans it. The header therefore
// must not hold pointers (strings, slices, maps, time.Time, ...), which the
// collector would not see: init checks it. The expiry is a number for that
// reason.
type memoryEntry struct {
	exp      int64 // ExpiresAt as nanoseconds since memoryCache.epoch
	cost     int64
	klen     uint32
	clen     uint32
	plen     uint32
	consumed atomic.Bool // set by the one Take that wins
	released atomic.Bool // budget returned exactly once
	spilled  atomic.Bool // refused by ristretto's admission, held in memoryCache.spill

	// The grace of a first redemption with reuse_grace: graceUntil (ns
	// since memoryCache.epoch) and graceBinding (the SHA-256 of the first
	// redeemer's secret) are written once, by the Take that wins, before it
	// sets graceSet; readers look at them only after seeing graceSet.
	graceSet     atomic.Bool
	graceUntil   int64
	graceBinding [32]byte
}

// entryHeader is where an entry's bytes start.
const entryHeader = unsafe.Sizeof(memoryEntry{})

func init() {
	if f := pointerField(reflect.TypeFor[memoryEntry](), "memoryEntry"); f != "" {
		panic("caddymodule: " + f + " holds a pointer, but memory store entries are allocated without pointers (see newMemoryEntry)")
	}
}

// pointerField names a part of t that is or holds a pointer ("" if none).
func pointerField(t reflect.Type, name string) string {
	switch t.Kind() {
	case reflect.Struct:
		for i := range t.NumField() {
			if f := pointerField(t.Field(i).Type, name+"."+t.Field(i).Name); f != "" {
				return f
			}
		}
		return ""
	case reflect.Array:
		if t.Len() == 0 {
			return ""
		}
		return pointerField(t.Elem(), name+"[]")
	case reflect.Bool, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64,
		reflect.Float32, reflect.Float64, reflect.Complex64, reflect.Complex128:
		return ""
	default: // pointers, strings, slices, maps, channels, funcs, interfaces, uintptr
		return name
	}
}

// newMemoryEntry allocates an entry and its bytes in one []byte, which the
// allocator keeps without pointers and aligns for the header.
func newMemoryEntry(key, clientID, params string) *memoryEntry {
	buf := make([]byte, int(entryHeader)+len(key)+len(clientID)+len(params))
	d := buf[entryHeader:]
	copy(d, key)
	copy(d[len(key):], clientID)
	copy(d[len(key)+len(clientID):], params)
	e := (*memoryEntry)(unsafe.Pointer(unsafe.SliceData(buf)))
	e.klen, e.clen, e.plen = uint32(len(key)), uint32(len(clientID)), uint32(len(params))
	return e
}

// bytes returns n of the entry's bytes from off (as a string: they are
// never written after newMemoryEntry).
func (e *memoryEntry) bytes(off, n uint32) string {
	if n == 0 {
		return ""
	}
	return unsafe.String((*byte)(unsafe.Add(unsafe.Pointer(e), entryHeader+uintptr(off))), n)
}

func (e *memoryEntry) key() string      { return e.bytes(0, e.klen) }
func (e *memoryEntry) clientID() string { return e.bytes(e.klen, e.clen) }
func (e *memoryEntry) params() string   { return e.bytes(e.klen+e.clen, e.plen) }

// memoryCache is the Store over ristretto. ristretto may drop a Set under
// contention and, when its own cost limit is reached, may evict live entries
// or refuse new ones; either would turn a 201 into a dead request_uri. So the
// cache keeps its own byte reservation and refuses pushes beyond the budget,
// and it sets ristretto's MaxCost so high that ristretto's policy never runs
// out of room. Then the only way ristretto can refuse an admitted write is a
// collision of the 64-bit key hash with an entry it still tracks; such an
// entry is kept in spill instead (see Put and lookup).
type memoryCache struct {
	c      *ristretto.Cache[string, *memoryEntry]
	budget int64
	used   atomic.Int64
	now    func() time.Time
	epoch  time.Time // origin of memoryEntry.exp, with a monotonic reading

	// spill holds the entries that ristretto's admission refused (a key
	// hash collision, about n/2^64 per push with n entries held): they stay
	// retrievable until taken or expired. spills counts them.
	spillMu sync.Mutex
	spill   map[string]*memoryEntry
	spills  atomic.Int64
	// lateReads counts lookups that missed and waited for ristretto's
	// buffer (a write not applied yet, or an unknown or used key).
	lateReads atomic.Int64
	// entries counts the pushed requests holding budget (metrics).
	entries atomic.Int64

	// closeMu orders the deletions at the end of grace windows, which run
	// on timers, before ristretto's Close (a Del during Close panics).
	closeMu sync.RWMutex
	closed  bool

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
const entryOverhead = int64(entryHeader) + 160

// ristrettoMaxCost is ristretto's own cost limit: beyond reach (costs are
// bytes held in memory), so that its policy never evicts and never refuses
// for lack of room. The byte budget is enforced by memoryCache.used.
const ristrettoMaxCost = math.MaxInt64

func newMemoryCache(budget int64) (*memoryCache, error) {
	return newMemoryCacheHash(budget, nil)
}

// newMemoryCacheHash is newMemoryCache with ristretto's key hash replaced
// (nil: ristretto's own), for tests that need hash collisions.
func newMemoryCacheHash(budget int64, keyToHash func(string) (uint64, uint64)) (*memoryCache, error) {
	m := &memoryCache{budget: budget, now: time.Now, epoch: time.Now(), spill: map[string]*memoryEntry{}, claimSeed: maphash.MakeSeed(), stop: make(chan struct{})}
	for i := range m.claims {
		m.claims[i].m = map[string]int64{}
	}
	c, err := ristretto.NewCache(&ristretto.Config[string, *memoryEntry]{
		// The admission counters only matter when ristretto is full, which
		// never happens; keep them small and bounded, as they are memory
		// outside the budget.
		NumCounters:        min(max(1024, budget/1024), 1<<20),
		MaxCost:            ristrettoMaxCost,
		BufferItems:        64,
		IgnoreInternalCost: true,
		KeyToHash:          keyToHash,
		OnReject:           m.keep,
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
// (taken or expired). An entry refused by ristretto is not leaving: keep has
// moved it to spill, and unspill releases it.
func (m *memoryCache) release(e *memoryEntry) {
	if e != nil && !e.spilled.Load() && e.released.CompareAndSwap(false, true) {
		m.used.Add(-e.cost)
		m.entries.Add(-1)
	}
}

// keep is ristretto's OnReject. It runs on ristretto's processing goroutine,
// before that goroutine handles anything enqueued after the refused write
// (such as the item of a later Wait), and before ristretto calls OnExit for
// the entry.
func (m *memoryCache) keep(item *ristretto.Item[*memoryEntry]) {
	e := item.Value
	if e == nil || e.released.Load() {
		return
	}
	m.spillMu.Lock()
	e.spilled.Store(true)
	m.spill[e.key()] = e
	m.spillMu.Unlock()
	m.spills.Add(1)
}

// unspill drops a spilled entry and returns its bytes to the budget.
func (m *memoryCache) unspill(e *memoryEntry) {
	m.spillMu.Lock()
	if m.spill[e.key()] == e {
		delete(m.spill, e.key())
	}
	m.spillMu.Unlock()
	if e.released.CompareAndSwap(false, true) {
		m.used.Add(-e.cost)
		m.entries.Add(-1)
	}
}

// Put stores the entry without waiting for ristretto to apply the write
// (ristretto applies writes on one goroutine, and a Wait per push made every
// push queue behind it). The write is retrievable from the moment Put
// returns, because:
//
//   - SetWithTTL either enqueues the write in ristretto's buffer or reports
//     that it dropped it (buffer full). On a drop, Put waits for the buffer
//     to drain once and retries, then refuses.
//   - ristretto's processing goroutine admits an enqueued write unless its
//     64-bit key hash is one the policy still tracks: with MaxCost out of
//     reach there is never a lack of room, so no refusal for cost and no
//     eviction of live entries. A refused entry goes to spill (keep), on
//     that goroutine, before it moves on.
//   - An admitted entry leaves ristretto only by Del (Take) or when
//     ristretto's TTL, which ends no earlier than ExpiresAt, has passed.
//   - A Take for the key cannot start before the client has the 201, sent
//     after Put returned; if the write is still in the buffer, Take's Get
//     misses, and lookup's Wait, enqueued behind the write, returns only
//     once the entry is in the cache or in spill.
func (m *memoryCache) Put(_ context.Context, key string, req PushedRequest) error {
	ttl := req.ExpiresAt.Sub(m.now())
	if ttl <= 0 {
		return fmt.Errorf("%w: entry already expired", ErrStoreUnavailable)
	}
	if uint64(len(key))+uint64(len(req.ClientID))+uint64(len(req.Params)) > math.MaxUint32 {
		return fmt.Errorf("%w: entry too large", ErrStoreUnavailable)
	}
	cost := int64(len(key)+len(req.ClientID)+len(req.Params)) + entryOverhead
	if m.used.Add(cost) > m.budget {
		m.used.Add(-cost)
		return errMemoryStoreFull
	}
	m.entries.Add(1)
	e := newMemoryEntry(key, req.ClientID, req.Params)
	e.exp = int64(req.ExpiresAt.Sub(m.epoch))
	e.cost = cost
	if !m.c.SetWithTTL(key, e, e.cost, ttl) {
		// The buffer was full: let ristretto catch up rather than refuse a
		// burst.
		m.c.Wait()
		if !m.c.SetWithTTL(key, e, e.cost, ttl) {
			m.release(e)
			return fmt.Errorf("%w: write dropped under contention", ErrStoreUnavailable)
		}
	}
	return nil
}

// lookup returns the entry for key, or nil. A miss may be a write that Put
// enqueued and ristretto has not applied yet: one Wait, which covers every
// write enqueued before it, settles it (see Put).
func (m *memoryCache) lookup(key string) *memoryEntry {
	if e, ok := m.c.Get(key); ok && e != nil {
		return e
	}
	m.lateReads.Add(1)
	m.c.Wait()
	if e, ok := m.c.Get(key); ok && e != nil {
		return e
	}
	m.spillMu.Lock()
	e := m.spill[key]
	m.spillMu.Unlock()
	return e
}

// remove deletes a taken or expired entry.
func (m *memoryCache) remove(e *memoryEntry) {
	if e.spilled.Load() {
		m.unspill(e)
		return
	}
	m.c.Del(e.key())
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

func (m *memoryCache) Take(_ context.Context, key string, rd Redemption) (Redeemed, error) {
	e := m.lookup(key)
	if e == nil || subtle.ConstantTimeCompare([]byte(e.key()), []byte(key)) != 1 {
		return Redeemed{}, ErrNotFound
	}
	// A grace never outlasts the request_uri's expiry.
	if m.expired(e) {
		m.remove(e)
		return Redeemed{}, ErrExpired
	}
	if e.consumed.Load() {
		return m.takeAgain(e, rd)
	}
	if e.clientID() != rd.ClientID {
		return Redeemed{}, ErrClientMismatch
	}
	// ristretto has no atomic get-and-delete: the flag decides the winner.
	// A loser gets ErrNotFound even with a grace: it cannot hold the
	// winner's secret, which is handed out only after this returns.
	if !e.consumed.CompareAndSwap(false, true) {
		return Redeemed{}, ErrNotFound
	}
	if rd.Grace <= 0 {
		m.remove(e)
		return Redeemed{PushedRequest: m.request(e)}, nil
	}
	now := m.now().Sub(m.epoch)
	until := min(now+rd.Grace, time.Duration(e.exp))
	e.graceUntil = int64(until)
	e.graceBinding = rd.Binding
	e.graceSet.Store(true)
	m.dropAfter(e, until-now)
	return Redeemed{PushedRequest: m.request(e)}, nil
}

// takeAgain is Take of a consumed entry: only a redemption within its
// grace, by the same client, presenting the first redeemer's secret.
func (m *memoryCache) takeAgain(e *memoryEntry, rd Redemption) (Redeemed, error) {
	if !e.graceSet.Load() || m.now().Sub(m.epoch) >= time.Duration(e.graceUntil) || len(rd.Presented) == 0 {
		// No grace (or the winner has not recorded it yet), it is over, or
		// no secret to check: used, as far as this redeemer can tell.
		return Redeemed{}, ErrNotFound
	}
	if e.clientID() != rd.ClientID {
		return Redeemed{}, ErrClientMismatch
	}
	if !rd.presents(e.graceBinding) {
		return Redeemed{}, ErrNotFound
	}
	return Redeemed{PushedRequest: m.request(e), Again: true}, nil
}

// dropAfter removes a consumed entry when its grace ends, giving its bytes
// back to the budget then rather than at its expiry.
func (m *memoryCache) dropAfter(e *memoryEntry, d time.Duration) {
	time.AfterFunc(d, func() {
		m.closeMu.RLock()
		defer m.closeMu.RUnlock()
		if !m.closed {
			m.remove(e)
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

// sweepClaims periodically returns the bytes of expired claims (and of
// spilled entries) to the budget.
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
			m.sweepSpill()
		}
	}
}

// sweepSpill drops the spilled entries that were taken or have expired.
func (m *memoryCache) sweepSpill() {
	m.spillMu.Lock()
	var done []*memoryEntry
	for _, e := range m.spill {
		if e.consumed.Load() || m.expired(e) {
			done = append(done, e)
		}
	}
	m.spillMu.Unlock()
	for _, e := range done {
		m.unspill(e)
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
