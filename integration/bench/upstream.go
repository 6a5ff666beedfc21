package main

import (
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"time"
)

// serveUpstream is the minimal upstream "IdP" behind the gateway: it answers
// 200 "ok" to anything. It runs as a separate process (this binary with
// -serve-upstream ADDR), so its CPU and memory are never counted as the
// gateway's. It echoes the state parameter it received in X-Bench-State so
// the bench can check, once per run, that a redeemed request_uri really
// reached the upstream with the pushed parameters.
func serveUpstream(addr string) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil || host != "127.0.0.1" {
		fmt.Fprintln(os.Stderr, "upstream: loopback 127.0.0.1 only")
		os.Exit(2)
	}
	ok := []byte("ok")
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			_ = r.ParseForm()
			w.Header().Set("X-Bench-State", r.PostForm.Get("state"))
		} else if q := r.URL.RawQuery; q != "" {
			if v, err := url.ParseQuery(q); err == nil {
				w.Header().Set("X-Bench-State", v.Get("state"))
			}
		}
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(ok)
	})
	srv := &http.Server{
		Addr:              addr,
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
	}
	// Exit if the parent bench goes away (stdin is a pipe it holds).
	go func() {
		buf := make([]byte, 1)
		for {
			if _, err := os.Stdin.Read(buf); err != nil {
				os.Exit(0)
			}
		}
	}()
	if err := srv.ListenAndServe(); err != nil {
		fmt.Fprintln(os.Stderr, "upstream:", err)
		os.Exit(1)
	}
}
