package caddymodule

// Delegated client authentication (upstream_client_auth): the gateway
// checks the secret of a client it does not know by asking the upstream's
// token endpoint, with a token request that cannot succeed.

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/sync/singleflight"
)

// UpstreamClientAuth delegates the authentication of clients that are not
// configured in the gateway to the upstream authorization server: a
// client_secret_basic or client_secret_post push of an unknown client_id
// is checked with one token request to the upstream's token endpoint
// (grant_type=authorization_code with a random code, sent with the same
// credentials in the same way). invalid_grant means the upstream accepted
// the client's credentials and only the code was wrong; invalid_client
// means it did not. Any other answer refuses the push.
type UpstreamClientAuth struct {
	// TokenEndpoint is the upstream's token endpoint as the gateway reaches
	// it directly (an internal URL, like reverse_proxy's upstream), not
	// through this site. Required.
	TokenEndpoint string `json:"token_endpoint"`
	// Methods are the client authentication methods that may be delegated:
	// client_secret_basic and/or client_secret_post. Default: both.
	Methods []string `json:"methods,omitempty"`
	// Timeout bounds one probe, waiting for a free probe slot included.
	// Default 3s, at most 10s.
	Timeout caddy.Duration `json:"timeout,omitempty"`
	// CacheTTL is how long a confirmed client_id and secret are accepted
	// without asking again. Default 5m, 1s to 1h.
	CacheTTL caddy.Duration `json:"cache_ttl,omitempty"`
	// CacheSize bounds the number of confirmed credentials kept. Default
	// 10000.
	CacheSize int `json:"cache_size,omitempty"`
	// FailureLimit and FailureWindow: after this many refused probes of one
	// client_id within the window, its pushes with credentials not in the
	// cache are refused (429) without a probe until the window ends.
	// Default 5 per 1m.
	FailureLimit  int            `json:"failure_limit,omitempty"`
	FailureWindow caddy.Duration `json:"failure_window,omitempty"`
	// GlobalFailureLimit and GlobalFailureWindow: the same over all
	// client_ids together. Default 100 per 1m.
	GlobalFailureLimit  int            `json:"global_failure_limit,omitempty"`
	GlobalFailureWindow caddy.Duration `json:"global_failure_window,omitempty"`
	// AllowPublic lets unknown clients push without credentials, as public
	// clients (PKCE with S256 required). Their existence is not checked at
	// push time: the upstream checks the client at authorization.
	AllowPublic bool `json:"allow_public,omitempty"`
}

// Defaults and bounds of upstream_client_auth.
const (
	defaultProbeTimeout        = 3 * time.Second
	maxProbeTimeout            = 10 * time.Second
	defaultProbeCacheTTL       = 5 * time.Minute
	maxProbeCacheTTL           = time.Hour
	defaultProbeCacheSize      = 10000
	maxProbeCacheSize          = 1000000
	defaultFailureLimit        = 5
	defaultFailureWindow       = time.Minute
	defaultGlobalFailureLimit  = 100
	defaultGlobalFailureWindow = time.Minute
	maxFailureWindow           = time.Hour
	// maxConcurrentProbes bounds the probes in flight; a push waits for a
	// slot within the probe timeout.
	maxConcurrentProbes = 32
	// maxProbeResponse is how much of the upstream's answer is read.
	maxProbeResponse = 16 << 10
	// maxFailureEntries bounds the per-client_id failure records.
	maxFailureEntries = 10000
	// maxDelegatedClientID and maxDelegatedSecret bound what is sent
	// upstream at all.
	maxDelegatedClientID = 255
	maxDelegatedSecret   = 1024
	// probeOutageLogEvery throttles the log line of an unreachable upstream.
	probeOutageLogEvery = 10 * time.Second
	// probeCodePrefix marks the probe's code, for whoever reads the
	// upstream's logs.
	probeCodePrefix = "caddy-par-probe-"
)

