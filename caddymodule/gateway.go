package caddymodule

import (
	"net/http"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// gateway is the protocol core, free of Caddy's module machinery: the
// Handler provisions one per config and routes requests to it.
type gateway struct {
	authorizationEndpoint string
	parEndpoint           string
	lifetime              time.Duration
	requirePAR            bool
	maxRequestSize        int64
	forwardPOST           bool
	issuer                string

	// reuseGrace is how long the browser that redeemed a request_uri first
	// may redeem it again (0: never).
	reuseGrace time.Duration

	// mtlsEndpoint is the PAR URL advertised for mTLS clients ("" when no
	// client uses mTLS).
	mtlsEndpoint string

	requireSignedRequestObject bool
	requestObjectPolicy        requestObjectPolicy
	dpopPolicy                 dpopPolicy
	// serverKeys decrypt request objects; nil unless request_object_encryption.
	serverKeys *serverKeys
	jwksPath   string
	// advertise is what discovery adds for the features configured.
	advertise advertisement

	clients map[string]*client
	auth    *clientAuthenticator
	store   Store
	// limits are the PAR endpoint's rate limits (nil: none).
	limits *rateLimits
	// partition separates this gateway's entries from those of other sites
	// sharing the same store.
	partition string

	logger *zap.Logger
	now    func() time.Time
	// audit is the audit trail's logger (audit.go); nil when audit is off.
	audit *zap.Logger
	// metrics are the Prometheus collectors (metrics.go); nil in unit tests.
	metrics *parMetrics

	// lift is issue 10 (iss in authorization responses, the token
	// endpoint, gateway PKCE); nil when not configured.
	lift *lift

	// learnedIss is the iss for error redirects taken from discovery; nil
	// until known ("" when the upstream does not promise RFC 9207).
	learnedIss atomic.Pointer[string]
	// learnedMeta is the upstream discovery document's view of this
	// authorization endpoint (issuer, token endpoint, advertised PAR URL).
	learnedMeta atomic.Pointer[metadataInfo]
	probeMu     sync.Mutex
	lastProbe   time.Time
}

// serveHTTP routes by exact path: node-oidc-provider and others serve
// other pages under the authorization endpoint's path, which must not be
// mistaken for authorization requests.
func (g *gateway) serveHTTP(w http.ResponseWriter, r *http.Request, next nextHandler) error {
	switch p := r.URL.Path; {
	case p == g.parEndpoint:
		g.servePAR(w, r, next)
		return nil
	case g.serverKeys != nil && p == g.jwksPath:
		g.serveJWKS(w, r)
		return nil
	case g.isTokenEndpoint(p):
		return g.serveToken(w, r, next)
	case p == g.authorizationEndpoint:
		w = g.watchAuthzResponse(w, r, next)
		return g.serveAuthorize(w, withAuthzWriter(r, w), next)
	case isDiscoveryPath(p):
		return g.serveDiscovery(w, r, next)
	case g.isAuthorizationLookalike(p):
		// The upstream may route such a path to its authorization endpoint
		// (Keycloak serves it with a trailing slash too): passed through,
		// it would skip PAR enforcement (RFC 9126 §4, §6).
		e := badRequest(ErrInvalidRequest, "send authorization requests to the exact path of the authorization endpoint")
		g.logOutcome(r, epAuthorize, "", "", "rejected", e.Code, "")
		writeBrowserError(w, r, e)
		return nil
	default:
		// Grace cookies are sent below their path too, PKCE binding
		// cookies everywhere: not upstream.
		return next(g.watchAuthzResponse(w, r, next), withoutGatewayCookies(r))
	}
}

func (g *gateway) storeKey(ref string) string { return g.partition + ref }

// isAuthorizationLookalike reports whether p is not the authorization
// endpoint's path but a variant that servers commonly route to the same
// resource: a trailing or doubled slash, dot segments, backslashes,
// ;parameters (servlet containers drop them) or other letter case.
// Other pages below the endpoint are not variants.
func (g *gateway) isAuthorizationLookalike(p string) bool {
	endpoint := path.Clean(g.authorizationEndpoint)
	if p == g.authorizationEndpoint || len(p) < len(endpoint) {
		return false // the variants are never shorter
	}
	p = strings.ReplaceAll(p, `\`, "/")
	if strings.Contains(p, ";") {
		segs := strings.Split(p, "/")
		for i, s := range segs {
			segs[i], _, _ = strings.Cut(s, ";")
		}
		p = strings.Join(segs, "/")
	}
	return strings.EqualFold(path.Clean("/"+p), endpoint)
}

// bodyReadTimeout bounds the wait for a PAR or POSTed authorization request
// body when the server sets no read timeout of its own (Caddy's read_body,
// unset by default): otherwise a client trickling bytes holds the request
// open as long as it likes. Nanoseconds; tests shorten it.
var bodyReadTimeout atomic.Int64

func init() { bodyReadTimeout.Store(int64(10 * time.Second)) }

// boundBodyRead applies bodyReadTimeout to reading r's body, unless the
// operator configured a read timeout for the server, which then applies.
// Once the body has been read to its end, the deadline is cleared (by
// net/http, and by Caddy's idle-timeout reader, which also keeps it from
// lengthening Caddy's own timeouts).
func boundBodyRead(w http.ResponseWriter, r *http.Request) {
	if r.ContentLength == 0 {
		// No body: net/http already waits on the connection in the
		// background, and a deadline would cancel the request mid-way.
		return
	}
	if srv, ok := r.Context().Value(http.ServerContextKey).(*http.Server); ok && srv.ReadTimeout > 0 {
		return
	}
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(time.Duration(bodyReadTimeout.Load())))
}

// audiences are the values a client assertion sent to this PAR endpoint
// may carry as aud (RFC 9126 §2): the issuer, the token endpoint, and the
// PAR endpoint's URL as the client addressed it, as discovery advertises
// it, and as its mTLS alias.
func (g *gateway) audiences(r *http.Request, next nextHandler) audiences {
	var a audiences
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	a.endpointURLs = append(a.endpointURLs, scheme+"://"+strings.ToLower(r.Host)+g.parEndpoint)
	meta := g.learnedMeta.Load()
	if meta == nil && !g.auth.issuerOnly {
		// The token endpoint (and the issuer, when not configured) come
		// from the upstream's discovery document.
		g.probeDiscovery(r, next)
		meta = g.learnedMeta.Load()
	}
	a.issuer = g.issuer
	if meta != nil {
		if a.issuer == "" {
			a.issuer = meta.issuer
		}
		a.tokenEndpoint = meta.tokenEndpoint
		if meta.parURL != "" && !slices.Contains(a.endpointURLs, meta.parURL) {
			a.endpointURLs = append(a.endpointURLs, meta.parURL)
		}
	}
	if g.mtlsEndpoint != "" && !slices.Contains(a.endpointURLs, g.mtlsEndpoint) {
		a.endpointURLs = append(a.endpointURLs, g.mtlsEndpoint)
	}
	return a
}

// serveJWKS serves the public halves of the gateway's request-object
// encryption keys (RFC 9101 §6.1 needs clients to find them).
func (g *gateway) serveJWKS(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		e := newError(http.StatusMethodNotAllowed, ErrInvalidRequest, "the JWKS accepts GET and HEAD")
		e.header = http.Header{"Allow": {"GET, HEAD"}}
		writeJSONError(w, e)
		return
	}
	b := g.serverKeys.publicJWKS()
	h := w.Header()
	h.Set("Content-Type", "application/jwk-set+json")
	h.Set("Cache-Control", "public, max-age=300")
	h.Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = w.Write(b)
	}
}

// logOutcome records the outcome of a push or an authorization request:
// the metrics, and one log line. Pushes, redemptions and rejections are
// events of the audit trail (audit.go), unless it is off; other lines go to
// the handler's own logger, successes at debug as in Caddy's own handlers,
// rejections at info. Never parameter values or whole request_uris: only a
// short fingerprint of the reference, enough to correlate a push with its
// redemption. Nothing is built for a line the level would drop.
//
// authMethod is the client authentication method a push used or tried
// ("" where there is none, as at the authorization endpoint).
func (g *gateway) logOutcome(r *http.Request, ep endpointKind, clientID, authMethod, outcome, code, ref string) {
	vars, _ := r.Context().Value(caddyhttp.VarsCtxKey).(map[string]any)
	if g.metrics != nil {
		start, _ := vars[caddyStartTimeVar].(time.Time)
		g.metrics.observe(ep, g.metricClient(clientID), outcome, code, start)
	}
	if g.audit != nil && outcome != "passed_through" {
		g.auditEvent(r, vars, ep, clientID, authMethod, outcome, code, ref)
		return
	}
	level := zap.DebugLevel
	if outcome == "rejected" {
		level = zap.InfoLevel
	}
	ce := g.logger.Check(level, outcomeMessage(outcome))
	if ce == nil {
		return
	}
	fields := []zap.Field{zap.String("endpoint", ep.logName()), zap.String("client_id", clientID), zap.String("outcome", outcome)}
	if code != "" {
		fields = append(fields, zap.String("error", code))
	}
	if ref != "" {
		fields = append(fields, zap.String("request_uri_fp", refFingerprint(ref)))
	}
	ce.Write(fields...)
}
