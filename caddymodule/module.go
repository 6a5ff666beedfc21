// Package caddymodule is the oauth_par Caddy HTTP handler: a Pushed
// Authorization Requests (RFC 9126) gateway in front of an OAuth 2.0 /
// OpenID Connect server that lacks PAR.
package caddymodule

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Defaults and bounds of the configuration.
const (
	DefaultPAREndpoint    = "/par"
	DefaultLifetime       = 60 * time.Second
	MinLifetime           = 5 * time.Second   // RFC 9126 §7.1 guidance: 5..600 s
	MaxLifetime           = 600 * time.Second //
	DefaultMaxRequestSize = 64 << 10

	DefaultClockSkew                = 10 * time.Second
	MaxClockSkew                    = 59 * time.Second // FAPI 2.0 §5.3.2.1: 60 s ahead is rejected
	DefaultAssertionMaxLifetime     = 5 * time.Minute
	DefaultRequestObjectMaxLifetime = 60 * time.Minute // FAPI 2.0 Message Signing §5.3.1
)

// Handler is the oauth_par HTTP handler. Placed before reverse_proxy in the
// site that fronts an IdP, it serves a PAR endpoint, redeems request_uris at
// the authorization endpoint, enforces PAR, and advertises it in discovery.
type Handler struct {
	// AuthorizationEndpoint is the path at which the upstream's
	// authorization endpoint is reached through this site. Required.
	AuthorizationEndpoint string `json:"authorization_endpoint"`
	// PAREndpoint is the path of the PAR endpoint. Default: /par.
	PAREndpoint string `json:"par_endpoint,omitempty"`
	// RequestURILifetime is how long a request_uri stays valid, 5s to 600s.
	// Default: 60s.
	RequestURILifetime caddy.Duration `json:"request_uri_lifetime,omitempty"`
	// ReuseGrace is how long after a request_uri's first redemption the
	// same browser (bound by an HttpOnly, Secure cookie set on that
	// redemption) may redeem it again: reloads and retries. Never past the
	// request_uri's expiry; at most 60s; 0 disables it. Default: 10s, and 0
	// under profile fapi2 (FAPI 2.0 wants one-time use).
	ReuseGrace *caddy.Duration `json:"reuse_grace,omitempty"`
	// RequirePAR rejects every authorization request that was not pushed.
	RequirePAR bool `json:"require_par,omitempty"`
	// MaxRequestSize bounds a PAR request body, in bytes. Default: 64KiB.
	MaxRequestSize int64 `json:"max_request_size,omitempty"`
	// Issuer, when set, is sent as iss in the gateway's own authorization
	// error responses (RFC 9207). Default: learned from the upstream's
	// discovery document when it advertises
	// authorization_response_iss_parameter_supported.
	Issuer string `json:"issuer,omitempty"`
	// ForwardMethod is how a redeemed request reaches the upstream: GET with
	// the parameters in the query (default), or POST with a form body, for
	// upstreams that limit URL length (OpenID Connect Core §3.1.2.1).
	ForwardMethod string `json:"forward_method,omitempty"`
	// Profile switches on a security profile: "fapi2" (FAPI 2.0 Security
	// Profile) or "fapi2_message_signing" (also signed request objects).
	Profile string `json:"profile,omitempty"`
	// ClockSkew is how far in the future iat/nbf of a JWT may lie. Default
	// 10s; at most 59s (FAPI 2.0 §5.3.2.1: 60 s or more is rejected).
	ClockSkew caddy.Duration `json:"clock_skew,omitempty"`
	// AssertionMaxLifetime bounds exp of a client assertion. Default 5m.
	AssertionMaxLifetime caddy.Duration `json:"assertion_max_lifetime,omitempty"`
	// ClientAssertionSigningAlgs are the algorithms accepted for
	// private_key_jwt. Default PS256, ES256, EdDSA, RS256 (client_secret_jwt
	// always uses HS256, HS384 or HS512).
	ClientAssertionSigningAlgs []string `json:"client_assertion_signing_algs,omitempty"`
	// RequestObjectSigningAlgs are the algorithms accepted for signed
	// request objects. Default PS256, ES256, EdDSA, RS256.
	RequestObjectSigningAlgs []string `json:"request_object_signing_algs,omitempty"`
	// RequestObjectMaxLifetime bounds exp - nbf of a request object.
	// Default 60m (FAPI 2.0 Message Signing §5.3.1).
	RequestObjectMaxLifetime caddy.Duration `json:"request_object_max_lifetime,omitempty"`
	// RequireRequestObjectTyp requires typ oauth-authz-req+jwt
	// (RFC 9101 §10.8).
	RequireRequestObjectTyp bool `json:"require_request_object_typ,omitempty"`
	// RequireSignedRequestObject requires a signed request object in every
	// push (RFC 9101 §10.5).
	RequireSignedRequestObject bool `json:"require_signed_request_object,omitempty"`
	// RequestObjectEncryption, when set, accepts request objects encrypted
	// to the gateway's own keys (RFC 9101 §6.1).
	RequestObjectEncryption *EncryptionConfig `json:"request_object_encryption,omitempty"`
	// DPoPSigningAlgs are the algorithms accepted for DPoP proofs at the PAR
	// endpoint (RFC 9449 §10); setting them advertises
	// dpop_signing_alg_values_supported. Default PS256, ES256, EdDSA, RS256.
	DPoPSigningAlgs []string `json:"dpop_signing_algs,omitempty"`
	// MTLSEndpoint is the absolute URL of the PAR endpoint for mTLS
	// clients, advertised in mtls_endpoint_aliases (RFC 8705 §5). Default:
	// the PAR endpoint itself.
	MTLSEndpoint string `json:"mtls_endpoint,omitempty"`
	// ClientCAFile holds PEM trust anchors for tls_client_auth when Caddy's
	// client_auth did not verify the chain itself (mode request).
	ClientCAFile string `json:"client_ca_file,omitempty"`
	// Clients are the OAuth clients allowed to push.
	Clients []ClientConfig `json:"clients,omitempty"`
	// RateLimit bounds pushes per client and per source address (429,
	// RFC 9126 §2.3). Default: on, with the limits in ratelimit.go.
	RateLimit *RateLimitConfig `json:"rate_limit,omitempty"`
	// DisableAudit turns the audit trail off: no event per push,
	// redemption and rejection on the http.handlers.oauth_par.audit logger
	// (rejections are then logged on the handler's logger, at info).
	DisableAudit bool `json:"disable_audit,omitempty"`
	// UpstreamClientAuth, when set, lets clients that are not configured
	// push with a secret that the upstream's token endpoint accepts.
	UpstreamClientAuth *UpstreamClientAuth `json:"upstream_client_auth,omitempty"`
	// LiftConfig: iss in authorization responses, the token endpoint and
	// gateway PKCE (lift.go).
	LiftConfig
	// StoreRaw is the pushed-request store. Default: memory.
	StoreRaw json.RawMessage `json:"store,omitempty" caddy:"namespace=http.handlers.oauth_par.stores inline_key=backend"`

	gw *gateway
}

