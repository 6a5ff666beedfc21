package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddy-par/caddy-par/integration/internal/jws"
)

// The JWT scenarios: the same push as par-push, but the client
// authenticates with private_key_jwt (RFC 7523) instead of
// client_secret_basic, and in par-push-signed-request-object it also sends
// the parameters as a signed request object (RFC 9101 inside PAR, RFC 9126
// §3).
//
// Every push needs a freshly signed assertion with a unique jti (the
// gateway refuses a replayed jti). Signing costs the load generator's CPU
// (ES256 ~45µs, PS256 with RSA 2048 ~1.2ms here), which would make the
// generator, not the gateway, the limit. So the bodies are signed BEFORE
// the timed run, into a pool: one body per request, used once, in order.
// The pool is sized from par-push's rate in the same run (× 1.5 over
// warmup + duration) and bounded by -jwt-pool-max and by -sign-budget (the
// time spent signing); while it is signed, the bench uses every CPU (no
// gateway runs yet). When the pool runs out before the duration ends, the
// run stops there and req/s is over the time measured (the note says so).

// jwtIssuer is the gateway's `issuer` in these scenarios: the assertion and
// request object audience.
const jwtIssuer = "https://idp.example.com"

const assertionType = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

// jwtHeader is shared by all private_key_jwt pushes (read-only): no
// Authorization header.
var jwtHeader = http.Header{
	"Content-Type": {"application/x-www-form-urlencoded"},
	"Accept":       {"application/json"},
}

// jwtScenario describes one JWT scenario.
type jwtScenario struct {
	assertAlg     string // ES256 or PS256
	requestObject bool   // also a signed request object (ES256)
}

var jwtScenarios = map[string]jwtScenario{
	"par-push-private-key-jwt-es256": {assertAlg: "ES256"},
	"par-push-private-key-jwt-ps256": {assertAlg: "PS256"},
	"par-push-signed-request-object": {assertAlg: "ES256", requestObject: true},
}

// jwtParBlock is parBlock with the client known by its public keys.
func jwtParBlock(lifetime, storeSize, jwksFile string, requestObject bool) string {
	extra := ""
	if requestObject {
		extra = "\n\t\t\trequire_signed_request_object"
	}
	return fmt.Sprintf(`	oauth_par {
		authorization_endpoint /authorize
		par_endpoint /par
		issuer %s
		request_uri_lifetime %s
		require_par
		max_request_size 64KiB
		rate_limit off
		client %s {
			jwks_file %s
			auth_methods private_key_jwt
			redirect_uris %s
			allowed_scopes %s%s
		}
		store memory {
			max_size %s
		}
	}
`, jwtIssuer, lifetime, clientID, jwksFile, redirectURI, scopes, extra, storeSize)
}

// jwtSigner builds push bodies for one scenario.
type jwtSigner struct {
	sc         jwtScenario
	assertKey  *jws.Key
	requestKey *jws.Key // requestObject only
}

func newJWTSigner(sc jwtScenario) (*jwtSigner, error) {
	s := &jwtSigner{sc: sc}
	var err error
	if s.assertKey, err = jws.New(sc.assertAlg, "bench-"+sc.assertAlg); err != nil {
		return nil, err
	}
	if sc.requestObject {
		if s.requestKey, err = jws.New("ES256", "bench-ro-ES256"); err != nil {
			return nil, err
		}
	}
	return s, nil
}

func (s *jwtSigner) jwks() []byte {
	if s.requestKey != nil {
		return jws.PublicJWKS(s.assertKey, s.requestKey)
	}
	return jws.PublicJWKS(s.assertKey)
}

// body builds push i: the par-push parameters (distinct per i), with a
// client assertion, as a form or (requestObject) as a signed request
// object. now is the pool's signing time: the assertion expires 280s
// later (the gateway's default maximum is 5 minutes ahead).
func (s *jwtSigner) body(i int, now time.Time) ([]byte, error) {
	plain, err := url.ParseQuery(string(pushBody(i/1024, i%1024, "")))
	if err != nil {
		return nil, err
	}
	ts := now.Unix()
	assertion, err := s.assertKey.Sign(map[string]any{"typ": "JWT"}, map[string]any{
		"iss": clientID, "sub": clientID, "aud": jwtIssuer,
		"jti": jws.RandomID(), "iat": ts, "exp": ts + 280,
	})
	if err != nil {
		return nil, err
	}
	form := url.Values{}
	if s.sc.requestObject {
		claims := map[string]any{"iss": clientID, "aud": jwtIssuer, "iat": ts, "nbf": ts, "exp": ts + 600, "jti": jws.RandomID()}
		for k, v := range plain {
			claims[k] = v[0]
		}
		if n, err := strconv.Atoi(plain.Get("max_age")); err == nil {
			claims["max_age"] = n // a JSON number, as clients send it
		}
		ro, err := s.requestKey.Sign(map[string]any{"typ": "oauth-authz-req+jwt"}, claims)
		if err != nil {
			return nil, err
		}
		form.Set("client_id", clientID)
		form.Set("request", ro)
	} else {
		form = plain
	}
	form.Set("client_assertion_type", assertionType)
	form.Set("client_assertion", assertion)
	return []byte(form.Encode()), nil
}

