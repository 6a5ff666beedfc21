package caddymodule

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// Limits of a client key set. A JWK Set comes from the client (or its
// operator) and is parsed on the gateway: size, key count and RSA modulus
// size are bounded so that neither parsing nor verification cost is in the
// hands of the document's author.
const (
	keySetTimeout      = 3 * time.Second
	keySetMaxSize      = 256 << 10
	keySetMinRefetch   = 30 * time.Second
	keySetTTL          = time.Hour
	keySetMinTTL       = time.Minute
	keySetMaxTTL       = 24 * time.Hour
	keySetMaxKeys      = 100
	keySetMaxRedirects = 3
	keySetMinRSABits   = 2048 // FAPI 2.0 Security Profile: RSA keys of at least 2048 bits
	keySetMaxRSABits   = 8192 // verification cost grows with the modulus
)

// Key set errors. Callers compare with errors.Is; both map to
// invalid_client (or invalid_request_object) with the message as the
// description: messages name kids and algorithms, never key material.
var (
	errNoMatchingKey     = errors.New("no matching client key")
	errKeySetUnavailable = errors.New("client key set unavailable")
)

// keySet is one client's public keys: static (inline/file) or remote
// (jwks_uri). Each set has its own state and lock, so a slow or failing
// jwks_uri of one client never delays another client's lookups.
type keySet struct {
	static *keySetDoc    // static sets: immutable after construction
	remote *remoteKeySet // remote sets; nil for static ones
}

// keySetDoc is one parsed JWK Set document. Immutable once built, so it
// is handed out without copying or locking.
type keySetDoc struct {
	// keys holds the public keys usable for signature verification: use,
	// key_ops and key type have been checked at parse time; the JWK's own
	// alg is checked per lookup.
	keys    []jose.JSONWebKey
	skipped int // keys go-jose cannot parse, or unacceptable (weak RSA)
	ignored int // well-formed keys that are not for signing (use, key_ops, alg)
}

// newStaticKeySet parses a JWK Set document key by key: keys go-jose cannot
// parse are skipped (count them: skipped()), a key holding private material
// is an error (config error naming nothing secret), zero usable keys is an
// error.
func newStaticKeySet(doc []byte) (*keySet, error) {
	if len(doc) > keySetMaxSize {
		return nil, fmt.Errorf("JWK Set is larger than %d bytes", keySetMaxSize)
	}
	p, err := parseClientKeySet(doc)
	if err != nil {
		return nil, err
	}
	if len(p.keys) == 0 {
		return nil, fmt.Errorf("JWK Set has no usable signature verification key (%d skipped as unsupported or weak, %d not for signing)", p.skipped, p.ignored)
	}
	return &keySet{static: p}, nil
}

// skipped counts the keys of the (current) document that were skipped
// because go-jose cannot parse them or they are too weak.
func (k *keySet) skipped() int {
	if p := k.current(); p != nil {
		return p.skipped
	}
	return 0
}

// current is the set's parsed document without fetching: nil for a remote
// set that was never fetched successfully.
func (k *keySet) current() *keySetDoc {
	if k.remote == nil {
		return k.static
	}
	k.remote.mu.Lock()
	defer k.remote.mu.Unlock()
	return k.remote.keys
}

// keys returns the document to look keys up in. refresh asks a remote set
// for a fetch because the current document lacks a key (rate limited).
func (k *keySet) keys(ctx context.Context, refresh bool) (*keySetDoc, error) {
	if k.remote == nil {
		return k.static, nil
	}
	return k.remote.get(ctx, refresh)
}

// verificationKeys returns the public signing keys usable for a JWS with
// header kid/alg. kid != "": the keys with that kid (remote: an unknown kid
// triggers one refetch, rate limited per set; concurrent callers share one
// fetch; a caller never waits longer than Timeout; a failed fetch with a
// cached set keeps using the cached keys). kid == "": every key whose
// kty/crv fits alg. Keys with use other than "sig" (or key_ops without
// "verify") are never returned. A JWK's own "alg", when set, must equal alg
// (RFC 7517 §4.4). Zero keys is an error wrapping errNoMatchingKey.
func (k *keySet) verificationKeys(ctx context.Context, kid string, alg jose.SignatureAlgorithm) ([]jose.JSONWebKey, error) {
	if !keySetAlgSupported(alg) {
		return nil, fmt.Errorf("%w: unsupported signature algorithm %s", errNoMatchingKey, keySetQuote(string(alg)))
	}
	p, err := k.keys(ctx, false)
	if err != nil {
		return nil, err
	}
	out := p.match(kid, alg)
	if len(out) == 0 && k.remote != nil {
		// The client may have rotated its keys: an unfamiliar kid is the
		// signal to fetch the jwks_uri again (OIDC Core §10.1.1), once,
		// rate limited.
		if p, err = k.keys(ctx, true); err != nil {
			return nil, err
		}
		out = p.match(kid, alg)
	}
	if len(out) == 0 {
		if kid != "" {
			return nil, fmt.Errorf("%w: no key with kid %s usable for %s", errNoMatchingKey, keySetQuote(kid), alg)
		}
		return nil, fmt.Errorf("%w: no key usable for %s", errNoMatchingKey, alg)
	}
	return out, nil
}

