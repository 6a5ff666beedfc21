package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddy-par/caddy-par/integration/internal/harness"
)

// row is one line of the report.
type row struct {
	name      string
	server    string // what served it
	res       *loadResult
	cpuPerReq time.Duration // server process CPU (user+sys) per measured request
	rss       int64         // server VmRSS after the measured phase
	logPerReq float64       // server log bytes per measured request
	notes     []string
	skipped   string
	failed    string
	memory    []string // memory scenario result lines (Markdown)
	foreign   float64  // CPUs used by processes other than the bench's during the measurement
}

func (r *row) note(format string, args ...any) {
	r.notes = append(r.notes, fmt.Sprintf(format, args...))
}

func (e *env) runScenario(name string) (*row, error) {
	r := &row{name: name}
	var err error
	switch name {
	case "baseline-respond":
		err = e.baselineRespond(r)
	case "baseline-proxy":
		err = e.baselineProxy(r)
	case "par-push":
		err = e.parPush(r, false)
	case "par-push-large":
		err = e.parPush(r, true)
	case "par-authorize":
		err = e.parAuthorize(r)
	case "par-push-redis":
		err = e.parPushRedis(r)
	case "par-authorize-redis":
		err = e.parAuthorizeRedis(r)
	case "par-push-private-key-jwt-es256", "par-push-private-key-jwt-ps256", "par-push-signed-request-object":
		err = e.parPushJWT(r, jwtScenarios[name])
	case "peer-oidc-provider-par":
		err = e.peerOIDCProvider(r, false)
	case "peer-oidc-provider-par-large":
		err = e.peerOIDCProvider(r, true)
	case "peer-keycloak-par":
		err = e.peerKeycloak(r)
	case "mem-per-entry":
		err = e.memPerEntry(r)
	case "mem-flood":
		err = e.memFlood(r)
	case "mem-expiry":
		err = e.memExpiry(r)
	default:
		err = fmt.Errorf("unknown scenario %q", name)
	}
	if r.skipped != "" {
		logf("   skipped: %s", r.skipped)
	} else if r.res != nil && err == nil {
		logf("   %d requests, %.0f req/s, p50 %s, p99 %s, errors %d", r.res.requests, r.res.rps(), fmtDur(r.res.pct(50)), fmtDur(r.res.pct(99)), r.res.errors)
	}
	return r, err
}

// ---- Caddy ----

const caddyGlobal = `{
	admin off
	auto_https off
	persist_config off
}
`

// parExtra is -par-extra: subdirectives added to parBlock.
var parExtra string

// parBlock is the oauth_par configuration every gateway scenario uses (the
// contract of the module), with the given lifetime and store size. Rate
// limits are off: one client on loopback pushes far beyond the defaults.
func parBlock(lifetime, storeSize string) string {
	return fmt.Sprintf(`	oauth_par {
		authorization_endpoint /authorize
		par_endpoint /par
		request_uri_lifetime %s
		require_par
		max_request_size 64KiB
		rate_limit off
		%s
		client %s {
			secret %s
			redirect_uris %s
			allowed_scopes %s
		}
		store memory {
			max_size %s
		}
	}
`, lifetime, strings.ReplaceAll(parExtra, "\n", "\n\t\t"), clientID, clientSecret, redirectURI, scopes, storeSize)
}

// startCaddy writes a Caddyfile with one site on a free loopback port and
// starts `caddy run` on the server CPUs. It returns the site's base URL.
func (e *env) startCaddy(name, siteBody string) (*harness.Proc, string, error) {
	return e.startCaddyEnv(name, siteBody)
}

func (e *env) startCaddyEnv(name, siteBody string, env ...string) (*harness.Proc, string, error) {
	port, err := harness.FreePort()
	if err != nil {
		return nil, "", err
	}
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	cf := caddyGlobal + base + " {\n" + siteBody + "}\n"
	path := filepath.Join(e.tmp, name+".Caddyfile")
	if err := os.WriteFile(path, []byte(cf), 0o644); err != nil {
		return nil, "", err
	}
	c, err := e.start("caddy("+name+")", e.tmp, filepath.Join(e.tmp, name+".caddy.log"), e.childEnv(env...), e.serverCPUs,
		e.caddyPath, "run", "--config", path, "--adapter", "caddyfile")
	if err != nil {
		return nil, "", err
	}
	e.servers = append(e.servers, c)
	if err := harness.WaitReady(e.ctx, c, base+"/", 30*time.Second, anyStatus); err != nil {
		return nil, "", err
	}
	return c, base, nil
}