// signPool signs up to n bodies, in parallel on every CPU, stopping at
// budget. It returns the bodies and the time it took.
func (s *jwtSigner) signPool(n int, budget time.Duration) ([][]byte, time.Duration, error) {
	// Sign on every CPU: no server is running yet. The bench is pinned to
	// the load CPUs again afterwards.
	if benchCPUs != nil {
		all := make([]int, runtime.NumCPU())
		for i := range all {
			all[i] = i
		}
		restore := benchCPUs
		if err := pinSelf(all); err == nil {
			prev := runtime.GOMAXPROCS(len(all))
			defer func() {
				runtime.GOMAXPROCS(prev)
				_ = pinSelf(restore)
			}()
		}
	}
	start := time.Now()
	deadline := start.Add(budget)
	pool := make([][]byte, n)
	var next, done atomic.Int64
	var firstErr error
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := 0; w < runtime.GOMAXPROCS(0); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || time.Now().After(deadline) {
					return
				}
				b, err := s.body(i, start)
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					return
				}
				pool[i] = b
				done.Add(1)
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return nil, 0, firstErr
	}
	// Keep the filled prefix (workers stop at the deadline in any order).
	k := 0
	for k < n && pool[k] != nil {
		k++
	}
	return pool[:k], time.Since(start), nil
}

// parPushJWT runs one JWT scenario.
func (e *env) parPushJWT(r *row, sc jwtScenario) error {
	s, err := newJWTSigner(sc)
	if err != nil {
		return err
	}
	jwksFile := filepath.Join(e.tmp, r.name+".jwks.json")
	if err := os.WriteFile(jwksFile, s.jwks(), 0o644); err != nil {
		return err
	}

	// Pool size: par-push's rate from this run, × 1.5, over warmup +
	// duration (20000/s when par-push did not run).
	rate := 20000.0
	if pp := e.results["par-push"]; pp != nil && pp.res != nil && pp.res.rps() > 0 {
		rate = pp.res.rps()
	}
	window := (e.cfg.warmup + e.cfg.duration).Seconds()
	n := int(rate*window*1.5) + 4*e.cfg.concurrency
	if n > e.cfg.jwtPoolMax {
		n = e.cfg.jwtPoolMax
	}
	logf("   signing up to %d push bodies before the run (budget %s)", n, e.cfg.signBudget)
	pool, took, err := s.signPool(n, e.cfg.signBudget)
	if err != nil {
		return err
	}
	if len(pool) < 2*e.cfg.concurrency {
		return fmt.Errorf("only %d bodies signed within -sign-budget %s", len(pool), e.cfg.signBudget)
	}
	per := took / time.Duration(len(pool))
	if lifetime := 280*time.Second - took - time.Duration(window*float64(time.Second)); lifetime < 10*time.Second {
		r.note("WARNING: assertions are signed with exp = signing time + 280s; signing (%s) + warmup + duration leaves them only %s", took.Round(time.Second), lifetime.Round(time.Second))
	}

	up, err := e.startUpstream()
	if err != nil {
		return err
	}
	c, base, err := e.startCaddy(r.name, jwtParBlock("60s", e.cfg.storeSize, jwksFile, sc.requestObject)+"\treverse_proxy "+up+"\n")
	if err != nil {
		return err
	}
	r.server = "caddy oauth_par"
	// One checked push before the run: the gateway accepts the pool's
	// bodies (and the same body again is a replay).
	st, _, body, err := checkPost(e.ctx, base+"/par", jwtHeader, pool[0])
	if err != nil || st != http.StatusCreated {
		return fmt.Errorf("sanity push: status %d, err %v, body %q", st, err, trunc(body, 300))
	}
	if st, _, body, _ := checkPost(e.ctx, base+"/par", jwtHeader, pool[0]); st != http.StatusUnauthorized {
		r.note("WARNING: a replayed client assertion answered %d %s, want 401", st, trunc(body, 120))
	}
	pool = pool[1:]

	what := "private_key_jwt " + sc.assertAlg
	if sc.requestObject {
		what += " + request object ES256 (typ oauth-authz-req+jwt, the par-push parameters as claims)"
	}
	r.note("%s; push body %d bytes; %d bodies signed before the run in %s (%s of wall time per body, %d CPUs signing), each used once", what, len(pool[0]), len(pool)+1, took.Round(time.Millisecond), per.Round(time.Microsecond), runtime.NumCPU())

	var idx atomic.Int64
	parURL := base + "/par"
	e.measure(r, c, loadSpec{
		warmup: e.cfg.warmup,
		next: func(int, int) (job, error) {
			i := idx.Add(1) - 1
			if i >= int64(len(pool)) {
				return job{}, errExhausted
			}
			return job{method: http.MethodPost, url: parURL, header: jwtHeader, body: pool[i]}, nil
		},
		check: expectStatus(http.StatusCreated, `"request_uri"`),
	})
	return nil
}

// checkPost sends one POST outside the load generator.
func checkPost(ctx context.Context, u string, h http.Header, body []byte) (int, http.Header, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(body))
	if err != nil {
		return 0, nil, "", err
	}
	req.Header = h.Clone()
	cl := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: nil}}
	resp, err := cl.Do(req)
	if err != nil {
		return 0, nil, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	return resp.StatusCode, resp.Header, string(b), nil
}
