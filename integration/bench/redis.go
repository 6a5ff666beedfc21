package main

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"time"

	"github.com/caddy-par/caddy-par/integration/internal/harness"
)

// The Redis store scenarios: par-push-redis and par-authorize-redis are
// par-push and par-authorize with `store redis` against a redis-server
// started for the scenario (127.0.0.1, no persistence, noeviction). Like
// the upstream, Redis stands for another machine: it runs on the load
// generator's CPUs, and its CPU time is reported on its own, not counted as
// other load. INFO commandstats before and after the measured phase give
// the Redis commands per request (target: one round trip each).

// benchRedis is the running scenario's redis-server (nil otherwise).
var benchRedis *harness.Proc

// redisCPU is benchRedis's CPU time, excluded from "other load".
func redisCPU() time.Duration {
	if benchRedis == nil || benchRedis.Exited() {
		return 0
	}
	return cpuTime(benchRedis.Pid())
}

var memoryStoreBlock = regexp.MustCompile(`(?s)\t\tstore memory \{.*?\}\n`)

// parBlockRedis is parBlock with the Redis store (encryption on, as an
// operator sharing Redis would run it).
func parBlockRedis(lifetime, addr string) string {
	return memoryStoreBlock.ReplaceAllLiteralString(parBlock(lifetime, "1MiB"),
		"\t\tstore redis {\n\t\t\taddress "+addr+"\n\t\t\tencryption_key {env.PAR_REDIS_KEY}\n\t\t}\n")
}

const benchRedisKey = "YmVuY2gtb25seS1rZXktMzItYnl0ZXMtbG9uZy4uLi4=" // 32 bytes, bench only

// startRedisGateway starts redis-server, then the gateway with the Redis
// store in front of the upstream.
func (e *env) startRedisGateway(r *row, lifetime string) (*harness.Proc, string, *harness.Redis, error) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		return nil, "", nil, fmt.Errorf("redis-server not installed (run integration/scripts/ensure-redis.sh)")
	}
	port, err := harness.FreePort()
	if err != nil {
		return nil, "", nil, err
	}
	p, err := e.start("redis-server", e.tmp, filepath.Join(e.tmp, r.name+".redis.log"), e.childEnv(), e.loadCPUs,
		"redis-server", "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--dir", e.tmp,
		"--save", "", "--appendonly", "no", "--maxmemory-policy", "noeviction", "--dbfilename", r.name+".rdb")
	if err != nil {
		return nil, "", nil, err
	}
	e.servers = append(e.servers, p)
	benchRedis = p
	rc := &harness.Redis{Port: port}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if out, err := rc.CLI("PING"); err == nil && len(out) >= 4 && out[:4] == "PONG" {
			break
		}
		if p.Exited() || time.Now().After(deadline) {
			return nil, "", nil, fmt.Errorf("redis-server did not start: %s", harness.Tail(p.LogPath, 10))
		}
		time.Sleep(50 * time.Millisecond)
	}
	up, err := e.startUpstream()
	if err != nil {
		return nil, "", nil, err
	}
	c, base, err := e.startCaddyEnv(r.name, parBlockRedis(lifetime, rc.Addr())+"\treverse_proxy "+up+"\n", "PAR_REDIS_KEY="+benchRedisKey)
	if err != nil {
		return nil, "", nil, err
	}
	if v, err := rc.CLI("INFO", "server"); err == nil {
		if m := regexp.MustCompile(`redis_version:(\S+)`).FindStringSubmatch(v); m != nil {
			r.note("redis-server %s on the load generator's CPUs, persistence off, noeviction; store redis with encryption_key", m[1])
		}
	}
	return c, base, rc, nil
}

// countRoundTrips wraps spec so that Redis commands are counted over the
// measured phase, and returns a func that adds the per-request note.
func countRoundTrips(r *row, rc *harness.Redis, spec *loadSpec, what string) func() {
	var before map[string]int
	var cpu0 time.Duration
	prev := spec.onMeasureStart
	spec.onMeasureStart = func() {
		before, _ = rc.CommandCalls()
		cpu0 = redisCPU()
		if prev != nil {
			prev()
		}
	}
	return func() {
		after, err := rc.CommandCalls()
		if err != nil || before == nil || r.res == nil || r.res.requests == 0 {
			r.note("Redis commands per %s: not measured (%v)", what, err)
			return
		}
		d := harness.CallsSince(before, after)
		n := float64(r.res.requests)
		// Round trips are the commands the gateway sends; GET and DEL run
		// inside the take script and are listed for completeness.
		rt := float64(d["set"]+d["evalsha"]+d["eval"]+d["config|get"]) / n
		r.note("Redis round trips per %s: %.2f (SET %.2f, EVALSHA %.2f, EVAL %.2f; inside scripts GET %.2f, DEL %.2f); Redis CPU %s per request",
			what, rt, float64(d["set"])/n, float64(d["evalsha"])/n, float64(d["eval"])/n, float64(d["get"])/n, float64(d["del"])/n,
			fmtDur((redisCPU()-cpu0)/time.Duration(r.res.requests)))
	}
}

func (e *env) parPushRedis(r *row) error {
	c, base, rc, err := e.startRedisGateway(r, "60s")
	if err != nil {
		return err
	}
	r.server = "caddy oauth_par, store redis"
	spec, size := pushSpec(base+"/par", false)
	spec.warmup = e.cfg.warmup
	r.note("push body %d bytes (form-encoded), client_secret_basic", size)
	done := countRoundTrips(r, rc, &spec, "push")
	e.measure(r, c, spec)
	done()
	return nil
}

func (e *env) parAuthorizeRedis(r *row) error {
	c, base, rc, err := e.startRedisGateway(r, "600s")
	if err != nil {
		return err
	}
	r.server = "caddy oauth_par, store redis → upstream"
	var done func()
	return e.parAuthorizeAt(r, c, base, func(spec *loadSpec) { done = countRoundTrips(r, rc, spec, "redemption") }, func() { done() })
}