// machineBusy returns the busy CPU time of the whole machine (/proc/stat).
func machineBusy() time.Duration {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return 0
	}
	var busy int64
	for i, v := range f[1:] {
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		if i >= 8 { // guest, guest_nice are already in user/nice
			break
		}
		n, _ := strconv.ParseInt(v, 10, 64)
		busy += n
	}
	return time.Duration(busy) * time.Second / 100
}

// foreignCPU is the machine's busy CPU time minus the bench's own processes
// (itself, the server under test, the upstream): other load on the machine.
func (e *env) foreignCPU(server *harness.Proc) time.Duration {
	own := cpuTime(os.Getpid()) + redisCPU()
	if server != nil {
		own += groupCPU(server)
	}
	if e.upstream != nil && !e.upstream.Exited() {
		own += cpuTime(e.upstream.Pid())
	}
	return machineBusy() - own
}

// cpuTime returns user+system CPU time of pid from /proc/PID/stat.
func cpuTime(pid int) time.Duration {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0
	}
	s := string(b)
	// Fields after the parenthesised comm: state is field 3; utime 14, stime 15.
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	const clkTck = 100 // USER_HZ on Linux
	return time.Duration(ut+st) * time.Second / clkTck
}

// measure runs spec against server, filling r with the load result, the
// server's CPU per request, RSS and log volume.
func (e *env) measure(r *row, server *harness.Proc, spec loadSpec) *loadResult {
	if spec.concurrency == 0 {
		spec.concurrency = e.cfg.concurrency
	}
	if spec.duration == 0 {
		spec.duration = e.cfg.duration
	}
	var cpu0, foreign0, self0, up0 time.Duration
	var log0 int64
	var t0 time.Time
	prev := spec.onMeasureStart
	spec.onMeasureStart = func() {
		t0 = time.Now()
		foreign0 = e.foreignCPU(server)
		self0 = cpuTime(os.Getpid())
		if e.upstream != nil {
			up0 = cpuTime(e.upstream.Pid())
		}
		if server != nil {
			cpu0 = groupCPU(server)
			log0 = logSize(server)
		}
		if prev != nil {
			prev()
		}
	}
	res := runLoad(e.ctx, spec)
	r.res = res
	if !t0.IsZero() {
		if el := time.Since(t0); el > 0 {
			f := float64(e.foreignCPU(server)-foreign0) / float64(el)
			r.foreign = f
			gen := float64(cpuTime(os.Getpid())-self0) / float64(el)
			up := 0.0
			if e.upstream != nil && !e.upstream.Exited() {
				up = float64(cpuTime(e.upstream.Pid())-up0) / float64(el)
			}
			srv := 0.0
			if server != nil {
				srv = float64(groupCPU(server)-cpu0) / float64(el)
			}
			r.note("CPU use: server %.2f, load generator %.2f, upstream %.2f CPUs", srv, gen, up)
			if f > 0.10 {
				r.note("WARNING: other processes used %.0f%% of a CPU during the measurement (results are distorted)", f*100)
			}
		}
	}
	if server != nil && res.requests > 0 {
		cpu1 := groupCPU(server)
		r.cpuPerReq = (cpu1 - cpu0) / time.Duration(res.requests)
		r.rss = rssOf(server)
		r.logPerReq = float64(logSize(server)-log0) / float64(res.requests)
	}
	if res.exhausted {
		r.note("the request source ran out before the duration ended: measured %s", res.elapsed.Round(time.Millisecond))
	}
	if len(res.firstErrs) > 0 {
		r.note("first errors: %s", strings.Join(res.firstErrs, " | "))
	}
	if len(res.statuses) > 1 || res.errors > 0 {
		r.note("statuses: %s", fmtStatuses(res.statuses))
	}
	return res
}

func (e *env) baselineRespond(r *row) error {
	c, base, err := e.startCaddy(r.name, "\trespond \"ok\" 200\n")
	if err != nil {
		return err
	}
	r.server = "caddy respond"
	e.measure(r, c, loadSpec{
		warmup: e.cfg.warmup,
		next:   func(int, int) (job, error) { return job{method: http.MethodGet, url: base + "/"}, nil },
		check:  expectStatus(200, "ok"),
	})
	return nil
}

