package caddymodule

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// maxMetadataSize bounds how much of an upstream discovery document is
// buffered for rewriting; larger documents pass through unchanged.
const maxMetadataSize = 1 << 20

// isDiscoveryPath matches OpenID Connect discovery under any prefix and
// RFC 8414 metadata, both with the well-known segment inserted before the
// issuer path (RFC 8414 §3) and appended to it (as Keycloak serves it).
func isDiscoveryPath(p string) bool {
	const oidc, oauth = "/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"
	return strings.HasSuffix(p, oidc) ||
		strings.HasSuffix(p, oauth) ||
		strings.HasPrefix(p, oauth+"/")
}

// serveDiscovery passes a metadata request upstream and rewrites a JSON 200
// answer to advertise the gateway's PAR endpoint (RFC 9126 §5).
func (g *gateway) serveDiscovery(w http.ResponseWriter, r *http.Request, next nextHandler) error {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return next(w, r)
	}
	up := r.Clone(r.Context())
	// Ask for a plain, complete document that can be rewritten; a HEAD is
	// asked as GET so that its Content-Length is that of the rewritten body
	// (net/http drops body writes on HEAD responses).
	up.Method = http.MethodGet
	up.Header.Del("Accept-Encoding")
	up.Header.Del("If-None-Match")
	up.Header.Del("If-Modified-Since")
	var buf bytes.Buffer
	rec := caddyhttp.NewResponseRecorder(w, &buf, func(status int, h http.Header) bool {
		return status == http.StatusOK && isJSON(h.Get("Content-Type"))
	})
	if err := next(rec, up); err != nil {
		return err
	}
	if !rec.Buffered() {
		return nil
	}
	h := w.Header()
	body := buf.Bytes()
	out, info, err := g.decodeAndRewrite(h.Get("Content-Encoding"), body)
	if err != nil {
		g.logger.Warn("discovery document passed through unchanged", zap.String("path", r.URL.Path), zap.Error(err))
		h.Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(rec.Status())
		if r.Method != http.MethodHead {
			_, _ = w.Write(body)
		}
		return nil
	}
	g.learnIssuer(info)
	h.Del("Content-Encoding")
	h.Del("ETag")
	h.Del("Transfer-Encoding")
	h.Set("Content-Length", strconv.Itoa(len(out)))
	w.WriteHeader(rec.Status())
	if r.Method != http.MethodHead {
		_, _ = w.Write(out)
	}
	return nil
}

func isJSON(contentType string) bool {
	mt, _, err := mime.ParseMediaType(contentType)
	return err == nil && (mt == "application/json" || strings.HasSuffix(mt, "+json"))
}

func (g *gateway) decodeAndRewrite(encoding string, body []byte) ([]byte, metadataInfo, error) {
	switch strings.ToLower(strings.TrimSpace(encoding)) {
	case "", "identity":
	case "gzip", "x-gzip":
		zr, err := gzip.NewReader(bytes.NewReader(body))
		if err != nil {
			return nil, metadataInfo{}, err
		}
		body, err = io.ReadAll(io.LimitReader(zr, maxMetadataSize+1))
		if err != nil {
			return nil, metadataInfo{}, err
		}
	default:
		return nil, metadataInfo{}, errors.New("unsupported content encoding " + strconv.Quote(encoding))
	}
	if len(body) > maxMetadataSize {
		return nil, metadataInfo{}, errors.New("document too large")
	}
	return rewriteMetadata(body, g.parEndpoint, g.requirePAR, g.advertise)
}

// metadataInfo is what the gateway learns from a discovery document.
type metadataInfo struct {
	issuer                string
	authorizationEndpoint string
	tokenEndpoint         string
	issParameterSupported bool
	// parURL is the PAR endpoint as the rewritten document advertises it.
	parURL string
}

// advertisement is what the gateway adds to discovery for what it
// enforces at its PAR endpoint. It is fixed at provision.
type advertisement struct {
	// members replace the upstream's members of the same name, in order.
	members []member
	// mtls adds mtls_endpoint_aliases.pushed_authorization_request_endpoint
	// (RFC 8705 §5): mtlsURL, or the PAR URL when that is "".
	mtls    bool
	mtlsURL string
	// jwksPath is advertised as jwks_uri when the upstream has none.
	jwksPath string
	// drop are upstream members removed (they would not be true).
	drop []string
}

// member is one top-level metadata member: a name and its JSON value.
type member struct {
	name  string
	value json.RawMessage
}

func (a advertisement) member(name string) (json.RawMessage, bool) {
	for _, m := range a.members {
		if m.name == name {
			return m.value, true
		}
	}
	return nil, false
}

