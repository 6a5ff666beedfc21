package caddymodule

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

const auditHMACSecret = "0123456789abcdef0123456789abcdef-hs256"

// auditRig is a gateway with a client for every authentication method,
// the audit trail and the handler's logger recorded.
type auditRig struct {
	g              *gateway
	audit, handler *observer.ObservedLogs
	jwtKey         crypto.Signer
	mtls, self     *mtlsCert
	jti            int
}

func newAuditRig(t *testing.T) *auditRig {
	t.Helper()
	auditCore, audit := observer.New(zapcore.InfoLevel)
	handlerCore, handler := observer.New(zapcore.DebugLevel)
	rig := &auditRig{audit: audit, handler: handler, jwtKey: newTestKeys(t)[1].priv}
	rig.mtls = mtlsLeaf(t, mtlsCA(t, "audit-ca", nil), []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth})
	rig.self = mtlsLeaf(t, nil, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth})
	rig.g = newTestGateway(t, func(g *gateway) {
		g.issuer = "https://idp.example"
		g.auth.claims, g.auth.algs, g.auth.maxLifetime = g.store, []jose.SignatureAlgorithm{jose.ES256}, 5*time.Minute
		g.logger = zap.New(handlerCore)
		g.audit = newAuditLogger(zap.New(auditCore), false)
	})
	jwks := func(k crypto.PublicKey) json.RawMessage {
		b, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: k, KeyID: "k1", Use: "sig"}}})
		return b
	}
	cb := []string{"https://app.example.com/cb"}
	for _, c := range []ClientConfig{
		{ClientID: "jwt-app", JWKS: jwks(rig.jwtKey.Public()), RedirectURIs: cb},
		{ClientID: "hs-app", Secret: auditHMACSecret, AuthMethods: []string{AuthClientSecretJWT}, RedirectURIs: cb},
		{ClientID: "mtls-app", TLSClientAuthSANDNS: "client.example.com", RedirectURIs: cb},
		{ClientID: "self-app", JWKS: jwks(rig.self.key.Public()), AuthMethods: []string{AuthSelfSignedTLSClientAuth}, RedirectURIs: cb},
	} {
		rig.g.clients[c.ClientID] = mustClient(t, c)
	}
	return rig
}

// assertion is a client assertion for clientID signed with key.
func (rig *auditRig) assertion(t *testing.T, clientID string, key any, alg jose.SignatureAlgorithm) string {
	rig.jti++
	now := time.Now()
	return signJWT(t, key, alg, map[jose.HeaderKey]any{"kid": "k1"}, jwt.Claims{
		Issuer: clientID, Subject: clientID, Audience: jwt.Audience{rig.g.issuer}, ID: fmt.Sprintf("audit-jti-%d", rig.jti),
		IssuedAt: jwt.NewNumericDate(now), Expiry: jwt.NewNumericDate(now.Add(time.Minute)),
	})
}

// inCaddy gives r the variable table Caddy's server sets up.
func inCaddy(r *http.Request, clientIP string) *http.Request {
	vars := map[string]any{caddyhttp.ClientIPVarKey: clientIP, caddyStartTimeVar: time.Now()}
	return r.WithContext(context.WithValue(r.Context(), caddyhttp.VarsCtxKey, vars))
}

var auditFieldNames = []string{"auth_method", "client_id", "client_ip", "endpoint", "error", "outcome", "request_uri_fp"}

