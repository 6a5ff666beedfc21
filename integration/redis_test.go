package integration

import (
	"bufio"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-par/caddy-par/integration/internal/harness"
)

// redisEnv is two gateway processes (the project's cmd/caddy binary)
// sharing one redis-server, in front of one recording upstream: what an
// operator runs behind a load balancer.
type redisEnv struct {
	t      *testing.T
	bin    string
	redis  *harness.Redis
	gws    [2]*harness.Gateway
	cfgs   [2]harness.GatewayConfig
	up     *httptest.Server
	hits   atomic.Int64 // authorization requests that reached the upstream
	mu     sync.Mutex
	nonces map[string]int // pushed nonce -> times it reached the upstream
	secret string
	client *http.Client
	env    []string // the gateways' environment (secrets)
}

const (
	redisTestLifetime = 8 * time.Second
	redisTestIssuer   = "https://idp.example.test"
	jwtAppSecret      = "jwt-app-secret-at-least-32-bytes-long-0123"
)

func TestRedisTwoGateways(t *testing.T) {
	art, err := resetArtifacts("TestRedisTwoGateways")
	if err != nil {
		t.Fatal(err)
	}
	bin := needGateway(t)
	ports, err := harness.FreePorts(4)
	if err != nil {
		t.Fatal(err)
	}
	r, err := harness.StartRedis(suiteCtx, filepath.Join(art, "redis"), ports[0])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Stop)
	e := &redisEnv{t: t, bin: bin, redis: r, nonces: map[string]int{}, secret: "rs-" + randHex(16)}
	e.up = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path == "/authorize" {
			e.hits.Add(1)
			e.mu.Lock()
			e.nonces[req.URL.Query().Get("nonce")]++
			e.mu.Unlock()
			io.WriteString(w, "UPSTREAM-LOGIN-PAGE")
			return
		}
		http.NotFound(w, req)
	}))
	t.Cleanup(e.up.Close)
	e.client = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 64},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

	key := make([]byte, 32)
	copy(key, randHex(16))
	encKey := base64.StdEncoding.EncodeToString(key)
	for i := range e.gws {
		e.cfgs[i] = harness.GatewayConfig{
			Port:                  ports[1+i],
			Upstream:              strings.TrimPrefix(e.up.URL, "http://"),
			LogPath:               filepath.Join(art, fmt.Sprintf("gateway-%c.log", 'A'+i)),
			LogLevel:              "INFO",
			AuthorizationEndpoint: "/authorize",
			PAREndpoint:           "/par",
			Clients:               []harness.GatewayClient{{ID: "web-app", SecretEnv: "WEB_APP_SECRET", RedirectURIs: []string{"https://app.example.test/cb"}}},
			Extra: []string{
				"request_uri_lifetime " + redisTestLifetime.String(),
				"issuer " + redisTestIssuer,
				"client jwt-app {",
				// A literal: main's Validate re-checks the unexpanded
				// {env.*} placeholder's length for client_secret_jwt.
				"	secret " + jwtAppSecret,
				"	auth_methods client_secret_jwt",
				"	redirect_uris https://app.example.test/cb",
				"}",
				"store redis {",
				"	address " + r.Addr(),
				"	encryption_key {env.PAR_REDIS_KEY}",
				"}",
			},
		}
		if i == 0 {
			ap, err := harness.FreePort()
			if err != nil {
				t.Fatal(err)
			}
			e.cfgs[i].Admin = fmt.Sprintf("127.0.0.1:%d", ap)
		}
		e.env = []string{"WEB_APP_SECRET=" + e.secret, "PAR_REDIS_KEY=" + encKey, "JWT_APP_SECRET=" + jwtAppSecret}
		gw, err := harness.StartGateway(suiteCtx, bin, filepath.Join(art, fmt.Sprintf("gateway-%c", 'A'+i)), e.cfgs[i], e.env)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { gw.Stop(5 * time.Second) })
		e.gws[i] = gw
	}
	t.Logf("redis on %s, gateway A on %s, B on %s; artifacts in %s", r.Addr(), e.cfgs[0].Origin(), e.cfgs[1].Origin(), art)
	t.Cleanup(func() {
		if t.Failed() {
			for i, c := range e.cfgs {
				t.Logf("gateway %c log (tail):\n%s", 'A'+i, harness.Tail(c.LogPath, 15))
			}
		}
	})

	t.Run("push_at_A_redeem_at_B", e.testPushARedeemB)
	t.Run("concurrent_redemptions_at_A_and_B_forward_once", e.testConcurrent)
	t.Run("expiry_on_both", e.testExpiry)
	t.Run("jti_replay_caught_across_gateways", e.testJTIReplay)
	t.Run("reload_of_A_keeps_pool_and_pending_pushes", e.testReload)
	t.Run("redis_outage_and_recovery", e.testOutage)
	t.Run("logs_and_redis_hold_no_secrets", e.testNoSecretsInLogsOrRedis)
}