// unmarshalUpstreamClientAuth parses
//
//	upstream_client_auth [<token_endpoint>] {
//		token_endpoint       <url>
//		methods              client_secret_basic|client_secret_post ...
//		timeout              <duration>
//		cache_ttl            <duration>
//		cache_size           <n>
//		failure_limit        <n> <window>
//		global_failure_limit <n> <window>
//		allow_public
//	}
func unmarshalUpstreamClientAuth(d *caddyfile.Dispenser) (*UpstreamClientAuth, error) {
	const name = "upstream_client_auth"
	u := &UpstreamClientAuth{}
	if d.NextArg() {
		u.TokenEndpoint = d.Val()
		if d.NextArg() {
			return nil, d.Errf("%s: too many arguments (the token endpoint URL, then a block)", name)
		}
	}
	limit := func(n *int, w *caddy.Duration) error {
		sub := d.Val()
		args := d.RemainingArgs()
		if len(args) != 2 {
			return d.Errf("%s: %s: want <count> <window>, e.g. %s 5 1m", name, sub, sub)
		}
		c, err := strconv.Atoi(args[0])
		if err != nil || c < 1 {
			return d.Errf("%s: %s: count %q must be a positive integer", name, sub, args[0])
		}
		dur, err := caddy.ParseDuration(args[1])
		if err != nil {
			return d.Errf("%s: %s: window: %v", name, sub, err)
		}
		*n, *w = c, caddy.Duration(dur)
		return nil
	}
	for d.NextBlock(1) {
		sub := d.Val()
		var err error
		switch sub {
		case "token_endpoint":
			if u.TokenEndpoint != "" {
				return nil, d.Errf("%s: token_endpoint: specified more than once", name)
			}
			err = oneArg(d, &u.TokenEndpoint)
		case "methods":
			err = someArgs(d, &u.Methods)
		case "timeout":
			err = durationArg(d, &u.Timeout)
		case "cache_ttl":
			err = durationArg(d, &u.CacheTTL)
		case "cache_size":
			var s string
			if err = oneArg(d, &s); err == nil {
				if u.CacheSize, err = strconv.Atoi(s); err != nil || u.CacheSize < 1 {
					err = d.Errf("%s: cache_size: %q must be a positive integer", name, s)
				}
			}
		case "failure_limit":
			err = limit(&u.FailureLimit, &u.FailureWindow)
		case "global_failure_limit":
			err = limit(&u.GlobalFailureLimit, &u.GlobalFailureWindow)
		case "allow_public":
			if d.NextArg() {
				return nil, d.Errf("%s: allow_public takes no arguments", name)
			}
			u.AllowPublic = true
		default:
			return nil, d.Errf("%s: unknown subdirective %q", name, sub)
		}
		if err != nil {
			if !strings.Contains(err.Error(), name) {
				return nil, d.Errf("%s: %v", name, err)
			}
			return nil, err
		}
	}
	return u, nil
}

