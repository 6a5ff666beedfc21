package caddymodule

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"
)

// Prometheus metrics, in Caddy's metrics registry (served by the admin
// API's /metrics and by the metrics handler).
//
// Caddy gives every config load a registry of its own. The collectors here
// are process-wide and registered into each one, as Caddy does with its
// admin metrics: counters keep counting across config reloads, and what
// requests of the old config finish after a reload is not lost. A second
// oauth_par handler in the same config gets prometheus.AlreadyRegisteredError
// and uses the collector already registered.
//
// Label cardinality is bounded by the configuration, never by requests:
// client_id is a configured client's ID or "unknown", error is one of
// metricErrorCodes or "other", outcome and the store labels are fixed sets.

const metricsNamespace = "caddy_oauth_par"

// caddyStartTimeVar is the request variable in which Caddy's server keeps
// when it received the request (caddyhttp sets it for the
// http.request.duration placeholder).
const caddyStartTimeVar = "start_time"

// metricUnknownClient is the client_id label of every client_id that is not
// configured (including none at all).
const metricUnknownClient = "unknown"

// durationBuckets suit an operation of ~0.05-50 ms (memory store: tens of
// µs; Redis: a round trip; a slow client's body: more), up to beyond the
// Redis timeouts (250 ms by default).
var durationBuckets = []float64{.00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1}

// parMetrics are the collectors a gateway counts into.
type parMetrics struct {
	pushes         *prometheus.CounterVec   // client_id, outcome, error
	authorizations *prometheus.CounterVec   // client_id, outcome, error
	pushDuration   *prometheus.HistogramVec // outcome
	redeemDuration *prometheus.HistogramVec // outcome
	refusals       *prometheus.CounterVec   // operation, reason
	tokens         *prometheus.CounterVec   // client_id, outcome, error
	responses      *prometheus.CounterVec   // client_id, outcome, error
}

// globalMetrics are the process-wide collectors (see above).
var globalMetrics = newParMetrics()

func newParMetrics() *parMetrics {
	return &parMetrics{
		pushes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: metricsNamespace,
			Name:      "pushes_total",
			Help:      "Pushed authorization requests at the PAR endpoint, by client, outcome (issued, rejected) and OAuth error code.",
		}, []string{"client_id", "outcome", "error"}),
		authorizations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: metricsNamespace,
			Name:      "authorization_requests_total",
			Help:      "Requests at the authorization endpoint, by client, outcome (redeemed, redeemed_again within reuse_grace, rejected, passed_through) and OAuth error code.",
		}, []string{"client_id", "outcome", "error"}),
		pushDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: metricsNamespace,
			Name:      "push_duration_seconds",
			Help:      "Time from Caddy receiving a push to its outcome (the response about to be written), by outcome.",
			Buckets:   durationBuckets,
		}, []string{"outcome"}),
		redeemDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: metricsNamespace,
			Name:      "redemption_duration_seconds",
			Help:      "Time from Caddy receiving an authorization request with a request_uri to its outcome (before forwarding upstream, or the error page), by outcome.",
			Buckets:   durationBuckets,
		}, []string{"outcome"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: metricsNamespace,
			Name:      "store_refusals_total",
			Help:      "Store operations that failed, so that a push, a redemption or a JWT check was refused with 503, by operation (put, take, claim) and reason (full, unavailable).",
		}, []string{"operation", "reason"}),
		tokens: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: metricsNamespace,
			Name:      "token_requests_total",
			Help:      "Requests at the token endpoint behind the gateway (token_endpoint), by client, outcome (forwarded, rejected) and OAuth error code.",
		}, []string{"client_id", "outcome", "error"}),
		responses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: metricsNamespace,
			Name:      "authorization_responses_total",
			Help:      "Authorization responses to registered redirect URIs seen by add_iss or gateway_pkce, by client, outcome (checked, code_bound, rejected) and OAuth error code.",
		}, []string{"client_id", "outcome", "error"}),
	}
}

// provisionMetrics registers the collectors in the config's registry and
// returns those the gateway counts into: the process-wide ones, or those
// already registered under the same names.
func provisionMetrics(ctx caddy.Context) (*parMetrics, error) {
	m := *globalMetrics
	reg := ctx.GetMetricsRegistry()
	if reg == nil {
		return &m, nil
	}
	var err error
	if m.pushes, err = registerOrReuse(reg, m.pushes); err != nil {
		return nil, err
	}
	if m.authorizations, err = registerOrReuse(reg, m.authorizations); err != nil {
		return nil, err
	}
	if m.pushDuration, err = registerOrReuse(reg, m.pushDuration); err != nil {
		return nil, err
	}
	if m.redeemDuration, err = registerOrReuse(reg, m.redeemDuration); err != nil {
		return nil, err
	}
	if m.refusals, err = registerOrReuse(reg, m.refusals); err != nil {
		return nil, err
	}
	if m.tokens, err = registerOrReuse(reg, m.tokens); err != nil {
		return nil, err
	}
	if m.responses, err = registerOrReuse(reg, m.responses); err != nil {
		return nil, err
	}
	if _, err = registerOrReuse(reg, prometheus.Collector(storeCollectorInstance)); err != nil {
		return nil, err
	}
	return &m, nil
}

