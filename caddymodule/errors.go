package caddymodule

import (
	"encoding/json"
	"html/template"
	"mime"
	"net/http"
	"net/url"
	"strings"
)

// OAuth error codes used by the gateway (RFC 6749 §4.1.2.1, §5.2;
// RFC 9101 §7; RFC 9449 §12.2; OpenID Connect Core §3.1.2.6).
const (
	ErrInvalidRequest          = "invalid_request"
	ErrInvalidClient           = "invalid_client"
	ErrInvalidScope            = "invalid_scope"
	ErrUnsupportedResponseType = "unsupported_response_type"
	ErrInvalidRequestURI       = "invalid_request_uri"
	ErrRequestNotSupported     = "request_not_supported"
	ErrInvalidRequestObject    = "invalid_request_object"
	ErrInvalidDPoPProof        = "invalid_dpop_proof"
	// RFC 9396 §5.
	ErrInvalidAuthorizationDetails = "invalid_authorization_details"
	ErrTemporarilyUnavailable      = "temporarily_unavailable"
	ErrServerError                 = "server_error"
)

// oauthError is an error the gateway reports to the client in OAuth form.
type oauthError struct {
	Status      int
	Code        string
	Description string
	// basicTried adds WWW-Authenticate: Basic to a 401 (RFC 6749 §5.2).
	basicTried bool
	// header, when set, is added to the response (e.g. Allow on a 405).
	header http.Header
}

func (e *oauthError) Error() string { return e.Code + ": " + e.Description }

// setHeaders adds the headers that belong to the error whatever the body.
func (e *oauthError) setHeaders(h http.Header) {
	for k, v := range e.header {
		h[k] = v
	}
	if e.Status == http.StatusUnauthorized && e.basicTried {
		h.Set("WWW-Authenticate", `Basic realm="oauth_par", charset="UTF-8"`)
	}
}

// describe makes a description fit RFC 6749 §5.2's error_description
// syntax (%x20-21 / %x23-5B / %x5D-7E): quotes become apostrophes, other
// characters outside it become '?'. Descriptions may quote parameter
// names, kids or algorithm names a client sent.
func describe(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
			return strings.Map(func(r rune) rune {
				switch {
				case r == '"':
					return '\''
				case r < 0x20 || r > 0x7e || r == '\\':
					return '?'
				}
				return r
			}, s)
		}
	}
	return s
}

func newError(status int, code, description string) *oauthError {
	return &oauthError{Status: status, Code: code, Description: description}
}

func badRequest(code, description string) *oauthError {
	return newError(http.StatusBadRequest, code, description)
}

// unavailable is the answer when the store cannot take a write: nothing
// was issued or accepted, and the client may retry.
func unavailable(description string) *oauthError {
	e := newError(http.StatusServiceUnavailable, ErrTemporarilyUnavailable, description+"; retry later")
	e.header = http.Header{"Retry-After": {"1"}}
	return e
}

// writeJSONError writes the token-endpoint error format (RFC 6749 §5.2) that
// RFC 9126 §2.3 prescribes for the PAR endpoint.
func writeJSONError(w http.ResponseWriter, e *oauthError) {
	e.setHeaders(w.Header())
	b, _ := json.Marshal(map[string]string{"error": e.Code, "error_description": describe(e.Description)})
	writeJSON(w, e.Status, b)
}

// writeJSON writes a JSON body that must never be cached: every response of
// the gateway carries request_uris or errors about them.
func writeJSON(w http.ResponseWriter, status int, b []byte) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("Pragma", "no-cache")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

var errorPage = template.Must(template.New("error").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Authorization error</title>
<style>body{font-family:system-ui,sans-serif;max-width:36rem;margin:4rem auto;padding:0 1rem;color:#222}code{background:#f2f2f2;padding:.1rem .3rem}</style>
</head><body>
<h1>Authorization request rejected</h1>
<p>The sign-in request could not be processed. Return to the application and start the sign-in again.</p>
<p>Error: <code>{{.Code}}</code></p>
<p>{{.Description}}</p>
</body></html>
`))

// writeBrowserError answers an authorization-endpoint error that cannot be
// redirected to the client: a small HTML page for browsers, JSON for callers
// that ask for it.
func writeBrowserError(w http.ResponseWriter, r *http.Request, e *oauthError) {
	if wantsJSON(r) {
		writeJSONError(w, e)
		return
	}
	h := w.Header()
	e.setHeaders(h)
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("Pragma", "no-cache")
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	w.WriteHeader(e.Status)
	_ = errorPage.Execute(w, e)
}

// wantsJSON reports whether the Accept header names application/json and
// not text/html, i.e. an API caller rather than a browser.
func wantsJSON(r *http.Request) bool {
	var json, html bool
	for _, part := range strings.Split(r.Header.Get("Accept"), ",") {
		mt, params, err := mime.ParseMediaType(strings.TrimSpace(part))
		if err != nil || params["q"] == "0" {
			continue
		}
		switch mt {
		case "application/json":
			json = true
		case "text/html":
			html = true
		}
	}
	return json && !html
}

// redirectError sends an authorization error response to the client's
// registered redirect_uri (RFC 6749 §4.1.2.1), with 303 as FAPI 2.0 asks.
// iss is added when known (RFC 9207 §2).
func redirectError(w http.ResponseWriter, redirectURI, state, iss string, e *oauthError) {
	u, err := url.Parse(redirectURI)
	if err != nil {
		writeJSONError(w, e)
		return
	}
	q := u.Query()
	q.Set("error", e.Code)
	q.Set("error_description", describe(e.Description))
	if state != "" {
		q.Set("state", state)
	}
	if iss != "" {
		q.Set("iss", iss)
	}
	u.RawQuery = q.Encode()
	h := w.Header()
	h.Set("Location", u.String())
	h.Set("Cache-Control", "no-store")
	h.Set("Referrer-Policy", "no-referrer")
	w.WriteHeader(http.StatusSeeOther)
}