// hasPublicKey reports whether pub is among the set's keys
// (self_signed_tls_client_auth, RFC 8705 §2.2). Keys marked for another use
// than signing do not count: a TLS client proves possession by signing.
// Remote sets refetch once (rate limited) on a miss.
func (k *keySet) hasPublicKey(ctx context.Context, pub crypto.PublicKey) (bool, error) {
	eq, ok := keySetComparable(pub)
	if !ok {
		return false, nil
	}
	p, err := k.keys(ctx, false)
	if err != nil {
		return false, err
	}
	if p.contains(eq) {
		return true, nil
	}
	if k.remote == nil {
		return false, nil
	}
	if p, err = k.keys(ctx, true); err != nil {
		return false, err
	}
	return p.contains(eq), nil
}

type keySetEqualer interface {
	Equal(crypto.PublicKey) bool
}

// keySetComparable accepts the public key types a set holds, non-nil
// (their Equal methods dereference the receiver).
func keySetComparable(pub crypto.PublicKey) (keySetEqualer, bool) {
	switch p := pub.(type) {
	case *rsa.PublicKey:
		return p, p != nil && p.N != nil
	case *ecdsa.PublicKey:
		return p, p != nil && p.X != nil && p.Y != nil
	case ed25519.PublicKey:
		return p, len(p) == ed25519.PublicKeySize
	}
	return nil, false
}

func (p *keySetDoc) contains(eq keySetEqualer) bool {
	for i := range p.keys {
		if eq.Equal(p.keys[i].Key) {
			return true
		}
	}
	return false
}

func (p *keySetDoc) match(kid string, alg jose.SignatureAlgorithm) []jose.JSONWebKey {
	var out []jose.JSONWebKey
	for i := range p.keys {
		key := &p.keys[i]
		if kid != "" && key.KeyID != kid {
			continue
		}
		if key.Algorithm != "" && key.Algorithm != string(alg) {
			continue
		}
		if keySetKeyFitsAlg(key.Key, alg) {
			out = append(out, *key)
		}
	}
	return out
}

// keySetAlgSupported lists the asymmetric JWS algorithms client keys can serve
// (RFC 7518 §3.1, RFC 8037 §3.1). HMAC and none never use a key set.
func keySetAlgSupported(alg jose.SignatureAlgorithm) bool {
	switch alg {
	case jose.RS256, jose.RS384, jose.RS512, jose.PS256, jose.PS384, jose.PS512,
		jose.ES256, jose.ES384, jose.ES512, jose.EdDSA:
		return true
	}
	return false
}

// keySetKeyFitsAlg: RS*/PS* -> RSA, ES256/384/512 -> EC P-256/384/521 (RFC 7518
// §3.4), EdDSA -> OKP Ed25519 (RFC 8037 §3.1). RSA sizes are checked at
// parse time.
func keySetKeyFitsAlg(key any, alg jose.SignatureAlgorithm) bool {
	switch alg {
	case jose.RS256, jose.RS384, jose.RS512, jose.PS256, jose.PS384, jose.PS512:
		_, ok := key.(*rsa.PublicKey)
		return ok
	case jose.ES256:
		return keySetCurve(key) == elliptic.P256()
	case jose.ES384:
		return keySetCurve(key) == elliptic.P384()
	case jose.ES512:
		return keySetCurve(key) == elliptic.P521()
	case jose.EdDSA:
		_, ok := key.(ed25519.PublicKey)
		return ok
	}
	return false
}

func keySetCurve(key any) elliptic.Curve {
	if k, ok := key.(*ecdsa.PublicKey); ok {
		return k.Curve
	}
	return nil
}

// clientJWKMembers reads what go-jose does not expose, before the key is
// handed to it: key_ops, and whether any private member is present.
type clientJWKMembers struct {
	kid     string
	keyOps  []string
	hasOps  bool
	private bool
}