func (e *env) baselineProxy(r *row) error {
	up, err := e.startUpstream()
	if err != nil {
		return err
	}
	c, base, err := e.startCaddy(r.name, "\treverse_proxy "+up+"\n")
	if err != nil {
		return err
	}
	r.server = "caddy reverse_proxy → upstream"
	e.measure(r, c, loadSpec{
		warmup: e.cfg.warmup,
		next: func(int, int) (job, error) {
			return job{method: http.MethodGet, url: base + "/authorize"}, nil
		},
		check: expectStatus(200, "ok"),
	})
	return nil
}

// startGateway starts caddy with oauth_par in front of the upstream.
func (e *env) startGateway(name, lifetime, storeSize string) (*harness.Proc, string, error) {
	return e.startGatewayEnv(name, lifetime, storeSize)
}

func (e *env) startGatewayEnv(name, lifetime, storeSize string, env ...string) (*harness.Proc, string, error) {
	up, err := e.startUpstream()
	if err != nil {
		return nil, "", err
	}
	return e.startCaddyEnv(name, parBlock(lifetime, storeSize)+"\treverse_proxy "+up+"\n", env...)
}

// pushSpec is the load of PAR pushes against url (gateway or peer).
func pushSpec(url string, large bool) (loadSpec, int) {
	extra := ""
	if large {
		extra, _ = authorizationDetails(8192)
	}
	size := len(pushBody(0, 0, extra))
	return loadSpec{
		next: func(w, seq int) (job, error) {
			return job{method: http.MethodPost, url: url, header: pushHeader, body: pushBody(w, seq, extra)}, nil
		},
		check: expectStatus(http.StatusCreated, `"request_uri"`),
	}, size
}

func (e *env) parPush(r *row, large bool) error {
	c, base, err := e.startGateway(r.name, "60s", e.cfg.storeSize)
	if err != nil {
		return err
	}
	r.server = "caddy oauth_par"
	spec, size := pushSpec(base+"/par", large)
	spec.warmup = e.cfg.warmup
	r.note("push body %d bytes (form-encoded), client_secret_basic", size)
	if large {
		_, jl := authorizationDetails(8192)
		r.note("authorization_details JSON %d bytes", jl)
	}
	e.measure(r, c, spec)
	return nil
}

// parAuthorize pre-fills request_uris (pushes, not measured), then measures
// only the redemption: GET /authorize?client_id&request_uri through the
// gateway to the upstream, each request_uri used once.
func (e *env) parAuthorize(r *row) error {
	c, base, err := e.startGateway(r.name, "600s", e.cfg.storeSize)
	if err != nil {
		return err
	}
	r.server = "caddy oauth_par → upstream"
	return e.parAuthorizeAt(r, c, base, nil, nil)
}

// parAuthorizeAt is parAuthorize against a started gateway; wrap and after,
// if set, see the measured spec before and after the run.
func (e *env) parAuthorizeAt(r *row, c *harness.Proc, base string, wrap func(*loadSpec), after func()) error {

	// Size the pre-fill: a redemption is a proxied request plus work, so
	// it should not run faster than baseline-proxy from this run; twice
	// that rate over warmup + duration leaves room for run-to-run noise.
	window := (e.cfg.warmup + e.cfg.duration).Seconds()
	n := int(20000 * window)
	if bp := e.results["baseline-proxy"]; bp != nil && bp.res != nil && bp.res.rps() > 0 {
		n = int(bp.res.rps()*window*2) + 4*e.cfg.concurrency
	}
	if n > e.cfg.prefillMax {
		n = e.cfg.prefillMax
	}
	if n < 1000 {
		n = 1000
	}
	uris := make([]string, 0, n)
	var mu sync.Mutex
	spec, _ := pushSpec(base+"/par", false)
	spec.concurrency = e.cfg.concurrency
	spec.duration = 4 * time.Minute // bound; ends at n pushes
	spec.maxRequests = int64(n)
	var parseErrs atomic.Int64
	spec.onOK = func(_ job, _ int, body []byte, _ bool) {
		u, _, err := parseRequestURI(body)
		if err != nil {
			parseErrs.Add(1)
			return
		}
		mu.Lock()
		uris = append(uris, u)
		mu.Unlock()
	}
	logf("   pre-filling %d request_uris (pushes, not measured)", n)
	t0 := time.Now()
	pre := runLoad(e.ctx, spec)
	preDur := time.Since(t0)
	if e.ctx.Err() != nil {
		return e.ctx.Err()
	}
	r.note("pre-filled %d request_uris before measuring (%d push errors) in %s (%.0f pushes/s)", len(uris), pre.errors+parseErrs.Load(), preDur.Round(time.Millisecond), float64(len(uris))/preDur.Seconds())
	if len(uris) < 2 {
		return fmt.Errorf("pre-fill produced %d request_uris; first errors: %v", len(uris), pre.firstErrs)
	}
	// One checked redemption: the upstream must see the pushed state.
	st, hdr, body, err := checkGet(e.ctx, redeemURL(base+"/authorize", uris[0]))
	if err != nil || st != 200 || hdr.Get("X-Bench-State") == "" {
		return fmt.Errorf("sanity redeem: status %d, X-Bench-State %q, err %v, body %q", st, hdr.Get("X-Bench-State"), err, trunc(body, 200))
	}
	// And a second use must be refused.
	if st2, _, _, _ := checkGet(e.ctx, redeemURL(base+"/authorize", uris[0])); st2 != 400 {
		r.note("WARNING: second use of a request_uri answered %d, want 400", st2)
	}

	var idx atomic.Int64
	idx.Store(1)
	authz := base + "/authorize"
	ms := loadSpec{
		warmup: e.cfg.warmup,
		next: func(int, int) (job, error) {
			i := idx.Add(1) - 1
			if i >= int64(len(uris)) {
				return job{}, errExhausted
			}
			return job{method: http.MethodGet, url: redeemURL(authz, uris[i])}, nil
		},
		check: expectStatus(200, "ok"),
	}
	if wrap != nil {
		wrap(&ms)
	}
	e.measure(r, c, ms)
	if after != nil {
		after()
	}
	return nil
}

