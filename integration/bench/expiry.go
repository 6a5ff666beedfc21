package main

import (
	"fmt"
	"net/http"
	"sync"
	"time"
)

// memExpiry: does a full store recover when its entries expire, and is
// every byte given back? A gateway with a small store (1MiB) and the
// shortest lifetime (5s) is filled until it answers 503; then one push every
// 250ms until one gets a 201 again (time to recover, bounded); then it is
// filled again, and the second fill must hold as many entries as the first.
// A request_uri from the first fill must be refused (400) after expiry.
func (e *env) memExpiry(r *row) error {
	const lifetime = 5 * time.Second
	c, base, err := e.startGateway(r.name, "5s", "1MiB")
	if err != nil {
		return err
	}
	r.server = "caddy oauth_par (store memory max_size 1MiB, lifetime 5s)"

	fill := func() (created int64, first string, full bool, err error) {
		spec, _ := pushSpec(base+"/par", false)
		spec.concurrency = e.cfg.concurrency
		spec.duration = 20 * time.Second
		spec.maxRequests = 50000
		var mu sync.Mutex
		stop := make(chan struct{})
		var once sync.Once
		spec.check = func(_ job, status int, body []byte) error {
			switch status {
			case http.StatusCreated:
				return nil
			case http.StatusServiceUnavailable:
				once.Do(func() { close(stop) })
				return nil
			}
			return fmt.Errorf("status %d: %s", status, trunc(string(body), 120))
		}
		spec.onOK = func(_ job, status int, body []byte, _ bool) {
			if status != http.StatusCreated {
				return
			}
			mu.Lock()
			created++
			if first == "" {
				first, _, _ = parseRequestURI(body)
			}
			mu.Unlock()
		}
		// Stop the fill shortly after the first 503: the generator stops at
		// its next request when next() reports exhaustion.
		inner := spec.next
		spec.next = func(w, seq int) (job, error) {
			select {
			case <-stop:
				return job{}, errExhausted
			default:
				return inner(w, seq)
			}
		}
		res := runLoad(e.ctx, spec)
		select {
		case <-stop:
			full = true
		default:
		}
		if res.errors > 0 {
			return created, first, full, fmt.Errorf("fill: %d errors: %v", res.errors, res.firstErrs)
		}
		return created, first, full, e.ctx.Err()
	}

	a, firstURI, full, err := fill()
	if err != nil {
		return err
	}
	if !full {
		return fmt.Errorf("a 1MiB store did not fill within 50000 pushes / 20s (%d accepted)", a)
	}
	filledAt := time.Now()
	var recovered time.Duration
	for i := 0; i < 240; i++ { // at most 60s
		if e.ctx.Err() != nil {
			return e.ctx.Err()
		}
		st, body, err := postPush(e, base+"/par", i)
		if err != nil {
			return fmt.Errorf("push while waiting for expiry: %v", err)
		}
		if st == http.StatusCreated {
			recovered = time.Since(filledAt)
			break
		}
		if st != http.StatusServiceUnavailable {
			return fmt.Errorf("push while waiting for expiry: %d %s", st, trunc(body, 120))
		}
		time.Sleep(250 * time.Millisecond)
	}
	// Let the rest of the first fill expire and be cleaned up too.
	time.Sleep(lifetime + 6*time.Second)
	redeemStatus := 0
	if firstURI != "" {
		redeemStatus, _, _, _ = checkGet(e.ctx, redeemURL(base+"/authorize", firstURI))
	}
	b, _, full2, err := fill()
	if err != nil {
		return err
	}
	verdict := "OK"
	var problems []string
	if recovered == 0 {
		problems = append(problems, "no 201 within 60s after the store filled")
	}
	if !full2 || b < a*9/10 {
		problems = append(problems, fmt.Sprintf("second fill accepted %d (first %d): budget not given back", b, a))
	}
	if redeemStatus != http.StatusBadRequest {
		problems = append(problems, fmt.Sprintf("expired request_uri answered %d, want 400", redeemStatus))
	}
	if len(problems) > 0 {
		verdict = "PROBLEM"
	}
	rec := "never (60s)"
	if recovered > 0 {
		rec = recovered.Round(100 * time.Millisecond).String()
	}
	r.memory = append(r.memory,
		fmt.Sprintf("**mem-expiry** — store memory max_size 1MiB, lifetime 5s: fill to 503, wait for expiry, fill again: **%s**", verdict),
		"",
		"| first fill (201s) | first 201 again after the fill | expired request_uri redeemed | second fill (201s) | RSS end |",
		"|---:|---:|---:|---:|---:|",
		fmt.Sprintf("| %d | %s | %d | %d | %s |", a, rec, redeemStatus, b, fmtBytes(float64(rssOf(c)))),
		"",
	)
	if len(problems) > 0 {
		return fmt.Errorf("mem-expiry: %v", problems)
	}
	return nil
}
