package caddymodule_test

// In-process Caddy tests of the Prometheus metrics: requests over loopback,
// then a scrape of the admin API's /metrics, parsed as the text exposition
// format. The collectors are process-wide (they count across reloads), so
// the tests compare scrapes before and after their requests.

import (
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddy-par/caddy-par/caddymodule"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// mtCaddyfile is ctCaddyfile with the admin API on adminPort (for
// /metrics) and extra sites appended.
func mtCaddyfile(adminPort, port int, upstream, storage, block, extraSites string) string {
	return fmt.Sprintf(`{
	admin 127.0.0.1:%d
	auto_https off
	persist_config off
	grace_period 2s
	storage file_system %s
	log {
		output discard
	}
}

http://127.0.0.1:%d {
	bind 127.0.0.1
	oauth_par {
		%s
	}
	reverse_proxy %s
}
%s
`, adminPort, storage, port, block, upstream, extraSites)
}

// mtCaddy is a running Caddy with its admin API.
type mtCaddy struct {
	*ctCaddy
	admin int
}

func mtStart(t *testing.T, up *ctUpstream, block, extraSites string) *mtCaddy {
	t.Helper()
	c := &mtCaddy{ctCaddy: &ctCaddy{port: ctFreePort(t), up: up, storage: t.TempDir()}, admin: ctFreePort(t)}
	c.base = fmt.Sprintf("http://127.0.0.1:%d", c.port)
	c.tr = &http.Transport{DisableCompression: true, MaxIdleConnsPerHost: 64}
	c.client = &http.Client{
		Timeout:       ctHTTPTimeout,
		Transport:     c.tr,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	c.load(t, block, extraSites)
	t.Cleanup(func() {
		c.tr.CloseIdleConnections()
		// Take the admin API down with the config, as the other tests run
		// with admin off.
		_ = ctAdaptLoad(fmt.Sprintf("{\n\tadmin off\n\tlog {\n\t\toutput discard\n\t}\n}\n"))
	})
	return c
}

func (c *mtCaddy) load(t *testing.T, block, extraSites string) {
	t.Helper()
	if err := ctAdaptLoad(mtCaddyfile(c.admin, c.port, c.up.addr(), c.storage, block, extraSites)); err != nil {
		t.Fatalf("loading Caddy: %v", err)
	}
	c.tr.CloseIdleConnections()
}

// mtMetrics is one scrape.
type mtMetrics map[string]*dto.MetricFamily

// scrape fetches and parses the admin API's /metrics. After a reload the
// new admin server may take a moment to answer.
func (c *mtCaddy) scrape(t *testing.T) mtMetrics {
	t.Helper()
	hc := &http.Client{Timeout: ctHTTPTimeout, Transport: &http.Transport{DisableKeepAlives: true}}
	var lastErr error
	for i := 0; i < 50; i++ {
		resp, err := hc.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", c.admin))
		if err != nil {
			lastErr = err
			time.Sleep(20 * time.Millisecond)
			continue
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET /metrics: %s", resp.Status)
		}
		if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
			t.Fatalf("GET /metrics: Content-Type %q, want the text exposition format", ct)
		}
		p := expfmt.NewTextParser(model.UTF8Validation)
		fams, err := p.TextToMetricFamilies(resp.Body)
		if err != nil {
			t.Fatalf("parsing /metrics: %v", err)
		}
		return fams
	}
	t.Fatalf("GET /metrics: %v", lastErr)
	return nil
}

// mtMatch reports whether m has all the labels (name=value pairs).
func mtMatch(m *dto.Metric, labels []string) bool {
	for i := 0; i+1 < len(labels); i += 2 {
		found := false
		for _, lp := range m.GetLabel() {
			if lp.GetName() == labels[i] {
				found = lp.GetValue() == labels[i+1]
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// value is the sum over the series of name with the labels: a counter's or
// gauge's value, a histogram's sample count. 0 when there is none.
func (ms mtMetrics) value(name string, labels ...string) float64 {
	f := ms[name]
	if f == nil {
		return 0
	}
	var v float64
	for _, m := range f.GetMetric() {
		if !mtMatch(m, labels) {
			continue
		}
		switch f.GetType() {
		case dto.MetricType_COUNTER:
			v += m.GetCounter().GetValue()
		case dto.MetricType_GAUGE:
			v += m.GetGauge().GetValue()
		case dto.MetricType_HISTOGRAM:
			v += float64(m.GetHistogram().GetSampleCount())
		}
	}
	return v
}

// labelValues are the distinct values of label in name's series.
func (ms mtMetrics) labelValues(name, label string) map[string]bool {
	out := map[string]bool{}
	if f := ms[name]; f != nil {
		for _, m := range f.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == label {
					out[lp.GetValue()] = true
				}
			}
		}
	}
	return out
}

// mtWant is one expected change between two scrapes.
type mtWant struct {
	name   string
	labels []string
	delta  float64
}

func mtCheckDeltas(t *testing.T, before, after mtMetrics, wants []mtWant) {
	t.Helper()
	for _, w := range wants {
		if got := after.value(w.name, w.labels...) - before.value(w.name, w.labels...); got != w.delta {
			t.Errorf("%s%v: changed by %v, want %v", w.name, w.labels, got, w.delta)
		}
	}
}

const (
	mtPushes  = "caddy_oauth_par_pushes_total"
	mtAuthz   = "caddy_oauth_par_authorization_requests_total"
	mtPushDur = "caddy_oauth_par_push_duration_seconds"
	mtRedDur  = "caddy_oauth_par_redemption_duration_seconds"
	mtRefusal = "caddy_oauth_par_store_refusals_total"
	mtEntries = "caddy_oauth_par_store_entries"
	mtBytes   = "caddy_oauth_par_store_bytes"
	mtCap     = "caddy_oauth_par_store_capacity_bytes"
	mtUp      = "caddy_oauth_par_store_up"
)

// mtOps runs a fixed mix of requests and returns what they must have
// counted: 4 issued (3 web-app, 1 spa), 3 rejected pushes, 2 redeemed, 1
// reuse rejected, 1 unpushed request of strict-app rejected, 1 passed
// through for an unconfigured client.
func mtOps(t *testing.T, c *ctCaddy) []mtWant {
	t.Helper()
	auth := ctBasic(ctAppID, ctAppSecret)
	var uris []string
	for range 3 {
		uris = append(uris, c.mustPush(t, ctAppForm(), auth))
	}
	c.mustPush(t, ctSPAForm(), nil)
	ctWantJSONError(t, c.postForm(t, "/par", ctAppForm().Encode(), ctBasic(ctAppID, "wrong")), http.StatusUnauthorized, "invalid_client")
	ctWantJSONError(t, c.postForm(t, "/par", ctWith(ctAppForm(), "client_id", "mallory").Encode(), ctBasic("mallory", "x")), http.StatusUnauthorized, "invalid_client")
	ctWantJSONError(t, c.pushApp(t, ctWith(ctAppForm(), "scope", "admin")), http.StatusBadRequest, "invalid_scope")
	for _, u := range uris[:2] {
		if r := c.get(t, ctRedeemQuery(ctAppID, u), nil); r.Status != http.StatusOK {
			t.Fatalf("redeem: %s", r)
		}
	}
	ctWantHTMLError(t, c.get(t, ctRedeemQuery(ctAppID, uris[0]), nil), http.StatusBadRequest, "invalid_request_uri")
	strict := url.Values{"client_id": {ctStrictID}, "response_type": {"code"}, "redirect_uri": {ctStrictRedir}, "state": {"s"}}
	if r := c.get(t, "/authorize?"+strict.Encode(), nil); r.Status != http.StatusSeeOther {
		t.Fatalf("unpushed request of strict-app: %s", r)
	}
	other := url.Values{"client_id": {"idp-only-client"}, "response_type": {"code"}, "redirect_uri": {"https://rp.example.test/cb"}}
	if r := c.get(t, "/authorize?"+other.Encode(), nil); r.Status != http.StatusOK {
		t.Fatalf("pass-through: %s", r)
	}
	return []mtWant{
		{mtPushes, []string{"client_id", ctAppID, "outcome", "issued", "error", ""}, 3},
		{mtPushes, []string{"client_id", ctSPAID, "outcome", "issued", "error", ""}, 1},
		{mtPushes, []string{"client_id", ctAppID, "outcome", "rejected", "error", "invalid_client"}, 1},
		{mtPushes, []string{"client_id", "unknown", "outcome", "rejected", "error", "invalid_client"}, 1},
		{mtPushes, []string{"client_id", ctAppID, "outcome", "rejected", "error", "invalid_scope"}, 1},
		{mtPushes, nil, 7},
		{mtAuthz, []string{"client_id", ctAppID, "outcome", "redeemed", "error", ""}, 2},
		{mtAuthz, []string{"client_id", ctAppID, "outcome", "rejected", "error", "invalid_request_uri"}, 1},
		{mtAuthz, []string{"client_id", ctStrictID, "outcome", "rejected", "error", "invalid_request"}, 1},
		{mtAuthz, []string{"client_id", "unknown", "outcome", "passed_through", "error", ""}, 1},
		{mtAuthz, nil, 5},
		{mtPushDur, []string{"outcome", "issued"}, 4},
		{mtPushDur, []string{"outcome", "rejected"}, 3},
		{mtRedDur, []string{"outcome", "redeemed"}, 2},
		// The unpushed request and the pass-through are no redemptions.
		{mtRedDur, []string{"outcome", "rejected"}, 1},
		{mtRefusal, nil, 0},
	}
}

func TestCaddyMetricsCountOutcomesExactly(t *testing.T) {
	up := ctNewUpstream(t, nil)
	// Without reuse_grace a redeemed entry leaves the store at once.
	c := mtStart(t, up, ctBlock("reuse_grace off", "store memory {\n\t\t\tmax_size 1MiB\n\t\t}"), "")
	before := c.scrape(t)
	wants := mtOps(t, c.ctCaddy)
	after := c.scrape(t)
	mtCheckDeltas(t, before, after, wants)

	// Families, types and help.
	for name, typ := range map[string]dto.MetricType{
		mtPushes: dto.MetricType_COUNTER, mtAuthz: dto.MetricType_COUNTER,
		mtPushDur: dto.MetricType_HISTOGRAM, mtRedDur: dto.MetricType_HISTOGRAM,
		mtEntries: dto.MetricType_GAUGE, mtBytes: dto.MetricType_GAUGE, mtCap: dto.MetricType_GAUGE,
	} {
		f := after[name]
		if f == nil {
			t.Errorf("no %s in /metrics", name)
			continue
		}
		if f.GetType() != typ || f.GetHelp() == "" {
			t.Errorf("%s: type %v help %q, want %v with help", name, f.GetType(), f.GetHelp(), typ)
		}
	}
	// Latency buckets for a ~0.05-50 ms operation.
	if f := after[mtPushDur]; f != nil {
		h := f.GetMetric()[0].GetHistogram()
		var bounds []string
		for _, b := range h.GetBucket() {
			bounds = append(bounds, strconv.FormatFloat(b.GetUpperBound(), 'g', -1, 64))
		}
		if got := strings.Join(bounds, " "); got != "5e-05 0.0001 0.00025 0.0005 0.001 0.0025 0.005 0.01 0.025 0.05 0.1 0.25 1 +Inf" {
			t.Errorf("push latency buckets: %s", got)
		}
		if s := h.GetSampleSum(); s <= 0 || s > 10 {
			t.Errorf("push latency sum %v s is implausible", s)
		}
	}

	// Store gauges: the one memory store of this config holds the two
	// pushes of web-app not redeemed and the one of spa.
	if got := after.value(mtEntries, "backend", "memory", "kind", "request"); got != 2 {
		t.Errorf("%s{kind=request} = %v, want 2", mtEntries, got)
	}
	if got := after.value(mtEntries, "backend", "memory", "kind", "claim"); got != 0 {
		t.Errorf("%s{kind=claim} = %v, want 0", mtEntries, got)
	}
	if got := after.value(mtCap, "backend", "memory"); got != 1<<20 {
		t.Errorf("%s = %v, want %d", mtCap, got, 1<<20)
	}
	if got := after.value(mtBytes, "backend", "memory"); got < 2*300 || got > 2*2048 {
		t.Errorf("%s = %v, want about two entries' worth", mtBytes, got)
	}
}

func TestCaddyMetricsStoreRefusalsFullAndUnavailable(t *testing.T) {
	up := ctNewUpstream(t, nil)
	c := mtStart(t, up, ctBlock("store memory {\n\t\t\tmax_size 16KiB\n\t\t}"), "")
	before := c.scrape(t)
	issued, refused := 0, 0
	for i := 0; refused < 2; i++ {
		if i > 500 {
			t.Fatal("the 16KiB store never filled up")
		}
		switch r := c.pushApp(t, ctAppForm()); r.Status {
		case http.StatusCreated:
			issued++
		case http.StatusServiceUnavailable:
			refused++
		default:
			t.Fatalf("push: %s", r)
		}
	}
	after := c.scrape(t)
	mtCheckDeltas(t, before, after, []mtWant{
		{mtRefusal, []string{"operation", "put", "reason", "full"}, 2},
		{mtRefusal, []string{"reason", "unavailable"}, 0},
		{mtPushes, []string{"client_id", ctAppID, "outcome", "rejected", "error", "temporarily_unavailable"}, 2},
		{mtPushes, []string{"client_id", ctAppID, "outcome", "issued"}, float64(issued)},
	})
	if got := after.value(mtEntries, "kind", "request"); got != float64(issued) {
		t.Errorf("%s{kind=request} = %v, want %d", mtEntries, got, issued)
	}
	if b, cp := after.value(mtBytes), after.value(mtCap); b > cp || b < cp*3/4 {
		t.Errorf("full store: %v of %v bytes charged", b, cp)
	}

	// A Redis store nobody listens on: every push is refused as
	// unavailable, and the store is reported down.
	dead := fmt.Sprintf("127.0.0.1:%d", ctFreePort(t))
	c.load(t, ctBlock("store redis {\n\t\t\taddress "+dead+"\n\t\t}"), "")
	before = c.scrape(t)
	for range 3 {
		ctWantJSONError(t, c.pushApp(t, ctAppForm()), http.StatusServiceUnavailable, "temporarily_unavailable")
	}
	// A redemption needs the store too.
	ctWantHTMLError(t, c.get(t, ctRedeemQuery(ctAppID, ctURNPrefix+strings.Repeat("A", 43)), nil), http.StatusServiceUnavailable, "temporarily_unavailable")
	after = c.scrape(t)
	mtCheckDeltas(t, before, after, []mtWant{
		{mtRefusal, []string{"operation", "put", "reason", "unavailable"}, 3},
		{mtRefusal, []string{"operation", "take", "reason", "unavailable"}, 1},
		{mtRefusal, []string{"reason", "full"}, 0},
		{mtAuthz, []string{"client_id", ctAppID, "outcome", "rejected", "error", "temporarily_unavailable"}, 1},
	})
	if got, n := after.value(mtUp, "backend", "redis", "address", dead), len(after[mtUp].GetMetric()); got != 0 || n != 1 {
		t.Errorf("%s{address=%s} = %v (%d series), want 0 (1 series)", mtUp, dead, got, n)
	}
	if _, ok := after[mtEntries]; ok {
		t.Errorf("%s reported without a memory store: %v", mtEntries, after[mtEntries])
	}
}

// Caddy gives each config load a new registry: the collectors must be
// registered again, tolerate a second handler in the same config
// (AlreadyRegisteredError), and keep counting across the reload.
func TestCaddyMetricsSurviveReloadsAndSeveralHandlers(t *testing.T) {
	up := ctNewUpstream(t, nil)
	store := "store memory {\n\t\t\tmax_size 1MiB\n\t\t}"
	c := mtStart(t, up, ctBlock(store), "")
	first := c.scrape(t)
	wants := mtOps(t, c.ctCaddy)

	// The reload adds a second site with its own oauth_par handler: two
	// handlers register into one registry.
	port2 := ctFreePort(t)
	second := fmt.Sprintf(`
http://127.0.0.1:%d {
	bind 127.0.0.1
	oauth_par {
		%s
	}
	reverse_proxy %s
}`, port2, ctBlock(store, "client second-site-app {\n\t\t\tsecret s2\n\t\t\tredirect_uris https://second.example.test/cb\n\t\t}"), up.addr())
	c.load(t, ctBlock(store), second)
	other := &ctCaddy{base: fmt.Sprintf("http://127.0.0.1:%d", port2), client: c.client}

	// Counters carry on from before the reload; both sites count.
	mid := c.scrape(t)
	mtCheckDeltas(t, first, mid, wants)
	mtOps(t, c.ctCaddy)
	form := url.Values{"client_id": {"second-site-app"}, "response_type": {"code"}, "redirect_uri": {"https://second.example.test/cb"}}
	other.mustPush(t, form, ctBasic("second-site-app", "s2"))
	other.mustPush(t, ctAppForm(), ctBasic(ctAppID, ctAppSecret))
	last := c.scrape(t)
	mtCheckDeltas(t, mid, last, []mtWant{
		{mtPushes, []string{"client_id", "second-site-app", "outcome", "issued"}, 1},
		{mtPushes, []string{"client_id", ctAppID, "outcome", "issued"}, 3 + 1},
		{mtPushes, nil, 7 + 2},
		{mtPushDur, []string{"outcome", "issued"}, 4 + 2},
		{mtAuthz, nil, 5},
		{mtRedDur, nil, 3},
	})
	// Each handler labels only its own clients: second-site-app is
	// unknown to the first site.
	before := c.scrape(t)
	ctWantJSONError(t, c.postForm(t, "/par", ctWith(form, "client_secret", "s2").Encode(), nil), http.StatusUnauthorized, "invalid_client")
	mtCheckDeltas(t, before, c.scrape(t), []mtWant{
		{mtPushes, []string{"client_id", "unknown", "outcome", "rejected", "error", "invalid_client"}, 1},
		{mtPushes, []string{"client_id", "second-site-app", "outcome", "rejected"}, 0},
	})
}

// Caller-chosen client_ids never become label values.
func TestCaddyMetricsUnknownClientIDsShareOneLabelValue(t *testing.T) {
	up := ctNewUpstream(t, nil)
	// 500 failed authentications from one address would hit the default
	// per-source limit.
	c := mtStart(t, up, ctBlock("rate_limit off"), "")
	before := c.scrape(t)
	const n = 1000
	for i := range n {
		id := fmt.Sprintf("attacker-%04d", i)
		if i%2 == 0 {
			ctWantJSONError(t, c.postForm(t, "/par", ctWith(ctAppForm(), "client_id", id).Encode(), ctBasic(id, "x")), http.StatusUnauthorized, "invalid_client")
			continue
		}
		q := url.Values{"client_id": {id}, "response_type": {"code"}, "redirect_uri": {"https://attacker.example/cb"}}
		if r := c.get(t, "/authorize?"+q.Encode(), nil); r.Status != http.StatusOK {
			t.Fatalf("pass-through: %s", r)
		}
	}
	after := c.scrape(t)
	mtCheckDeltas(t, before, after, []mtWant{
		{mtPushes, []string{"client_id", "unknown", "outcome", "rejected", "error", "invalid_client"}, n / 2},
		{mtAuthz, []string{"client_id", "unknown", "outcome", "passed_through"}, n / 2},
	})
	for _, name := range []string{mtPushes, mtAuthz} {
		for v := range after.labelValues(name, "client_id") {
			if strings.HasPrefix(v, "attacker-") {
				t.Fatalf("%s has a series for client_id %q", name, v)
			}
		}
		if !after.labelValues(name, "client_id")["unknown"] {
			t.Errorf("%s has no client_id=\"unknown\" series", name)
		}
	}
	// Error codes are a fixed set too.
	for _, name := range []string{mtPushes, mtAuthz} {
		for v := range after.labelValues(name, "error") {
			if !mtKnownErrors[v] {
				t.Errorf("%s: error label %q is not one of the gateway's codes", name, v)
			}
		}
	}
}

var mtKnownErrors = map[string]bool{
	"": true, "invalid_request": true, "invalid_client": true, "invalid_scope": true,
	"unsupported_response_type": true, "invalid_request_uri": true, "request_not_supported": true,
	"invalid_request_object": true, "invalid_dpop_proof": true, "invalid_authorization_details": true,
	"temporarily_unavailable": true, "server_error": true, "other": true,
}

func TestCaddyMetricsRedisStoreUpAndDown(t *testing.T) {
	r := caddymodule.StartTestRedis(t)
	up := ctNewUpstream(t, nil)
	c := mtStart(t, up, ctBlock("store redis {\n\t\t\taddress "+r.Addr+"\n\t\t\tkey_prefix mt:\n\t\t}"), "")
	uri := c.mustPush(t, ctAppForm(), ctBasic(ctAppID, ctAppSecret))
	if got := c.scrape(t).value(mtUp, "backend", "redis", "address", r.Addr); got != 1 {
		t.Errorf("%s with Redis up = %v, want 1", mtUp, got)
	}
	r.Stop()
	before := c.scrape(t)
	ctWantHTMLError(t, c.get(t, ctRedeemQuery(ctAppID, uri), nil), http.StatusServiceUnavailable, "temporarily_unavailable")
	ctWantJSONError(t, c.pushApp(t, ctAppForm()), http.StatusServiceUnavailable, "temporarily_unavailable")
	after := c.scrape(t)
	if got := after.value(mtUp, "backend", "redis", "address", r.Addr); got != 0 {
		t.Errorf("%s with Redis stopped = %v, want 0", mtUp, got)
	}
	mtCheckDeltas(t, before, after, []mtWant{
		{mtRefusal, []string{"operation", "take", "reason", "unavailable"}, 1},
		{mtRefusal, []string{"operation", "put", "reason", "unavailable"}, 1},
		{mtRedDur, []string{"outcome", "rejected"}, 1},
	})
}

// Token requests behind the gateway have their own counter, by client and
// outcome.
func TestCaddyMetricsCountTokenRequests(t *testing.T) {
	keys := saNewKeys(t)
	up := tkUpstream(t, nil)
	c := mtStart(t, up, tkBlock(t, keys, "rate_limit off"), "")
	before := c.scrape(t)
	refresh := "grant_type=refresh_token&refresh_token=RT"
	for range 3 {
		if r := c.postForm(t, "/token", refresh, http.Header{"Authorization": {tkBasic(tkPlainApp, "plain-secret")}}); r.Status != http.StatusOK {
			t.Fatalf("%s", r)
		}
	}
	ctWantJSONError(t, c.postForm(t, "/token", refresh, http.Header{"Authorization": {tkBasic(tkPlainApp, "wrong")}}), http.StatusUnauthorized, "invalid_client")
	ctWantJSONError(t, c.postForm(t, "/token", refresh, http.Header{"Authorization": {tkBasic("nobody", "x")}}), http.StatusUnauthorized, "invalid_client")
	after := c.scrape(t)
	mtCheckDeltas(t, before, after, []mtWant{
		{"caddy_oauth_par_token_requests_total", []string{"client_id", tkPlainApp, "outcome", "forwarded", "error", ""}, 3},
		{"caddy_oauth_par_token_requests_total", []string{"client_id", tkPlainApp, "outcome", "rejected", "error", "invalid_client"}, 1},
		{"caddy_oauth_par_token_requests_total", []string{"client_id", "unknown", "outcome", "rejected", "error", "invalid_client"}, 1},
	})
}
