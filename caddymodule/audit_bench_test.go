package caddymodule

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// BenchmarkObservability is BenchmarkPARRequest and BenchmarkRedeem (a
// push through servePAR, a redemption through serveAuthorize, no HTTP I/O)
// with Caddy's request variables set, as Caddy's server sets them, and the
// observability switched on step by step:
//
//	off             no metrics, audit off (the handler's debug/info lines
//	                are dropped by its level, as in production)
//	metrics         the Prometheus counters and latency histograms
//	metrics+audit   and an audit event per request, JSON-encoded to
//	                io.Discard (the encoding is the cost; the write is the
//	                operator's sink)
//	metrics+audit_excluded
//	                the audit logger enabled in config but dropped by the
//	                log level (zap's Check returns nil)
//
// The difference between rows is the observability's cost per request.
func BenchmarkObservability(b *testing.B) {
	modes := []struct {
		name  string
		setup func(g *gateway)
	}{
		{"off", func(*gateway) {}},
		{"metrics", func(g *gateway) { g.metrics = newParMetrics() }},
		{"metrics+audit", func(g *gateway) {
			g.metrics = newParMetrics()
			g.audit = benchAuditLogger(zapcore.InfoLevel)
		}},
		{"metrics+audit_excluded", func(g *gateway) {
			g.metrics = newParMetrics()
			g.audit = benchAuditLogger(zapcore.WarnLevel)
		}},
	}
	body := validPush().Encode()
	auth := basicHeader("web-app", testSecret)
	for _, mode := range modes {
		b.Run("push/"+mode.name, func(b *testing.B) {
			g := newTestGateway(b, func(g *gateway) { g.store = newTestCache(b, 1<<30) })
			mode.setup(g)
			b.ReportAllocs()
			for b.Loop() {
				r := httptest.NewRequest(http.MethodPost, "/par", strings.NewReader(body))
				r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
				r.Header.Set("Authorization", auth)
				r = inCaddyBench(r)
				w := httptest.NewRecorder()
				g.servePAR(w, r, nil)
				if w.Code != http.StatusCreated {
					b.Fatal(w.Code, w.Body)
				}
			}
		})
	}
	for _, mode := range modes {
		b.Run("redeem/"+mode.name, func(b *testing.B) {
			g := newTestGateway(b, func(g *gateway) { g.store = newTestCache(b, 1<<30) })
			mode.setup(g)
			next := func(w http.ResponseWriter, r *http.Request) error { w.WriteHeader(http.StatusOK); return nil }
			reqs := make([]*http.Request, b.N)
			for i := range reqs {
				uri := pushOK(b, g, validPush())
				reqs[i] = inCaddyBench(httptest.NewRequest(http.MethodGet, "/authorize?client_id=web-app&request_uri="+url.QueryEscape(uri), nil))
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				w := httptest.NewRecorder()
				if err := g.serveAuthorize(w, reqs[i], next); err != nil || w.Code != http.StatusOK {
					b.Fatal(err, w.Code)
				}
			}
		})
	}
}

// inCaddyBench is inCaddy for benchmarks.
func inCaddyBench(r *http.Request) *http.Request { return inCaddy(r, "203.0.113.9") }

// benchAuditLogger is a JSON logger like Caddy's, named like the audit
// trail, writing to io.Discard at the given level.
func benchAuditLogger(level zapcore.Level) *zap.Logger {
	enc := zap.NewProductionEncoderConfig()
	enc.EncodeTime = zapcore.EpochTimeEncoder
	core := zapcore.NewCore(zapcore.NewJSONEncoder(enc), zapcore.AddSync(io.Discard), level)
	return newAuditLogger(zap.New(core).Named("http.handlers.oauth_par"), false)
}

// BenchmarkLogOutcome is the choke point alone, for an issued push: what
// each request pays for metrics and the audit event, without the noise of
// the push itself.
func BenchmarkLogOutcome(b *testing.B) {
	ref, _ := newRef()
	r := inCaddyBench(httptest.NewRequest(http.MethodPost, "/par", nil))
	for _, mode := range []struct {
		name    string
		metrics bool
		audit   *zap.Logger
	}{
		{"off", false, nil},
		{"metrics", true, nil},
		{"metrics+audit", true, benchAuditLogger(zapcore.InfoLevel)},
		{"metrics+audit_excluded", true, benchAuditLogger(zapcore.WarnLevel)},
		{"audit", false, benchAuditLogger(zapcore.InfoLevel)},
	} {
		b.Run(mode.name, func(b *testing.B) {
			g := newTestGateway(b, nil)
			if mode.metrics {
				g.metrics = newParMetrics()
			}
			g.audit = mode.audit
			b.ReportAllocs()
			for b.Loop() {
				g.logOutcome(r, epPAR, "web-app", AuthClientSecretBasic, "issued", "", ref)
			}
		})
	}
}