// privateJWKMembers hold private or symmetric key material (RFC 7518 §6.2.2,
// §6.3.2, §6.4.1; RFC 8037 §2). They are matched case-insensitively: JSON
// member names are case-sensitive and go-jose ignores a "D", but a document
// carrying one is refused all the same.
var privateJWKMembers = map[string]bool{"d": true, "p": true, "q": true, "dp": true, "dq": true, "qi": true, "oth": true, "k": true}

func readClientJWKMembers(raw json.RawMessage) (clientJWKMembers, error) {
	var obj map[string]json.RawMessage
	var m clientJWKMembers
	if err := json.Unmarshal(raw, &obj); err != nil || obj == nil {
		return m, errors.New("not a JSON object")
	}
	for name := range obj {
		if privateJWKMembers[strings.ToLower(name)] {
			m.private = true
		}
	}
	_ = json.Unmarshal(obj["kid"], &m.kid) // for error messages only
	if ops, ok := obj["key_ops"]; ok {
		m.hasOps = true
		if err := json.Unmarshal(ops, &m.keyOps); err != nil {
			return m, errors.New("key_ops is not an array of strings")
		}
	}
	return m, nil
}

// parseClientKeySet parses a JWK Set (RFC 7517 §5) one key at a time: go-jose
// rejects a whole set for one key it does not understand, while RFC 7517
// §5 says such keys SHOULD be ignored. Private or symmetric material is an
// error for the whole set: it means the client published a secret, and a
// client's keys are public by definition (RFC 7591 §2 jwks).
func parseClientKeySet(doc []byte) (*keySetDoc, error) {
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(doc, &set); err != nil {
		return nil, errors.New("JWK Set is not a JSON object with a \"keys\" array")
	}
	if set.Keys == nil {
		return nil, errors.New("JWK Set has no \"keys\" member")
	}
	if len(set.Keys) > keySetMaxKeys {
		return nil, fmt.Errorf("JWK Set has %d keys, at most %d are accepted", len(set.Keys), keySetMaxKeys)
	}
	p := &keySetDoc{}
	for i, raw := range set.Keys {
		m, err := readClientJWKMembers(raw)
		if m.private {
			return nil, fmt.Errorf("JWK Set key #%d%s holds private or symmetric key material: publish public keys only", i+1, keySetKidNote(m.kid))
		}
		if err != nil {
			p.skipped++
			continue
		}
		var jwk jose.JSONWebKey
		if err := jwk.UnmarshalJSON(raw); err != nil {
			// Unknown kty or crv, missing or malformed members: RFC 7517 §5
			// asks to ignore the key. The go-jose error is not kept: it may
			// quote member values.
			p.skipped++
			continue
		}
		if !jwk.IsPublic() {
			return nil, fmt.Errorf("JWK Set key #%d%s holds private or symmetric key material: publish public keys only", i+1, keySetKidNote(m.kid))
		}
		if r, ok := jwk.Key.(*rsa.PublicKey); ok {
			if bits := r.N.BitLen(); bits < keySetMinRSABits || bits > keySetMaxRSABits {
				p.skipped++
				continue
			}
		}
		if !keySetForSigning(&jwk, &m) {
			p.ignored++
			continue
		}
		p.keys = append(p.keys, jwk)
	}
	return p, nil
}

// keySetForSigning: use "sig" or absent (RFC 7517 §4.2), key_ops absent or with
// "verify" (§4.3), alg absent or a JWS algorithm that fits the key (§4.4).
func keySetForSigning(jwk *jose.JSONWebKey, m *clientJWKMembers) bool {
	if jwk.Use != "" && jwk.Use != "sig" {
		return false
	}
	if m.hasOps && !slices.Contains(m.keyOps, "verify") {
		return false
	}
	if a := jose.SignatureAlgorithm(jwk.Algorithm); a != "" && (!keySetAlgSupported(a) || !keySetKeyFitsAlg(jwk.Key, a)) {
		return false
	}
	return true
}

func keySetKidNote(kid string) string {
	if kid == "" {
		return ""
	}
	return " (kid " + keySetQuote(kid) + ")"
}

// keySetQuote quotes a value taken from a document or a JWS header for an error
// message, bounded in length.
func keySetQuote(s string) string {
	const max = 64
	if len(s) > max {
		s = s[:max] + "..."
	}
	return strconv.Quote(s)
}

