package integration

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

// testJTIReplay: the single-use jti of client assertions (RFC 7523) and
// DPoP proofs (RFC 9449) is recorded in the shared Redis, so a replay at
// the other gateway is refused. For DPoP, B is reached with A's Host (as
// behind a load balancer, where both serve one origin), so that the proof's
// htu is right at both.
func (e *redisEnv) testJTIReplay(t *testing.T) {
	b64 := base64.RawURLEncoding.EncodeToString
	jwtOf := func(header, claims map[string]any, sign func([]byte) []byte) string {
		h, _ := json.Marshal(header)
		c, _ := json.Marshal(claims)
		in := b64(h) + "." + b64(c)
		return in + "." + b64(sign([]byte(in)))
	}
	hs256 := func(in []byte) []byte {
		m := hmac.New(sha256.New, []byte(jwtAppSecret))
		m.Write(in)
		return m.Sum(nil)
	}
	assertion := func() string {
		now := time.Now().Unix()
		return jwtOf(map[string]any{"alg": "HS256", "typ": "JWT"}, map[string]any{
			"iss": "jwt-app", "sub": "jwt-app", "aud": redisTestIssuer, "iat": now, "exp": now + 60, "jti": randHex(16),
		}, hs256)
	}
	pushAs := func(gw int, host string, form url.Values, hdr http.Header) (int, string) {
		req, _ := http.NewRequest(http.MethodPost, e.origin(gw)+"/par", strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		for k, v := range hdr {
			req.Header[k] = v
		}
		if host != "" {
			req.Host = host
		}
		resp, err := e.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	authz := func(client string) url.Values {
		return url.Values{"client_id": {client}, "response_type": {"code"}, "redirect_uri": {"https://app.example.test/cb"},
			"scope": {"openid"}, "state": {randHex(6)}, "nonce": {randHex(12)}}
	}
	withAssertion := func(a string) url.Values {
		f := authz("jwt-app")
		f.Set("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
		f.Set("client_assertion", a)
		return f
	}

	// Client assertion: used at A, replayed at B.
	a := assertion()
	if st, body := pushAs(0, "", withAssertion(a), nil); st != http.StatusCreated {
		t.Fatalf("client_secret_jwt push at A: %d %s", st, body)
	}
	if st, body := pushAs(1, "", withAssertion(a), nil); st != http.StatusUnauthorized || !strings.Contains(body, "invalid_client") || !strings.Contains(body, "already used") {
		t.Fatalf("the same assertion at B: %d %s, want 401 invalid_client (jti already used)", st, body)
	}
	if st, body := pushAs(1, "", withAssertion(assertion()), nil); st != http.StatusCreated {
		t.Fatalf("a fresh assertion at B: %d %s", st, body)
	}

	// DPoP proof: used at A, replayed at B (with A's Host).
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	pad := func(b []byte) []byte { return append(make([]byte, 32-len(b)), b...) }
	jwk := map[string]any{"kty": "EC", "crv": "P-256", "x": b64(pad(key.X.Bytes())), "y": b64(pad(key.Y.Bytes()))}
	es256 := func(in []byte) []byte {
		sum := sha256.Sum256(in)
		r, s, err := ecdsa.Sign(rand.Reader, key, sum[:])
		if err != nil {
			t.Fatal(err)
		}
		return append(pad(r.Bytes()), pad(s.Bytes())...)
	}
	hostA := strings.TrimPrefix(e.origin(0), "http://")
	proof := func() string {
		return jwtOf(map[string]any{"alg": "ES256", "typ": "dpop+jwt", "jwk": jwk}, map[string]any{
			"jti": randHex(16), "htm": "POST", "htu": e.origin(0) + "/par", "iat": time.Now().Unix(),
		}, es256)
	}
	basic := func(p string) http.Header {
		h := http.Header{"Dpop": {p}}
		h.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte("web-app:"+e.secret)))
		return h
	}
	p := proof()
	if st, body := pushAs(0, "", authz("web-app"), basic(p)); st != http.StatusCreated {
		t.Fatalf("push with a DPoP proof at A: %d %s", st, body)
	}
	if st, body := pushAs(1, hostA, authz("web-app"), basic(p)); st != http.StatusBadRequest || !strings.Contains(body, "invalid_dpop_proof") || !strings.Contains(body, "already used") {
		t.Fatalf("the same DPoP proof at B: %d %s, want 400 invalid_dpop_proof (jti already used)", st, body)
	}
	if st, body := pushAs(1, hostA, authz("web-app"), basic(proof())); st != http.StatusCreated {
		t.Fatalf("a fresh DPoP proof at B with A's Host: %d %s", st, body)
	}
	keys, _ := e.redis.CLI("--scan", "--pattern", "caddy-par:j:*")
	if n := len(strings.Fields(keys)); n < 4 {
		t.Errorf("%d jti records in Redis, want at least 4 (two assertions, two proofs)", n)
	}
}
