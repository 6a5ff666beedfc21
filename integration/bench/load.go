package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// errExhausted is returned by a request source that has no more work (e.g.
// par-authorize ran out of pre-pushed request_uris). The worker stops; the
// run's elapsed time is what was actually measured.
var errExhausted = errors.New("request source exhausted")

// job is one request to send. body may be nil.
type job struct {
	method string
	url    string
	header http.Header
	body   []byte
	// tag is carried to check (e.g. the index of a pre-pushed request_uri).
	tag int
}

// loadSpec describes one fixed-concurrency, fixed-duration run.
type loadSpec struct {
	concurrency int
	warmup      time.Duration // run but not recorded
	duration    time.Duration // recorded
	maxRequests int64         // hard bound on recorded+warmup requests (0: none)
	// next builds the next request for worker w (worker-local seq counter).
	next func(w, seq int) (job, error)
	// check validates a response; a non-nil error counts as an error.
	check func(j job, status int, body []byte) error
	// onOK is called for responses that passed check (optional).
	onOK func(j job, status int, body []byte, recorded bool)
	// onMeasureStart is called once, when the measured phase starts
	// (optional; e.g. to sample the server's CPU time).
	onMeasureStart func()
}

// loadResult is what one run measured.
type loadResult struct {
	requests  int64 // recorded requests (measured phase only)
	errors    int64
	elapsed   time.Duration
	latencies []time.Duration // sorted, recorded requests only (ok and errors)
	statuses  map[string]int64
	firstErrs []string
	exhausted bool
}

func (r *loadResult) rps() float64 {
	if r.elapsed <= 0 {
		return 0
	}
	return float64(r.requests) / r.elapsed.Seconds()
}

func (r *loadResult) pct(p float64) time.Duration {
	n := len(r.latencies)
	if n == 0 {
		return 0
	}
	// nearest-rank percentile
	i := int(p/100*float64(n)+0.999999) - 1
	if i < 0 {
		i = 0
	}
	if i >= n {
		i = n - 1
	}
	return r.latencies[i]
}

// maxSamplesPerWorker bounds the latency sample memory (8 bytes each).
const maxSamplesPerWorker = 1 << 20

// requestTimeout bounds every single request.
const requestTimeout = 30 * time.Second

// hconn is one worker's keep-alive HTTP/1.1 client connection. The load
// generator speaks HTTP/1.1 itself (request written by hand, response read
// with net/http's parser) rather than through http.Client: on a 2-core
// machine the client's per-request goroutine hand-offs would make the load
// generator, not the server, the bottleneck.
type hconn struct {
	addr string
	c    net.Conn
	br   *bufio.Reader
	bw   *bufio.Writer
}

func (h *hconn) close() {
	if h.c != nil {
		h.c.Close()
		h.c = nil
	}
}

// splitURL splits "http://host:port/path?query" into host and request target.
func splitURL(u string) (host, target string, err error) {
	rest, ok := strings.CutPrefix(u, "http://")
	if !ok {
		return "", "", fmt.Errorf("only http:// URLs: %q", u)
	}
	i := strings.IndexByte(rest, '/')
	if i < 0 {
		return rest, "/", nil
	}
	return rest[:i], rest[i:], nil
}

// do sends j and reads the whole response body into buf.
func (h *hconn) do(j job, buf *bytes.Buffer) (int, error) {
	host, target, err := splitURL(j.url)
	if err != nil {
		return 0, err
	}
	if !strings.HasPrefix(host, "127.0.0.1:") {
		return 0, fmt.Errorf("refusing non-loopback target %q", host)
	}
	if h.c != nil && h.addr != host {
		h.close()
	}
	if h.c == nil {
		c, err := net.DialTimeout("tcp", host, 5*time.Second)
		if err != nil {
			return 0, err
		}
		h.c, h.addr = c, host
		if h.br == nil {
			h.br = bufio.NewReaderSize(c, 16<<10)
			h.bw = bufio.NewWriterSize(c, 16<<10)
		} else {
			h.br.Reset(c)
			h.bw.Reset(c)
		}
	}
	_ = h.c.SetDeadline(time.Now().Add(requestTimeout))
	bw := h.bw
	bw.WriteString(j.method)
	bw.WriteByte(' ')
	bw.WriteString(target)
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.WriteString(host)
	bw.WriteString("\r\nUser-Agent: caddy-par-bench\r\n")
	for k, vs := range j.header {
		for _, v := range vs {
			bw.WriteString(k)
			bw.WriteString(": ")
			bw.WriteString(v)
			bw.WriteString("\r\n")
		}
	}
	if j.body != nil || j.method == http.MethodPost {
		bw.WriteString("Content-Length: ")
		bw.WriteString(strconv.Itoa(len(j.body)))
		bw.WriteString("\r\n")
	}
	bw.WriteString("\r\n")
	bw.Write(j.body)
	if err := bw.Flush(); err != nil {
		h.close()
		return 0, err
	}
	resp, err := http.ReadResponse(h.br, nil)
	if err != nil {
		h.close()
		return 0, err
	}
	_, err = io.Copy(buf, resp.Body)
	resp.Body.Close()
	if err != nil {
		h.close()
		return resp.StatusCode, err
	}
	if resp.Close {
		h.close()
	}
	return resp.StatusCode, nil
}

