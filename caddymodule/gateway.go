package caddymodule

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
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

	clients map[string]*client
	auth    *clientAuthenticator
	store   Store
	// partition separates this gateway's entries from those of other sites
	// sharing the same store.
	partition string

	logger *zap.Logger
	now    func() time.Time

	// learnedIss is the iss for error redirects taken from discovery; nil
	// until known ("" when the upstream does not promise RFC 9207).
	learnedIss atomic.Pointer[string]
	probeMu    sync.Mutex
	lastProbe  time.Time
}

// serveHTTP routes by exact path: node-oidc-provider and others serve
// other pages under the authorization endpoint's path, which must not be
// mistaken for authorization requests.
func (g *gateway) serveHTTP(w http.ResponseWriter, r *http.Request, next nextHandler) error {
	switch p := r.URL.Path; {
	case p == g.parEndpoint:
		g.servePAR(w, r)
		return nil
	case p == g.authorizationEndpoint:
		return g.serveAuthorize(w, r, next)
	case isDiscoveryPath(p):
		return g.serveDiscovery(w, r, next)
	default:
		return next(w, r)
	}
}

func (g *gateway) storeKey(ref string) string { return g.partition + ref }

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