// provision checks the configuration and builds the runtime form. h is
// the handler it belongs to, for the settings it cannot be combined with.
// Errors name the subdirective.
func (u *UpstreamClientAuth) provision(ctx context.Context, h *Handler, logger *zap.Logger) (*upstreamAuth, error) {
	fail := func(format string, args ...any) (*upstreamAuth, error) {
		return nil, fmt.Errorf("upstream_client_auth: "+format, args...)
	}
	if h.fapi2() {
		// FAPI 2.0 §5.3.2.1: confidential clients authenticate with
		// private_key_jwt or mTLS only, never a shared secret; and mTLS
		// cannot be delegated (the TLS connection ends at the gateway).
		return nil, fmt.Errorf("profile %s: upstream_client_auth is not allowed: it checks client secrets, and FAPI 2.0 §5.3.2.1 allows only private_key_jwt and mTLS", h.Profile)
	}
	if h.RequireSignedRequestObject {
		return fail("cannot be combined with require_signed_request_object: clients known only to the upstream have no registered keys to sign request objects with")
	}
	tu, err := url.Parse(u.TokenEndpoint)
	switch {
	case u.TokenEndpoint == "":
		return fail("token_endpoint is required: the upstream's token endpoint URL as the gateway reaches it directly, e.g. http://keycloak.internal:8080/realms/demo/protocol/openid-connect/token")
	case err != nil || (tu.Scheme != "http" && tu.Scheme != "https") || tu.Host == "" || tu.Fragment != "" || tu.User != nil:
		return fail("token_endpoint: %q must be an absolute http or https URL without user info or fragment", u.TokenEndpoint)
	}
	methods := u.Methods
	if len(methods) == 0 {
		methods = []string{AuthClientSecretBasic, AuthClientSecretPost}
	}
	rt := &upstreamAuth{
		tokenEndpoint: u.TokenEndpoint,
		methods:       map[string]bool{},
		allowPublic:   u.AllowPublic,
		timeout:       durationOr(u.Timeout, defaultProbeTimeout),
		logger:        logger,
		now:           time.Now,
		slots:         make(chan struct{}, maxConcurrentProbes),
	}
	for _, m := range methods {
		if m != AuthClientSecretBasic && m != AuthClientSecretPost {
			return fail("methods: %q cannot be delegated (client_secret_basic, client_secret_post)", m)
		}
		rt.methods[m] = true
	}
	if rt.timeout < 100*time.Millisecond || rt.timeout > maxProbeTimeout {
		return fail("timeout: %s is outside 100ms..%s", rt.timeout, maxProbeTimeout)
	}
	ttl := durationOr(u.CacheTTL, defaultProbeCacheTTL)
	if ttl < time.Second || ttl > maxProbeCacheTTL {
		return fail("cache_ttl: %s is outside 1s..%s", ttl, maxProbeCacheTTL)
	}
	size := u.CacheSize
	if size == 0 {
		size = defaultProbeCacheSize
	}
	if size < 1 || size > maxProbeCacheSize {
		return fail("cache_size: %d is outside 1..%d", size, maxProbeCacheSize)
	}
	lim := &failureLimiter{
		perLimit:     intOr(u.FailureLimit, defaultFailureLimit),
		perWindow:    durationOr(u.FailureWindow, defaultFailureWindow),
		globalLimit:  intOr(u.GlobalFailureLimit, defaultGlobalFailureLimit),
		globalWindow: durationOr(u.GlobalFailureWindow, defaultGlobalFailureWindow),
		maxEntries:   maxFailureEntries,
		per:          map[string]*failWindow{},
	}
	for _, c := range []struct {
		name string
		n    int
		w    time.Duration
	}{{"failure_limit", lim.perLimit, lim.perWindow}, {"global_failure_limit", lim.globalLimit, lim.globalWindow}} {
		if c.n < 1 || c.w < time.Second || c.w > maxFailureWindow {
			return fail("%s: %d per %s: want a positive count and a window of 1s..%s", c.name, c.n, c.w, maxFailureWindow)
		}
	}
	rt.limiter = lim
	rt.cache = newProbeCache(ttl, size)
	if _, err := rand.Read(rt.key[:]); err != nil {
		return nil, fmt.Errorf("upstream_client_auth: %v", err)
	}
	tr := &http.Transport{
		// Straight to the upstream: no proxy from the environment.
		Proxy:                 nil,
		DialContext:           (&net.Dialer{Timeout: rt.timeout, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout:   rt.timeout,
		ResponseHeaderTimeout: rt.timeout,
		MaxIdleConnsPerHost:   8,
		MaxConnsPerHost:       maxConcurrentProbes,
		IdleConnTimeout:       30 * time.Second,
		ForceAttemptHTTP2:     true,
	}
	rt.client = &http.Client{
		Transport: tr,
		Timeout:   rt.timeout,
		// A redirect is not an answer about the client: no following.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	if ctx != nil {
		// The config's context ends when the config is unloaded.
		go func() {
			<-ctx.Done()
			tr.CloseIdleConnections()
		}()
	}
	return rt, nil
}

func durationOr(d caddy.Duration, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return time.Duration(d)
}

func intOr(n, def int) int {
	if n == 0 {
		return def
	}
	return n
}

// upstreamAuth is the provisioned upstream_client_auth.
type upstreamAuth struct {
	tokenEndpoint string
	methods       map[string]bool
	allowPublic   bool
	timeout       time.Duration
	client        *http.Client
	// key is the HMAC key of the cache: random per configuration, so that
	// a memory dump holds no value an attacker could test secrets against
	// offline without it, and never the secrets themselves.
	key     [32]byte
	cache   *probeCache
	limiter *failureLimiter
	flight  singleflight.Group
	// slots bounds the probes in flight.
	slots chan struct{}

	logger        *zap.Logger
	now           func() time.Time
	lastOutageLog atomic.Int64
}

// probeVerdict is what the gateway makes of the upstream's answer.
type probeVerdict int

const (
	// verdictConfirmed: 400 invalid_grant, the upstream authenticated the
	// client and refused only the code.
	verdictConfirmed probeVerdict = iota
	// verdictRefused: any 401 (Keycloak answers a wrong secret with 401
	// unauthorized_client), or 400 invalid_client.
	verdictRefused
	// verdictUndetermined: any other answer (unauthorized_client,
	// unsupported_grant_type, invalid_request, a 2xx or 3xx, non-JSON...).
	// It does not say that the credentials are right: refused.
	verdictUndetermined
	// verdictUnavailable: no answer (network error, timeout), 5xx or 429:
	// 503, nothing accepted.
	verdictUnavailable
)

func (v probeVerdict) String() string {
	switch v {
	case verdictConfirmed:
		return "confirmed"
	case verdictRefused:
		return "refused"
	case verdictUndetermined:
		return "undetermined"
	default:
		return "unavailable"
	}
}

// probeResult is a verdict with what the log line says about it.
type probeResult struct {
	verdict probeVerdict
	status  int    // 0 without an HTTP answer
	code    string // the upstream's error code, sanitized
	err     string // transport error, without credentials
}

// classifyProbe interprets the upstream token endpoint's answer to the
// probe. Only answers that RFC 6749 §5.2 gives an unambiguous meaning
// here decide; everything else cannot tell, and refuses too.
func classifyProbe(status int, body []byte) probeResult {
	res := probeResult{status: status}
	if status >= 500 || status == http.StatusTooManyRequests {
		res.verdict = verdictUnavailable
		return res
	}
	var e struct {
		Error *string `json:"error"`
	}
	parsed := json.Unmarshal(bytes.TrimSpace(body), &e) == nil && e.Error != nil
	if parsed {
		res.code = sanitizeCode(*e.Error)
	}
	switch {
	case status == http.StatusUnauthorized:
		// RFC 6749 §5.2: 401 is the answer to failed client
		// authentication, whatever the body says (Keycloak sends 401
		// unauthorized_client for a wrong secret of a known client).
		res.verdict = verdictRefused
	case !parsed:
		res.verdict = verdictUndetermined
	case status == http.StatusBadRequest && *e.Error == "invalid_grant":
		res.verdict = verdictConfirmed
	case status == http.StatusBadRequest && *e.Error == "invalid_client":
		// RFC 6749 §5.2 allows 400 when no Authorization header was used.
		res.verdict = verdictRefused
	default:
		res.verdict = verdictUndetermined
	}
	return res
}

// sanitizeCode bounds an upstream error code for the log: RFC 6749 error
// codes are %x20-21 / %x23-5B / %x5D-7E.
func sanitizeCode(s string) string {
	if len(s) > 64 {
		s = s[:64]
	}
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r > 0x7e || r == '"' || r == '\\' {
			return '?'
		}
		return r
	}, s)
}