type pushed struct {
	uri, nonce string
}

func (e *redisEnv) origin(i int) string { return e.cfgs[i].Origin() }

// push pushes at gateway i and returns the status and, on 201, the request_uri.
func (e *redisEnv) push(t *testing.T, i int) (int, pushed, http.Header) {
	t.Helper()
	p := pushed{nonce: "n-" + randHex(12)}
	form := url.Values{
		"client_id": {"web-app"}, "response_type": {"code"}, "redirect_uri": {"https://app.example.test/cb"},
		"scope": {"openid"}, "state": {"s-" + randHex(6)}, "nonce": {p.nonce},
	}
	req, _ := http.NewRequest(http.MethodPost, e.origin(i)+"/par", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth("web-app", e.secret)
	resp, err := e.client.Do(req)
	if err != nil {
		t.Fatalf("push at %c: %v", 'A'+i, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == http.StatusCreated {
		var body struct {
			RequestURI string `json:"request_uri"`
		}
		if err := json.Unmarshal(b, &body); err != nil || body.RequestURI == "" {
			t.Fatalf("push at %c: %s", 'A'+i, b)
		}
		p.uri = body.RequestURI
	}
	return resp.StatusCode, p, resp.Header
}

func (e *redisEnv) mustPush(t *testing.T, i int) pushed {
	t.Helper()
	st, p, _ := e.push(t, i)
	if st != http.StatusCreated {
		t.Fatalf("push at %c: status %d", 'A'+i, st)
	}
	return p
}

// redeem sends the browser to gateway i; it returns the status and body.
func (e *redisEnv) redeem(t *testing.T, i int, p pushed) (int, string) {
	t.Helper()
	q := url.Values{"client_id": {"web-app"}, "request_uri": {p.uri}}
	resp, err := e.client.Get(e.origin(i) + "/authorize?" + q.Encode())
	if err != nil {
		t.Errorf("redeem at %c: %v", 'A'+i, err)
		return 0, ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (e *redisEnv) reached(nonce string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.nonces[nonce]
}

func (e *redisEnv) testPushARedeemB(t *testing.T) {
	for _, dir := range [][2]int{{0, 1}, {1, 0}} {
		p := e.mustPush(t, dir[0])
		if st, body := e.redeem(t, dir[1], p); st != http.StatusOK || body != "UPSTREAM-LOGIN-PAGE" {
			t.Fatalf("push at %c, redeem at %c: %d %q", 'A'+dir[0], 'A'+dir[1], st, clip(body, 200))
		}
		if n := e.reached(p.nonce); n != 1 {
			t.Fatalf("the pushed nonce reached the upstream %d times", n)
		}
		for i := range 2 {
			if st, _ := e.redeem(t, i, p); st != http.StatusBadRequest {
				t.Fatalf("second redemption at %c: %d, want 400", 'A'+i, st)
			}
		}
	}
}

func (e *redisEnv) testConcurrent(t *testing.T) {
	const rounds, perGateway = 25, 16
	before := e.hits.Load()
	for round := range rounds {
		p := e.mustPush(t, round%2)
		var ok, rejected atomic.Int32
		var wg sync.WaitGroup
		start := make(chan struct{})
		for j := range 2 * perGateway {
			wg.Go(func() {
				<-start
				switch st, _ := e.redeem(t, j%2, p); st {
				case http.StatusOK:
					ok.Add(1)
				case http.StatusBadRequest:
					rejected.Add(1)
				default:
					t.Errorf("round %d: status %d", round, st)
				}
			})
		}
		close(start)
		wg.Wait()
		if ok.Load() != 1 || rejected.Load() != 2*perGateway-1 || e.reached(p.nonce) != 1 {
			t.Fatalf("round %d: %d forwarded, %d rejected, upstream saw the push %d times; want 1, %d, 1",
				round, ok.Load(), rejected.Load(), e.reached(p.nonce), 2*perGateway-1)
		}
	}
	if got := e.hits.Load() - before; got != rounds {
		t.Fatalf("%d rounds of %d concurrent redemptions at A and B: the upstream got %d requests, want exactly %d", rounds, 2*perGateway, got, rounds)
	}
	t.Logf("%d rounds × %d concurrent redemptions (half at A, half at B): exactly one forwarded per round", rounds, 2*perGateway)
}

func (e *redisEnv) testExpiry(t *testing.T) {
	pa, pb := e.mustPush(t, 0), e.mustPush(t, 1)
	time.Sleep(redisTestLifetime + 500*time.Millisecond)
	before := e.hits.Load()
	for _, c := range []struct {
		at int
		p  pushed
	}{{1, pa}, {0, pb}, {0, pa}, {1, pb}} {
		if st, body := e.redeem(t, c.at, c.p); st != http.StatusBadRequest || !strings.Contains(body, "invalid_request_uri") {
			t.Fatalf("expired redemption at %c: %d %q", 'A'+c.at, st, clip(body, 200))
		}
	}
	if e.hits.Load() != before {
		t.Fatal("an expired request_uri reached the upstream")
	}
}

func (e *redisEnv) testReload(t *testing.T) {
	pending := e.mustPush(t, 0)
	pending2 := e.mustPush(t, 0)
	calls0, err := e.redis.CommandCalls()
	if err != nil {
		t.Fatal(err)
	}
	stats0, err := e.redis.Info("stats")
	if err != nil {
		t.Fatal(err)
	}
	// A reload that changes something else (a new client): the store
	// config is the same, so the pooled client is kept.
	cfg := e.cfgs[0]
	cfg.Clients = append(append([]harness.GatewayClient{}, cfg.Clients...), harness.GatewayClient{ID: "other-app", SecretEnv: "WEB_APP_SECRET", RedirectURIs: []string{"https://other.example.test/cb"}})
	if err := e.gws[0].Reload(suiteCtx, e.bin, cfg); err != nil {
		t.Fatal(err)
	}
	e.cfgs[0] = cfg
	if st, _ := e.redeem(t, 0, pending); st != http.StatusOK {
		t.Fatalf("redeem at A after the reload of a push from before: %d", st)
	}
	if st, _ := e.redeem(t, 1, pending2); st != http.StatusOK {
		t.Fatalf("redeem at B of a push made at A before A's reload: %d", st)
	}
	stats1, _ := e.redis.Info("stats")
	calls1, _ := e.redis.CommandCalls()
	// A new pool would have dialled again and asked CONFIG GET
	// maxmemory-policy once more.
	if cg := harness.CallsSince(calls0, calls1)["config|get"]; cg != 0 {
		t.Errorf("the reload created a new Redis client (CONFIG GET ran %d times)", cg)
	}
	// Connections Redis accepted meanwhile: only the one redis-cli opened
	// for stats1 itself; the gateways reused their pooled connections.
	c0, _ := strconv.Atoi(stats0["total_connections_received"])
	c1, _ := strconv.Atoi(stats1["total_connections_received"])
	if c1-c0 != 1 {
		t.Errorf("Redis accepted %d connections across the reload and two redemptions, want 1 (redis-cli's): the pool was not kept", c1-c0)
	}
}

// poll runs f every 100ms until it returns true or 10s pass.
func poll(t *testing.T, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (e *redisEnv) testOutage(t *testing.T) {
	// Default timeouts: dial 250ms, read 250ms. A request must fail within
	// dial + write + read plus HTTP slack.
	const bound = 1500 * time.Millisecond
	check := func(phase string, pending pushed) {
		t.Helper()
		before := e.hits.Load()
		for i := range 2 {
			for range 5 {
				start := time.Now()
				st, _, hdr := e.push(t, i)
				if el := time.Since(start); st != http.StatusServiceUnavailable || hdr.Get("Retry-After") == "" || el > bound {
					t.Fatalf("%s: push at %c: %d Retry-After=%q in %s; want 503 with Retry-After within %s", phase, 'A'+i, st, hdr.Get("Retry-After"), el, bound)
				}
				start = time.Now()
				st, body := e.redeem(t, i, pending)
				if el := time.Since(start); st != http.StatusServiceUnavailable || !strings.Contains(body, "temporarily_unavailable") || !strings.Contains(body, "<html") || el > bound {
					t.Fatalf("%s: authorize at %c: %d in %s %q; want the 503 error page within %s", phase, 'A'+i, st, el, clip(body, 200), bound)
				}
			}
		}
		if e.hits.Load() != before {
			t.Fatalf("%s: the upstream was reached during the outage", phase)
		}
	}

	// Hung Redis (SIGSTOP). probe is redeemed during the hang: Redis still
	// runs the queued take script when it resumes, after the gateway gave
	// up, so probe is used up then (never forwarded, never twice). kept,
	// pushed before the outage and not touched during it, stays valid.
	probe, kept := e.mustPush(t, 0), e.mustPush(t, 1)
	e.redis.Pause()
	check("Redis hung", probe)
	e.redis.Resume()
	poll(t, "redeem at B after the hang", func() bool { st, _ := e.redeem(t, 1, kept); return st == http.StatusOK })
	if n := e.reached(probe.nonce); n != 0 {
		t.Fatalf("a redemption that failed during the hang reached the upstream %d times", n)
	}
	e.noPileUp(t)
	pending := e.mustPush(t, 0)

	// Dead Redis: killed, then a new (empty: persistence is off) server on
	// the same port. Both gateways recover without being touched.
	kept = e.mustPush(t, 1)
	e.redis.Stop()
	check("Redis stopped", pending)
	// Loading configuration does no Redis I/O: validate and reload work
	// while Redis is down.
	validate := exec.Command(e.bin, "validate", "--config", e.gws[0].CaddyfilePath, "--adapter", "caddyfile")
	validate.Env = append(os.Environ(), e.env...)
	if out, err := validate.CombinedOutput(); err != nil {
		t.Fatalf("caddy validate with Redis down: %v\n%s", err, out)
	}
	cfg := e.cfgs[0]
	cfg.RequirePAR = !cfg.RequirePAR
	if err := e.gws[0].Reload(suiteCtx, e.bin, cfg); err != nil {
		t.Fatalf("caddy reload with Redis down: %v", err)
	}
	e.cfgs[0] = cfg
	if err := e.redis.Start(suiteCtx); err != nil {
		t.Fatal(err)
	}
	for _, dir := range [][2]int{{0, 1}, {1, 0}} {
		var p pushed
		poll(t, fmt.Sprintf("push at %c after the restart", 'A'+dir[0]), func() bool {
			st, pp, _ := e.push(t, dir[0])
			p = pp
			return st == http.StatusCreated
		})
		if st, _ := e.redeem(t, dir[1], p); st != http.StatusOK {
			t.Fatalf("redeem at %c after the restart: %d", 'A'+dir[1], st)
		}
	}
	// The push from before the restart is gone with the server's memory.
	if st, _ := e.redeem(t, 0, kept); st != http.StatusBadRequest {
		t.Fatalf("a push from before a restart without persistence: %d, want 400", st)
	}

	// Each gateway logged each outage once as it started and once as it
	// ended, not once per failed request (20 per gateway and outage, and
	// 200 more at A in noPileUp's hang): A saw three outages, B two.
	for i, c := range e.cfgs {
		want := 3 - i
		down, up := countLog(t, c.LogPath, "Redis store unavailable"), countLog(t, c.LogPath, "Redis store available again")
		if down != want || up != want {
			t.Errorf("gateway %c logged %d outage starts and %d recoveries, want %d and %d", 'A'+i, down, up, want, want)
		}
	}
}

func countLog(t *testing.T, path, msg string) int {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n := 0
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var l struct {
			Msg string `json:"msg"`
		}
		if json.Unmarshal(sc.Bytes(), &l) == nil && strings.HasPrefix(l.Msg, msg) {
			n++
		}
	}
	return n
}

func (e *redisEnv) testNoSecretsInLogsOrRedis(t *testing.T) {
	p := e.mustPush(t, 0)
	ref := strings.TrimPrefix(p.uri, "urn:ietf:params:oauth:request_uri:")
	var dump strings.Builder
	keys, err := e.redis.CLI("--scan")
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range strings.Fields(keys) {
		v, _ := e.redis.CLI("GET", k)
		dump.WriteString(k + " " + v + "\n")
	}
	for _, s := range []string{ref, p.nonce, "web-app", "redirect_uri", "app.example.test"} {
		if strings.Contains(dump.String(), s) {
			t.Errorf("Redis holds %q in clear", s)
		}
	}
	for i, c := range e.cfgs {
		b, err := os.ReadFile(c.LogPath)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range []string{ref, p.nonce, e.secret} {
			if strings.Contains(string(b), s) {
				t.Errorf("gateway %c log contains %q", 'A'+i, s)
			}
		}
	}
	if st, _ := e.redeem(t, 1, p); st != http.StatusOK {
		t.Fatalf("redeem at B: %d", st)
	}
}

// goroutines is gateway A's goroutine count from its admin API's pprof.
func (e *redisEnv) goroutines(t *testing.T) int {
	t.Helper()
	resp, err := harness.HTTPClient.Get("http://" + e.cfgs[0].Admin + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	line, _ := bufio.NewReader(resp.Body).ReadString('\n')
	var n int
	if _, err := fmt.Sscanf(line, "goroutine profile: total %d", &n); err != nil {
		t.Fatalf("goroutine profile: %q: %v", line, err)
	}
	return n
}

// noPileUp: 200 concurrent requests at A while Redis hangs all end in 503
// within the bound, and A's goroutines come back to where they were: no
// queue, no goroutines left waiting on Redis.
func (e *redisEnv) noPileUp(t *testing.T) {
	t.Helper()
	p := e.mustPush(t, 0)
	// Idle keep-alive connections each hold a goroutine in the gateway.
	idle := e.client.Transport.(*http.Transport).CloseIdleConnections
	idle()
	time.Sleep(100 * time.Millisecond)
	before := e.goroutines(t)
	e.redis.Pause()
	var wg sync.WaitGroup
	var slowest atomic.Int64
	var bad atomic.Int32
	start := time.Now()
	for i := range 200 {
		wg.Go(func() {
			t0 := time.Now()
			var st int
			if i%2 == 0 {
				st, _, _ = e.push(t, 0)
			} else {
				st, _ = e.redeem(t, 0, p)
			}
			if st != http.StatusServiceUnavailable {
				bad.Add(1)
			}
			if el := int64(time.Since(t0)); el > slowest.Load() {
				slowest.Store(el)
			}
		})
	}
	wg.Wait()
	e.redis.Resume()
	took := time.Since(start)
	if bad.Load() != 0 {
		t.Errorf("%d of 200 requests during the hang were not 503", bad.Load())
	}
	if time.Duration(slowest.Load()) > 3*time.Second {
		t.Errorf("the slowest of 200 concurrent requests during the hang took %s", time.Duration(slowest.Load()))
	}
	var after int
	poll(t, "goroutines back to the baseline", func() bool { idle(); after = e.goroutines(t); return after <= before+10 })
	t.Logf("200 concurrent requests while Redis hung: all 503 in %s (slowest %s); gateway goroutines %d before, %d after",
		took.Round(time.Millisecond), time.Duration(slowest.Load()).Round(time.Millisecond), before, after)
	poll(t, "Redis back after the hang", func() bool { st, _, _ := e.push(t, 0); return st == http.StatusCreated })
}
