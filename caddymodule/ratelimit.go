package caddymodule

// Rate limits at the PAR endpoint. RFC 9126 §2.3 lists 429 among the PAR
// endpoint's answers "if the number of requests from a client during a
// particular time period exceeds the number the authorization server
// allows". Two limits, at two places in the push (par.go):
//
//   - per source address, before anything else: it protects the body read,
//     the signature checks of client assertions and the secret comparison
//     from one address (an IPv6 /64 by default), and a failed
//     authentication costs the source more than one request;
//   - per client, once the client has proved who it is and before anything
//     is recorded (an assertion's jti, a DPoP proof's jti, the pushed
//     request): nobody can use up a client's quota by sending its client_id,
//     and a limited push changes nothing in the store.
//
// Both are GCRA token buckets (one int64 per bucket: the theoretical
// arrival time) on the monotonic clock. Per-client buckets are one per
// configured client. Per-source buckets live in a fixed-size,
// set-associative table allocated once: memory does not grow with the
// number of addresses seen, and a new address displaces the fullest bucket
// of its set (see sourceSet.bucket for why that keeps limited addresses
// limited). State is kept in a caddy.UsagePool, so it survives config
// reloads that keep the same limits.

import (
	"fmt"
	"hash/maphash"
	"math/bits"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// Defaults of rate_limit: see the README's "Rate limits" for the reasoning.
const (
	DefaultPerClientEvents  = 3000
	DefaultPerClientWindow  = time.Minute
	DefaultPerClientBurst   = 500
	DefaultPerSourceEvents  = 6000
	DefaultPerSourceWindow  = time.Minute
	DefaultPerSourceBurst   = 1000
	DefaultSourceIPv6Prefix = 64
	DefaultMaxSources       = 65536
	DefaultAuthFailureCost  = 10
)

// Bounds of rate_limit.
const (
	minSourceIPv6Prefix = 32
	minMaxSources       = 1024
	maxMaxSources       = 1 << 22 // 100 MiB of buckets
	maxAuthFailureCost  = 1000
	maxRateBurst        = 1_000_000
	maxRateWindow       = 24 * time.Hour
	minRateInterval     = time.Microsecond    // at most 1,000,000 events per second
	maxRateRefill       = 30 * 24 * time.Hour // burst × window / events
	// sourceWays is the associativity of the source table: a new address
	// competes with the 7 others of its set.
	sourceWays = 8
)

// RateLimitConfig bounds pushes at the PAR endpoint per client and per
// source address; rejected pushes get 429 with Retry-After (RFC 9126 §2.3).
// Unset members take their defaults; the whole is on by default.
type RateLimitConfig struct {
	// Off switches the default limits off: per_client and per_source
	// unless set here, which is then an error. A client's own rate_limit
	// still applies.
	Off bool `json:"off,omitempty"`
	// PerClient limits each authenticated client. Default 3000 per minute,
	// burst 500. Public clients (auth method none) are only limited by
	// their own rate_limit, since anyone can send their client_id.
	PerClient *Rate `json:"per_client,omitempty"`
	// PerSource limits each source address (Caddy's client IP, which
	// honours trusted_proxies), checked before client authentication.
	// Default 6000 per minute, burst 1000.
	PerSource *Rate `json:"per_source,omitempty"`
	// SourceIPv6Prefix is the prefix length IPv6 sources are grouped by,
	// 32 to 128. Default 64. IPv4 sources are single addresses.
	SourceIPv6Prefix int `json:"source_ipv6_prefix,omitempty"`
	// MaxSources is how many source buckets are kept (about 25 bytes
	// each, allocated once), 1024 to 4194304. Default 65536.
	MaxSources int `json:"max_sources,omitempty"`
	// AuthFailureCost is what a failed client authentication (401
	// invalid_client) costs its source, in requests, 1 to 1000. Default 10.
	AuthFailureCost int `json:"auth_failure_cost,omitempty"`
}

// Rate is a token bucket: Events per Window on average, at most Burst at
// once (default Burst: Events). Off switches the limit off.
type Rate struct {
	Off    bool           `json:"off,omitempty"`
	Events int            `json:"events,omitempty"`
	Window caddy.Duration `json:"window,omitempty"`
	Burst  int            `json:"burst,omitempty"`
}

// gcra is the Generic Cell Rate Algorithm (a token bucket keeping one
// number per bucket, its theoretical arrival time tat): one event every
// interval nanoseconds, tolerance = burst × interval.
type gcra struct {
	interval  int64
	tolerance int64
}

// take admits one event at now and returns 0, or returns how many
// nanoseconds until it would be admitted and leaves *tat alone.
func (g gcra) take(tat *int64, now int64) int64 {
	t := max(*tat, now) + g.interval
	if wait := t - now - g.tolerance; wait > 0 {
		return wait
	}
	*tat = t
	return 0
}

// charge adds n events without asking, as debt of at most n events beyond
// an empty bucket: with the event take already counted, a source that
// only fails authentication gets 1/(n+1) of the rate.
func (g gcra) charge(tat *int64, now, n int64) {
	t := max(*tat, now) + n*g.interval
	*tat = min(t, now+g.tolerance+n*g.interval)
}

// refund gives one taken event back.
func (g gcra) refund(tat *int64, now int64) {
	*tat = max(*tat-g.interval, now)
}

// gcra checks a configured rate and makes it concrete; def is used when r
// is nil. It returns nil for a limit that is off.
func (r *Rate) gcra(name string, def *Rate) (*gcra, error) {
	if r == nil {
		r = def
	}
	if r == nil || r.Off {
		if r != nil && (r.Events != 0 || r.Window != 0 || r.Burst != 0) {
			return nil, fmt.Errorf("%s: off takes no rate", name)
		}
		return nil, nil
	}
	if r.Events < 1 {
		return nil, fmt.Errorf("%s: the number of events must be at least 1, got %d", name, r.Events)
	}
	w := time.Duration(r.Window)
	if w <= 0 || w > maxRateWindow {
		return nil, fmt.Errorf("%s: the window must be more than 0 and at most %s, got %s", name, maxRateWindow, w)
	}
	interval := w / time.Duration(r.Events)
	if interval < minRateInterval {
		return nil, fmt.Errorf("%s: %d per %s is more than 1000000 per second", name, r.Events, w)
	}
	burst := r.Burst
	if burst == 0 {
		burst = r.Events
	}
	if burst < 1 || burst > maxRateBurst {
		return nil, fmt.Errorf("%s: burst must be 1 to %d, got %d", name, maxRateBurst, burst)
	}
	if interval > maxRateRefill/time.Duration(burst) {
		return nil, fmt.Errorf("%s: a burst of %d at %d per %s takes longer than %s to refill", name, burst, r.Events, w, maxRateRefill)
	}
	return &gcra{interval: int64(interval), tolerance: int64(interval) * int64(burst)}, nil
}

// rateLimitSettings is rate_limit checked and made concrete for one
// handler.
type rateLimitSettings struct {
	source     *gcra // nil: no per-source limit
	prefix6    int
	maxSources int
	failCost   int64           // events a failed authentication adds beyond its own
	clients    map[string]gcra // per client_id; absent: no limit
}

// rateLimitSettings checks h.RateLimit and the clients' rate_limit.
// Messages name the subdirective.
func (h *Handler) rateLimitSettings(clients map[string]*client) (rateLimitSettings, error) {
	cfg := h.RateLimit
	if cfg == nil {
		cfg = &RateLimitConfig{}
	}
	defClient := &Rate{Events: DefaultPerClientEvents, Window: caddy.Duration(DefaultPerClientWindow), Burst: DefaultPerClientBurst}
	defSource := &Rate{Events: DefaultPerSourceEvents, Window: caddy.Duration(DefaultPerSourceWindow), Burst: DefaultPerSourceBurst}
	if cfg.Off {
		if cfg.PerClient != nil || cfg.PerSource != nil {
			return rateLimitSettings{}, fmt.Errorf("rate_limit: off cannot be combined with per_client or per_source")
		}
		defClient, defSource = nil, nil
	}
	s := rateLimitSettings{
		prefix6:    cmp0(cfg.SourceIPv6Prefix, DefaultSourceIPv6Prefix),
		maxSources: cmp0(cfg.MaxSources, DefaultMaxSources),
		clients:    map[string]gcra{},
	}
	var err error
	if s.source, err = cfg.PerSource.gcra("rate_limit: per_source", defSource); err != nil {
		return s, err
	}
	if s.prefix6 < minSourceIPv6Prefix || s.prefix6 > 128 {
		return s, fmt.Errorf("rate_limit: source_ipv6_prefix must be %d to 128, got %d", minSourceIPv6Prefix, s.prefix6)
	}
	if s.maxSources < minMaxSources || s.maxSources > maxMaxSources {
		return s, fmt.Errorf("rate_limit: max_sources must be %d to %d, got %d", minMaxSources, maxMaxSources, s.maxSources)
	}
	cost := cmp0(cfg.AuthFailureCost, DefaultAuthFailureCost)
	if cost < 1 || cost > maxAuthFailureCost {
		return s, fmt.Errorf("rate_limit: auth_failure_cost must be 1 to %d, got %d", maxAuthFailureCost, cost)
	}
	s.failCost = int64(cost - 1)
	perClient, err := cfg.PerClient.gcra("rate_limit: per_client", defClient)
	if err != nil {
		return s, err
	}
	for _, cc := range h.Clients {
		rate := perClient
		if cc.RateLimit != nil {
			if rate, err = cc.RateLimit.gcra(fmt.Sprintf("client %q: rate_limit", cc.ClientID), nil); err != nil {
				return s, err
			}
		} else if c := clients[cc.ClientID]; c != nil && c.public {
			// Anyone can send a public client's client_id: a default
			// limit on it would be anyone's to use up.
			rate = nil
		}
		if rate != nil {
			s.clients[cc.ClientID] = *rate
		}
	}
	return s, nil
}

// cmp0 is v, or def when v is 0.
func cmp0(v, def int) int {
	if v == 0 {
		return def
	}
	return v
}

// rateLimits is one handler's view of its limits. A nil *rateLimits
// limits nothing.
type rateLimits struct {
	now      func() int64 // monotonic nanoseconds
	sources  *sourceTable // nil: no per-source limit
	failCost int64
	clients  map[string]*clientBucket // immutable after provisioning
	// pooled are the rateLimitPool keys this handler holds.
	pooled []string
}

// rateLimitPool keeps limiter state across config reloads: a source table
// per endpoint pair and source settings, a bucket per endpoint pair,
// client and rate. A reload that changes a limit starts that limit afresh.
var rateLimitPool = caddy.NewUsagePool()

// monoBase anchors monoNow; time.Since reads the monotonic clock, so wall
// clock steps never refill or drain a bucket.
var monoBase = time.Now()

func monoNow() int64 { return int64(time.Since(monoBase)) }

// acquireRateLimits gets the pooled state for the settings. partition
// keeps two sites' limits apart, as it does their store entries.
func acquireRateLimits(partition string, s rateLimitSettings) (*rateLimits, error) {
	l := &rateLimits{now: monoNow, failCost: s.failCost, clients: make(map[string]*clientBucket, len(s.clients))}
	if s.source != nil {
		key := fmt.Sprintf("ratelimit/source/%s%d/%d/%d/%d", partition, s.source.interval, s.source.tolerance, s.prefix6, s.maxSources)
		v, _, err := rateLimitPool.LoadOrNew(key, func() (caddy.Destructor, error) {
			return newSourceTable(*s.source, s.prefix6, s.maxSources), nil
		})
		if err != nil {
			l.release()
			return nil, err
		}
		l.pooled = append(l.pooled, key)
		l.sources = v.(*sourceTable)
	}
	for id, rate := range s.clients {
		// The client_id goes last: it may contain any separator.
		key := fmt.Sprintf("ratelimit/client/%s%d/%d/%s", partition, rate.interval, rate.tolerance, id)
		v, _, err := rateLimitPool.LoadOrNew(key, func() (caddy.Destructor, error) {
			return &clientBucket{rate: rate}, nil
		})
		if err != nil {
			l.release()
			return nil, err
		}
		l.pooled = append(l.pooled, key)
		l.clients[id] = v.(*clientBucket)
	}
	return l, nil
}

// newRateLimits builds unpooled state, with an injected clock (tests).
func newRateLimits(s rateLimitSettings, now func() int64) *rateLimits {
	l := &rateLimits{now: now, failCost: s.failCost, clients: map[string]*clientBucket{}}
	if s.source != nil {
		l.sources = newSourceTable(*s.source, s.prefix6, s.maxSources)
	}
	for id, rate := range s.clients {
		l.clients[id] = &clientBucket{rate: rate}
	}
	return l
}

// release gives the pooled state back (Handler.Cleanup).
func (l *rateLimits) release() {
	if l == nil {
		return
	}
	for _, k := range l.pooled {
		_, _ = rateLimitPool.Delete(k)
	}
	l.pooled = nil
}

// checkSource takes one request from r's source and returns the source's
// key for authFailed, or the 429 to answer.
func (l *rateLimits) checkSource(r *http.Request) (sourceKey, *oauthError) {
	if l == nil || l.sources == nil {
		return sourceKey{}, nil
	}
	k := l.sources.key(sourceAddr(r))
	if wait := l.sources.take(k, l.now()); wait > 0 {
		return k, tooManyRequests("from this address", wait)
	}
	return k, nil
}

// authFailed charges a source the rest of auth_failure_cost for a failed
// client authentication: guessing secrets and sending bad signatures
// costs more than pushing.
func (l *rateLimits) authFailed(k sourceKey) {
	if l == nil || l.sources == nil || l.failCost == 0 {
		return
	}
	l.sources.charge(k, l.now(), l.failCost)
}

// admitClient takes one push from an authenticated client's bucket, or
// returns the 429 to answer. Called by the authenticator once the client
// has proved who it is and before anything is recorded.
func (l *rateLimits) admitClient(c *client) *oauthError {
	if l == nil {
		return nil
	}
	b := l.clients[c.id]
	if b == nil {
		return nil
	}
	if wait := b.take(l.now()); wait > 0 {
		return tooManyRequests("for this client", wait)
	}
	return nil
}

// refundClient gives back what admitClient took, when authentication
// fails after it after all (a replayed jti): a captured assertion must
// not let anyone use up the client's quota.
func (l *rateLimits) refundClient(c *client) {
	if l == nil {
		return
	}
	if b := l.clients[c.id]; b != nil {
		b.refund(l.now())
	}
}

// tooManyRequests is the 429 answer (RFC 9126 §2.3). The error code is
// temporarily_unavailable: §2.3 allows the codes of RFC 6749 §4.1.2.1, and
// this is the one that means "retry later", as on the gateway's 503s.
// Retry-After is whole seconds, rounded up (RFC 9110 §10.2.3).
func tooManyRequests(who string, wait int64) *oauthError {
	secs := strconv.FormatInt(retryAfterSeconds(wait), 10)
	e := newError(http.StatusTooManyRequests, ErrTemporarilyUnavailable,
		"too many pushed authorization requests "+who+"; retry after "+secs+" s")
	e.header = http.Header{"Retry-After": {secs}}
	return e
}

// retryAfterSeconds rounds a positive wait up to whole seconds.
func retryAfterSeconds(wait int64) int64 {
	return max(1, (wait+int64(time.Second)-1)/int64(time.Second))
}

// clientBucket is one client's bucket.
type clientBucket struct {
	rate gcra
	mu   sync.Mutex
	tat  int64
}

func (b *clientBucket) take(now int64) int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.rate.take(&b.tat, now)
}

