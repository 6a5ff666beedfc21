package caddymodule

import (
	"crypto/sha256"
	"encoding/hex"
	"net"
	"net/http"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// The audit trail: one structured event, at info level, per push, per
// redemption and per rejection, on a logger of its own name, so that an
// operator can route it with Caddy's log option `include
// http.handlers.oauth_par.audit` (and exclude it from the default log).
//
// An event has exactly these fields besides Caddy's ts, level, logger and
// msg ("request issued", "request redeemed", "request rejected"); every one
// is always present, "" where it does not apply:
//
//	endpoint        par | authorize
//	client_id       the client (as sent when unknown, cut to 64 bytes)
//	outcome         issued | redeemed | redeemed_again | rejected
//	error           the OAuth error code of a rejection
//	request_uri_fp  hex of the first 6 bytes of SHA-256 of the request_uri
//	                reference: correlates a push with its redemption, never
//	                the request_uri itself
//	client_ip       Caddy's client IP (trusted_proxies applied)
//	auth_method     client authentication a push used or tried:
//	                client_secret_basic, client_secret_post,
//	                client_secret_jwt, private_key_jwt, tls_client_auth,
//	                self_signed_tls_client_auth, none; client_assertion for
//	                a JWT assertion of an unknown client (which of the two
//	                JWT methods cannot be told); "" when the request failed
//	                before its credentials were read, and at the
//	                authorization endpoint, where the browser, not the
//	                client, makes the request
//
// Never parameter values, credentials or whole request_uris.

// auditLoggerName is the audit trail's logger name.
const auditLoggerName = "http.handlers.oauth_par.audit"

// newAuditLogger is the audit trail's logger under the handler's logger
// (named http.handlers.oauth_par by Caddy); nil when the trail is off.
func newAuditLogger(handlerLogger *zap.Logger, off bool) *zap.Logger {
	if off {
		return nil
	}
	return handlerLogger.Named("audit")
}

// outcomeMessage is the msg of an outcome's log line, without building a
// string per request.
func outcomeMessage(outcome string) string {
	switch outcome {
	case "issued":
		return "request issued"
	case "redeemed":
		return "request redeemed"
	case "redeemed_again":
		return "request redeemed_again"
	case "rejected":
		return "request rejected"
	case "passed_through":
		return "request passed_through"
	case "forwarded":
		return "request forwarded"
	case "checked":
		return "response checked"
	case "code_bound":
		return "response code_bound"
	}
	return "request outcome"
}

// refFingerprint is the short, one-way fingerprint of a request_uri
// reference that log lines carry; "" for none.
func refFingerprint(ref string) string {
	if ref == "" {
		return ""
	}
	// References are 43 bytes: hashed from a stack copy, where []byte(ref)
	// would allocate.
	var buf [64]byte
	b := buf[:copy(buf[:], ref)]
	if len(ref) > len(buf) {
		b = []byte(ref)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:6])
}

// auditEvent writes one audit event (fields above). vars is Caddy's
// variable table of the request (nil outside Caddy).
func (g *gateway) auditEvent(r *http.Request, vars map[string]any, ep endpointKind, clientID, authMethod, outcome, code, ref string) {
	ce := g.audit.Check(zap.InfoLevel, outcomeMessage(outcome))
	if ce == nil {
		return
	}
	ip, _ := vars[caddyhttp.ClientIPVarKey].(string)
	if ip == "" {
		ip = r.RemoteAddr
		if host, _, err := net.SplitHostPort(ip); err == nil {
			ip = host
		}
	}
	ce.Write(
		zap.String("endpoint", ep.logName()),
		zap.String("client_id", clientID),
		zap.String("outcome", outcome),
		zap.String("error", code),
		zap.String("request_uri_fp", refFingerprint(ref)),
		zap.String("client_ip", ip),
		zap.String("auth_method", authMethod),
	)
}

// push is pushAuth for callers that do not need the authentication method.
func (g *gateway) push(r *http.Request, next nextHandler) (clientID string, _ *parResponse, _ *oauthError) {
	var method string
	return g.pushAuth(r, next, &method)
}
