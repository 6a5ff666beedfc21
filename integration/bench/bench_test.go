package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

func TestPercentileNearestRank(t *testing.T) {
	r := &loadResult{}
	for i := 1; i <= 100; i++ {
		r.latencies = append(r.latencies, time.Duration(i)*time.Millisecond)
	}
	if got := r.pct(50); got != 50*time.Millisecond {
		t.Errorf("p50 = %v", got)
	}
	if got := r.pct(99); got != 99*time.Millisecond {
		t.Errorf("p99 = %v", got)
	}
	if got := (&loadResult{}).pct(99); got != 0 {
		t.Errorf("empty p99 = %v", got)
	}
}

func TestPushBodies(t *testing.T) {
	b := pushBody(3, 7, "")
	if n := len(b); n < 500 || n > 700 {
		t.Errorf("typical push body is %d bytes, want ~600", n)
	}
	v, err := url.ParseQuery(string(b))
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"client_id", "response_type", "redirect_uri", "scope", "state", "nonce", "code_challenge", "code_challenge_method"} {
		if v.Get(k) == "" {
			t.Errorf("missing %s", k)
		}
	}
	if cc := v.Get("code_challenge"); len(cc) != 43 {
		t.Errorf("code_challenge %q is not 43 chars", cc)
	}
	if bytes.Equal(b, pushBody(3, 8, "")) {
		t.Error("pushes are not distinct")
	}
	param, jl := authorizationDetails(8192)
	if jl < 8000 || jl > 8192 {
		t.Errorf("authorization_details JSON is %d bytes, want ~8192", jl)
	}
	lv, err := url.ParseQuery(param)
	if err != nil || len(lv.Get("authorization_details")) != jl {
		t.Errorf("authorization_details param does not round-trip: %v", err)
	}
}

func TestSelectScenarios(t *testing.T) {
	c := &config{scenarios: "par-push, baseline-respond", memory: true}
	got, err := selectScenarios(c)
	if err != nil {
		t.Fatal(err)
	}
	want := "baseline-respond,par-push,mem-per-entry,mem-flood,mem-expiry"
	if strings.Join(got, ",") != want {
		t.Errorf("got %v, want %s", got, want)
	}
	if _, err := selectScenarios(&config{scenarios: "nope"}); err == nil {
		t.Error("unknown scenario accepted")
	}
	def, _ := selectScenarios(&config{})
	for _, n := range def {
		if n == "peer-keycloak-par" || strings.HasPrefix(n, "mem-") {
			t.Errorf("default selection includes %s", n)
		}
	}
}

// TestRunLoad drives the generator against an in-process server.
func TestRunLoad(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			_ = r.ParseForm()
			if r.PostForm.Get("client_id") != clientID || r.Header.Get("Authorization") != basicAuth(clientID, clientSecret) {
				w.WriteHeader(400)
				return
			}
			w.WriteHeader(201)
			w.Write([]byte(`{"request_uri":"urn:ietf:params:oauth:request_uri:x","expires_in":60}`))
			return
		}
		w.Write([]byte("ok"))
	})}
	go srv.Serve(l)
	defer srv.Close()
	spec, _ := pushSpec("http://"+l.Addr().String()+"/par", false)
	spec.concurrency = 4
	spec.warmup = 50 * time.Millisecond
	spec.duration = 300 * time.Millisecond
	res := runLoad(context.Background(), spec)
	if res.requests == 0 || res.errors != 0 {
		t.Fatalf("requests %d errors %d (%v)", res.requests, res.errors, res.firstErrs)
	}
	if len(res.latencies) != int(res.requests) || res.pct(50) <= 0 {
		t.Errorf("latencies %d for %d requests", len(res.latencies), res.requests)
	}
	// maxRequests bounds the count; exhaustion ends the run early.
	spec.warmup = 0
	spec.duration = 5 * time.Second
	spec.maxRequests = 10
	if res := runLoad(context.Background(), spec); res.requests != 10 {
		t.Errorf("maxRequests 10: got %d", res.requests)
	}
	spec.maxRequests = 0
	spec.next = func(int, int) (job, error) { return job{}, errExhausted }
	start := time.Now()
	if res := runLoad(context.Background(), spec); !res.exhausted || time.Since(start) > 2*time.Second {
		t.Errorf("exhaustion did not stop the run")
	}
	// Non-loopback targets are refused.
	h := &hconn{}
	if _, err := h.do(job{method: "GET", url: "http://192.0.2.1:80/"}, &bytes.Buffer{}); err == nil {
		t.Error("non-loopback target accepted")
	}
}

// TestJWTBodies: the JWT scenarios' push bodies carry a fresh assertion per
// push, and the request object carries the par-push parameters.
func TestJWTBodies(t *testing.T) {
	decode := func(jwt string) (h, c map[string]any) {
		p := strings.Split(jwt, ".")
		if len(p) != 3 {
			t.Fatalf("not a JWS: %q", jwt)
		}
		hb, _ := base64.RawURLEncoding.DecodeString(p[0])
		cb, _ := base64.RawURLEncoding.DecodeString(p[1])
		_ = json.Unmarshal(hb, &h)
		_ = json.Unmarshal(cb, &c)
		return h, c
	}
	for name, sc := range jwtScenarios {
		s, err := newJWTSigner(sc)
		if err != nil {
			t.Fatal(err)
		}
		pool, _, err := s.signPool(3, 10*time.Second)
		if err != nil || len(pool) != 3 {
			t.Fatalf("%s: pool %d, %v", name, len(pool), err)
		}
		v0, _ := url.ParseQuery(string(pool[0]))
		v1, _ := url.ParseQuery(string(pool[1]))
		h, c := decode(v0.Get("client_assertion"))
		if v0.Get("client_assertion_type") != assertionType || h["alg"] != sc.assertAlg || c["aud"] != jwtIssuer || c["iss"] != clientID || c["sub"] != clientID {
			t.Errorf("%s: assertion %v %v", name, h, c)
		}
		_, c1 := decode(v1.Get("client_assertion"))
		if c["jti"] == c1["jti"] {
			t.Errorf("%s: two pushes share a jti", name)
		}
		if sc.requestObject {
			if v0.Get("redirect_uri") != "" || v0.Get("client_id") != clientID {
				t.Errorf("%s: parameters outside the request object: %v", name, v0)
			}
			rh, rc := decode(v0.Get("request"))
			if rh["typ"] != "oauth-authz-req+jwt" || rc["redirect_uri"] != redirectURI || rc["code_challenge_method"] != "S256" || rc["max_age"] != float64(3600) || rc["aud"] != jwtIssuer {
				t.Errorf("%s: request object %v %v", name, rh, rc)
			}
		} else if v0.Get("redirect_uri") != redirectURI || v0.Get("state") == v1.Get("state") {
			t.Errorf("%s: form parameters %v", name, v0)
		}
	}
}