// delegatedCredentials is what a push presented for a client the gateway
// does not know.
type delegatedCredentials struct {
	method   string
	clientID string
	// secret is the secret, form-decoded for Basic. A Basic probe sends
	// authorization, the client's Authorization header, as it came: the
	// upstream decodes it as it will decode the client's token requests.
	secret        string
	authorization string
	basic         bool
}

// cacheKey is HMAC-SHA256(key, method, client_id, secret), each field
// length-prefixed so that no two credentials share a key. For Basic these
// are the decoded credentials: clients differ in how much of RFC 6749
// §2.3.1's form-encoding they apply (openid-client encodes even '-'), and
// every encoding of one secret is the same secret.
func (u *upstreamAuth) cacheKey(c delegatedCredentials) [32]byte {
	m := hmac.New(sha256.New, u.key[:])
	field := func(s string) {
		var n [4]byte
		binary.BigEndian.PutUint32(n[:], uint32(len(s)))
		m.Write(n[:])
		m.Write([]byte(s))
	}
	field(c.method)
	field(c.clientID)
	field(c.secret)
	var k [32]byte
	m.Sum(k[:0])
	return k
}

// delegatedClient is the policy of a client the gateway knows only by
// what the upstream said: no registered redirect URIs or scopes to check
// (the upstream checks them at authorization, RFC 9126 §2.1), and PKCE
// with S256 on every push, because a probe cannot tell a confidential
// client from one the upstream treats as public (Keycloak accepts any
// secret of a public client).
func delegatedClient(id, method string, public bool) *client {
	c := &client{
		id:          id,
		public:      public,
		authMethods: map[string]bool{},
		delegated:   true,
		requirePKCE: true,
	}
	if method != "" {
		c.authMethods[method] = true
	}
	return c
}

// delegatedClient returns the policy under which a pending request of a
// client that is not configured is redeemed (RFC 9126 §7.4), or nil when
// upstream_client_auth is off.
func (a *clientAuthenticator) delegatedClient(id string) *client {
	if a == nil || a.upstream == nil || !validDelegatedID(id) {
		return nil
	}
	return delegatedClient(id, "", false)
}

