package main

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddy-par/caddy-par/integration/internal/harness"
)

// memPerEntry: bytes of caddy RSS per stored pushed request. A gateway with
// a store big enough never to refuse (512MiB, lifetime 600s, so nothing
// expires) takes N pushes of the typical ~600-byte parameter set; RSS is
// sampled before, after every tenth, and after all, and the growth is
// divided by N and compared with the raw parameter bytes.
func (e *env) memPerEntry(r *row) error {
	n := e.cfg.perEntryN
	if n < 1000 {
		n = 1000
	}
	// GODEBUG=gctrace=1: the Go runtime logs the live heap after each GC,
	// which separates live bytes per entry from GC headroom in RSS.
	c, base, err := e.startGatewayEnv(r.name, "600s", "512MiB", "GODEBUG=gctrace=1")
	if err != nil {
		return err
	}
	r.server = "caddy oauth_par (store memory max_size 512MiB, lifetime 600s, GODEBUG=gctrace=1)"
	deadline := time.Now().Add(e.cfg.perEntryTime)

	push := func(count int) (*loadResult, error) {
		spec, _ := pushSpec(base+"/par", false)
		spec.concurrency = e.cfg.concurrency
		spec.duration = 3 * time.Minute // bound; ends at count pushes
		spec.maxRequests = int64(count)
		res := runLoad(e.ctx, spec)
		if e.ctx.Err() != nil {
			return nil, e.ctx.Err()
		}
		if c.Exited() {
			return nil, fmt.Errorf("caddy exited: %v; log tail:\n%s", c.ExitErr(), harness.Tail(c.LogPath, 30))
		}
		return res, nil
	}
	// Warm up connections, pools and the runtime with a few pushes that are
	// part of the baseline.
	warm := 2000
	if _, err := push(warm); err != nil {
		return err
	}
	settle := func() int64 { time.Sleep(500 * time.Millisecond); return rssOf(c) }
	rss0 := settle()
	steps := 10
	per := n / steps
	type sample struct {
		stored int
		rss    int64
		live   float64 // MB live heap after the latest GC (-1: none yet)
		gc     int
	}
	gct := newGCTracker(c)
	gc0, live0 := gct.latest()
	samples := []sample{{0, rss0, live0, gc0}}
	var ok, errs int64
	t0 := time.Now()
	for i := 0; i < steps; i++ {
		if time.Now().After(deadline) {
			r.note("stopped after %d steps: -mem-time %s reached", i, e.cfg.perEntryTime)
			break
		}
		res, err := push(per)
		if err != nil {
			return err
		}
		ok += res.requests - res.errors
		errs += res.errors
		if len(res.firstErrs) > 0 && len(r.notes) < 3 {
			r.note("errors: %s", strings.Join(res.firstErrs, " | "))
		}
		rss := settle()
		g, l := gct.latest()
		samples = append(samples, sample{int(ok), rss, l, g})
	}
	dur := time.Since(t0)
	rss1 := samples[len(samples)-1].rss
	_, hwm, _ := procStatus(c.Pid())

	// Least-squares slope of RSS over stored entries.
	var sx, sy, sxx, sxy float64
	for _, s := range samples {
		x, y := float64(s.stored), float64(s.rss)
		sx += x
		sy += y
		sxx += x * x
		sxy += x * y
	}
	k := float64(len(samples))
	slope := 0.0
	if d := k*sxx - sx*sx; d != 0 {
		slope = (k*sxy - sx*sy) / d
	}
	// Live heap slope over the steps that saw a new GC.
	liveSlope := math.NaN()
	{
		var sx, sy, sxx, sxy, k float64
		lastG := -1
		for _, s := range samples {
			if s.live < 0 || s.gc == lastG {
				continue
			}
			lastG = s.gc
			x, y := float64(s.stored), s.live*(1<<20)
			sx += x
			sy += y
			sxx += x * x
			sxy += x * y
			k++
		}
		if d := k*sxx - sx*sx; k >= 3 && d != 0 {
			liveSlope = (k*sxy - sx*sy) / d
		}
	}
	liveStr := "-"
	if !math.IsNaN(liveSlope) {
		liveStr = fmtBytes(liveSlope)
	}
	raw := len(pushBody(0, 0, ""))
	perEntry := 0.0
	if ok > 0 {
		perEntry = float64(rss1-rss0) / float64(ok)
	}
	r.memory = append(r.memory,
		"**mem-per-entry** — caddy RSS per stored pushed request (store memory max_size 512MiB, lifetime 600s):",
		"",
		"| stored pushes | push errors | RSS before | RSS after | RSS peak | RSS (after−before)/stored | RSS slope | Go live-heap slope | raw push body | RSS per entry ÷ raw bytes |",
		"|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
		fmt.Sprintf("| %d | %d | %s | %s | %s | %s | %s | %s | %d B | %.1f× |",
			ok, errs, fmtBytes(float64(rss0)), fmtBytes(float64(rss1)), fmtBytes(float64(hwm)),
			fmtBytes(perEntry), fmtBytes(slope), liveStr, raw, perEntry/float64(raw)),
		"",
	)
	r.note("%d pushes in %s (%.0f/s, %d workers), %d warmup pushes before the baseline", ok, dur.Round(time.Millisecond), float64(ok)/dur.Seconds(), e.cfg.concurrency, warm)
	var trail []string
	for _, s := range samples {
		trail = append(trail, fmt.Sprintf("%d:%s/%.0fMB", s.stored, fmtBytes(float64(s.rss)), s.live))
	}
	r.note("stored entries: RSS/live heap after the latest GC: %s", strings.Join(trail, " "))
	return nil
}