// registerOrReuse registers c, or returns the collector registered before
// with the same descriptors (a second handler in the same config).
func registerOrReuse[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	err := reg.Register(c)
	if err == nil {
		return c, nil
	}
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if existing, ok := are.ExistingCollector.(C); ok {
			return existing, nil
		}
	}
	return c, err
}

// endpointKind is where an outcome happened.
type endpointKind uint8

const (
	// epPAR is the PAR endpoint.
	epPAR endpointKind = iota
	// epRedeem is the authorization endpoint with one of our request_uris.
	epRedeem
	// epAuthorize is the authorization endpoint otherwise (passed through,
	// or rejected because PAR is required or the request is malformed).
	epAuthorize
	// epToken is the token endpoint behind the gateway (token_endpoint).
	epToken
	// epAuthzResponse is an authorization response on its way to a
	// registered redirect_uri (add_iss, gateway_pkce).
	epAuthzResponse
)

// logName is the endpoint as the log lines name it.
func (e endpointKind) logName() string {
	switch e {
	case epPAR:
		return "par"
	case epToken:
		return "token"
	case epAuthzResponse:
		return "authorization_response"
	}
	return "authorize"
}

// metricErrorCodes are the error label values; any other code counts as
// "other". Every code the gateway sends is listed (errors.go).
var metricErrorCodes = map[string]bool{
	"":                             true,
	ErrInvalidRequest:              true,
	ErrInvalidClient:               true,
	ErrInvalidScope:                true,
	ErrUnsupportedResponseType:     true,
	ErrInvalidRequestURI:           true,
	ErrRequestNotSupported:         true,
	ErrInvalidRequestObject:        true,
	ErrInvalidDPoPProof:            true,
	ErrInvalidAuthorizationDetails: true,
	ErrTemporarilyUnavailable:      true,
	ErrServerError:                 true,
	ErrInvalidGrant:                true,
}

func metricErrorCode(code string) string {
	if metricErrorCodes[code] {
		return code
	}
	return "other"
}

// metricOutcomes are the outcome label values.
var metricOutcomes = map[string]bool{"issued": true, "redeemed": true, "redeemed_again": true, "rejected": true, "passed_through": true, "forwarded": true, "checked": true, "code_bound": true}

// observe counts one outcome. clientLabel is already bounded (a configured
// client or metricUnknownClient); start is when Caddy received the request
// (zero: not known, no latency observed).
func (m *parMetrics) observe(ep endpointKind, clientLabel, outcome, code string, start time.Time) {
	if !metricOutcomes[outcome] {
		outcome = "other"
	}
	code = metricErrorCode(code)
	switch ep {
	case epPAR:
		m.pushes.WithLabelValues(clientLabel, outcome, code).Inc()
		if !start.IsZero() {
			m.pushDuration.WithLabelValues(outcome).Observe(time.Since(start).Seconds())
		}
	case epRedeem:
		m.authorizations.WithLabelValues(clientLabel, outcome, code).Inc()
		if !start.IsZero() {
			m.redeemDuration.WithLabelValues(outcome).Observe(time.Since(start).Seconds())
		}
	case epToken:
		m.tokens.WithLabelValues(clientLabel, outcome, code).Inc()
	case epAuthzResponse:
		m.responses.WithLabelValues(clientLabel, outcome, code).Inc()
	default:
		m.authorizations.WithLabelValues(clientLabel, outcome, code).Inc()
	}
}

// metricClient is the client_id label for id: only configured clients get
// their own, so that callers cannot create label values.
func (g *gateway) metricClient(id string) string {
	if _, ok := g.clients[id]; ok {
		return id
	}
	return metricUnknownClient
}

// ---- store refusals ----

// errMemoryStoreFull is the memory store's refusal when max_size is used
// up; it is an ErrStoreUnavailable.
var errMemoryStoreFull = fmt.Errorf("%w: memory store is full", ErrStoreUnavailable)

// meteredStore counts the refusals of the store it wraps. The embedded
// Store passes everything else through.
type meteredStore struct {
	Store
	m *parMetrics
}