func (b *clientBucket) refund(now int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.rate.refund(&b.tat, now)
}

// Destruct implements caddy.Destructor (nothing to free).
func (*clientBucket) Destruct() error { return nil }

// sourceAddr is the request's client IP as Caddy determined it
// (caddyhttp.ClientIPVarKey: the peer, or what a trusted proxy says);
// outside a Caddy server (unit tests) the peer address. The zero Addr when
// neither parses (a unix socket without trusted_proxies_unix): all such
// requests share one bucket.
func sourceAddr(r *http.Request) netip.Addr {
	if s, ok := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string); ok && s != "" {
		if a, err := netip.ParseAddr(s); err == nil {
			return a
		}
	}
	if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
		return ap.Addr()
	}
	return netip.Addr{}
}

// sourceTable holds the per-source buckets: len(sets) × sourceWays of
// them, allocated once.
type sourceTable struct {
	rate    gcra
	prefix6 int
	seed    maphash.Seed
	sets    []sourceSet
	// evicted counts buckets displaced before they had refilled.
	evicted atomic.Uint64
}

type sourceSet struct {
	mu   sync.Mutex
	ways [sourceWays]sourceSlot
}

// sourceSlot is one bucket: the source (an IPv4 address, or an IPv6
// prefix, as 16 bytes) and its theoretical arrival time. A bucket whose
// tat has passed is full, the same as no bucket: a zero slot is free.
type sourceSlot struct {
	addr [16]byte
	tat  int64
}

