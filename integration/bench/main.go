// Command bench is the caddy-par load and memory suite (issue 4): what does
// the PAR gateway cost, and how does it compare to PAR in a real
// authorization server (node-oidc-provider; Keycloak with -keycloak).
//
//	cd integration && go run ./bench                 # throughput scenarios
//	cd integration && go run ./bench -memory         # + memory scenarios
//
// Loopback only (127.0.0.1), bounded in time and request count; every
// process it starts is killed when it exits. See bench/README.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/caddy-par/caddy-par/integration/internal/harness"
)

// Scenario names, in run order.
var (
	throughputScenarios = []string{
		"baseline-respond",
		"baseline-proxy",
		"par-push",
		"par-push-large",
		"par-authorize",
		"par-push-redis",                 // store redis; redis-server must be installed
		"par-authorize-redis",            //
		"par-push-private-key-jwt-es256", // private_key_jwt instead of client_secret_basic
		"par-push-private-key-jwt-ps256",
		"par-push-signed-request-object", // private_key_jwt ES256 + a request object ES256
		"peer-oidc-provider-par",
		"peer-oidc-provider-par-large",
		"peer-keycloak-par", // only with -keycloak
	}
	memoryScenarios = []string{"mem-per-entry", "mem-flood", "mem-expiry"}
)

type config struct {
	duration     time.Duration
	warmup       time.Duration
	concurrency  int
	scenarios    string
	caddy        string
	node         string
	memory       bool
	keycloak     bool
	pin          bool
	storeSize    string
	prefillMax   int
	perEntryN    int
	perEntryTime time.Duration
	floodN       int
	floodTime    time.Duration
	out          string
	keep         bool
	jwtPoolMax   int
	signBudget   time.Duration
}

func main() {
	// Hidden mode: the minimal upstream, run as a separate process of this
	// same binary (see upstream.go).
	if len(os.Args) == 3 && os.Args[1] == "-serve-upstream" {
		serveUpstream(os.Args[2])
		return
	}
	os.Exit(run())
}