// validDelegatedID: what may be sent upstream as a client_id (RFC 6749
// Appendix A.1: VSCHAR), bounded.
func validDelegatedID(id string) bool {
	if id == "" || len(id) > maxDelegatedClientID {
		return false
	}
	for i := 0; i < len(id); i++ {
		if id[i] < 0x20 || id[i] > 0x7e {
			return false
		}
	}
	return true
}

// authenticate authenticates a client that is not configured: a secret
// through the upstream, or none as a public client with allow_public.
func (u *upstreamAuth) authenticate(r *http.Request, cred credentials) (*client, string, *oauthError) {
	fail := func(status int, code, desc string) (*client, string, *oauthError) {
		e := newError(status, code, desc)
		e.basicTried = cred.basic
		return nil, cred.method, e
	}
	if !validDelegatedID(cred.clientID) {
		return fail(http.StatusUnauthorized, ErrInvalidClient, "client authentication failed")
	}
	switch cred.method {
	case AuthNone:
		if !u.allowPublic {
			return fail(http.StatusUnauthorized, ErrInvalidClient, "client authentication failed")
		}
		return delegatedClient(cred.clientID, AuthNone, true), AuthNone, nil
	case AuthClientSecretBasic, AuthClientSecretPost:
		if !u.methods[cred.method] {
			return fail(http.StatusUnauthorized, ErrInvalidClient, "client authentication failed")
		}
	default:
		// JWT assertions and mTLS need keys or names the gateway has
		// only for configured clients.
		return fail(http.StatusUnauthorized, ErrInvalidClient, "client authentication failed")
	}
	dc := delegatedCredentials{method: cred.method, clientID: cred.clientID, secret: cred.secret, basic: cred.basic}
	if cred.basic {
		dc.authorization = r.Header.Get("Authorization")
	}
	// An empty secret is no credential (Dex compares it with the empty
	// secret of its public clients).
	if dc.secret == "" || len(dc.secret) > maxDelegatedSecret {
		return fail(http.StatusUnauthorized, ErrInvalidClient, "client authentication failed")
	}
	switch e := u.check(r.Context(), dc); {
	case e == nil:
		return delegatedClient(cred.clientID, cred.method, false), cred.method, nil
	default:
		e.basicTried = cred.basic
		return nil, cred.method, e
	}
}

// check answers whether the upstream accepts the credentials: from the
// cache, or with one probe shared by all concurrent pushes with the same
// credentials.
func (u *upstreamAuth) check(ctx context.Context, c delegatedCredentials) *oauthError {
	key := u.cacheKey(c)
	id := logID(c.clientID)
	if u.cache.hit(key, u.now()) {
		u.log(zap.DebugLevel, "upstream client authentication: cached", id, c.method, nil)
		return nil
	}
	ch := u.flight.DoChan(string(key[:]), func() (any, error) {
		return u.probeOnce(ctx, key, c), nil
	})
	var o probeOutcome
	select {
	case res := <-ch:
		o = res.Val.(probeOutcome)
	case <-ctx.Done():
		return unavailable("client authentication could not be checked with the authorization server")
	}
	switch {
	case o.limited != "":
		e := newError(http.StatusTooManyRequests, ErrTemporarilyUnavailable, "too many failed client authentications"+o.limited+"; retry later")
		e.header = http.Header{"Retry-After": {strconv.Itoa(o.retryAfter)}}
		return e
	case o.res.verdict == verdictConfirmed:
		return nil
	case o.res.verdict == verdictRefused:
		return newError(http.StatusUnauthorized, ErrInvalidClient, "client authentication failed")
	case o.res.verdict == verdictUndetermined:
		return newError(http.StatusUnauthorized, ErrInvalidClient, "client authentication failed: the authorization server did not confirm the client's credentials")
	default:
		return unavailable("client authentication could not be checked with the authorization server")
	}
}

// probeOutcome is the shared result of one singleflight call.
type probeOutcome struct {
	res probeResult
	// limited is set when no probe was sent because of the failure
	// limits (" for this client" or " at this gateway").
	limited    string
	retryAfter int
}