// remoteKeySetOptions configure a jwks_uri set. Zero values take defaults.
type remoteKeySetOptions struct {
	Client     *http.Client  // nil: a client with Timeout
	Timeout    time.Duration // one fetch, default 3s
	MaxSize    int64         // default 256 KiB
	MinRefetch time.Duration // rate limit of kid-miss refetches (and of retries after a failure), default 30s
	// TTL is the cache lifetime when the response gives none; default 1h.
	// Cache-Control max-age is honoured within [1m, 24h].
	TTL time.Duration
	Now func() time.Time
}

// remoteKeySet is the state of one jwks_uri.
type remoteKeySet struct {
	uri    string
	uriErr error // the URI is unusable: every lookup fails with it, no network
	client *http.Client
	o      remoteKeySetOptions

	mu          sync.Mutex
	keys        *keySetDoc   // last good document; nil until one was fetched
	expires     time.Time    // keys are fresh until then
	lastAttempt time.Time    // start of the last fetch; zero: never fetched
	lastErr     error        // outcome of the last fetch
	inflight    *keySetFetch // the fetch in progress, shared by all waiters
}

// keySetFetch is one fetch in progress; done is closed when it has ended
// and the set's state updated.
type keySetFetch struct {
	done chan struct{}
	err  error
}

// newRemoteKeySet returns a set backed by uri. It is lazy: nothing is
// fetched until first use, so Provision (and caddy validate) does no
// network I/O.
func newRemoteKeySet(uri string, o remoteKeySetOptions) *keySet {
	if o.Timeout <= 0 {
		o.Timeout = keySetTimeout
	}
	if o.MaxSize <= 0 {
		o.MaxSize = keySetMaxSize
	}
	if o.MinRefetch <= 0 {
		o.MinRefetch = keySetMinRefetch
	}
	if o.TTL <= 0 {
		o.TTL = keySetTTL
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	r := &remoteKeySet{uri: uri, o: o, uriErr: checkJWKSURI(uri)}
	if r.uriErr == nil {
		r.client = r.httpClient(o.Client)
	}
	return &keySet{remote: r}
}

// checkJWKSURI accepts https URLs, and http on a loopback host (local
// development and tests): keys fetched over plain http from elsewhere could
// be replaced by anyone on the path.
func checkJWKSURI(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return errors.New("jwks_uri is not a valid URL")
	}
	switch {
	case u.Scheme != "https" && u.Scheme != "http", u.Host == "":
		return errors.New("jwks_uri must be an absolute https URL")
	case u.Scheme == "http" && !isLoopbackHost(u.Hostname()):
		return errors.New("jwks_uri must use https (http only on a loopback host)")
	case u.User != nil:
		return errors.New("jwks_uri must not contain user information")
	case u.Fragment != "" || strings.Contains(s, "#"):
		return errors.New("jwks_uri must not contain a fragment")
	}
	return nil
}

// httpClient copies base (never mutating a shared client) with a redirect
// policy that keeps the fetch on https: a redirect to plain http is
// followed only from an http loopback URL to another one.
func (r *remoteKeySet) httpClient(base *http.Client) *http.Client {
	var c http.Client
	if base != nil {
		c = *base
	} else {
		c.Timeout = r.o.Timeout
	}
	orig, _ := url.Parse(r.uri)
	httpOK := orig.Scheme == "http" && isLoopbackHost(orig.Hostname())
	next := c.CheckRedirect
	c.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		if len(via) > keySetMaxRedirects {
			return errors.New("jwks_uri: too many redirects")
		}
		switch {
		case req.URL.Scheme == "https":
		case req.URL.Scheme == "http" && httpOK && isLoopbackHost(req.URL.Hostname()):
		default:
			return errors.New("jwks_uri: redirect to a non-https URL refused")
		}
		if next != nil {
			return next(req, via)
		}
		return nil
	}
	return &c
}