// rewriteMetadata sets pushed_authorization_request_endpoint and
// require_pushed_authorization_requests (RFC 9126 §5) in a metadata
// document, and the members of adv. Every other member keeps its place and
// its exact value, except an upstream's own PAR endpoint, which is dropped
// wherever it is advertised (also as an RFC 8705 mTLS alias): clients must
// push to us.
func rewriteMetadata(doc []byte, parPath string, requirePAR bool, adv advertisement) ([]byte, metadataInfo, error) {
	var info metadataInfo
	hasJWKS := false
	out, err := filterObject(doc, func(key string, raw json.RawMessage) (json.RawMessage, bool) {
		if _, ours := adv.member(key); ours || slices.Contains(adv.drop, key) {
			return nil, false
		}
		switch key {
		case "pushed_authorization_request_endpoint", "require_pushed_authorization_requests":
			return nil, false
		case "issuer":
			_ = json.Unmarshal(raw, &info.issuer)
		case "authorization_endpoint":
			_ = json.Unmarshal(raw, &info.authorizationEndpoint)
		case "token_endpoint":
			_ = json.Unmarshal(raw, &info.tokenEndpoint)
		case "authorization_response_iss_parameter_supported":
			_ = json.Unmarshal(raw, &info.issParameterSupported)
		case "jwks_uri":
			hasJWKS = true
		}
		return raw, true
	})
	if err != nil {
		return nil, info, err
	}
	ae, err := url.Parse(info.authorizationEndpoint)
	if err != nil || ae.Scheme == "" || ae.Host == "" {
		return nil, info, errors.New("no absolute authorization_endpoint")
	}
	origin := &url.URL{Scheme: ae.Scheme, Host: ae.Host}
	info.parURL = origin.JoinPath(parPath).String()
	// The aliases object: the upstream's PAR alias goes, ours comes when
	// mTLS clients are configured.
	out, err = rewriteMember(out, "mtls_endpoint_aliases", func(raw json.RawMessage) (json.RawMessage, error) {
		return rewriteAliases(raw, adv, info.parURL)
	})
	if err != nil {
		return nil, info, err
	}
	add := func(name string, value []byte) {
		if len(out) > 1 {
			out = append(out, ',')
		}
		k, _ := json.Marshal(name)
		out = append(out, k...)
		out = append(out, ':')
		out = append(out, value...)
	}
	parJSON, _ := json.Marshal(info.parURL)
	add("pushed_authorization_request_endpoint", parJSON)
	add("require_pushed_authorization_requests", strconv.AppendBool(nil, requirePAR))
	for _, m := range adv.members {
		add(m.name, m.value)
	}
	if adv.jwksPath != "" && !hasJWKS {
		j, _ := json.Marshal(origin.JoinPath(adv.jwksPath).String())
		add("jwks_uri", j)
	}
	if adv.mtls && !bytes.Contains(out, []byte(`"mtls_endpoint_aliases":`)) {
		aliases, _ := rewriteAliases(json.RawMessage(`{}`), adv, info.parURL)
		add("mtls_endpoint_aliases", aliases)
	}
	out = append(out, '}')
	return out, info, nil
}

// rewriteAliases drops the upstream's PAR alias from an
// mtls_endpoint_aliases object and adds ours when adv asks for it.
func rewriteAliases(raw json.RawMessage, adv advertisement, parURL string) (json.RawMessage, error) {
	dropped := false
	out, err := filterObject(raw, func(k string, v json.RawMessage) (json.RawMessage, bool) {
		if k == "pushed_authorization_request_endpoint" {
			dropped = true
			return nil, false
		}
		return v, true
	})
	if err != nil {
		return nil, err
	}
	if !dropped && !adv.mtls {
		return raw, nil // nothing to change: keep the upstream's bytes
	}
	if adv.mtls {
		u := adv.mtlsURL
		if u == "" {
			u = parURL
		}
		j, _ := json.Marshal(u)
		if len(out) > 1 {
			out = append(out, ',')
		}
		out = append(out, `"pushed_authorization_request_endpoint":`...)
		out = append(out, j...)
	}
	return append(out, '}'), nil
}

// rewriteMember replaces the value of the top-level member name in an
// object under construction (no closing brace), if it is there.
func rewriteMember(open []byte, name string, f func(json.RawMessage) (json.RawMessage, error)) ([]byte, error) {
	if !bytes.Contains(open, []byte(`"`+name+`":`)) {
		return open, nil
	}
	var err error
	out, ferr := filterObject(append(open, '}'), func(k string, v json.RawMessage) (json.RawMessage, bool) {
		if k != name || err != nil {
			return v, true
		}
		var nv json.RawMessage
		nv, err = f(v)
		return nv, true
	})
	if ferr != nil {
		return nil, ferr
	}
	return out, err
}

// filterObject copies the members of the JSON object doc that keep returns
// true for, in order, with the values it returns. The result lacks the
// closing brace, so that members can be appended.
func filterObject(doc []byte, keep func(key string, raw json.RawMessage) (json.RawMessage, bool)) ([]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(doc))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, errors.New("not a JSON object")
	}
	out := make([]byte, 0, len(doc)+160)
	out = append(out, '{')
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		key, _ := tok.(string)
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, err
		}
		v, ok := keep(key, raw)
		if !ok {
			continue
		}
		if len(out) > 1 {
			out = append(out, ',')
		}
		k, _ := json.Marshal(key)
		out = append(out, k...)
		out = append(out, ':')
		out = append(out, v...)
	}
	if tok, err := dec.Token(); err != nil || tok != json.Delim('}') {
		return nil, errors.New("malformed JSON object")
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("trailing data after JSON object")
	}
	return out, nil
}