// memFlood: a gateway with a 16MiB store is flooded with pushes (bounded by
// -flood-requests and -flood-time). Peak RSS is sampled; afterwards the
// gateway must still answer, new pushes must get 201 or 503, and every
// sampled request_uri that got a 201 must still redeem (the "never a 201
// for an entry that vanished before expiry" invariant).
func (e *env) memFlood(r *row) error {
	const lifetime = 600 * time.Second
	c, base, err := e.startGateway(r.name, "600s", "16MiB")
	if err != nil {
		return err
	}
	r.server = "caddy oauth_par (store memory max_size 16MiB, lifetime 600s)"
	rssStart := rssOf(c)

	type issued struct {
		uri string
		at  time.Time
	}
	const every = 100 // keep every 100th 201 ...
	const lastN = 256 // ... plus the last 256
	var (
		mu       sync.Mutex
		sampled  []issued
		ring     [lastN]issued
		ringN    int
		created  atomic.Int64
		full     atomic.Int64
		badFull  atomic.Int64
		parseBad atomic.Int64
	)
	spec, _ := pushSpec(base+"/par", false)
	spec.concurrency = e.cfg.concurrency
	spec.duration = e.cfg.floodTime
	spec.maxRequests = int64(e.cfg.floodN)
	spec.check = func(_ job, status int, body []byte) error {
		switch status {
		case http.StatusCreated:
			return nil
		case http.StatusServiceUnavailable:
			full.Add(1)
			if !strings.Contains(string(body), "temporarily_unavailable") {
				badFull.Add(1)
				return fmt.Errorf("503 without temporarily_unavailable: %s", trunc(string(body), 120))
			}
			return nil
		default:
			return fmt.Errorf("status %d: %s", status, trunc(string(body), 160))
		}
	}
	spec.onOK = func(_ job, status int, body []byte, _ bool) {
		if status != http.StatusCreated {
			return
		}
		u, _, err := parseRequestURI(body)
		if err != nil {
			parseBad.Add(1)
			return
		}
		i := created.Add(1)
		it := issued{u, time.Now()}
		mu.Lock()
		if i%every == 0 {
			sampled = append(sampled, it)
		}
		ring[ringN%lastN] = it
		ringN++
		mu.Unlock()
	}

	// RSS sampler.
	var peak atomic.Int64
	stopS := make(chan struct{})
	var swg sync.WaitGroup
	swg.Add(1)
	go func() {
		defer swg.Done()
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stopS:
				return
			case <-t.C:
				if v := rssOf(c); v > peak.Load() {
					peak.Store(v)
				}
			}
		}
	}()
	logf("   flooding: up to %d pushes or %s, %d workers", e.cfg.floodN, e.cfg.floodTime, e.cfg.concurrency)
	res := runLoad(e.ctx, spec)
	close(stopS)
	swg.Wait()
	if e.ctx.Err() != nil {
		return e.ctx.Err()
	}
	r.res = nil // not a throughput row
	_, hwm, _ := procStatus(c.Pid())
	rssEnd := rssOf(c)

	// The gateway still answers: a pass-through request and a new push.
	var after []string
	alive := true
	if st, _, _, err := checkGet(e.ctx, base+"/healthz"); err != nil || st != 200 {
		alive = false
		after = append(after, fmt.Sprintf("pass-through GET: status %d err %v", st, err))
	}
	newPush := map[int]int{}
	for i := 0; i < 20; i++ {
		st, body, err := postPush(e, base+"/par", i)
		if err != nil {
			alive = false
			after = append(after, fmt.Sprintf("push after flood: %v", err))
			break
		}
		newPush[st]++
		if st != 201 && st != 503 {
			after = append(after, fmt.Sprintf("push after flood: %d %s", st, trunc(body, 120)))
		}
	}

	// Redeem the sample: every one must still work before it expires.
	mu.Lock()
	seen := map[string]bool{}
	var check []issued
	for _, it := range sampled {
		if !seen[it.uri] {
			seen[it.uri] = true
			check = append(check, it)
		}
	}
	for i := 0; i < lastN && i < ringN; i++ {
		it := ring[i]
		if !seen[it.uri] {
			seen[it.uri] = true
			check = append(check, it)
		}
	}
	mu.Unlock()
	var redeemOK, redeemBad, redeemLate int
	var badEx []string
	for _, it := range check {
		if e.ctx.Err() != nil {
			return e.ctx.Err()
		}
		if time.Since(it.at) > lifetime-5*time.Second {
			redeemLate++
			continue
		}
		st, hdr, body, err := checkGet(e.ctx, redeemURL(base+"/authorize", it.uri))
		if err == nil && st == 200 && hdr.Get("X-Bench-State") != "" {
			redeemOK++
			continue
		}
		redeemBad++
		if len(badEx) < 3 {
			badEx = append(badEx, fmt.Sprintf("%d %v %s", st, err, trunc(body, 100)))
		}
	}

	verdict := "OK"
	if redeemBad > 0 || !alive || badFull.Load() > 0 || res.errors > 0 {
		verdict = "VIOLATION"
	}
	r.memory = append(r.memory,
		fmt.Sprintf("**mem-flood** — store memory max_size 16MiB, lifetime 600s, %d workers, bounded by %d pushes / %s: **%s**", e.cfg.concurrency, e.cfg.floodN, e.cfg.floodTime, verdict),
		"",
		"| pushes | elapsed | pushes/s | 201 | 503 | other errors | RSS start | RSS peak (100ms samples) | VmHWM | RSS end | gateway answers after | pushes after (status×n) | sampled 201s redeemed OK | redeem failures |",
		"|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|",
		fmt.Sprintf("| %d | %s | %.0f | %d | %d | %d | %s | %s | %s | %s | %v | %s | %d/%d | %d |",
			res.requests, res.elapsed.Round(10*time.Millisecond), res.rps(), created.Load(), full.Load(),
			res.errors, fmtBytes(float64(rssStart)), fmtBytes(float64(peak.Load())), fmtBytes(float64(hwm)), fmtBytes(float64(rssEnd)),
			alive, fmtIntMap(newPush), redeemOK, len(check)-redeemLate, redeemBad),
		"",
	)
	if created.Load() > 0 {
		r.note("16MiB / %d accepted = %s of store budget per entry (the store's own accounting)", created.Load(), fmtBytes(float64(16<<20)/float64(created.Load())))
	}
	r.note("p50 %s, p99 %s over all flood requests", fmtDur(res.pct(50)), fmtDur(res.pct(99)))
	if len(res.firstErrs) > 0 {
		r.note("flood errors: %s", strings.Join(res.firstErrs, " | "))
	}
	if len(after) > 0 {
		r.note("after flood: %s", strings.Join(after, " | "))
	}
	if len(badEx) > 0 {
		r.note("redeem failures: %s", strings.Join(badEx, " | "))
	}
	if redeemLate > 0 {
		r.note("%d sampled request_uris not checked (too close to expiry)", redeemLate)
	}
	if parseBad.Load() > 0 {
		r.note("%d 201 responses without a parseable request_uri", parseBad.Load())
	}
	if verdict != "OK" {
		return fmt.Errorf("mem-flood invariant violated: redeem failures %d, gateway alive %v, malformed 503s %d, other errors %d", redeemBad, alive, badFull.Load(), res.errors)
	}
	return nil
}

