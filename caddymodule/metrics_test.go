package caddymodule

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
)

// gather collects c through a pedantic registry (which checks it is
// consistent with its descriptors).
func gather(t *testing.T, c prometheus.Collector) []*dto.MetricFamily {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	return mfs
}

// series counts c's time series.
func series(t *testing.T, c prometheus.Collector) int {
	n := 0
	for _, mf := range gather(t, c) {
		n += len(mf.GetMetric())
	}
	return n
}

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

func TestRegisterOrReuseReturnsTheCollectorAlreadyRegistered(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	first, second := newParMetrics(), newParMetrics()
	got, err := registerOrReuse(reg, first.pushes)
	if err != nil || got != first.pushes {
		t.Fatalf("first registration: %v %v", got, err)
	}
	// The same collector again (a second handler in one config).
	if got, err = registerOrReuse(reg, first.pushes); err != nil || got != first.pushes {
		t.Fatalf("same collector again: %v %v", got, err)
	}
	// Another collector with the same descriptors: the registered one is
	// used, so that both count into what is exported.
	if got, err = registerOrReuse(reg, second.pushes); err != nil || got != first.pushes {
		t.Fatalf("equal collector: got %p (first %p, second %p), %v", got, first.pushes, second.pushes, err)
	}
	// A real conflict is an error.
	clash := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "caddy_oauth_par_pushes_total", Help: "other"}, []string{"x"})
	if _, err := registerOrReuse(reg, clash); err == nil {
		t.Fatal("conflicting collector registered")
	}
}

func TestMetricsLintAndBoundedLabels(t *testing.T) {
	m := newParMetrics()
	m.observe(epPAR, "web-app", "issued", "", time.Now())
	m.observe(epPAR, metricUnknownClient, "rejected", "made_up_code", time.Now())
	m.observe(epPAR, metricUnknownClient, "bogus_outcome", ErrInvalidClient, time.Time{})
	m.observe(epRedeem, "web-app", "redeemed", "", time.Now())
	m.observe(epAuthorize, metricUnknownClient, "passed_through", "", time.Now())
	m.refusals.WithLabelValues("put", "full").Inc()
	for name, c := range map[string]prometheus.Collector{
		"pushes": m.pushes, "authorizations": m.authorizations, "push duration": m.pushDuration,
		"redeem duration": m.redeemDuration, "refusals": m.refusals, "store": storeCollectorInstance,
	} {
		problems, err := promlint.NewWithMetricFamilies(gather(t, c)).Lint()
		if err != nil || len(problems) > 0 {
			t.Errorf("%s: %v %v", name, err, problems)
		}
	}
	if got := counterValue(t, m.pushes.WithLabelValues(metricUnknownClient, "rejected", "other")); got != 1 {
		t.Errorf("an unknown error code counts as other: %v", got)
	}
	if got := counterValue(t, m.pushes.WithLabelValues(metricUnknownClient, "other", ErrInvalidClient)); got != 1 {
		t.Errorf("an unknown outcome counts as other: %v", got)
	}
	// Latency: pushes and redemptions only, and only with a start time.
	if n := series(t, m.pushDuration); n != 2 {
		t.Errorf("push duration series: %d", n)
	}
	if got := series(t, m.redeemDuration); got != 1 {
		t.Errorf("redemption duration series: %d", got)
	}
}

func TestMetricClientLabelOnlyForConfiguredClients(t *testing.T) {
	g := newTestGateway(t, nil)
	seen := map[string]bool{}
	for i := range 1000 {
		seen[g.metricClient(fmt.Sprintf("c-%d", i))] = true
	}
	seen[g.metricClient("")] = true
	if len(seen) != 1 || !seen[metricUnknownClient] {
		t.Errorf("label values for unknown clients: %v", seen)
	}
	if g.metricClient("web-app") != "web-app" || g.metricClient("spa") != "spa" {
		t.Error("configured clients keep their ID")
	}
}