// newMeteredStore wraps s; without metrics it returns s.
func newMeteredStore(s Store, m *parMetrics) Store {
	if m == nil {
		return s
	}
	return meteredStore{Store: s, m: m}
}

func (s meteredStore) Put(ctx context.Context, ref string, req PushedRequest) error {
	err := s.Store.Put(ctx, ref, req)
	if err != nil {
		s.refused("put", err)
	}
	return err
}

func (s meteredStore) Take(ctx context.Context, ref string, rd Redemption) (Redeemed, error) {
	req, err := s.Store.Take(ctx, ref, rd)
	if err != nil && !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrExpired) && !errors.Is(err, ErrClientMismatch) {
		s.refused("take", err)
	}
	return req, err
}

func (s meteredStore) Claim(ctx context.Context, key string, expiresAt time.Time) error {
	err := s.Store.Claim(ctx, key, expiresAt)
	if err != nil && !errors.Is(err, ErrReplay) {
		s.refused("claim", err)
	}
	return err
}

func (s meteredStore) refused(op string, err error) {
	reason := "unavailable"
	if errors.Is(err, errMemoryStoreFull) {
		reason = "full"
	}
	s.m.refusals.WithLabelValues(op, reason).Inc()
}

// ---- store gauges ----

// storeCollector reports the stores in use, read at scrape time from the
// pools that share them across reloads: for the memory store its own
// bookkeeping (entries, charged bytes, max_size), for Redis whether the
// gateway currently reaches it. Entries in Redis are not counted: that
// would take a SCAN over the shared keyspace per scrape.
type storeCollector struct {
	entries, bytes, capacity, up *prometheus.Desc
}

var storeCollectorInstance = &storeCollector{
	entries: prometheus.NewDesc(metricsNamespace+"_store_entries",
		"Entries held by the memory stores in use: kind request (pushed requests awaiting redemption) or claim (single-use JWT ids recorded; expired ones until the next sweep, at most 30 s).",
		[]string{"backend", "kind"}, nil),
	bytes: prometheus.NewDesc(metricsNamespace+"_store_bytes",
		"Bytes the memory stores in use charge to their max_size (entries and claims, bookkeeping included). Pushes are refused when this reaches capacity.",
		[]string{"backend"}, nil),
	capacity: prometheus.NewDesc(metricsNamespace+"_store_capacity_bytes",
		"max_size of the memory stores in use.",
		[]string{"backend"}, nil),
	up: prometheus.NewDesc(metricsNamespace+"_store_up",
		"Whether the last operation on a Redis store succeeded (1) or the store is in an outage (0), by address.",
		[]string{"backend", "address"}, nil),
}

func (c *storeCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.entries
	ch <- c.bytes
	ch <- c.capacity
	ch <- c.up
}

func (c *storeCollector) Collect(ch chan<- prometheus.Metric) {
	var requests, claims, used, capacity int64
	memory := false
	memoryPool.Range(func(_, v any) bool {
		if mc, ok := v.(*memoryCache); ok {
			memory = true
			r, cl, u := mc.stats()
			requests += r
			claims += cl
			used += u
			capacity += mc.budget
		}
		return true
	})
	if memory {
		ch <- prometheus.MustNewConstMetric(c.entries, prometheus.GaugeValue, float64(requests), "memory", "request")
		ch <- prometheus.MustNewConstMetric(c.entries, prometheus.GaugeValue, float64(claims), "memory", "claim")
		ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.GaugeValue, float64(used), "memory")
		ch <- prometheus.MustNewConstMetric(c.capacity, prometheus.GaugeValue, float64(capacity), "memory")
	}
	// Two pooled clients for one address (different credentials or DB)
	// report once: up only if both are. Collected first: no nested Range.
	var addrs []string
	up := map[string]float64{}
	redisPool.Range(func(_, v any) bool {
		if b, ok := v.(*redisBackend); ok {
			a := b.health.address
			if _, seen := up[a]; !seen {
				addrs = append(addrs, a)
				up[a] = 1
			}
			if b.health.down.Load() {
				up[a] = 0
			}
		}
		return true
	})
	for _, a := range addrs {
		ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, up[a], "redis", a)
	}
}

// stats are the memory store's counts: pushed requests held, claims
// recorded, bytes charged to the budget.
func (m *memoryCache) stats() (requests, claims, used int64) {
	for i := range m.claims {
		sh := &m.claims[i]
		sh.mu.Lock()
		claims += int64(len(sh.m))
		sh.mu.Unlock()
	}
	return m.entries.Load(), claims, m.used.Load()
}