// sourceKey is a source's bucket address: its slot key and its set.
type sourceKey struct {
	addr [16]byte
	set  uint32
}

func newSourceTable(rate gcra, prefix6, maxSources int) *sourceTable {
	return &sourceTable{
		rate:    rate,
		prefix6: prefix6,
		seed:    maphash.MakeSeed(),
		sets:    make([]sourceSet, (maxSources+sourceWays-1)/sourceWays),
	}
}

// Destruct implements caddy.Destructor (nothing to free).
func (*sourceTable) Destruct() error { return nil }

// capacity is the number of buckets.
func (t *sourceTable) capacity() int { return len(t.sets) * sourceWays }

// key groups a: IPv4 (and IPv4-mapped IPv6) by address, IPv6 by its
// prefix. The set comes from a keyed hash, so that nobody can aim many
// addresses at one set.
func (t *sourceTable) key(a netip.Addr) sourceKey {
	var k sourceKey
	a = a.Unmap()
	switch {
	case a.Is4():
		k.addr = a.As16()
	case a.Is6():
		p, _ := a.WithZone("").Prefix(t.prefix6)
		k.addr = p.Addr().As16()
	}
	hi, _ := bits.Mul64(maphash.Bytes(t.seed, k.addr[:]), uint64(len(t.sets)))
	k.set = uint32(hi)
	return k
}