func run() int {
	var c config
	flag.DurationVar(&c.duration, "duration", 10*time.Second, "measured duration per scenario")
	flag.DurationVar(&c.warmup, "warmup", 1*time.Second, "unrecorded warmup per scenario (same connections)")
	flag.IntVar(&c.concurrency, "concurrency", 32, "concurrent workers (one keep-alive connection each)")
	flag.StringVar(&parExtra, "par-extra", "", "extra oauth_par subdirectives for the memory-store scenarios, one per line (e.g. \"audit off\" or \"reuse_grace off\"), to measure what a feature costs")
	flag.StringVar(&c.scenarios, "scenarios", "", "comma list of scenarios (default: all throughput scenarios; with -memory also the memory ones). Known: "+strings.Join(append(append([]string{}, throughputScenarios...), memoryScenarios...), ","))
	flag.StringVar(&c.caddy, "caddy", "", "prebuilt caddy binary with oauth_par (default: go build ../cmd/caddy into the shared cache dir, ${CADDY_PAR_CACHE:-~/.cache/caddy-par}/caddy-par)")
	flag.StringVar(&c.node, "node", "node", "node binary for the oidc-provider peer")
	flag.BoolVar(&c.memory, "memory", false, "also run the memory scenarios (mem-per-entry, mem-flood, mem-expiry)")
	flag.BoolVar(&c.keycloak, "keycloak", false, "also run peer-keycloak-par (needs integration/keycloak)")
	flag.BoolVar(&c.pin, "pin", runtime.NumCPU() >= 2, "pin servers to the last CPU and the load generator (+ upstream) to the others")
	flag.StringVar(&c.storeSize, "store-size", "2GiB", "gateway store max_size for the throughput scenarios (big enough never to fill)")
	flag.IntVar(&c.prefillMax, "prefill-max", 400000, "upper bound on request_uris pushed before par-authorize")
	flag.IntVar(&c.perEntryN, "mem-entries", 100000, "mem-per-entry: pushes to store")
	flag.DurationVar(&c.perEntryTime, "mem-time", 90*time.Second, "mem-per-entry: time bound (stops between steps)")
	flag.IntVar(&c.floodN, "flood-requests", 1000000, "mem-flood: max pushes")
	flag.DurationVar(&c.floodTime, "flood-time", 45*time.Second, "mem-flood: max flood duration")
	flag.StringVar(&c.out, "out", "", "also write the Markdown report to this file")
	flag.BoolVar(&c.keep, "keep-tmp", false, "keep the temp dir (Caddyfiles, server logs)")
	flag.IntVar(&c.jwtPoolMax, "jwt-pool-max", 400000, "JWT scenarios: upper bound on push bodies signed before the run")
	flag.DurationVar(&c.signBudget, "sign-budget", 40*time.Second, "JWT scenarios: time bound on signing the pool before the run (PS256 signing is ~1ms per body)")
	flag.Parse()
	if c.concurrency < 1 || c.concurrency > 4096 || c.duration <= 0 || c.duration > 10*time.Minute || c.warmup < 0 {
		fmt.Fprintln(os.Stderr, "bench: -concurrency must be 1..4096, -duration in (0,10m], -warmup >= 0")
		return 2
	}

	names, err := selectScenarios(&c)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 2
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()

	e := &env{cfg: c, ctx: ctx, results: map[string]*row{}}
	// Kill every child on every way out of run (including panics in this
	// goroutine); children also carry Pdeathsig=SIGKILL as a backstop.
	defer harness.KillAll()
	go func() {
		<-ctx.Done()
		harness.KillAll()
	}()

	tmp, err := os.MkdirTemp("", "caddy-par-bench-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	e.tmp = tmp
	if !c.keep {
		defer os.RemoveAll(tmp)
	} else {
		defer fmt.Fprintln(os.Stderr, "bench: kept", tmp)
	}

	if err := e.setup(names); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}

	for _, name := range names {
		if ctx.Err() != nil {
			break
		}
		logf("== %s", name)
		r, err := e.runScenario(name)
		if r == nil {
			r = &row{name: name}
		}
		if err != nil {
			r.failed = err.Error()
			logf("   FAILED: %v", err)
		}
		e.results[name] = r
		e.order = append(e.order, name)
		// Nothing leaks from one scenario into the next.
		e.stopServers()
	}
	harness.KillAll()

	report := e.report()
	fmt.Print(report)
	if c.out != "" {
		if err := os.WriteFile(c.out, []byte(report), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
		}
	}
	if ctx.Err() != nil {
		fmt.Fprintln(os.Stderr, "bench: interrupted")
		return 130
	}
	for _, n := range e.order {
		if e.results[n].failed != "" {
			return 1
		}
	}
	return 0
}

func selectScenarios(c *config) ([]string, error) {
	known := map[string]bool{}
	for _, n := range throughputScenarios {
		known[n] = true
	}
	for _, n := range memoryScenarios {
		known[n] = true
	}
	if c.scenarios == "" {
		var out []string
		for _, n := range throughputScenarios {
			if n == "peer-keycloak-par" && !c.keycloak {
				continue
			}
			out = append(out, n)
		}
		if c.memory {
			out = append(out, memoryScenarios...)
		}
		return out, nil
	}
	var out []string
	seen := map[string]bool{}
	var names []string
	for _, n := range strings.Split(c.scenarios, ",") {
		n = strings.TrimSpace(n)
		if n == "par-push-private-key-jwt" { // both algorithms
			names = append(names, n+"-es256", n+"-ps256")
			continue
		}
		names = append(names, n)
	}
	for _, n := range names {
		if n == "" || seen[n] {
			continue
		}
		if !known[n] {
			return nil, fmt.Errorf("unknown scenario %q", n)
		}
		seen[n] = true
		out = append(out, n)
	}
	if c.memory {
		for _, n := range memoryScenarios {
			if !seen[n] {
				out = append(out, n)
			}
		}
	}
	// Keep the canonical order (par-authorize sizes its pre-fill from
	// baseline-proxy when both run).
	order := map[string]int{}
	for i, n := range append(append([]string{}, throughputScenarios...), memoryScenarios...) {
		order[n] = i
	}
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && order[out[j]] < order[out[j-1]]; j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out, nil
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, time.Now().Format("15:04:05 ")+format+"\n", args...)
}

// env is the shared state of one bench run.
type env struct {
	cfg     config
	ctx     context.Context
	tmp     string
	results map[string]*row
	order   []string

	repoRoot   string
	caddyPath  string
	peerDir    string
	serverCPUs []int // nil: unpinned
	loadCPUs   []int

	upstream     *harness.Proc
	upstreamAddr string
	servers      []*harness.Proc // per-scenario servers, stopped after each scenario

	info      machineInfo
	loadStart string
}