// probeOnce runs in the singleflight: the cache again (a probe for these
// credentials may have just finished), the failure limits, a probe slot,
// the probe, and its bookkeeping. ctx is the first pusher's; the probe
// outlives it, bounded by the timeout, since others may wait for it.
func (u *upstreamAuth) probeOnce(ctx context.Context, key [32]byte, c delegatedCredentials) probeOutcome {
	id := logID(c.clientID)
	if u.cache.hit(key, u.now()) {
		return probeOutcome{res: probeResult{verdict: verdictConfirmed}}
	}
	ok, tracked, retry, scope := u.limiter.reserve(c.clientID, u.now())
	if !ok {
		u.log(zap.InfoLevel, "upstream client authentication: not probed, failure limit reached", id, c.method, nil, zap.String("limit", scope))
		where := " for this client"
		if scope == "global" {
			where = " at this gateway"
		}
		return probeOutcome{limited: where, retryAfter: max(1, int((retry+time.Second-1)/time.Second))}
	}
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), u.timeout)
	defer cancel()
	var res probeResult
	select {
	case u.slots <- struct{}{}:
		res = u.probe(pctx, c)
		<-u.slots
	case <-pctx.Done():
		res = probeResult{verdict: verdictUnavailable, err: "no free probe slot within the timeout"}
	}
	now := u.now()
	u.limiter.done(c.clientID, tracked, res.verdict == verdictRefused || res.verdict == verdictUndetermined, now)
	switch res.verdict {
	case verdictConfirmed:
		u.cache.put(key, now)
		u.log(zap.DebugLevel, "upstream client authentication: confirmed", id, c.method, &res)
	case verdictRefused:
		u.log(zap.InfoLevel, "upstream client authentication: refused", id, c.method, &res)
	case verdictUndetermined:
		u.log(zap.WarnLevel, "upstream client authentication: the upstream's answer neither confirms nor refuses the credentials; push refused", id, c.method, &res)
	default:
		// An outage would log every push: once per interval instead.
		last := u.lastOutageLog.Load()
		if now.UnixNano()-last >= int64(probeOutageLogEvery) && u.lastOutageLog.CompareAndSwap(last, now.UnixNano()) {
			u.log(zap.WarnLevel, "upstream client authentication: the upstream's token endpoint did not answer usably; pushes of unknown clients get 503", id, c.method, &res)
		}
	}
	return probeOutcome{res: res}
}

// probe sends the token request that cannot succeed: the authorization
// code grant with a random code, authenticated as the client was at the
// PAR endpoint.
func (u *upstreamAuth) probe(ctx context.Context, c delegatedCredentials) probeResult {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return probeResult{verdict: verdictUnavailable, err: "random code: " + err.Error()}
	}
	form := url.Values{
		"grant_type": {"authorization_code"},
		"code":       {probeCodePrefix + base64.RawURLEncoding.EncodeToString(b[:])},
	}
	if !c.basic {
		form.Set("client_id", c.clientID)
		form.Set("client_secret", c.secret)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.tokenEndpoint, strings.NewReader(form.Encode()))
	if err != nil {
		return probeResult{verdict: verdictUnavailable, err: "building the request failed"}
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "caddy-par upstream_client_auth")
	if c.basic {
		req.Header.Set("Authorization", c.authorization)
	}
	resp, err := u.client.Do(req)
	if err != nil {
		return probeResult{verdict: verdictUnavailable, err: transportError(err)}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxProbeResponse))
	if err != nil {
		return probeResult{verdict: verdictUnavailable, status: resp.StatusCode, err: transportError(err)}
	}
	return classifyProbe(resp.StatusCode, body)
}

// transportError describes a failed probe without the request (the URL
// holds no credentials, but the error text of a url.Error is kept short).
func transportError(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return "timeout"
	}
	s := err.Error()
	if len(s) > 200 {
		s = s[:200]
	}
	return s
}

// log writes one probe line: never a secret, an Authorization header or
// the probe's code.
func (u *upstreamAuth) log(level zapcore.Level, msg, clientID, method string, res *probeResult, extra ...zap.Field) {
	ce := u.logger.Check(level, msg)
	if ce == nil {
		return
	}
	fields := append([]zap.Field{zap.String("client_id", clientID), zap.String("method", method)}, extra...)
	if res != nil {
		fields = append(fields, zap.String("verdict", res.verdict.String()))
		if res.status != 0 {
			fields = append(fields, zap.Int("upstream_status", res.status))
		}
		if res.code != "" {
			fields = append(fields, zap.String("upstream_error", res.code))
		}
		if res.err != "" {
			fields = append(fields, zap.String("error", res.err))
		}
	}
	ce.Write(fields...)
}