// ---- node-oidc-provider peer ----

func (e *env) ensurePeerDeps() error {
	if _, err := os.Stat(filepath.Join(e.peerDir, "node_modules", "oidc-provider", "package.json")); err == nil {
		return nil
	}
	npm, err := exec.LookPath("npm")
	if err != nil {
		return errors.New("npm not found: install Node.js >= 20 and npm, or run `npm ci` in integration/bench/peer")
	}
	logf("   installing the peer (npm ci in %s)", e.peerDir)
	ctx, cancel := context.WithTimeout(e.ctx, 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, npm, "ci", "--no-audit", "--no-fund")
	cmd.Dir = e.peerDir
	cmd.Stdout = os.Stderr
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("npm ci in %s: %w", e.peerDir, err)
	}
	return nil
}

func (e *env) peerOIDCProvider(r *row, large bool) error {
	node, err := exec.LookPath(e.cfg.node)
	if err != nil {
		r.skipped = "node not found (" + e.cfg.node + ")"
		return nil
	}
	if err := e.ensurePeerDeps(); err != nil {
		return err
	}
	port, err := harness.FreePort()
	if err != nil {
		return err
	}
	c, err := e.start("node-oidc-provider", e.peerDir, filepath.Join(e.tmp, r.name+".node.log"),
		e.childEnv("NODE_ENV=production"), e.serverCPUs, node, "server.mjs", strconv.Itoa(port))
	if err != nil {
		return err
	}
	e.servers = append(e.servers, c)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	if err := harness.WaitReady(e.ctx, c, base+"/.well-known/openid-configuration", 30*time.Second, anyStatus); err != nil {
		return err
	}
	r.server = "node-oidc-provider " + e.info.oidcProvider
	spec, size := pushSpec(base+"/request", large)
	spec.warmup = e.cfg.warmup
	r.note("push body %d bytes, client_secret_basic, endpoint /request", size)
	e.measure(r, c, spec)
	return nil
}

// ---- helpers ----

func fmtDur(d time.Duration) string {
	switch {
	case d <= 0:
		return "-"
	case d < time.Millisecond:
		return fmt.Sprintf("%.0fµs", float64(d)/float64(time.Microsecond))
	case d < 10*time.Millisecond:
		return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond))
	case d < time.Second:
		return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
	default:
		return fmt.Sprintf("%.2fs", d.Seconds())
	}
}

func fmtBytes(b float64) string {
	switch {
	case math.Abs(b) >= 1<<30:
		return fmt.Sprintf("%.2f GiB", b/(1<<30))
	case math.Abs(b) >= 1<<20:
		return fmt.Sprintf("%.1f MiB", b/(1<<20))
	case math.Abs(b) >= 1<<10:
		return fmt.Sprintf("%.1f KiB", b/(1<<10))
	default:
		return fmt.Sprintf("%.0f B", b)
	}
}

func fmtStatuses(m map[string]int64) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	for i := 1; i < len(keys); i++ {
		for j := i; j > 0 && keys[j] < keys[j-1]; j-- {
			keys[j], keys[j-1] = keys[j-1], keys[j]
		}
	}
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s×%d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}
