package harness

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
)

// Hop is a reverse proxy between the gateway and the IdP, on loopback. It
// counts the requests that reach the IdP at one path (what the gateway
// forwarded to the token endpoint), records them, and can tamper with
// authorization responses: TamperIss makes every redirect carrying code=
// name another issuer, as a mixed-up IdP would.
type Hop struct {
	Addr string // host:port, the gateway's upstream
	srv  *http.Server
	ln   net.Listener

	countPath string
	count     atomic.Int64
	// TamperIss, when set, is the iss put into authorization responses.
	tamperIss atomic.Pointer[string]

	mu   sync.Mutex
	seen []HopRequest
	all  []string // method, path and query of every request
	// codeRedirects are the Locations of the IdP's redirects that carry
	// code=, as the IdP sent them.
	codeRedirects []string
}

// HopRequest is one request to the counted path, as the IdP got it.
type HopRequest struct {
	Authorization string
	Form          url.Values
	DPoP          bool
}

// StartHop proxies to upstream (host:port), keeping the Host header (the
// IdP's issuer is the gateway's origin).
func StartHop(upstream, countPath string) (*Hop, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	h := &Hop{Addr: ln.Addr().String(), ln: ln, countPath: countPath}
	rp := &httputil.ReverseProxy{
		Director: func(r *http.Request) {
			r.URL.Scheme = "http"
			r.URL.Host = upstream
		},
		ModifyResponse: func(resp *http.Response) error {
			iss := h.tamperIss.Load()
			loc := resp.Header.Get("Location")
			if resp.StatusCode/100 != 3 || !strings.Contains(loc, "code=") {
				return nil
			}
			h.mu.Lock()
			h.codeRedirects = append(h.codeRedirects, loc)
			h.mu.Unlock()
			if iss == nil {
				return nil
			}
			u, err := url.Parse(loc)
			if err != nil {
				return nil
			}
			q := u.Query()
			q.Set("iss", *iss)
			u.RawQuery = q.Encode()
			resp.Header.Set("Location", u.String())
			return nil
		},
	}
	h.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.mu.Lock()
		h.all = append(h.all, r.Method+" "+r.URL.RequestURI())
		h.mu.Unlock()
		if r.URL.Path == h.countPath && r.Method == http.MethodPost {
			h.count.Add(1)
			body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
			form, _ := url.ParseQuery(string(body))
			h.mu.Lock()
			h.seen = append(h.seen, HopRequest{Authorization: r.Header.Get("Authorization"), Form: form, DPoP: r.Header.Get("DPoP") != ""})
			h.mu.Unlock()
			r.Body = io.NopCloser(bytes.NewReader(body))
			r.ContentLength = int64(len(body))
		}
		rp.ServeHTTP(w, r)
	})}
	go func() { _ = h.srv.Serve(ln) }()
	return h, nil
}

// Count is how many requests reached the counted path.
func (h *Hop) Count() int { return int(h.count.Load()) }

// Seen returns the requests to the counted path.
func (h *Hop) Seen() []HopRequest {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]HopRequest(nil), h.seen...)
}

// All returns the method and request URI of every request the hop passed
// on, in order.
func (h *Hop) All() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.all...)
}

// CodeRedirects returns the Locations of the IdP's redirects that carried
// code=, before any tampering.
func (h *Hop) CodeRedirects() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.codeRedirects...)
}

// TamperIss sets (or, with "", clears) the iss put into authorization
// responses.
func (h *Hop) TamperIss(iss string) {
	if iss == "" {
		h.tamperIss.Store(nil)
		return
	}
	h.tamperIss.Store(&iss)
}

// Close stops the hop.
func (h *Hop) Close() { _ = h.srv.Close() }