// get returns the document to use, fetching when there is none, when it
// has expired, or when refresh asks (a key was missing). Fetches start at
// most once per MinRefetch (after a success or a failure alike), so a client
// sending unknown kids cannot make the gateway hammer its jwks_uri, and an
// unreachable jwks_uri fails fast between attempts. A failed fetch keeps the
// previous document.
func (r *remoteKeySet) get(ctx context.Context, refresh bool) (*keySetDoc, error) {
	if r.uriErr != nil {
		return nil, fmt.Errorf("%w: %w", errKeySetUnavailable, r.uriErr)
	}
	r.mu.Lock()
	now := r.o.Now()
	if r.keys != nil && !refresh && now.Before(r.expires) {
		p := r.keys
		r.mu.Unlock()
		return p, nil
	}
	f := r.inflight
	if f == nil {
		if !r.lastAttempt.IsZero() && now.Sub(r.lastAttempt) < r.o.MinRefetch {
			p, err := r.keys, r.lastErr
			r.mu.Unlock()
			if p != nil {
				return p, nil
			}
			if err == nil {
				err = errors.New("jwks_uri not fetched yet")
			}
			return nil, fmt.Errorf("%w: %w", errKeySetUnavailable, err)
		}
		r.lastAttempt = now
		f = &keySetFetch{done: make(chan struct{})}
		r.inflight = f
		// The fetch runs on its own, bounded by Timeout, so that callers
		// can stop waiting (their ctx, Timeout) without cancelling it for
		// the others; at most one runs per set.
		go r.fetchInto(f)
	}
	r.mu.Unlock()

	t := time.NewTimer(r.o.Timeout)
	defer t.Stop()
	var waitErr error
	select {
	case <-f.done:
	case <-ctx.Done():
		waitErr = ctx.Err()
	case <-t.C:
		waitErr = fmt.Errorf("jwks_uri did not answer within %v", r.o.Timeout)
	}
	r.mu.Lock()
	p := r.keys
	r.mu.Unlock()
	if p != nil {
		return p, nil // fresh, or the previous document if the fetch failed
	}
	if waitErr == nil {
		waitErr = f.err
	}
	return nil, fmt.Errorf("%w: %w", errKeySetUnavailable, waitErr)
}

func (r *remoteKeySet) fetchInto(f *keySetFetch) {
	ctx, cancel := context.WithTimeout(context.Background(), r.o.Timeout)
	defer cancel()
	p, ttl, err := r.fetch(ctx)
	r.mu.Lock()
	if err == nil {
		r.keys = p
		r.expires = r.o.Now().Add(ttl)
	}
	r.lastErr = err
	r.inflight = nil
	f.err = err
	r.mu.Unlock()
	close(f.done)
}

// fetch gets and parses the document. Error messages name the status or
// the limit, never the body.
func (r *remoteKeySet) fetch(ctx context.Context) (*keySetDoc, time.Duration, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.uri, nil)
	if err != nil {
		return nil, 0, errors.New("jwks_uri: invalid request URL")
	}
	req.Header.Set("Accept", "application/jwk-set+json, application/json")
	resp, err := r.client.Do(req)
	if err != nil {
		return nil, 0, fmt.Errorf("jwks_uri fetch failed: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, 0, fmt.Errorf("jwks_uri answered HTTP %d", resp.StatusCode)
	}
	tooLarge := fmt.Errorf("jwks_uri document is larger than %d bytes", r.o.MaxSize)
	if resp.ContentLength > r.o.MaxSize {
		return nil, 0, tooLarge
	}
	// The limit applies to the decoded body: a compressed response cannot
	// inflate past it.
	body, err := io.ReadAll(io.LimitReader(resp.Body, r.o.MaxSize+1))
	if err != nil {
		return nil, 0, fmt.Errorf("jwks_uri: reading the document failed: %w", err)
	}
	if int64(len(body)) > r.o.MaxSize {
		return nil, 0, tooLarge
	}
	p, err := parseClientKeySet(body)
	if err != nil {
		return nil, 0, fmt.Errorf("jwks_uri: %w", err)
	}
	return p, keySetCacheTTL(resp.Header, r.o.TTL), nil
}

// keySetCacheTTL is the document's cache lifetime: Cache-Control max-age (RFC 9111
// §5.2.2.1) clamped to [1m, 24h], no-store/no-cache as the minimum, or def.
// The floor keeps a zero max-age from turning every lookup into a fetch;
// unknown kids refetch sooner anyway.
func keySetCacheTTL(h http.Header, def time.Duration) time.Duration {
	ttl, found := def, false
	for _, line := range h.Values("Cache-Control") {
		for _, d := range strings.Split(line, ",") {
			name, val, _ := strings.Cut(strings.TrimSpace(d), "=")
			switch strings.ToLower(strings.TrimSpace(name)) {
			case "no-store", "no-cache":
				return keySetMinTTL
			case "max-age":
				if found {
					continue // the first one counts (RFC 9111 §4.2.1)
				}
				secs, err := strconv.ParseInt(strings.Trim(strings.TrimSpace(val), `"`), 10, 64)
				if err != nil || secs < 0 {
					continue
				}
				found = true
				if secs > int64(keySetMaxTTL/time.Second) {
					ttl = keySetMaxTTL
				} else {
					ttl = time.Duration(secs) * time.Second
				}
			}
		}
	}
	if found {
		ttl = min(max(ttl, keySetMinTTL), keySetMaxTTL)
	}
	return ttl
}
