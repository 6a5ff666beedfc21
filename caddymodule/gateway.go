package caddymodule

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

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
	// partition separates this gateway's entries from those of other sites
	// sharing the same store.
	partition string

	logger *zap.Logger
	now    func() time.Time

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
	default:
		return next(g.watchAuthzResponse(w, r, next), r)
	}
}

func (g *gateway) storeKey(ref string) string { return g.partition + ref }

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

// logOutcome writes the one log line of a PAR or authorization outcome.
// Never parameter values or whole request_uris: only a short fingerprint of
// the reference, enough to correlate a push with its redemption.
// Successes are per-request traffic and go to debug, as in Caddy's own
// handlers; rejections are what an operator watches for. Nothing is built
// for a line the level would drop.
func (g *gateway) logOutcome(endpoint, clientID, outcome, code, ref string) {
	level, msg := zap.DebugLevel, "request "+outcome
	if outcome == "rejected" {
		level, msg = zap.InfoLevel, "request rejected"
	}
	ce := g.logger.Check(level, msg)
	if ce == nil {
		return
	}
	fields := []zap.Field{zap.String("endpoint", endpoint), zap.String("client_id", clientID), zap.String("outcome", outcome)}
	if code != "" {
		fields = append(fields, zap.String("error", code))
	}
	if ref != "" {
		sum := sha256.Sum256([]byte(ref))
		fields = append(fields, zap.String("request_uri_fp", hex.EncodeToString(sum[:6])))
	}
	ce.Write(fields...)
}