// TestAuditEventNamesTheAuthMethod pushes with every client
// authentication method and checks the one event each push writes.
func TestAuditEventNamesTheAuthMethod(t *testing.T) {
	rig := newAuditRig(t)
	form := func(id string, kv ...string) url.Values {
		f := with(validPush(), "client_id", id)
		for i := 0; i+1 < len(kv); i += 2 {
			f.Set(kv[i], kv[i+1])
		}
		if id != "web-app" {
			f.Del("scope")
		}
		if id == "spa" {
			f.Set("redirect_uri", "http://127.0.0.1/cb")
		}
		return f
	}
	assertionForm := func(id, a string) url.Values {
		return form(id, "client_assertion_type", jwtBearer, "client_assertion", a)
	}
	withTLS := func(r *http.Request, leaf *mtlsCert, verified bool) *http.Request {
		r.TLS = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{leaf.cert}}
		if verified {
			r.TLS.VerifiedChains = [][]*x509.Certificate{{leaf.cert}}
		}
		return r
	}
	for _, tc := range []struct {
		name          string
		req           *http.Request
		client, ip    string
		outcome, code string
		method        string
	}{
		{"basic", parRequest(form("web-app"), "web-app", testSecret), "web-app", "203.0.113.9", "issued", "", AuthClientSecretBasic},
		{"post", parRequest(form("web-app", "client_secret", testSecret), "", ""), "web-app", "203.0.113.9", "issued", "", AuthClientSecretPost},
		{"public", parRequest(form("spa"), "", ""), "spa", "203.0.113.9", "issued", "", AuthNone},
		{"private_key_jwt", parRequest(assertionForm("jwt-app", rig.assertion(t, "jwt-app", rig.jwtKey, jose.ES256)), "", ""), "jwt-app", "203.0.113.9", "issued", "", AuthPrivateKeyJWT},
		{"client_secret_jwt", parRequest(assertionForm("hs-app", rig.assertion(t, "hs-app", []byte(auditHMACSecret), jose.HS256)), "", ""), "hs-app", "203.0.113.9", "issued", "", AuthClientSecretJWT},
		{"tls_client_auth", withTLS(parRequest(form("mtls-app"), "", ""), rig.mtls, true), "mtls-app", "203.0.113.9", "issued", "", AuthTLSClientAuth},
		{"self_signed_tls_client_auth", withTLS(parRequest(form("self-app"), "", ""), rig.self, false), "self-app", "203.0.113.9", "issued", "", AuthSelfSignedTLSClientAuth},
		{"wrong private_key_jwt key", parRequest(assertionForm("jwt-app", rig.assertion(t, "jwt-app", newTestKeys(t)[1].priv, jose.ES256)), "", ""), "jwt-app", "203.0.113.9", "rejected", ErrInvalidClient, AuthPrivateKeyJWT},
		{"assertion of an unknown client", parRequest(assertionForm("ghost", rig.assertion(t, "ghost", rig.jwtKey, jose.ES256)), "", ""), "ghost", "203.0.113.9", "rejected", ErrInvalidClient, methodAssertion},
		{"wrong secret", parRequest(form("web-app"), "web-app", "nope"), "web-app", "203.0.113.9", "rejected", ErrInvalidClient, AuthClientSecretBasic},
		{"not a form", httptest.NewRequest(http.MethodPost, "/par", strings.NewReader("{}")), "", "203.0.113.9", "rejected", ErrInvalidRequest, ""},
		{"outside Caddy: the peer address", parRequest(form("web-app"), "web-app", testSecret), "web-app", "", "issued", "", AuthClientSecretBasic},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := tc.req
			wantIP := tc.ip
			if tc.ip != "" {
				r = inCaddy(r, tc.ip)
			} else {
				wantIP = "192.0.2.1" // httptest's RemoteAddr
			}
			before := rig.audit.Len()
			w := httptest.NewRecorder()
			rig.g.servePAR(w, r, nil)
			if (w.Code == http.StatusCreated) != (tc.outcome == "issued") {
				t.Fatalf("status %d: %s", w.Code, w.Body)
			}
			events := rig.audit.All()[before:]
			if len(events) != 1 {
				t.Fatalf("%d audit events, want 1: %v", len(events), events)
			}
			e := events[0]
			fields := e.ContextMap()
			var keys []string
			for k := range fields {
				keys = append(keys, k)
			}
			slices.Sort(keys)
			if !slices.Equal(keys, auditFieldNames) {
				t.Errorf("fields %v, want exactly %v", keys, auditFieldNames)
			}
			want := map[string]any{"endpoint": "par", "client_id": tc.client, "outcome": tc.outcome, "error": tc.code, "client_ip": wantIP, "auth_method": tc.method}
			for k, v := range want {
				if fields[k] != v {
					t.Errorf("%s = %q, want %q", k, fields[k], v)
				}
			}
			if fp, _ := fields["request_uri_fp"].(string); (fp != "") != (tc.outcome == "issued") || (fp != "" && len(fp) != 12) {
				t.Errorf("request_uri_fp = %q", fp)
			}
			if e.Level != zapcore.InfoLevel || e.LoggerName != "audit" || e.Message != "request "+tc.outcome {
				t.Errorf("entry %v %q %q", e.Level, e.LoggerName, e.Message)
			}
		})
	}
	// With the audit trail on, the handler's logger has no outcome line.
	for _, e := range rig.handler.All() {
		if _, ok := e.ContextMap()["outcome"]; ok {
			t.Errorf("handler logger has an outcome line too: %v %v", e.Message, e.ContextMap())
		}
	}
}