// fakeStore answers every operation with err.
type fakeStore struct{ err error }

func (f fakeStore) Put(context.Context, string, PushedRequest) error { return f.err }
func (f fakeStore) Take(context.Context, string, Redemption) (Redeemed, error) {
	return Redeemed{}, f.err
}
func (f fakeStore) Claim(context.Context, string, time.Time) error { return f.err }

func TestMeteredStoreCountsRefusalsOnly(t *testing.T) {
	ctx := t.Context()
	unavailable := fmt.Errorf("%w: redis SET: dial tcp: connection refused", ErrStoreUnavailable)
	for _, tc := range []struct {
		op     string
		err    error
		reason string // "" for no refusal
	}{
		{"put", nil, ""},
		{"put", errMemoryStoreFull, "full"},
		{"put", unavailable, "unavailable"},
		{"put", errors.New("unexpected"), "unavailable"},
		{"take", nil, ""},
		{"take", ErrNotFound, ""},
		{"take", fmt.Errorf("%w: stored client differs", ErrNotFound), ""},
		{"take", ErrExpired, ""},
		{"take", ErrClientMismatch, ""},
		{"take", unavailable, "unavailable"},
		{"claim", nil, ""},
		{"claim", ErrReplay, ""},
		{"claim", errMemoryStoreFull, "full"},
		{"claim", unavailable, "unavailable"},
	} {
		m := newParMetrics()
		s := newMeteredStore(fakeStore{tc.err}, m)
		var err error
		switch tc.op {
		case "put":
			err = s.Put(ctx, "k", PushedRequest{})
		case "take":
			_, err = s.Take(ctx, "k", oneTime("c"))
		case "claim":
			err = s.Claim(ctx, "k", time.Now())
		}
		if err != tc.err {
			t.Errorf("%s: the error is not passed on: %v", tc.op, err)
		}
		for _, op := range []string{"put", "take", "claim"} {
			for _, reason := range []string{"full", "unavailable"} {
				want := 0.0
				if op == tc.op && reason == tc.reason {
					want = 1
				}
				if got := counterValue(t, m.refusals.WithLabelValues(op, reason)); got != want {
					t.Errorf("%s returning %v: refusals{%s,%s} = %v, want %v", tc.op, tc.err, op, reason, got, want)
				}
			}
		}
	}
	if s := newMeteredStore(fakeStore{}, nil); s != (fakeStore{}) {
		t.Errorf("without metrics the store is not wrapped: %T", s)
	}
}

// The memory store's counts, which the store gauges export.
func TestMemoryStoreStats(t *testing.T) {
	c := newTestCache(t, 1<<20)
	ctx := t.Context()
	exp := time.Now().Add(time.Minute)
	for i := range 3 {
		if err := c.Put(ctx, fmt.Sprintf("k%d", i), PushedRequest{ClientID: "a", Params: "x=1", ExpiresAt: exp}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Take(ctx, "k0", oneTime("a")); err != nil {
		t.Fatal(err)
	}
	if err := c.Claim(ctx, "jti-1", exp); err != nil {
		t.Fatal(err)
	}
	c.c.Wait()
	requests, claims, used := c.stats()
	if requests != 2 || claims != 1 || used != c.used.Load() || used <= 0 {
		t.Errorf("stats = %d requests, %d claims, %d bytes", requests, claims, used)
	}
	// A refused push holds nothing.
	small := newTestCache(t, minMemoryStoreSize)
	big := PushedRequest{ClientID: "a", Params: strings.Repeat("x", minMemoryStoreSize), ExpiresAt: exp}
	if err := small.Put(ctx, "big", big); !errors.Is(err, errMemoryStoreFull) || !errors.Is(err, ErrStoreUnavailable) {
		t.Fatalf("oversized put: %v", err)
	}
	if r, _, u := small.stats(); r != 0 || u != 0 {
		t.Errorf("after a refused put: %d requests, %d bytes", r, u)
	}
}