// EncryptionConfig sets up decryption of request objects encrypted to the
// gateway (RFC 9101 §6.1).
type EncryptionConfig struct {
	// KeyFile is a JWK or JWK Set file with the private keys. Default: an
	// RSA and an EC P-256 key generated once and kept in Caddy's storage.
	KeyFile string `json:"key_file,omitempty"`
	// JWKSPath is where the public keys are served. Default:
	// <par_endpoint>/jwks.
	JWKSPath string `json:"jwks_path,omitempty"`
	// Algs are the accepted key management algorithms. Default
	// RSA-OAEP-256, ECDH-ES, ECDH-ES+A128KW, ECDH-ES+A256KW.
	Algs []string `json:"algs,omitempty"`
	// Encs are the accepted content encryption algorithms. Default
	// A128GCM, A256GCM.
	Encs []string `json:"encs,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.oauth_par",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision applies defaults, expands client secrets and sets up the store.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.applyProfile()
	if h.PAREndpoint == "" {
		h.PAREndpoint = DefaultPAREndpoint
	}
	if h.ClockSkew == 0 {
		h.ClockSkew = caddy.Duration(DefaultClockSkew)
	}
	if h.AssertionMaxLifetime == 0 {
		h.AssertionMaxLifetime = caddy.Duration(DefaultAssertionMaxLifetime)
	}
	if h.RequestObjectMaxLifetime == 0 {
		h.RequestObjectMaxLifetime = caddy.Duration(DefaultRequestObjectMaxLifetime)
	}
	if enc := h.RequestObjectEncryption; enc != nil && enc.JWKSPath == "" {
		enc.JWKSPath = h.PAREndpoint + "/jwks"
	}
	if h.RequestURILifetime == 0 {
		h.RequestURILifetime = caddy.Duration(DefaultLifetime)
	}
	if h.ReuseGrace == nil {
		d := caddy.Duration(DefaultReuseGrace)
		h.ReuseGrace = &d
	} else if h.fapi2() && *h.ReuseGrace > 0 {
		ctx.Logger().Warn("reuse_grace is on under profile "+h.Profile+": FAPI 2.0 requires one-time use of request_uris; the browser that redeemed one first can redeem it again within the grace",
			zap.Duration("reuse_grace", time.Duration(*h.ReuseGrace)))
	}
	if h.MaxRequestSize == 0 {
		h.MaxRequestSize = DefaultMaxRequestSize
	}
	if h.ForwardMethod == "" {
		h.ForwardMethod = http.MethodGet
	}
	h.ForwardMethod = strings.ToUpper(h.ForwardMethod)

	if h.StoreRaw == nil {
		h.StoreRaw = json.RawMessage(`{"backend":"memory"}`)
	}
	mod, err := ctx.LoadModule(h, "StoreRaw")
	if err != nil {
		return fmt.Errorf("oauth_par: store: %w", err)
	}
	sp, ok := mod.(StoreProvider)
	if !ok {
		return fmt.Errorf("oauth_par: store: module %T is not a pushed request store", mod)
	}

	metrics, err := provisionMetrics(ctx)
	if err != nil {
		return fmt.Errorf("oauth_par: metrics: %w", err)
	}
	store := newMeteredStore(sp.Store(), metrics)

	// Entries are partitioned per endpoint pair, so that two sites sharing
	// the same store cannot redeem each other's request_uris.
	p := sha256.Sum256([]byte(h.AuthorizationEndpoint + "\x00" + h.PAREndpoint))
	partition := base64.RawURLEncoding.EncodeToString(p[:9]) + "/"

	// {env.*} and {file.*} in secrets are expanded now, so they never show
	// in the admin API's config.
	repl := caddy.NewReplacer()
	ks := keySource{remote: remoteKeySetOptions{Timeout: jwksFetchTimeout}}
	clients := make(map[string]*client, len(h.Clients))
	anyKeys, anyMTLS := false, false
	for _, c := range h.Clients {
		if c.Secret != "" {
			s, err := repl.ReplaceOrErr(c.Secret, true, true)
			if err != nil {
				return fmt.Errorf("oauth_par: client %q: secret: %v", c.ClientID, err)
			}
			c.Secret = s
		}
		if err := c.validate(); err != nil {
			return fmt.Errorf("oauth_par: %w", err)
		}
		cl, err := newClient(c, ks)
		if err != nil {
			return fmt.Errorf("oauth_par: %w", err)
		}
		if cl.keys != nil && cl.keys.skipped() > 0 {
			ctx.Logger().Warn("client keys skipped: types or sizes this gateway cannot use",
				zap.String("client_id", c.ClientID), zap.Int("skipped", cl.keys.skipped()))
		}
		cl.requirePKCE = cl.requirePKCE || h.fapi2()
		clients[c.ClientID] = cl
		anyKeys = anyKeys || cl.keys != nil
		anyMTLS = anyMTLS || cl.authMethods[AuthTLSClientAuth] || cl.authMethods[AuthSelfSignedTLSClientAuth]
	}

	defAlgs := defaultSigningAlgNames
	if h.fapi2() {
		defAlgs = fapi2Algs
	}
	assertionAlgs, err := signingAlgs("client_assertion_signing_algs", h.ClientAssertionSigningAlgs, defAlgs)
	if err != nil {
		return err
	}
	roAlgs, err := signingAlgs("request_object_signing_algs", h.RequestObjectSigningAlgs, defAlgs)
	if err != nil {
		return err
	}
	dpopAlgs, err := signingAlgs("dpop_signing_algs", h.DPoPSigningAlgs, defAlgs)
	if err != nil {
		return err
	}
	times := jwtTimes{Skew: time.Duration(h.ClockSkew), Now: time.Now}

	var clientCAs *x509.CertPool
	if h.ClientCAFile != "" {
		pem, err := os.ReadFile(h.ClientCAFile)
		if err != nil {
			return fmt.Errorf("oauth_par: client_ca_file: %v", err)
		}
		clientCAs = x509.NewCertPool()
		if !clientCAs.AppendCertsFromPEM(pem) {
			return fmt.Errorf("oauth_par: client_ca_file: %s holds no PEM certificate", h.ClientCAFile)
		}
	}

	adv := advertisement{mtls: anyMTLS, mtlsURL: h.MTLSEndpoint}
	if anyKeys {
		adv.members = append(adv.members, member{"request_object_signing_alg_values_supported", jsonStrings(roAlgs)})
	}
	if h.RequireSignedRequestObject {
		adv.members = append(adv.members, member{"require_signed_request_object", json.RawMessage("true")})
	}
	if len(h.DPoPSigningAlgs) > 0 {
		adv.members = append(adv.members, member{"dpop_signing_alg_values_supported", jsonStrings(dpopAlgs)})
	}
	var sk *serverKeys
	var jwksPath string
	if enc := h.RequestObjectEncryption; enc != nil {
		algs, encs, err := encryptionAlgs(enc)
		if err != nil {
			return err
		}
		if enc.KeyFile != "" {
			sk, err = newServerKeysFromFile(enc.KeyFile, algs, encs)
		} else {
			sk, err = loadOrCreateServerKeys(ctx, ctx.Storage(), "oauth_par/request_object_keys/"+partition+"jwks.json", algs, encs)
		}
		if err != nil {
			return fmt.Errorf("oauth_par: request_object_encryption: %w", err)
		}
		jwksPath = enc.JWKSPath
		adv.jwksPath = jwksPath
		adv.members = append(adv.members,
			member{"request_object_encryption_alg_values_supported", jsonStrings(algs)},
			member{"request_object_encryption_enc_values_supported", jsonStrings(encs)})
	}

	var upstream *upstreamAuth
	if h.UpstreamClientAuth != nil {
		if upstream, err = h.UpstreamClientAuth.provision(ctx, h, ctx.Logger()); err != nil {
			return fmt.Errorf("oauth_par: %w", err)
		}
	}

	rls, err := h.rateLimitSettings(clients)
	if err != nil {
		return fmt.Errorf("oauth_par: %w", err)
	}
	// Last: Cleanup releases it, and nothing below can fail.
	limits, err := acquireRateLimits(partition, rls)
	if err != nil {
		return fmt.Errorf("oauth_par: rate_limit: %w", err)
	}

	h.gw = &gateway{
		authorizationEndpoint:      h.AuthorizationEndpoint,
		parEndpoint:                h.PAREndpoint,
		lifetime:                   time.Duration(h.RequestURILifetime),
		reuseGrace:                 time.Duration(*h.ReuseGrace),
		requirePAR:                 h.RequirePAR,
		maxRequestSize:             h.MaxRequestSize,
		forwardPOST:                h.ForwardMethod == http.MethodPost,
		issuer:                     h.Issuer,
		mtlsEndpoint:               h.MTLSEndpoint,
		requireSignedRequestObject: h.RequireSignedRequestObject,
		requestObjectPolicy: requestObjectPolicy{
			Algs:        roAlgs,
			MaxLifetime: time.Duration(h.RequestObjectMaxLifetime),
			RequireTyp:  h.RequireRequestObjectTyp,
			Times:       times,
		},
		dpopPolicy: dpopPolicy{Algs: dpopAlgs, MaxAge: dpopMaxAge, Times: times},
		serverKeys: sk,
		jwksPath:   jwksPath,
		advertise:  adv,
		clients:    clients,
		auth: &clientAuthenticator{
			clients:     clients,
			claims:      store,
			claimPrefix: partition,
			algs:        assertionAlgs,
			maxLifetime: time.Duration(h.AssertionMaxLifetime),
			times:       times,
			issuerOnly:  h.fapi2(),
			clientCAs:   clientCAs,
			limits:      limits,
			upstream:    upstream,
		},
		limits:    limits,
		store:     store,
		partition: partition,
		logger:    ctx.Logger(),
		now:       time.Now,
		audit:     newAuditLogger(ctx.Logger(), h.DisableAudit),
		metrics:   metrics,
	}
	if sk != nil {
		h.gw.requestObjectPolicy.Decrypt = sk.decrypt
	}
	return h.provisionLift(ctx.Logger())
}

// jwksFetchTimeout bounds one fetch of a client's jwks_uri; dpopMaxAge is
// how old a DPoP proof's iat may be (RFC 9449 §11.1).
const (
	jwksFetchTimeout = 3 * time.Second
	dpopMaxAge       = 60 * time.Second
)

// defaultSigningAlgNames are the JWS algorithms accepted by default for
// client assertions, request objects and DPoP proofs.
var defaultSigningAlgNames = []string{"PS256", "ES256", "EdDSA", "RS256"}

// asymmetricAlgs are the JWS algorithms that may be allow-listed: never
// none, never HMAC (a public key must not become an HMAC secret).
var asymmetricAlgs = []jose.SignatureAlgorithm{
	jose.RS256, jose.RS384, jose.RS512, jose.PS256, jose.PS384, jose.PS512,
	jose.ES256, jose.ES384, jose.ES512, jose.EdDSA,
}

// signingAlgs turns a configured allow-list into go-jose algorithms.
func signingAlgs(directive string, names, def []string) ([]jose.SignatureAlgorithm, error) {
	if len(names) == 0 {
		names = def
	}
	out := make([]jose.SignatureAlgorithm, 0, len(names))
	for _, n := range names {
		a := jose.SignatureAlgorithm(n)
		if !slices.Contains(asymmetricAlgs, a) {
			return nil, fmt.Errorf("oauth_par: %s: %q is not an allowed algorithm (asymmetric JWS algorithms only: RS256..512, PS256..512, ES256..512, EdDSA)", directive, n)
		}
		if !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out, nil
}

// encryptionAlgs turns request_object_encryption's allow-lists into
// go-jose algorithms.
func encryptionAlgs(enc *EncryptionConfig) ([]jose.KeyAlgorithm, []jose.ContentEncryption, error) {
	allowedAlgs := []jose.KeyAlgorithm{jose.RSA_OAEP_256, jose.ECDH_ES, jose.ECDH_ES_A128KW, jose.ECDH_ES_A256KW}
	allowedEncs := []jose.ContentEncryption{jose.A128GCM, jose.A256GCM}
	algs, encs := allowedAlgs, allowedEncs
	if len(enc.Algs) > 0 {
		algs = nil
		for _, n := range enc.Algs {
			if !slices.Contains(allowedAlgs, jose.KeyAlgorithm(n)) {
				return nil, nil, fmt.Errorf("oauth_par: request_object_encryption: algs: %q is not supported (RSA-OAEP-256, ECDH-ES, ECDH-ES+A128KW, ECDH-ES+A256KW)", n)
			}
			algs = append(algs, jose.KeyAlgorithm(n))
		}
	}
	if len(enc.Encs) > 0 {
		encs = nil
		for _, n := range enc.Encs {
			if !slices.Contains(allowedEncs, jose.ContentEncryption(n)) {
				return nil, nil, fmt.Errorf("oauth_par: request_object_encryption: encs: %q is not supported (A128GCM, A256GCM)", n)
			}
			encs = append(encs, jose.ContentEncryption(n))
		}
	}
	return algs, encs, nil
}

// jsonStrings is a JSON array of the values' string forms.
func jsonStrings[T ~string](vs []T) json.RawMessage {
	b, _ := json.Marshal(vs)
	return b
}

// Validate checks the configuration; messages name the Caddyfile
// subdirective at fault.
func (h *Handler) Validate() error {
	if err := h.validate(); err != nil {
		return fmt.Errorf("oauth_par: %w", err)
	}
	return nil
}

func (h *Handler) validate() error {
	if h.AuthorizationEndpoint == "" {
		return fmt.Errorf("authorization_endpoint is required")
	}
	for name, p := range map[string]string{"authorization_endpoint": h.AuthorizationEndpoint, "par_endpoint": h.PAREndpoint} {
		if !strings.HasPrefix(p, "/") || strings.ContainsAny(p, "?#") {
			return fmt.Errorf("%s: %q must be a path starting with /", name, p)
		}
	}
	if h.AuthorizationEndpoint == h.PAREndpoint {
		return fmt.Errorf("par_endpoint: must differ from authorization_endpoint")
	}
	if isDiscoveryPath(h.PAREndpoint) || isDiscoveryPath(h.AuthorizationEndpoint) {
		return fmt.Errorf("par_endpoint/authorization_endpoint: must not be a discovery path")
	}
	if lt := time.Duration(h.RequestURILifetime); lt < MinLifetime || lt > MaxLifetime {
		return fmt.Errorf("request_uri_lifetime: %s is outside %s..%s (RFC 9126 §7.1)", lt, MinLifetime, MaxLifetime)
	}
	if h.ReuseGrace != nil {
		rg := time.Duration(*h.ReuseGrace)
		if rg < 0 || rg > MaxReuseGrace {
			return fmt.Errorf("reuse_grace: %s is outside 0..%s (0 or off disables it)", rg, MaxReuseGrace)
		}
		// The grace cookie's Path is the endpoint; ';' would end it.
		if p := (&url.URL{Path: h.AuthorizationEndpoint}).EscapedPath(); rg > 0 && strings.Contains(p, ";") {
			return fmt.Errorf("reuse_grace: authorization_endpoint %q cannot be a cookie path (';'); set reuse_grace off", h.AuthorizationEndpoint)
		}
	}
	if h.MaxRequestSize < 1024 {
		return fmt.Errorf("max_request_size: must be at least 1KiB, got %d bytes", h.MaxRequestSize)
	}
	if h.ForwardMethod != http.MethodGet && h.ForwardMethod != http.MethodPost {
		return fmt.Errorf("forward_method: must be GET or POST, got %q", h.ForwardMethod)
	}
	if h.Issuer != "" {
		if u, err := url.Parse(h.Issuer); err != nil || !u.IsAbs() || u.RawQuery != "" || u.Fragment != "" {
			return fmt.Errorf("issuer: %q must be an absolute URL without query or fragment", h.Issuer)
		}
	}
	if sk := time.Duration(h.ClockSkew); sk < 0 || sk > MaxClockSkew {
		return fmt.Errorf("clock_skew: %s is outside 0..%s", sk, MaxClockSkew)
	}
	if lt := time.Duration(h.AssertionMaxLifetime); lt <= 0 || lt > time.Hour {
		return fmt.Errorf("assertion_max_lifetime: %s is outside 1s..1h", lt)
	}
	if lt := time.Duration(h.RequestObjectMaxLifetime); lt <= 0 || lt > time.Hour {
		return fmt.Errorf("request_object_max_lifetime: %s is outside 1s..60m (FAPI 2.0 Message Signing: at most 60 minutes)", lt)
	}
	if h.MTLSEndpoint != "" {
		if u, err := url.Parse(h.MTLSEndpoint); err != nil || u.Scheme != "https" || u.Host == "" {
			return fmt.Errorf("mtls_endpoint: %q must be an absolute https URL", h.MTLSEndpoint)
		}
	}
	if enc := h.RequestObjectEncryption; enc != nil {
		if p := enc.JWKSPath; !strings.HasPrefix(p, "/") || strings.ContainsAny(p, "?#") || p == h.PAREndpoint || p == h.AuthorizationEndpoint {
			return fmt.Errorf("request_object_encryption: jwks_path: %q must be a path of its own starting with /", p)
		}
	}
	seen := map[string]bool{}
	for _, c := range h.Clients {
		if seen[c.ClientID] {
			return fmt.Errorf("client %q: defined more than once", c.ClientID)
		}
		// Each client was validated in Provision, with its secret expanded.
		seen[c.ClientID] = true
	}
	if err := h.validateLift(); err != nil {
		return err
	}
	return h.checkProfile()
}

// Cleanup releases this config's share of the rate limit state kept
// across reloads.
func (h *Handler) Cleanup() error {
	if h.gw != nil {
		h.gw.limits.release()
	}
	return nil
}

// ServeHTTP implements caddyhttp.MiddlewareHandler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	return h.gw.serveHTTP(w, r, next.ServeHTTP)
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