// setup finds the repo, pins CPUs, and builds caddy if needed.
func (e *env) setup(names []string) error {
	root, err := harness.RepoRoot()
	if err != nil {
		return err
	}
	e.repoRoot = root
	e.peerDir = filepath.Join(root, "integration", "bench", "peer")

	if e.cfg.pin {
		n := runtime.NumCPU()
		if n < 2 {
			logf("-pin needs at least 2 CPUs; running unpinned")
		} else {
			e.serverCPUs = []int{n - 1}
			for i := 0; i < n-1; i++ {
				e.loadCPUs = append(e.loadCPUs, i)
			}
			if err := pinSelf(e.loadCPUs); err != nil {
				logf("pinning failed (%v); running unpinned", err)
				e.serverCPUs, e.loadCPUs = nil, nil
			} else {
				runtime.GOMAXPROCS(len(e.loadCPUs))
			}
		}
	}

	needCaddy := false
	for _, n := range names {
		if !strings.HasPrefix(n, "peer-") {
			needCaddy = true
		}
	}
	if needCaddy {
		if e.cfg.caddy != "" {
			p, err := filepath.Abs(e.cfg.caddy)
			if err != nil {
				return err
			}
			e.caddyPath = p
		} else {
			p, err := e.buildCaddy()
			if err != nil {
				return err
			}
			e.caddyPath = p
		}
	}
	e.info = gatherMachineInfo(e)
	e.loadStart = loadAvg()
	return nil
}

// buildCaddy builds ../cmd/caddy (our module + standard modules) with
// harness.BuildGateway: into the cache dir shared with the e2e tests and the
// demo, under its build lock. A cold build takes minutes on a 2-core
// machine; with the sources unchanged a later build is a no-op. Use -caddy
// to skip it.
func (e *env) buildCaddy() (string, error) {
	ctx, cancel := context.WithTimeout(e.ctx, 20*time.Minute)
	defer cancel()
	return harness.BuildGateway(ctx, logfWriter{})
}

// logfWriter writes each line through logf (timestamped, to stderr).
type logfWriter struct{}

func (logfWriter) Write(b []byte) (int, error) {
	for _, line := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		logf("%s", line)
	}
	return len(b), nil
}

// stopServers stops the per-scenario servers (not the shared upstream).
func (e *env) stopServers() {
	for _, s := range e.servers {
		s.Stop(stopGrace)
	}
	e.servers = nil
}

// childEnv is a minimal environment for children: no proxies, private
// HOME/XDG dirs in the temp dir so caddy writes nothing outside it.
func (e *env) childEnv(extra ...string) []string {
	home := filepath.Join(e.tmp, "home")
	_ = os.MkdirAll(home, 0o755)
	env := []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + home,
		"XDG_DATA_HOME=" + filepath.Join(home, "data"),
		"XDG_CONFIG_HOME=" + filepath.Join(home, "config"),
		"LANG=C",
	}
	return append(env, extra...)
}

// startUpstream starts the minimal upstream once (this binary in
// -serve-upstream mode), on the load generator's CPUs.
func (e *env) startUpstream() (string, error) {
	if e.upstream != nil && !e.upstream.Exited() {
		return e.upstreamAddr, nil
	}
	self, err := os.Executable()
	if err != nil {
		return "", err
	}
	port, err := harness.FreePort()
	if err != nil {
		return "", err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	c, err := e.start("upstream", e.tmp, filepath.Join(e.tmp, "upstream.log"), e.childEnv(), e.loadCPUs, self, "-serve-upstream", addr)
	if err != nil {
		return "", err
	}
	if err := harness.WaitReady(e.ctx, c, "http://"+addr+"/", 15*time.Second, anyStatus); err != nil {
		return "", err
	}
	e.upstream, e.upstreamAddr = c, addr
	return addr, nil
}

// checkGet is a one-off GET used for sanity checks.
func checkGet(ctx context.Context, url string) (int, http.Header, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, nil, "", err
	}
	cl := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: nil},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := cl.Do(req)
	if err != nil {
		return 0, nil, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	return resp.StatusCode, resp.Header, string(b), nil
}