// gcTracker follows a child's log and remembers the latest gctrace line:
// its GC number and the live heap (MB) after that GC.
type gcTracker struct {
	c    *harness.Proc
	off  int64
	n    int
	live float64
}

func newGCTracker(c *harness.Proc) *gcTracker { return &gcTracker{c: c, n: -1, live: -1} }

// latest reads the log written since the last call and returns the latest
// GC seen so far, or (-1, -1).
func (g *gcTracker) latest() (int, float64) {
	f, err := os.Open(g.c.LogPath)
	if err != nil {
		return g.n, g.live
	}
	defer f.Close()
	if _, err := f.Seek(g.off, io.SeekStart); err != nil {
		return g.n, g.live
	}
	sc := bufio.NewReaderSize(f, 64<<10)
	for {
		line, err := sc.ReadString('\n')
		g.off += int64(len(line))
		if err != nil {
			// keep a partial last line for the next call
			g.off -= int64(len(line))
			break
		}
		if !strings.HasPrefix(line, "gc ") {
			continue
		}
		// gc 12 @3.1s 2%: ... ms cpu, 40->41->20 MB, 42 MB goal, ...
		fs := strings.Fields(line)
		if len(fs) < 2 {
			continue
		}
		n, err := strconv.Atoi(fs[1])
		if err != nil {
			continue
		}
		for j := 0; j+1 < len(fs); j++ {
			if fs[j+1] == "MB," && strings.Count(fs[j], "->") == 2 {
				parts := strings.Split(fs[j], "->")
				if live, err := strconv.ParseFloat(parts[2], 64); err == nil {
					g.n, g.live = n, live
				}
				break
			}
		}
	}
	return g.n, g.live
}

// postPush sends one typical push and returns status and body.
func postPush(e *env, url string, i int) (int, string, error) {
	req, err := http.NewRequestWithContext(e.ctx, http.MethodPost, url, strings.NewReader(string(pushBody(9999, i, ""))))
	if err != nil {
		return 0, "", err
	}
	for k, v := range pushHeader {
		req.Header[k] = v
	}
	cl := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: nil}}
	resp, err := cl.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	var sb strings.Builder
	buf := make([]byte, 4096)
	n, _ := resp.Body.Read(buf)
	sb.Write(buf[:n])
	return resp.StatusCode, sb.String(), nil
}

func fmtIntMap(m map[int]int) string {
	var parts []string
	for _, k := range []int{201, 503} {
		if m[k] > 0 {
			parts = append(parts, fmt.Sprintf("%d×%d", k, m[k]))
		}
	}
	for k, v := range m {
		if k != 201 && k != 503 {
			parts = append(parts, fmt.Sprintf("%d×%d", k, v))
		}
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, ", ")
}