// take admits one event of k at now (0), or returns the wait.
func (t *sourceTable) take(k sourceKey, now int64) int64 {
	s := &t.sets[k.set]
	s.mu.Lock()
	defer s.mu.Unlock()
	return t.rate.take(&s.bucket(k.addr, now, &t.evicted).tat, now)
}

// charge adds n events to k's bucket.
func (t *sourceTable) charge(k sourceKey, now, n int64) {
	s := &t.sets[k.set]
	s.mu.Lock()
	defer s.mu.Unlock()
	t.rate.charge(&s.bucket(k.addr, now, &t.evicted).tat, now, n)
}

// bucket returns addr's slot, or gives addr the slot of the fullest bucket
// of the set (the smallest tat). A bucket that has refilled is the same as
// none, so reusing it loses nothing; otherwise the one displaced is the
// one closest to full, and it loses only what it had not refilled yet. A
// limited source (an empty bucket) is thus displaced only when the other
// seven of its set are at least as empty: a flood of new addresses, each
// a few requests deep, never resets it. Aiming at one set needs the hash
// seed, and draining seven buckets costs the attacker more requests than
// the displaced one gains.
func (s *sourceSet) bucket(addr [16]byte, now int64, evicted *atomic.Uint64) *sourceSlot {
	v := 0
	for i := range s.ways {
		if s.ways[i].addr == addr {
			return &s.ways[i]
		}
		if s.ways[i].tat < s.ways[v].tat {
			v = i
		}
	}
	b := &s.ways[v]
	if b.tat > now {
		evicted.Add(1)
	}
	*b = sourceSlot{addr: addr}
	return b
}

// live counts the buckets that have not refilled (tests).
func (t *sourceTable) live(now int64) int {
	n := 0
	for i := range t.sets {
		s := &t.sets[i]
		s.mu.Lock()
		for _, w := range s.ways {
			if w.tat > now {
				n++
			}
		}
		s.mu.Unlock()
	}
	return n
}

// Interface guards
var (
	_ caddy.Destructor = (*sourceTable)(nil)
	_ caddy.Destructor = (*clientBucket)(nil)
)
