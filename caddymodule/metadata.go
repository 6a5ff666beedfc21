package caddymodule

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"

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
	return rewriteMetadata(body, g.parEndpoint, g.requirePAR)
}

// metadataInfo is what the gateway learns from a discovery document.
type metadataInfo struct {
	issuer                string
	authorizationEndpoint string
	issParameterSupported bool
}

// rewriteMetadata sets pushed_authorization_request_endpoint and
// require_pushed_authorization_requests (RFC 9126 §5) in a metadata
// document. Every other member keeps its place and its exact value.
func rewriteMetadata(doc []byte, parPath string, requirePAR bool) ([]byte, metadataInfo, error) {
	var info metadataInfo
	dec := json.NewDecoder(bytes.NewReader(doc))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, info, errors.New("not a JSON object")
	}
	var out bytes.Buffer
	out.Grow(len(doc) + 128)
	out.WriteByte('{')
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, info, err
		}
		key, _ := tok.(string)
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, info, err
		}
		switch key {
		case "pushed_authorization_request_endpoint", "require_pushed_authorization_requests":
			continue
		case "issuer":
			_ = json.Unmarshal(raw, &info.issuer)
		case "authorization_endpoint":
			_ = json.Unmarshal(raw, &info.authorizationEndpoint)
		case "authorization_response_iss_parameter_supported":
			_ = json.Unmarshal(raw, &info.issParameterSupported)
		}
		k, _ := json.Marshal(key)
		out.Write(k)
		out.WriteByte(':')
		out.Write(raw)
		out.WriteByte(',')
	}
	if tok, err := dec.Token(); err != nil || tok != json.Delim('}') {
		return nil, info, errors.New("malformed JSON object")
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, info, errors.New("trailing data after JSON object")
	}
	ae, err := url.Parse(info.authorizationEndpoint)
	if err != nil || ae.Scheme == "" || ae.Host == "" {
		return nil, info, errors.New("no absolute authorization_endpoint")
	}
	par := (&url.URL{Scheme: ae.Scheme, Host: ae.Host, Path: parPath}).String()
	parJSON, _ := json.Marshal(par)
	out.WriteString(`"pushed_authorization_request_endpoint":`)
	out.Write(parJSON)
	out.WriteString(`,"require_pushed_authorization_requests":`)
	out.WriteString(strconv.FormatBool(requirePAR))
	out.WriteByte('}')
	return out.Bytes(), info, nil
}

// learnIssuer remembers the issuer of the discovery document that describes
// this gateway's authorization endpoint, so that the gateway's own error
// redirects carry iss when the upstream promises it (RFC 9207 §2).
func (g *gateway) learnIssuer(info metadataInfo) {
	ae, err := url.Parse(info.authorizationEndpoint)
	if err != nil || ae.Path != g.authorizationEndpoint || info.issuer == "" {
		return
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
func (g *gateway) responseIssuer() string {
	if g.issuer != "" {
		return g.issuer
	}
	if p := g.learnedIss.Load(); p != nil {
		return *p
	}
	return ""
}