// Passed-through requests are no audit events; with the trail off, every
// outcome goes to the handler's logger as before.
func TestAuditOffAndPassedThroughUseTheHandlerLogger(t *testing.T) {
	rig := newAuditRig(t)
	next := func(w http.ResponseWriter, r *http.Request) error { w.WriteHeader(http.StatusOK); return nil }
	q := url.Values{"client_id": {"idp-client"}, "response_type": {"code"}, "redirect_uri": {"https://rp.example/cb"}}
	if err := rig.g.serveAuthorize(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/authorize?"+q.Encode(), nil), next); err != nil {
		t.Fatal(err)
	}
	if n := rig.audit.Len(); n != 0 {
		t.Errorf("a pass-through wrote %d audit events", n)
	}
	if l := rig.handler.FilterMessage("request passed_through").All(); len(l) != 1 || l[0].Level != zapcore.DebugLevel || l[0].ContextMap()["client_id"] != "idp-client" {
		t.Errorf("pass-through lines on the handler logger: %v", l)
	}

	rig.g.audit = newAuditLogger(rig.g.logger, true)
	if rig.g.audit != nil {
		t.Fatal("audit off gives a logger")
	}
	uri := pushOK(t, rig.g, validPush())
	w := httptest.NewRecorder()
	rig.g.servePAR(w, parRequest(validPush(), "web-app", "nope"), nil)
	if err := rig.g.serveAuthorize(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/authorize?client_id=web-app&request_uri="+url.QueryEscape(uri), nil), next); err != nil {
		t.Fatal(err)
	}
	if n := rig.audit.Len(); n != 0 {
		t.Errorf("audit off, yet %d audit events", n)
	}
	rej := rig.handler.FilterMessage("request rejected").All()
	if len(rej) != 1 || rej[0].Level != zapcore.InfoLevel || rej[0].ContextMap()["error"] != ErrInvalidClient {
		t.Errorf("rejections on the handler logger: %v", rej)
	}
	red := rig.handler.FilterMessage("request redeemed").All()
	if len(red) != 1 || red[0].Level != zapcore.DebugLevel || red[0].ContextMap()["request_uri_fp"] != refFingerprint(strings.TrimPrefix(uri, requestURIPrefix)) {
		t.Errorf("redemptions on the handler logger: %v", red)
	}
}

func TestAuditLoggerName(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	// Caddy names a module's logger after the module ID.
	newAuditLogger(zap.New(core).Named(string(Handler{}.CaddyModule().ID)), false).Info("x")
	if got := logs.All()[0].LoggerName; got != "http.handlers.oauth_par.audit" {
		t.Errorf("audit logger is named %q", got)
	}
}