// runLoad runs spec against a server: warmup, then the measured phase. Each
// worker owns one keep-alive connection and sends requests back to back
// (closed loop).
func runLoad(ctx context.Context, spec loadSpec) *loadResult {
	var (
		sent      atomic.Int64
		exhausted atomic.Bool
		mu        sync.Mutex
		res       = &loadResult{statuses: map[string]int64{}}
	)
	start := time.Now()
	measureFrom := start.Add(spec.warmup)
	deadline := measureFrom.Add(spec.duration)
	var measureStart time.Time // set when the first worker crosses into the measured phase
	var measureOnce sync.Once

	var wg sync.WaitGroup
	for w := 0; w < spec.concurrency; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			hc := &hconn{}
			defer hc.close()
			lat := make([]time.Duration, 0, 4096)
			statuses := map[string]int64{}
			var reqs, errs int64
			var firstErrs []string
			buf := bytes.NewBuffer(make([]byte, 0, 4096))
			for seq := 0; ; seq++ {
				now := time.Now()
				if !now.Before(deadline) || ctx.Err() != nil {
					break
				}
				if spec.maxRequests > 0 && sent.Add(1) > spec.maxRequests {
					break
				}
				recorded := !now.Before(measureFrom)
				if recorded {
					measureOnce.Do(func() {
						measureStart = now
						if spec.onMeasureStart != nil {
							spec.onMeasureStart()
						}
					})
				}
				j, err := spec.next(w, seq)
				if err != nil {
					if errors.Is(err, errExhausted) {
						exhausted.Store(true)
					}
					break
				}
				buf.Reset()
				t0 := time.Now()
				status, rerr := hc.do(j, buf)
				d := time.Since(t0)
				if ctx.Err() != nil {
					break // interrupted: do not count a cancelled request
				}
				key := strconv.Itoa(status)
				if rerr != nil {
					key = "transport"
				} else if cerr := spec.check(j, status, buf.Bytes()); cerr != nil {
					rerr = cerr
				}
				if !recorded {
					if rerr == nil && spec.onOK != nil {
						spec.onOK(j, status, buf.Bytes(), false)
					}
					continue
				}
				reqs++
				statuses[key]++
				if len(lat) < maxSamplesPerWorker {
					lat = append(lat, d)
				}
				if rerr != nil {
					errs++
					if len(firstErrs) < 3 {
						firstErrs = append(firstErrs, fmt.Sprintf("%s: %v", key, trunc(rerr.Error(), 200)))
					}
				} else if spec.onOK != nil {
					spec.onOK(j, status, buf.Bytes(), true)
				}
			}
			mu.Lock()
			res.requests += reqs
			res.errors += errs
			res.latencies = append(res.latencies, lat...)
			for k, v := range statuses {
				res.statuses[k] += v
			}
			for _, e := range firstErrs {
				if len(res.firstErrs) < 5 {
					res.firstErrs = append(res.firstErrs, e)
				}
			}
			mu.Unlock()
		}(w)
	}
	wg.Wait()
	end := time.Now()
	if measureStart.IsZero() {
		measureStart = measureFrom
	}
	res.elapsed = end.Sub(measureStart)
	if res.elapsed < 0 {
		res.elapsed = 0
	}
	res.exhausted = exhausted.Load()
	sort.Slice(res.latencies, func(i, j int) bool { return res.latencies[i] < res.latencies[j] })
	return res
}

func trunc(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// expectStatus returns a check that accepts exactly want, and (optionally)
// requires the body to contain substr.
func expectStatus(want int, substr string) func(job, int, []byte) error {
	sub := []byte(substr)
	return func(_ job, status int, body []byte) error {
		if status != want {
			return fmt.Errorf("status %d, want %d: %s", status, want, strings.TrimSpace(trunc(string(body), 160)))
		}
		if len(sub) > 0 && !bytes.Contains(body, sub) {
			return fmt.Errorf("status %d but body lacks %q: %s", status, substr, trunc(string(body), 160))
		}
		return nil
	}
}