// probeCache holds the keys of confirmed credentials until they expire.
// Every entry lives for the same TTL, so insertion order is expiry order:
// a FIFO queue finds the expired and, when full, the oldest entries.
type probeCache struct {
	mu    sync.Mutex
	ttl   time.Duration
	max   int
	m     map[[32]byte]time.Time
	queue []cacheItem
	head  int
}

type cacheItem struct {
	key     [32]byte
	expires time.Time
}

func newProbeCache(ttl time.Duration, max int) *probeCache {
	return &probeCache{ttl: ttl, max: max, m: map[[32]byte]time.Time{}}
}

func (c *probeCache) hit(k [32]byte, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	exp, ok := c.m[k]
	return ok && now.Before(exp)
}

func (c *probeCache) put(k [32]byte, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if exp, ok := c.m[k]; ok && now.Before(exp) {
		return
	}
	// Expired entries first, then the oldest while full.
	for c.head < len(c.queue) && (!now.Before(c.queue[c.head].expires) || len(c.m) >= c.max) {
		it := c.queue[c.head]
		c.queue[c.head] = cacheItem{}
		c.head++
		if exp, ok := c.m[it.key]; ok && exp.Equal(it.expires) {
			delete(c.m, it.key)
		}
	}
	if c.head > len(c.queue)/2 {
		c.queue = append(c.queue[:0], c.queue[c.head:]...)
		c.head = 0
	}
	exp := now.Add(c.ttl)
	c.m[k] = exp
	c.queue = append(c.queue, cacheItem{key: k, expires: exp})
}

func (c *probeCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}

// failureLimiter counts refused probes per client_id and over all of them
// in fixed windows. A probe reserves its place first, so that concurrent
// probes of one client_id cannot overshoot its limit; the global count
// can overshoot by at most the probes in flight.
type failureLimiter struct {
	mu           sync.Mutex
	perLimit     int
	perWindow    time.Duration
	globalLimit  int
	globalWindow time.Duration
	maxEntries   int
	// per holds only client_ids with failures in their window or probes
	// in flight, so its size follows the global limit.
	per    map[string]*failWindow
	global failWindow
}

type failWindow struct {
	start    time.Time
	failures int
	pending  int
}

func (w *failWindow) roll(now time.Time, window time.Duration) {
	if now.Sub(w.start) >= window {
		w.start, w.failures = now, 0
	}
}

// reserve reports whether a probe for id may be sent now; if so, done must
// follow, with tracked as returned (false when the per-client table was
// full: only the global limit applies to that probe). Otherwise it says
// when to retry and which limit ("client", "global") was reached.
func (l *failureLimiter) reserve(id string, now time.Time) (ok, tracked bool, retry time.Duration, scope string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.global.roll(now, l.globalWindow)
	if l.global.failures >= l.globalLimit {
		return false, false, l.globalWindow - now.Sub(l.global.start), "global"
	}
	w := l.per[id]
	if w == nil {
		if len(l.per) >= l.maxEntries {
			l.sweep(now)
		}
		if len(l.per) >= l.maxEntries {
			return true, false, 0, ""
		}
		w = &failWindow{start: now}
		l.per[id] = w
	}
	w.roll(now, l.perWindow)
	if w.failures+w.pending >= l.perLimit {
		if w.failures >= l.perLimit {
			return false, false, l.perWindow - now.Sub(w.start), "client"
		}
		// Probes in flight would reach the limit if they failed.
		return false, false, time.Second, "client"
	}
	w.pending++
	return true, true, 0, ""
}

// done ends a reservation; failed counts it against the limits.
func (l *failureLimiter) done(id string, tracked, failed bool, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if failed {
		l.global.roll(now, l.globalWindow)
		l.global.failures++
	}
	w := l.per[id]
	if w == nil {
		return
	}
	if tracked && w.pending > 0 {
		w.pending--
	}
	w.roll(now, l.perWindow)
	if failed {
		w.failures++
	}
	if w.failures == 0 && w.pending == 0 {
		delete(l.per, id)
	}
}

// sweep drops the records whose window is over and that have nothing in
// flight.
func (l *failureLimiter) sweep(now time.Time) {
	for id, w := range l.per {
		if w.pending == 0 && now.Sub(w.start) >= l.perWindow {
			delete(l.per, id)
		}
	}
}