// learnIssuer remembers the issuer of the discovery document that describes
// this gateway's authorization endpoint, so that the gateway's own error
// redirects carry iss when the upstream promises it (RFC 9207 §2).
func (g *gateway) learnIssuer(info metadataInfo) {
	ae, err := url.Parse(info.authorizationEndpoint)
	if err != nil || ae.Path != g.authorizationEndpoint || info.issuer == "" {
		return
	}
	if cur := g.learnedMeta.Load(); cur == nil || *cur != info {
		g.learnedMeta.Store(&info)
	}
	iss := ""
	if info.issParameterSupported {
		iss = info.issuer
	}
	if cur := g.learnedIss.Load(); cur == nil || *cur != iss {
		g.learnedIss.Store(&iss)
	}
}

// responseIssuer is the iss value for the gateway's authorization error
// responses: the configured issuer, else the one learned from discovery.
// When nothing has been learned yet (no client fetched discovery through
// this gateway since it started), the upstream's discovery is probed, since
// a client that cached the document still expects iss (RFC 9207 §2.4).
func (g *gateway) responseIssuer(r *http.Request, next nextHandler) string {
	if iss, ok := g.liftIssuer(r, next); ok {
		return iss
	}
	if g.issuer != "" {
		return g.issuer
	}
	if p := g.learnedIss.Load(); p != nil {
		return *p
	}
	g.probeDiscovery(r, next)
	if p := g.learnedIss.Load(); p != nil {
		return *p
	}
	return ""
}

// probeRetry is how long a failed discovery probe is not repeated;
// probeTimeout bounds one probe, all candidates together.
const (
	probeRetry   = time.Minute
	probeTimeout = 5 * time.Second
)

// probeDiscovery looks for the discovery document describing this gateway's
// authorization endpoint at the well-known locations derived from its path
// (/realms/demo/protocol/openid-connect/auth: /realms/demo/.well-known/...,
// among others), through the rest of the handler chain.
func (g *gateway) probeDiscovery(r *http.Request, next nextHandler) {
	// One probe at a time; concurrent rejections do not wait behind a slow
	// upstream, they go out without iss.
	if next == nil || !g.probeMu.TryLock() {
		return
	}
	defer g.probeMu.Unlock()
	if g.learnedMeta.Load() != nil || (!g.lastProbe.IsZero() && g.now().Sub(g.lastProbe) < probeRetry) {
		return
	}
	g.lastProbe = g.now()
	ctx, cancel := context.WithTimeout(r.Context(), probeTimeout)
	defer cancel()
	for _, p := range discoveryCandidates(g.authorizationEndpoint) {
		if ctx.Err() != nil {
			break
		}
		sub := r.Clone(ctx)
		sub.Method = http.MethodGet
		sub.URL = &url.URL{Path: p}
		sub.RequestURI = p
		sub.Body = http.NoBody
		sub.ContentLength = 0
		sub.Header = http.Header{"Accept": {"application/json"}}
		w := &bufferWriter{header: http.Header{}}
		if err := next(w, sub); err != nil || w.code != http.StatusOK || !isJSON(w.header.Get("Content-Type")) {
			continue
		}
		if _, info, err := g.decodeAndRewrite(w.header.Get("Content-Encoding"), w.body.Bytes()); err == nil {
			g.learnIssuer(info)
			if g.learnedIss.Load() != nil {
				return
			}
		}
	}
	g.logger.Warn("no discovery document found for the authorization endpoint; set 'issuer' so that error redirects carry iss",
		zap.String("authorization_endpoint", g.authorizationEndpoint))
}

// discoveryCandidates lists where a discovery document for an authorization
// endpoint at authPath may be, nearest first; at most a few per segment.
func discoveryCandidates(authPath string) []string {
	var out []string
	dir := strings.TrimSuffix(authPath, "/")
	for i := 0; i < 6 && dir != ""; i++ {
		dir = dir[:strings.LastIndex(dir, "/")]
		out = append(out,
			dir+"/.well-known/openid-configuration",
			"/.well-known/oauth-authorization-server"+dir, // RFC 8414 §3
		)
	}
	return out
}

// bufferWriter collects a bounded sub-request response.
type bufferWriter struct {
	header http.Header
	code   int
	body   bytes.Buffer
}

func (w *bufferWriter) Header() http.Header { return w.header }
func (w *bufferWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
}
func (w *bufferWriter) Write(p []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	if w.body.Len()+len(p) > maxMetadataSize {
		return 0, errors.New("discovery document too large")
	}
	return w.body.Write(p)
}
func (w *bufferWriter) Flush() {}
