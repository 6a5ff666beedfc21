package caddymodule_test

// In-process tests that run the real Caddy: a Caddyfile is adapted, loaded
// with caddy.Load, and driven over loopback HTTP, with a recording upstream
// standing in for the IdP behind reverse_proxy. The site is written exactly as
// users write it, oauth_par then reverse_proxy with no global order option,
// so these tests also prove the directive order.
//
// caddy.Load is process-global: the tests in this file must run serially
// (no t.Parallel).

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"

	_ "github.com/caddy-par/caddy-par/caddymodule"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

const (
	ctAppID       = "web-app"
	ctAppSecret   = "Pa+ss%2B:w0rd" // '+', '%' and ':' exercise RFC 6749 §2.3.1 form-encoding
	ctAppRedirect = "https://app.example.test/cb"
	ctSPAID       = "spa"
	ctSPARedirect = "https://spa.example.test/cb"
	ctStrictID    = "strict-app"
	ctStrictRedir = "https://strict.example.test/cb"
	ctURNPrefix   = "urn:ietf:params:oauth:request_uri:"
	ctUpstreamOK  = "UPSTREAM-AUTHORIZE-PAGE"
	ctHTTPTimeout = 10 * time.Second
)

// ctBlock is the usual oauth_par block: a confidential client restricted in
// scopes, a public client and a confidential client with per-client
// require_par. Extra lines are appended inside the block.
func ctBlock(extra ...string) string {
	return `authorization_endpoint /authorize
		par_endpoint /par
		request_uri_lifetime 90s
		max_request_size 2KiB
		client ` + ctAppID + ` {
			secret ` + ctAppSecret + `
			redirect_uris ` + ctAppRedirect + ` https://app.example.test/cb2
			allowed_scopes openid profile email
		}
		client ` + ctSPAID + ` {
			public
			redirect_uris ` + ctSPARedirect + `
		}
		client ` + ctStrictID + ` {
			secret strict-secret
			redirect_uris ` + ctStrictRedir + `
			require_par
		}
		` + strings.Join(extra, "\n\t\t")
}

// ---------------------------------------------------------------------------
// Recording upstream

type ctRecorded struct {
	Method   string
	Path     string
	RawQuery string
	Body     []byte
	Header   http.Header
}

type ctUpstream struct {
	srv    *httptest.Server
	routes map[string]http.HandlerFunc

	mu   sync.Mutex
	reqs []ctRecorded
}

// ctNewUpstream starts the stand-in IdP on 127.0.0.1. /authorize answers 200
// with ctUpstreamOK; routes add scripted answers by exact path; anything else
// is 404.
func ctNewUpstream(t *testing.T, routes map[string]http.HandlerFunc) *ctUpstream {
	t.Helper()
	u := &ctUpstream{routes: routes}
	u.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		u.mu.Lock()
		u.reqs = append(u.reqs, ctRecorded{Method: r.Method, Path: r.URL.Path, RawQuery: r.URL.RawQuery, Body: body, Header: r.Header.Clone()})
		u.mu.Unlock()
		if h, ok := u.routes[r.URL.Path]; ok {
			h(w, r)
			return
		}
		if r.URL.Path == "/authorize" {
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			_, _ = io.WriteString(w, ctUpstreamOK)
			return
		}
		http.NotFound(w, r)
	}))
	t.Cleanup(u.srv.Close)
	return u
}

func (u *ctUpstream) addr() string { return u.srv.Listener.Addr().String() }

// ctIsDiscovery reports whether a recorded request is a discovery fetch.
// The gateway may fetch discovery itself (to learn the issuer for RFC 9207
// iss in its error redirects); such fetches are not forwarded
// authorization requests and are left out of requests() and count().
func ctIsDiscovery(r ctRecorded) bool {
	return r.Method == http.MethodGet && strings.Contains(r.Path, "/.well-known/")
}

// requests returns what the upstream received, discovery fetches excluded.
func (u *ctUpstream) requests() []ctRecorded {
	u.mu.Lock()
	defer u.mu.Unlock()
	var out []ctRecorded
	for _, r := range u.reqs {
		if !ctIsDiscovery(r) {
			out = append(out, r)
		}
	}
	return out
}

// count is len(requests()).
func (u *ctUpstream) count() int { return len(u.requests()) }

func (u *ctUpstream) last(t *testing.T) ctRecorded {
	t.Helper()
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.reqs) == 0 {
		t.Fatal("upstream received no request")
	}
	return u.reqs[len(u.reqs)-1]
}

// ---------------------------------------------------------------------------
// Caddy harness

type ctCaddy struct {
	base    string // http://127.0.0.1:port
	port    int
	up      *ctUpstream
	global  string
	storage string
	proxy   string // body of the reverse_proxy block, if any
	client  *http.Client
	tr      *http.Transport
}

func ctFreePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	_ = ln.Close()
	return port
}

// ctCaddyfile renders the whole Caddyfile. global holds extra global
// options; without a log option Caddy's logs are discarded. proxy, if not
// empty, is the body of the reverse_proxy block.
func ctCaddyfile(port int, upstream, storage, global, block, proxy string) string {
	if proxy != "" {
		upstream += " {\n\t\t" + proxy + "\n\t}"
	}
	if !strings.Contains(global, "log ") && !strings.Contains(global, "log{") {
		global += "\n\tlog {\n\t\toutput discard\n\t}"
	}
	return fmt.Sprintf(`{
	admin off
	auto_https off
	persist_config off
	grace_period 2s
	storage file_system %s
	%s
}

http://127.0.0.1:%d {
	bind 127.0.0.1
	oauth_par {
		%s
	}
	reverse_proxy %s
}
`, storage, global, port, block, upstream)
}

// ctAdaptLoad adapts a Caddyfile and loads it into the process-wide Caddy.
func ctAdaptLoad(caddyfile string) error {
	adapter := caddyconfig.GetAdapter("caddyfile")
	if adapter == nil {
		return fmt.Errorf("caddyfile adapter not registered")
	}
	cfg, warnings, err := adapter.Adapt([]byte(caddyfile), map[string]any{"filename": "Caddyfile"})
	if err != nil {
		return fmt.Errorf("adapt: %w", err)
	}
	_ = warnings
	return caddy.Load(cfg, true)
}

// ctStart loads a site with the given oauth_par block in front of up and
// stops Caddy at the end of the test.
func ctStart(t *testing.T, up *ctUpstream, global, block string) *ctCaddy {
	t.Helper()
	return ctStartProxy(t, up, global, block, "")
}

// ctStartProxy is ctStart with a reverse_proxy block body.
func ctStartProxy(t *testing.T, up *ctUpstream, global, block, proxy string) *ctCaddy {
	t.Helper()
	c := &ctCaddy{port: ctFreePort(t), up: up, global: global, proxy: proxy}
	c.base = fmt.Sprintf("http://127.0.0.1:%d", c.port)
	storage := t.TempDir()
	tr := &http.Transport{DisableCompression: true, MaxIdleConnsPerHost: 64}
	c.client = &http.Client{
		Timeout:   ctHTTPTimeout,
		Transport: tr,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
	if err := ctAdaptLoad(ctCaddyfile(c.port, up.addr(), storage, global, block, proxy)); err != nil {
		t.Fatalf("loading Caddy: %v", err)
	}
	t.Cleanup(func() {
		tr.CloseIdleConnections()
		if err := caddy.Stop(); err != nil {
			t.Logf("caddy.Stop: %v", err)
		}
	})
	c.storage = storage
	c.tr = tr
	return c
}

// reload loads a modified block on the same port and upstream.
func (c *ctCaddy) reload(t *testing.T, block string) {
	t.Helper()
	if err := ctAdaptLoad(ctCaddyfile(c.port, c.up.addr(), c.storage, c.global, block, c.proxy)); err != nil {
		t.Fatalf("reloading Caddy: %v", err)
	}
	// The old server's graceful shutdown closes idle keep-alive
	// connections, and its accept loop can still take (and drop) one new
	// connection from the listener it shares with the new server: a
	// request racing with that sees EOF. Drain both with probes on fresh
	// connections (they reach the upstream's 404; callers count upstream
	// requests after reload returns).
	c.tr.CloseIdleConnections()
	probe := &http.Client{Timeout: ctHTTPTimeout, Transport: &http.Transport{DisableKeepAlives: true}}
	for ok, i := 0, 0; ok < 3; i++ {
		if i == 50 {
			t.Fatal("Caddy does not answer after the reload")
		}
		resp, err := probe.Get(c.base + "/ct-reload-probe")
		if err != nil {
			time.Sleep(10 * time.Millisecond)
			continue
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		ok++
	}
}

type ctResp struct {
	Status int
	Header http.Header
	Body   []byte
	// ContentLength is as the client saw it (-1 when not sent).
	ContentLength int64
}

func (r ctResp) String() string {
	return fmt.Sprintf("%d %v %q", r.Status, r.Header, r.Body)
}

func (c *ctCaddy) do(t *testing.T, method, path string, body io.Reader, hdr http.Header) ctResp {
	t.Helper()
	req, err := http.NewRequest(method, c.base+path, body)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := c.client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", method, path, err)
	}
	return ctResp{Status: resp.StatusCode, Header: resp.Header, Body: b, ContentLength: resp.ContentLength}
}

func (c *ctCaddy) get(t *testing.T, pathAndQuery string, hdr http.Header) ctResp {
	t.Helper()
	return c.do(t, http.MethodGet, pathAndQuery, nil, hdr)
}

func (c *ctCaddy) postForm(t *testing.T, path, body string, hdr http.Header) ctResp {
	t.Helper()
	h := http.Header{"Content-Type": {"application/x-www-form-urlencoded"}}
	for k, v := range hdr {
		h[k] = v
	}
	return c.do(t, http.MethodPost, path, strings.NewReader(body), h)
}

// ctBasic is an Authorization header per RFC 6749 §2.3.1: id and secret are
// form-urlencoded before base64.
func ctBasic(id, secret string) http.Header {
	raw := url.QueryEscape(id) + ":" + url.QueryEscape(secret)
	return http.Header{"Authorization": {"Basic " + base64.StdEncoding.EncodeToString([]byte(raw))}}
}

// ctBasicRaw sends id and secret without the form-encoding step, as many
// non-conforming clients do.
func ctBasicRaw(id, secret string) http.Header {
	return http.Header{"Authorization": {"Basic " + base64.StdEncoding.EncodeToString([]byte(id+":"+secret))}}
}

func ctChallenge(verifier string) string {
	s := sha256.Sum256([]byte(verifier))
	return base64.RawURLEncoding.EncodeToString(s[:])
}

// ctAppForm is a valid push body for web-app (credentials not included).
func ctAppForm() url.Values {
	return url.Values{
		"response_type":         {"code"},
		"client_id":             {ctAppID},
		"redirect_uri":          {ctAppRedirect},
		"scope":                 {"openid profile"},
		"state":                 {"st-" + strconv.FormatInt(time.Now().UnixNano(), 36)},
		"nonce":                 {"n-0S6_WzA2Mj"},
		"code_challenge":        {ctChallenge("verifier-for-web-app-0123456789-abcdefghijklmnop")},
		"code_challenge_method": {"S256"},
	}
}

// ctSPAForm is a valid push body for the public client.
func ctSPAForm() url.Values {
	return url.Values{
		"response_type":         {"code"},
		"client_id":             {ctSPAID},
		"redirect_uri":          {ctSPARedirect},
		"scope":                 {"openid"},
		"state":                 {"spa-state"},
		"code_challenge":        {ctChallenge("verifier-for-spa-0123456789-abcdefghijklmnopqrst")},
		"code_challenge_method": {"S256"},
	}
}

func ctWith(v url.Values, kv ...string) url.Values {
	out := url.Values{}
	for k, vs := range v {
		out[k] = slices.Clone(vs)
	}
	for i := 0; i+1 < len(kv); i += 2 {
		out.Set(kv[i], kv[i+1])
	}
	return out
}

func ctWithout(v url.Values, keys ...string) url.Values {
	out := ctWith(v)
	for _, k := range keys {
		out.Del(k)
	}
	return out
}

// push sends a PAR request from web-app with HTTP Basic.
func (c *ctCaddy) pushApp(t *testing.T, form url.Values) ctResp {
	t.Helper()
	return c.postForm(t, "/par", form.Encode(), ctBasic(ctAppID, ctAppSecret))
}

// mustPush pushes with the given auth header and returns the request_uri.
func (c *ctCaddy) mustPush(t *testing.T, form url.Values, auth http.Header) string {
	t.Helper()
	r := c.postForm(t, "/par", form.Encode(), auth)
	if r.Status != http.StatusCreated {
		t.Fatalf("push: want 201, got %s", r)
	}
	var body struct {
		RequestURI string `json:"request_uri"`
	}
	if err := json.Unmarshal(r.Body, &body); err != nil || !strings.HasPrefix(body.RequestURI, ctURNPrefix) {
		t.Fatalf("push: bad body %q (%v)", r.Body, err)
	}
	return body.RequestURI
}

func ctRedeemQuery(clientID, requestURI string, extra ...string) string {
	q := url.Values{}
	if clientID != "" {
		q.Set("client_id", clientID)
	}
	q.Set("request_uri", requestURI)
	for i := 0; i+1 < len(extra); i += 2 {
		q.Add(extra[i], extra[i+1])
	}
	return "/authorize?" + q.Encode()
}

// ctWantJSONError asserts an OAuth JSON error response (RFC 6749 §5.2).
func ctWantJSONError(t *testing.T, r ctResp, status int, code string) {
	t.Helper()
	if r.Status != status {
		t.Fatalf("want status %d, got %s", status, r)
	}
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("Content-Type = %q, want application/json", ct)
	}
	if cc := r.Header.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("Cache-Control = %q, want no-store", cc)
	}
	var e struct {
		Error string `json:"error"`
		Desc  string `json:"error_description"`
	}
	if err := json.Unmarshal(r.Body, &e); err != nil {
		t.Fatalf("error body is not JSON: %q", r.Body)
	}
	if e.Error != code {
		t.Errorf("error = %q, want %q (body %s)", e.Error, code, r.Body)
	}
	if e.Desc == "" {
		t.Errorf("error_description is empty")
	}
}

// ctWantHTMLError asserts the browser error page of the authorization
// endpoint: status, HTML, the error code in the page, and no redirect.
func ctWantHTMLError(t *testing.T, r ctResp, status int, code string) {
	t.Helper()
	if r.Status != status {
		t.Fatalf("want status %d, got %s", status, r)
	}
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/html") {
		t.Errorf("Content-Type = %q, want text/html", ct)
	}
	if loc := r.Header.Get("Location"); loc != "" {
		t.Errorf("unexpected Location %q", loc)
	}
	if cc := r.Header.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("Cache-Control = %q, want no-store", cc)
	}
	if !bytes.Contains(r.Body, []byte(code)) {
		t.Errorf("page does not name %s: %s", code, r.Body)
	}
}

// ctWantLoadError asserts that a site with this oauth_par block fails to
// load with an error naming every one of want.
func ctWantLoadError(t *testing.T, up *ctUpstream, storage, block string, want ...string) {
	t.Helper()
	err := ctAdaptLoad(ctCaddyfile(ctFreePort(t), up.addr(), storage, "", block, ""))
	if err == nil {
		_ = caddy.Stop()
		t.Fatalf("config loaded, want an error naming %q", want)
	}
	t.Logf("error: %v", err)
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error does not name %q: %v", w, err)
		}
	}
}

// ctWantUpstreamUntouched fails if the upstream got requests since before.
func ctWantUpstreamUntouched(t *testing.T, up *ctUpstream, before int) {
	t.Helper()
	if n := up.count(); n != before {
		t.Errorf("upstream received %d request(s), want none: %+v", n-before, up.requests()[before:])
	}
}

// ---------------------------------------------------------------------------
// 1. PAR endpoint: method, content type, size

func TestCaddyPAREndpointAcceptsOnlyFormPOSTWithinSizeLimit(t *testing.T) {
	up := ctNewUpstream(t, nil)
	c := ctStart(t, up, "", ctBlock())
	auth := ctBasic(ctAppID, ctAppSecret)

	for _, m := range []string{http.MethodGet, http.MethodPut, http.MethodDelete, http.MethodPatch} {
		t.Run(m+"_is_405_with_Allow_POST", func(t *testing.T) {
			var body io.Reader
			if m != http.MethodGet {
				body = strings.NewReader(ctAppForm().Encode())
			}
			r := c.do(t, m, "/par", body, http.Header{"Content-Type": {"application/x-www-form-urlencoded"}, "Authorization": auth["Authorization"]})
			ctWantJSONError(t, r, http.StatusMethodNotAllowed, "invalid_request")
			if got := r.Header.Values("Allow"); !reflect.DeepEqual(got, []string{"POST"}) {
				t.Errorf("Allow = %q, want [POST]", got)
			}
		})
	}

	for _, tc := range []struct{ name, ct string }{
		{"json_content_type_is_400", "application/json"},
		{"text_plain_is_400", "text/plain"},
		{"multipart_is_400", "multipart/form-data; boundary=x"},
		{"missing_content_type_is_400", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := http.Header{"Authorization": auth["Authorization"]}
			if tc.ct != "" {
				h.Set("Content-Type", tc.ct)
			}
			r := c.do(t, http.MethodPost, "/par", strings.NewReader(ctAppForm().Encode()), h)
			ctWantJSONError(t, r, http.StatusBadRequest, "invalid_request")
		})
	}

	for _, ct := range []string{
		"application/x-www-form-urlencoded;charset=UTF-8", // openid-client
		"application/x-www-form-urlencoded; charset=utf-8",
		"Application/X-WWW-Form-Urlencoded",
	} {
		t.Run("accepts_"+ct, func(t *testing.T) {
			h := http.Header{"Content-Type": {ct}, "Authorization": auth["Authorization"]}
			r := c.do(t, http.MethodPost, "/par", strings.NewReader(ctAppForm().Encode()), h)
			if r.Status != http.StatusCreated {
				t.Fatalf("want 201, got %s", r)
			}
		})
	}

	// A valid push padded to exactly max_request_size (2KiB) is accepted;
	// one byte more is refused with 413, with or without Content-Length.
	form := ctAppForm()
	form.Del("state")
	pad := 2048 - len(form.Encode()) - len("&state=")
	exact := form.Encode() + "&state=" + strings.Repeat("s", pad)
	if len(exact) != 2048 {
		t.Fatalf("test bug: body is %d bytes", len(exact))
	}
	t.Run("body_of_exactly_max_request_size_is_accepted", func(t *testing.T) {
		r := c.postForm(t, "/par", exact, auth)
		if r.Status != http.StatusCreated {
			t.Fatalf("want 201, got %s", r)
		}
	})
	t.Run("body_over_max_request_size_is_413", func(t *testing.T) {
		r := c.postForm(t, "/par", exact+"s", auth)
		ctWantJSONError(t, r, http.StatusRequestEntityTooLarge, "invalid_request")
	})
	t.Run("chunked_body_over_max_request_size_is_413", func(t *testing.T) {
		// io.MultiReader hides the length: the body goes out chunked.
		body := io.MultiReader(strings.NewReader(exact), strings.NewReader(strings.Repeat("s", 10<<10)))
		h := http.Header{"Content-Type": {"application/x-www-form-urlencoded"}, "Authorization": auth["Authorization"]}
		r := c.do(t, http.MethodPost, "/par", body, h)
		ctWantJSONError(t, r, http.StatusRequestEntityTooLarge, "invalid_request")
	})

	if n := up.count(); n != 0 {
		t.Errorf("the PAR endpoint must never be proxied; upstream got %+v", up.requests())
	}
}

// ---------------------------------------------------------------------------
// 2. Client authentication

func TestCaddyPARClientAuthentication(t *testing.T) {
	up := ctNewUpstream(t, nil)
	c := ctStart(t, up, "", ctBlock())

	app := ctAppForm()
	appPost := ctWith(app, "client_secret", ctAppSecret)
	spa := ctSPAForm()

	type tc struct {
		name      string
		body      url.Values
		auth      http.Header
		wantBasic bool // WWW-Authenticate: Basic expected on 401
		ok        bool
	}
	for _, tc := range []tc{
		{name: "basic_with_form_encoded_secret_succeeds", body: app, auth: ctBasic(ctAppID, ctAppSecret), ok: true},
		{name: "client_secret_post_succeeds", body: appPost, ok: true},
		{name: "public_client_with_client_id_only_succeeds", body: spa, ok: true},
		// Many clients do not form-encode Basic credentials; the raw secret is accepted too.
		{name: "basic_with_secret_not_form_encoded_succeeds", body: app, auth: ctBasicRaw(ctAppID, ctAppSecret), ok: true},
		{name: "unknown_client_basic_is_invalid_client", body: ctWith(app, "client_id", "nobody"), auth: ctBasic("nobody", ctAppSecret), wantBasic: true},
		{name: "unknown_client_post_is_invalid_client", body: ctWith(appPost, "client_id", "nobody")},
		{name: "unknown_client_without_secret_is_invalid_client", body: ctWith(app, "client_id", "nobody")},
		{name: "wrong_secret_basic_is_invalid_client", body: app, auth: ctBasic(ctAppID, ctAppSecret+"x"), wantBasic: true},
		{name: "wrong_secret_post_is_invalid_client", body: ctWith(app, "client_secret", "Pa+ss%2B:w0rD")},
		{name: "secret_of_other_client_is_invalid_client", body: ctWith(app, "client_secret", "strict-secret")},
		{name: "public_client_sending_secret_post_is_invalid_client", body: ctWith(spa, "client_secret", "anything")},
		{name: "public_client_sending_basic_is_invalid_client", body: spa, auth: ctBasic(ctSPAID, "anything"), wantBasic: true},
		{name: "confidential_client_without_secret_is_invalid_client", body: app},
		{name: "basic_and_client_secret_post_at_once_is_invalid_client", body: appPost, auth: ctBasic(ctAppID, ctAppSecret), wantBasic: true},
		{name: "no_client_id_at_all_is_invalid_client", body: ctWithout(app, "client_id")},
		{name: "malformed_basic_header_is_invalid_client", body: app, auth: http.Header{"Authorization": {"Basic !!!not-base64"}}, wantBasic: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := c.postForm(t, "/par", tc.body.Encode(), tc.auth)
			if tc.ok {
				if r.Status != http.StatusCreated {
					t.Fatalf("want 201, got %s", r)
				}
				if h := r.Header.Get("WWW-Authenticate"); h != "" {
					t.Errorf("unexpected WWW-Authenticate %q on success", h)
				}
				return
			}
			ctWantJSONError(t, r, http.StatusUnauthorized, "invalid_client")
			h := r.Header.Get("WWW-Authenticate")
			if tc.wantBasic && !strings.HasPrefix(h, "Basic") {
				t.Errorf("Basic was tried: want WWW-Authenticate: Basic, got %q", h)
			}
			if !tc.wantBasic && h != "" {
				t.Errorf("Basic was not tried: want no WWW-Authenticate, got %q", h)
			}
		})
	}
	if n := up.count(); n != 0 {
		t.Errorf("upstream got %d requests from PAR", n)
	}
}

// ---------------------------------------------------------------------------
// 3. Validation of the pushed request

func TestCaddyPARRejectsInvalidAuthorizationRequests(t *testing.T) {
	up := ctNewUpstream(t, nil)
	c := ctStart(t, up, "", ctBlock())
	app, spa := ctAppForm(), ctSPAForm()
	appAuth := ctBasic(ctAppID, ctAppSecret)

	repeated := ctWith(app)
	repeated.Add("scope", "email")

	for _, tc := range []struct {
		name string
		body url.Values
		auth http.Header
		code string
	}{
		{"request_uri_in_push", ctWith(app, "request_uri", ctURNPrefix+strings.Repeat("A", 43)), appAuth, "invalid_request"},
		{"repeated_parameter", repeated, appAuth, "invalid_request"},
		{"response_type_missing", ctWithout(app, "response_type"), appAuth, "invalid_request"},
		{"response_type_token", ctWith(app, "response_type", "token"), appAuth, "unsupported_response_type"},
		{"response_type_code_id_token", ctWith(app, "response_type", "code id_token"), appAuth, "unsupported_response_type"},
		{"redirect_uri_missing", ctWithout(app, "redirect_uri"), appAuth, "invalid_request"},
		{"redirect_uri_unregistered", ctWith(app, "redirect_uri", "https://evil.example.test/cb"), appAuth, "invalid_request"},
		{"redirect_uri_registered_prefix_only", ctWith(app, "redirect_uri", ctAppRedirect+"/more"), appAuth, "invalid_request"},
		{"redirect_uri_registered_plus_query", ctWith(app, "redirect_uri", ctAppRedirect+"?x=1"), appAuth, "invalid_request"},
		{"scope_outside_allowed_scopes", ctWith(app, "scope", "openid admin"), appAuth, "invalid_scope"},
		{"public_client_without_code_challenge", ctWithout(spa, "code_challenge", "code_challenge_method"), nil, "invalid_request"},
		{"public_client_with_plain", ctWith(spa, "code_challenge_method", "plain", "code_challenge", strings.Repeat("p", 43)), nil, "invalid_request"},
		{"public_client_challenge_without_method", ctWithout(spa, "code_challenge_method"), nil, "invalid_request"},
		{"public_client_method_without_challenge", ctWithout(spa, "code_challenge"), nil, "invalid_request"},
		{"confidential_client_method_without_challenge", ctWithout(app, "code_challenge"), appAuth, "invalid_request"},
		{"confidential_client_plain", ctWith(app, "code_challenge_method", "plain"), appAuth, "invalid_request"},
		{"malformed_S256_challenge", ctWith(app, "code_challenge", "too-short"), appAuth, "invalid_request"},
		{"malformed_scope", ctWith(app, "scope", `openid "profile"`), appAuth, "invalid_scope"},
		{"client_id_missing_in_body_with_basic", ctWithout(app, "client_id"), appAuth, "invalid_request"},
		{"client_id_in_body_differs_from_basic", ctWith(app, "client_id", ctSPAID), appAuth, "invalid_request"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := c.postForm(t, "/par", tc.body.Encode(), tc.auth)
			ctWantJSONError(t, r, http.StatusBadRequest, tc.code)
		})
	}
	if n := up.count(); n != 0 {
		t.Errorf("upstream got %d requests from PAR", n)
	}
}

// ---------------------------------------------------------------------------
// 4. Successful push

func TestCaddyPARSuccessResponseIsRFC9126(t *testing.T) {
	up := ctNewUpstream(t, nil)
	c := ctStart(t, up, "", ctBlock())

	seen := map[string]bool{}
	for i := range 2 {
		r := c.pushApp(t, ctAppForm())
		if r.Status != http.StatusCreated {
			t.Fatalf("push %d: want 201, got %s", i, r)
		}
		if ct := r.Header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("Content-Type = %q, want application/json", ct)
		}
		if cc := r.Header.Get("Cache-Control"); cc != "no-store" {
			t.Errorf("Cache-Control = %q, want no-store", cc)
		}
		var m map[string]json.RawMessage
		if err := json.Unmarshal(r.Body, &m); err != nil {
			t.Fatalf("body %q: %v", r.Body, err)
		}
		if len(m) != 2 || m["request_uri"] == nil || m["expires_in"] == nil {
			t.Fatalf("body must have exactly request_uri and expires_in, got %s", r.Body)
		}
		var uri string
		var exp json.Number
		if err := json.Unmarshal(m["request_uri"], &uri); err != nil {
			t.Fatalf("request_uri is not a string: %s", m["request_uri"])
		}
		if err := json.Unmarshal(m["expires_in"], &exp); err != nil || exp.String() != "90" {
			t.Errorf("expires_in = %s, want 90 (request_uri_lifetime 90s)", m["expires_in"])
		}
		ref, ok := strings.CutPrefix(uri, ctURNPrefix)
		if !ok {
			t.Fatalf("request_uri %q lacks %s", uri, ctURNPrefix)
		}
		if len(ref) < 43 || strings.Trim(ref, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") != "" {
			t.Errorf("reference %q: want >= 43 base64url characters", ref)
		}
		if seen[ref] {
			t.Errorf("two pushes returned the same reference %q", ref)
		}
		seen[ref] = true
	}
	if n := up.count(); n != 0 {
		t.Errorf("upstream got %d requests from PAR", n)
	}
}

// ---------------------------------------------------------------------------
// 5/7. Redemption

func TestCaddyRedeemForwardsOnlyThePushedParameters(t *testing.T) {
	up := ctNewUpstream(t, nil)
	c := ctStart(t, up, "", ctBlock())

	pushed := ctWith(ctAppForm(),
		"state", "a b&c=d+é/?#",
		"login_hint", "user@example.test",
		"claims", `{"id_token":{"acr":{"essential":true}}}`,
		"prompt", "", // empty: treated as omitted (RFC 6749 §3.1)
	)
	uri := c.mustPush(t, ctWith(pushed, "client_secret", ctAppSecret), nil)

	before := up.count()
	r := c.get(t, ctRedeemQuery(ctAppID, uri, "scope", "evil", "foo", "bar", "redirect_uri", "https://evil.example.test/"), nil)
	if r.Status != http.StatusOK || string(r.Body) != ctUpstreamOK {
		t.Fatalf("redeem: want the upstream's page, got %s", r)
	}
	if up.count() != before+1 {
		t.Fatalf("upstream got %d requests, want 1", up.count()-before)
	}
	got := up.last(t)
	if got.Method != http.MethodGet || got.Path != "/authorize" || len(got.Body) != 0 {
		t.Errorf("upstream got %s %s with body %q, want GET /authorize without body", got.Method, got.Path, got.Body)
	}
	q, err := url.ParseQuery(got.RawQuery)
	if err != nil {
		t.Fatal(err)
	}
	want := ctWithout(pushed, "prompt")
	if !reflect.DeepEqual(q, want) {
		t.Errorf("upstream query\n got %v\nwant %v", q, want)
	}
	if n := len(q["client_id"]); n != 1 {
		t.Errorf("client_id appears %d times upstream", n)
	}
	for _, bad := range []string{"evil", "foo", "bar", "request_uri", "client_secret", url.QueryEscape(ctAppSecret)} {
		if strings.Contains(got.RawQuery, bad) {
			t.Errorf("upstream query %q contains %q", got.RawQuery, bad)
		}
	}

	t.Run("second_use_is_invalid_request_uri_and_not_forwarded", func(t *testing.T) {
		before := up.count()
		r := c.get(t, ctRedeemQuery(ctAppID, uri), nil)
		ctWantHTMLError(t, r, http.StatusBadRequest, "invalid_request_uri")
		ctWantUpstreamUntouched(t, up, before)
	})
	t.Run("json_error_when_accept_is_application_json", func(t *testing.T) {
		before := up.count()
		r := c.get(t, ctRedeemQuery(ctAppID, uri), http.Header{"Accept": {"application/json"}})
		ctWantJSONError(t, r, http.StatusBadRequest, "invalid_request_uri")
		ctWantUpstreamUntouched(t, up, before)
	})
	t.Run("unknown_reference_is_invalid_request_uri", func(t *testing.T) {
		before := up.count()
		r := c.get(t, ctRedeemQuery(ctAppID, ctURNPrefix+strings.Repeat("A", 43)), nil)
		ctWantHTMLError(t, r, http.StatusBadRequest, "invalid_request_uri")
		ctWantUpstreamUntouched(t, up, before)
	})
}

func TestCaddyRedeemClientMismatchDoesNotBurnTheRequestURI(t *testing.T) {
	up := ctNewUpstream(t, nil)
	c := ctStart(t, up, "", ctBlock())
	uri := c.mustPush(t, ctAppForm(), ctBasic(ctAppID, ctAppSecret))

	before := up.count()
	for _, tc := range []struct{ name, path string }{
		{"missing_client_id", ctRedeemQuery("", uri)},
		{"other_client", ctRedeemQuery(ctSPAID, uri)},
		{"unknown_client", ctRedeemQuery("nobody", uri)},
		{"client_id_twice", ctRedeemQuery(ctAppID, uri, "client_id", ctAppID)},
		{"request_uri_twice", ctRedeemQuery(ctAppID, uri, "request_uri", uri)},
	} {
		t.Run(tc.name+"_is_invalid_request_uri", func(t *testing.T) {
			r := c.get(t, tc.path, nil)
			ctWantHTMLError(t, r, http.StatusBadRequest, "invalid_request_uri")
		})
	}
	ctWantUpstreamUntouched(t, up, before)

	r := c.get(t, ctRedeemQuery(ctAppID, uri), nil)
	if r.Status != http.StatusOK || string(r.Body) != ctUpstreamOK {
		t.Fatalf("correct redemption after mismatches: want upstream page, got %s", r)
	}
}

func TestCaddyRedeemByPOSTFormForwardsStoredParamsAsGET(t *testing.T) {
	up := ctNewUpstream(t, nil)
	c := ctStart(t, up, "", ctBlock())
	pushed := ctAppForm()
	uri := c.mustPush(t, pushed, ctBasic(ctAppID, ctAppSecret))

	form := url.Values{"client_id": {ctAppID}, "request_uri": {uri}, "scope": {"evil"}}
	r := c.postForm(t, "/authorize?foo=bar", form.Encode(), nil)
	if r.Status != http.StatusOK || string(r.Body) != ctUpstreamOK {
		t.Fatalf("POST redemption: want upstream page, got %s", r)
	}
	got := up.last(t)
	if got.Method != http.MethodGet || len(got.Body) != 0 || got.Header.Get("Content-Type") != "" {
		t.Errorf("upstream got %s, body %q, Content-Type %q; want a bodyless GET", got.Method, got.Body, got.Header.Get("Content-Type"))
	}
	q, _ := url.ParseQuery(got.RawQuery)
	if !reflect.DeepEqual(q, pushed) {
		t.Errorf("upstream query\n got %v\nwant %v", q, pushed)
	}
}

func TestCaddyRedeemWithForwardMethodPOSTSendsFormBodyUpstream(t *testing.T) {
	up := ctNewUpstream(t, nil)
	c := ctStart(t, up, "", ctBlock("forward_method post"))
	pushed := ctAppForm()

	for _, how := range []string{"GET", "POST"} {
		t.Run("browser_"+how, func(t *testing.T) {
			uri := c.mustPush(t, pushed, ctBasic(ctAppID, ctAppSecret))
			var r ctResp
			if how == "GET" {
				r = c.get(t, ctRedeemQuery(ctAppID, uri, "foo", "bar"), nil)
			} else {
				r = c.postForm(t, "/authorize", url.Values{"client_id": {ctAppID}, "request_uri": {uri}, "foo": {"bar"}}.Encode(), nil)
			}
			if r.Status != http.StatusOK || string(r.Body) != ctUpstreamOK {
				t.Fatalf("redeem: want upstream page, got %s", r)
			}
			got := up.last(t)
			if got.Method != http.MethodPost || got.Path != "/authorize" {
				t.Errorf("upstream got %s %s, want POST /authorize", got.Method, got.Path)
			}
			if got.RawQuery != "" {
				t.Errorf("upstream query = %q, want empty", got.RawQuery)
			}
			if ct := got.Header.Get("Content-Type"); ct != "application/x-www-form-urlencoded" {
				t.Errorf("upstream Content-Type = %q", ct)
			}
			body, err := url.ParseQuery(string(got.Body))
			if err != nil || !reflect.DeepEqual(body, pushed) {
				t.Errorf("upstream form body\n got %v (%v)\nwant %v", body, err, pushed)
			}
		})
	}
}

// Some IdPs (Dex) answer a redeemed request with a same-origin redirect
// that repeats the query: the gateway follows it server-side so that pushed
// values never reach the browser, and carries the upstream's cookies along.
func TestCaddyRedeemFollowsUpstreamRedirectsThatRepeatPushedValues(t *testing.T) {
	var up *ctUpstream
	up = ctNewUpstream(t, map[string]http.HandlerFunc{
		"/authorize": func(w http.ResponseWriter, r *http.Request) {
			http.SetCookie(w, &http.Cookie{Name: "upstream_session", Value: "abc", Path: "/"})
			w.Header().Set("Location", "/authorize/local?"+r.URL.RawQuery)
			w.WriteHeader(http.StatusFound)
		},
		"/authorize/local": func(w http.ResponseWriter, r *http.Request) {
			if ck, err := r.Cookie("upstream_session"); err != nil || ck.Value != "abc" {
				http.Error(w, "no session cookie", http.StatusBadRequest)
				return
			}
			_, _ = io.WriteString(w, "LOCAL-LOGIN")
		},
		"/cb-redirect": func(w http.ResponseWriter, r *http.Request) {},
	})
	c := ctStart(t, up, "", ctBlock())
	pushed := ctWith(ctAppForm(), "nonce", "NONCE-MUST-NOT-REACH-BROWSER")
	uri := c.mustPush(t, pushed, ctBasic(ctAppID, ctAppSecret))
	before := up.count()
	r := c.get(t, ctRedeemQuery(ctAppID, uri), nil)
	if r.Status != http.StatusOK || string(r.Body) != "LOCAL-LOGIN" {
		t.Fatalf("want the page behind the upstream's redirect, got %s", r)
	}
	if !strings.Contains(strings.Join(r.Header.Values("Set-Cookie"), "\n"), "upstream_session=abc") {
		t.Errorf("the upstream's cookie did not reach the browser: %v", r.Header.Values("Set-Cookie"))
	}
	if strings.Contains(r.Header.Get("Location"), "NONCE-MUST-NOT-REACH-BROWSER") {
		t.Errorf("pushed value in Location: %s", r.Header.Get("Location"))
	}
	reqs := up.requests()[before:]
	if len(reqs) != 2 || reqs[0].Path != "/authorize" || reqs[1].Path != "/authorize/local" {
		t.Fatalf("upstream requests: %+v", reqs)
	}
	if q, _ := url.ParseQuery(reqs[1].RawQuery); !reflect.DeepEqual(q, pushed) {
		t.Errorf("followed request query = %v, want %v", q, pushed)
	}
}

func TestCaddyRedeemPassesAuthorizationResponseRedirectToTheBrowser(t *testing.T) {
	up := ctNewUpstream(t, map[string]http.HandlerFunc{
		"/authorize": func(w http.ResponseWriter, r *http.Request) {
			q := r.URL.Query()
			http.Redirect(w, r, q.Get("redirect_uri")+"?code=CODE123&state="+url.QueryEscape(q.Get("state")), http.StatusFound)
		},
	})
	c := ctStart(t, up, "", ctBlock())
	pushed := ctAppForm()
	uri := c.mustPush(t, pushed, ctBasic(ctAppID, ctAppSecret))
	before := up.count()
	r := c.get(t, ctRedeemQuery(ctAppID, uri), nil)
	if r.Status != http.StatusFound {
		t.Fatalf("want the upstream's 302, got %s", r)
	}
	want := ctAppRedirect + "?code=CODE123&state=" + url.QueryEscape(pushed.Get("state"))
	if loc := r.Header.Get("Location"); loc != want {
		t.Errorf("Location = %q, want %q", loc, want)
	}
	if n := up.count() - before; n != 1 {
		t.Errorf("upstream got %d requests, want 1", n)
	}
}

func TestCaddyRedeemAfterLifetimeIsInvalidRequestURI(t *testing.T) {
	up := ctNewUpstream(t, nil)
	block := strings.Replace(ctBlock(), "request_uri_lifetime 90s", "request_uri_lifetime 5s", 1)
	c := ctStart(t, up, "", block)
	r := c.pushApp(t, ctAppForm())
	if r.Status != http.StatusCreated || !bytes.Contains(r.Body, []byte(`"expires_in":5`)) {
		t.Fatalf("push: want 201 with expires_in 5, got %s", r)
	}
	var body struct {
		RequestURI string `json:"request_uri"`
	}
	_ = json.Unmarshal(r.Body, &body)

	time.Sleep(6 * time.Second)
	before := up.count()
	r = c.get(t, ctRedeemQuery(ctAppID, body.RequestURI), nil)
	ctWantHTMLError(t, r, http.StatusBadRequest, "invalid_request_uri")
	ctWantUpstreamUntouched(t, up, before)
}

func TestCaddyConcurrentRedemptionsHaveExactlyOneWinner(t *testing.T) {
	up := ctNewUpstream(t, nil)
	c := ctStart(t, up, "", ctBlock())
	// Warm up enough keep-alive connections that the racers start together.
	var warm sync.WaitGroup
	for range 32 {
		warm.Go(func() {
			if resp, err := c.client.Get(c.base + "/warm-up"); err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		})
	}
	warm.Wait()
	for round := range 8 {
		t.Run(fmt.Sprintf("round_%d", round), func(t *testing.T) {
			ctRaceRedeem(t, c, up)
		})
	}
}

func ctRaceRedeem(t *testing.T, c *ctCaddy, up *ctUpstream) {
	t.Helper()
	uri := c.mustPush(t, ctAppForm(), ctBasic(ctAppID, ctAppSecret))
	before := up.count()

	const n = 32
	statuses := make([]int, n)
	errs := make([]error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			resp, err := c.client.Get(c.base + ctRedeemQuery(ctAppID, uri))
			if err != nil {
				errs[i] = err
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			statuses[i] = resp.StatusCode
		})
	}
	close(start)
	wg.Wait()

	ok, rejected := 0, 0
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("request %d: %v", i, errs[i])
		}
		switch statuses[i] {
		case http.StatusOK:
			ok++
		case http.StatusBadRequest:
			rejected++
		default:
			t.Errorf("request %d: unexpected status %d", i, statuses[i])
		}
	}
	if ok != 1 || rejected != n-1 {
		t.Errorf("got %d successes and %d rejections, want 1 and %d", ok, rejected, n-1)
	}
	if got := up.count() - before; got != 1 {
		t.Errorf("upstream received %d authorization requests, want exactly 1", got)
	}
}

// ---------------------------------------------------------------------------
// 8/9. Requests without a pushed request_uri

func TestCaddyRequirePARGloballyRejectsUnpushedRequests(t *testing.T) {
	up := ctNewUpstream(t, nil)
	c := ctStart(t, up, "", ctBlock("require_par"))
	before := up.count()

	plain := url.Values{
		"response_type": {"code"}, "client_id": {ctAppID}, "redirect_uri": {ctAppRedirect},
		"scope": {"openid"}, "state": {"ORIGINAL-STATE"},
	}
	redirectCases := []struct {
		name  string
		query url.Values
	}{
		{"plain_request", plain},
		{"https_request_uri_JAR_by_reference", ctWith(plain, "request_uri", "https://app.example.test/req.jwt")},
		{"request_object_by_value", ctWith(plain, "request", "eyJhbGciOiJub25lIn0.eyJzY29wZSI6Im9wZW5pZCJ9.")},
	}
	for _, tc := range redirectCases {
		t.Run(tc.name+"_redirects_error_to_registered_redirect_uri", func(t *testing.T) {
			r := c.get(t, "/authorize?"+tc.query.Encode(), nil)
			if r.Status != http.StatusSeeOther {
				t.Fatalf("want 303, got %s", r)
			}
			loc, err := url.Parse(r.Header.Get("Location"))
			if err != nil {
				t.Fatal(err)
			}
			if base := loc.Scheme + "://" + loc.Host + loc.Path; base != ctAppRedirect {
				t.Errorf("redirected to %q, want %q", base, ctAppRedirect)
			}
			q := loc.Query()
			if q.Get("error") != "invalid_request" || q.Get("error_description") == "" || q.Get("state") != "ORIGINAL-STATE" {
				t.Errorf("error response query = %v", q)
			}
			if q.Has("code") {
				t.Errorf("error response carries a code: %v", q)
			}
		})
	}

	for _, tc := range []struct {
		name  string
		query url.Values
	}{
		{"unregistered_redirect_uri", ctWith(plain, "redirect_uri", "https://evil.example.test/cb")},
		{"missing_redirect_uri", ctWithout(plain, "redirect_uri")},
		{"unknown_client", ctWith(plain, "client_id", "nobody")},
		{"https_request_uri_unregistered_redirect", ctWith(plain, "redirect_uri", "https://evil.example.test/cb", "request_uri", "https://evil.example.test/req.jwt")},
		{"request_object_without_redirect_uri", ctWithout(ctWith(plain, "request", "eyJhbGciOiJub25lIn0.e30."), "redirect_uri")},
	} {
		t.Run(tc.name+"_shows_400_page_without_redirect", func(t *testing.T) {
			r := c.get(t, "/authorize?"+tc.query.Encode(), nil)
			ctWantHTMLError(t, r, http.StatusBadRequest, "invalid_request")
		})
	}
	ctWantUpstreamUntouched(t, up, before)

	t.Run("pushed_requests_still_work", func(t *testing.T) {
		uri := c.mustPush(t, ctAppForm(), ctBasic(ctAppID, ctAppSecret))
		r := c.get(t, ctRedeemQuery(ctAppID, uri), nil)
		if r.Status != http.StatusOK {
			t.Fatalf("want upstream page, got %s", r)
		}
	})
}

func TestCaddyPerClientRequirePARLeavesOtherClientsAlone(t *testing.T) {
	up := ctNewUpstream(t, nil)
	c := ctStart(t, up, "", ctBlock())

	t.Run("client_with_require_par_is_rejected", func(t *testing.T) {
		before := up.count()
		q := url.Values{"response_type": {"code"}, "client_id": {ctStrictID}, "redirect_uri": {ctStrictRedir}, "state": {"S1"}}
		r := c.get(t, "/authorize?"+q.Encode(), nil)
		if r.Status != http.StatusSeeOther {
			t.Fatalf("want 303, got %s", r)
		}
		loc, _ := url.Parse(r.Header.Get("Location"))
		if !strings.HasPrefix(loc.String(), ctStrictRedir+"?") || loc.Query().Get("error") != "invalid_request" || loc.Query().Get("state") != "S1" {
			t.Errorf("Location = %q", loc)
		}
		ctWantUpstreamUntouched(t, up, before)
	})

	// Raw queries with odd but legal encodings must reach the upstream
	// byte for byte.
	for _, raw := range []string{
		"response_type=code&client_id=" + ctAppID + "&redirect_uri=https%3A%2F%2Fapp.example.test%2Fcb&scope=openid+profile&state=x%20y+z&foo=bar",
		"client_id=" + ctSPAID + "&response_type=code&redirect_uri=" + url.QueryEscape(ctSPARedirect) + "&state=a&state=b&x=%E2%9C%93",
		"client_id=not-registered&response_type=code&redirect_uri=https://anything.example.test/cb",
		"response_type=code&client_id=" + ctAppID + "&request_uri=https%3A%2F%2Fapp.example.test%2Freq.jwt",
		"response_type=code&client_id=" + ctAppID + "&request=eyJhbGciOiJub25lIn0.e30.",
	} {
		t.Run("passes_through_unchanged:"+raw, func(t *testing.T) {
			before := up.count()
			r := c.get(t, "/authorize?"+raw, nil)
			if r.Status != http.StatusOK || string(r.Body) != ctUpstreamOK {
				t.Fatalf("want upstream page, got %s", r)
			}
			if up.count() != before+1 {
				t.Fatalf("upstream got %d requests", up.count()-before)
			}
			if got := up.last(t); got.Method != http.MethodGet || got.Path != "/authorize" || got.RawQuery != raw {
				t.Errorf("upstream got %s %s?%s\nwant GET /authorize?%s", got.Method, got.Path, got.RawQuery, raw)
			}
		})
	}

	t.Run("POSTed_authorization_request_passes_through_with_body_unchanged", func(t *testing.T) {
		body := "response_type=code&client_id=" + ctAppID + "&redirect_uri=" + url.QueryEscape(ctAppRedirect) + "&state=p+q%21"
		r := c.postForm(t, "/authorize?k=v", body, nil)
		if r.Status != http.StatusOK {
			t.Fatalf("want upstream page, got %s", r)
		}
		got := up.last(t)
		if got.Method != http.MethodPost || string(got.Body) != body || got.RawQuery != "k=v" {
			t.Errorf("upstream got %s ?%s body %q", got.Method, got.RawQuery, got.Body)
		}
	})

	t.Run("paths_under_the_authorization_endpoint_are_not_touched", func(t *testing.T) {
		before := up.count()
		r := c.get(t, "/authorize/callback?client_id="+ctStrictID+"&request_uri="+url.QueryEscape(ctURNPrefix+"x"), nil)
		if r.Status != http.StatusNotFound || up.count() != before+1 {
			t.Errorf("want the upstream's 404, got %s", r)
		}
	})
}

// RFC 9207: the gateway's own error redirects carry iss when the issuer is
// configured, or when the upstream's discovery promises iss (learned from a
// discovery fetch through the gateway, or probed by the gateway itself).
func TestCaddyErrorRedirectCarriesIssuer(t *testing.T) {
	const iss = "https://idp.example.test/realms/demo"
	discovery := func(supported bool) map[string]http.HandlerFunc {
		doc := `{"issuer":"` + iss + `","authorization_endpoint":"https://idp.example.test/authorize"` +
			`,"authorization_response_iss_parameter_supported":` + strconv.FormatBool(supported) + `}`
		return map[string]http.HandlerFunc{"/.well-known/openid-configuration": ctJSONHandler(doc)}
	}
	plain := "/authorize?" + url.Values{
		"response_type": {"code"}, "client_id": {ctAppID}, "redirect_uri": {ctAppRedirect}, "state": {"S"},
	}.Encode()
	for _, tc := range []struct {
		name           string
		routes         map[string]http.HandlerFunc
		extra          string
		fetchDiscovery bool
		wantIss        string
	}{
		{"configured_issuer", nil, "issuer " + iss, false, iss},
		{"learned_from_discovery_fetched_through_the_gateway", discovery(true), "", true, iss},
		{"probed_from_upstream_discovery", discovery(true), "", false, iss},
		{"upstream_does_not_promise_iss", discovery(false), "", true, ""},
		{"no_discovery_at_all", nil, "", false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := ctNewUpstream(t, tc.routes)
			c := ctStart(t, up, "", ctBlock("require_par", tc.extra))
			if tc.fetchDiscovery {
				if r := c.get(t, "/.well-known/openid-configuration", nil); r.Status != http.StatusOK {
					t.Fatalf("discovery: %s", r)
				}
			}
			before := up.count()
			r := c.get(t, plain, nil)
			if r.Status != http.StatusSeeOther {
				t.Fatalf("want 303, got %s", r)
			}
			loc, err := url.Parse(r.Header.Get("Location"))
			if err != nil {
				t.Fatal(err)
			}
			q := loc.Query()
			if q.Get("error") != "invalid_request" || q.Get("state") != "S" {
				t.Errorf("Location = %s", loc)
			}
			if got, has := q.Get("iss"), q.Has("iss"); got != tc.wantIss || has != (tc.wantIss != "") {
				t.Errorf("iss = %q (present %v), want %q", got, has, tc.wantIss)
			}
			ctWantUpstreamUntouched(t, up, before)
		})
	}
}

// RFC 6749 §3.1: parameters MUST NOT be repeated. An upstream that takes
// the last client_id (PHP, some frameworks) would otherwise receive the
// require_par client's request without PAR.
func TestCaddyPerClientRequirePARCannotBeBypassedWithRepeatedClientID(t *testing.T) {
	up := ctNewUpstream(t, nil)
	c := ctStart(t, up, "", ctBlock())
	for _, raw := range []string{
		"response_type=code&client_id=" + ctAppID + "&client_id=" + ctStrictID + "&redirect_uri=" + url.QueryEscape(ctStrictRedir),
		"response_type=code&client_id=" + ctStrictID + "&client_id=" + ctAppID + "&redirect_uri=" + url.QueryEscape(ctStrictRedir),
	} {
		t.Run(raw, func(t *testing.T) {
			before := up.count()
			r := c.get(t, "/authorize?"+raw, nil)
			if r.Status < 300 || r.Status >= 500 {
				t.Errorf("want a rejection, got %s", r)
			}
			ctWantUpstreamUntouched(t, up, before)
		})
	}
}

// ---------------------------------------------------------------------------
// 10. Discovery metadata

const ctDiscoveryDoc = `{
  "issuer": "https://idp.example.test:8443/realms/demo",
  "authorization_endpoint": "https://idp.example.test:8443/realms/demo/protocol/openid-connect/auth",
  "token_endpoint": "https://idp.example.test:8443/realms/demo/protocol/openid-connect/token",
  "response_types_supported": ["code", "none", "code id_token"],
  "code_challenge_methods_supported": ["plain", "S256"],
  "mtls_endpoint_aliases": {"token_endpoint": "https://mtls.example.test/token", "n": [1, 2.5, null]},
  "claims_parameter_supported": true,
  "x_big_number": 12345678901234567890,
  "x_text": "é <&> \u2028 \"q\""
}`

const ctKeycloakDoc = `{"issuer":"https://idp.example.test:8443/realms/demo","authorization_endpoint":"https://idp.example.test:8443/realms/demo/protocol/openid-connect/auth","pushed_authorization_request_endpoint":"https://idp.example.test:8443/realms/demo/protocol/openid-connect/ext/par/request","require_pushed_authorization_requests":false,"scopes_supported":["openid"]}`

// ctJSONHandler serves doc with an ETag and honours If-None-Match, as real
// IdPs do.
func ctJSONHandler(doc string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("ETag", `"upstream-etag"`)
		if r.Header.Get("If-None-Match") == `"upstream-etag"` {
			w.WriteHeader(http.StatusNotModified)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, doc)
	}
}

func ctDecode(t *testing.T, b []byte) map[string]any {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		t.Fatalf("not a JSON object: %v: %q", err, b)
	}
	return m
}

func TestCaddyDiscoveryAdvertisesPAR(t *testing.T) {
	gz := func(w http.ResponseWriter, r *http.Request) {
		// Compressed whatever the request's Accept-Encoding says.
		var b bytes.Buffer
		zw := gzip.NewWriter(&b)
		_, _ = io.WriteString(zw, ctDiscoveryDoc)
		_ = zw.Close()
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Encoding", "gzip")
		w.Header().Set("Content-Length", strconv.Itoa(b.Len()))
		_, _ = w.Write(b.Bytes())
	}
	chunked := func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		f := w.(http.Flusher)
		for i := 0; i < len(ctDiscoveryDoc); i += 97 {
			_, _ = io.WriteString(w, ctDiscoveryDoc[i:min(i+97, len(ctDiscoveryDoc))])
			f.Flush()
		}
	}
	routes := map[string]http.HandlerFunc{
		"/realms/demo/.well-known/openid-configuration":       ctJSONHandler(ctDiscoveryDoc),
		"/.well-known/oauth-authorization-server/realms/demo": ctJSONHandler(ctDiscoveryDoc),
		"/realms/demo/.well-known/oauth-authorization-server": ctJSONHandler(ctDiscoveryDoc),
		"/keycloak/.well-known/openid-configuration":          ctJSONHandler(ctKeycloakDoc),
		"/gzip/.well-known/openid-configuration":              gz,
		"/chunked/.well-known/openid-configuration":           chunked,
		"/html/.well-known/openid-configuration": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/html")
			_, _ = io.WriteString(w, "<p>not json</p>")
		},
		"/badjson/.well-known/openid-configuration": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `{"issuer": oops`)
		},
		"/array/.well-known/openid-configuration":          ctJSONHandler(`["not","an","object"]`),
		"/relative-authz/.well-known/openid-configuration": ctJSONHandler(`{"issuer":"x","authorization_endpoint":"/authorize"}`),
		"/notfound/.well-known/openid-configuration": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(404)
			_, _ = io.WriteString(w, ctKeycloakDoc)
		},
		"/notdiscovery/.well-known/openid-configuration-not-too": ctJSONHandler(ctDiscoveryDoc),
	}
	const parPath = "/realms/demo/protocol/openid-connect/ext/par/request"
	wantPAR := "https://idp.example.test:8443" + parPath

	for _, variant := range []struct {
		name       string
		requirePAR bool
		proxy      string
	}{
		{"require_par_off", false, ""},
		{"require_par_on", true, ""},
		// Without transport compression Caddy's proxy neither asks for
		// gzip nor decodes it: the gateway itself sees the gzip body.
		{"proxy_compression_off", false, "transport http {\n\t\t\tcompression off\n\t\t}"},
	} {
		requirePAR := variant.requirePAR
		t.Run(variant.name, func(t *testing.T) {
			up := ctNewUpstream(t, routes)
			extra := []string{}
			if requirePAR {
				extra = append(extra, "require_par")
			}
			block := strings.Replace(ctBlock(extra...), "par_endpoint /par", "par_endpoint "+parPath, 1)
			c := ctStartProxy(t, up, "", block, variant.proxy)

			check := func(t *testing.T, r ctResp, upstreamDoc string) {
				t.Helper()
				if r.Status != http.StatusOK {
					t.Fatalf("want 200, got %s", r)
				}
				body := r.Body
				if enc := r.Header.Get("Content-Encoding"); enc != "" {
					if enc != "gzip" {
						t.Fatalf("unexpected Content-Encoding %q", enc)
					}
					zr, err := gzip.NewReader(bytes.NewReader(body))
					if err != nil {
						t.Fatalf("Content-Encoding gzip but body is not gzip: %v", err)
					}
					if body, err = io.ReadAll(zr); err != nil {
						t.Fatal(err)
					}
				}
				if r.Header.Get("Content-Length") != strconv.Itoa(len(r.Body)) || r.ContentLength != int64(len(r.Body)) {
					t.Errorf("Content-Length = %q (%d), body is %d bytes", r.Header.Get("Content-Length"), r.ContentLength, len(r.Body))
				}
				got := ctDecode(t, body)
				want := ctDecode(t, []byte(upstreamDoc))
				if got["pushed_authorization_request_endpoint"] != wantPAR {
					t.Errorf("pushed_authorization_request_endpoint = %v, want %s", got["pushed_authorization_request_endpoint"], wantPAR)
				}
				if got["require_pushed_authorization_requests"] != requirePAR {
					t.Errorf("require_pushed_authorization_requests = %v, want %v", got["require_pushed_authorization_requests"], requirePAR)
				}
				if n := bytes.Count(body, []byte(`"pushed_authorization_request_endpoint"`)); n != 1 {
					t.Errorf("pushed_authorization_request_endpoint appears %d times", n)
				}
				delete(got, "pushed_authorization_request_endpoint")
				delete(got, "require_pushed_authorization_requests")
				delete(want, "pushed_authorization_request_endpoint")
				delete(want, "require_pushed_authorization_requests")
				if !reflect.DeepEqual(got, want) {
					t.Errorf("other members changed\n got %v\nwant %v", got, want)
				}
			}

			for _, p := range []string{
				"/realms/demo/.well-known/openid-configuration",
				"/.well-known/oauth-authorization-server/realms/demo",
				"/realms/demo/.well-known/oauth-authorization-server",
			} {
				t.Run("rewrites"+p, func(t *testing.T) {
					r := c.get(t, p, nil)
					check(t, r, ctDiscoveryDoc)
					if ct := r.Header.Get("Content-Type"); ct != "application/json" {
						t.Errorf("Content-Type = %q", ct)
					}
				})
			}
			t.Run("replaces_the_upstream's_own_PAR_endpoint", func(t *testing.T) {
				check(t, c.get(t, "/keycloak/.well-known/openid-configuration", nil), ctKeycloakDoc)
			})
			t.Run("gzip_upstream_client_accepting_gzip", func(t *testing.T) {
				check(t, c.get(t, "/gzip/.well-known/openid-configuration", http.Header{"Accept-Encoding": {"gzip"}}), ctDiscoveryDoc)
				if variant.proxy != "" {
					if ae := up.last(t).Header.Get("Accept-Encoding"); ae != "" {
						t.Errorf("the client's Accept-Encoding reached the upstream: %q", ae)
					}
				}
			})
			t.Run("gzip_upstream_client_not_accepting_gzip_gets_identity", func(t *testing.T) {
				r := c.get(t, "/gzip/.well-known/openid-configuration", nil)
				if enc := r.Header.Get("Content-Encoding"); enc != "" {
					t.Errorf("Content-Encoding = %q for a client that did not accept it", enc)
				}
				check(t, r, ctDiscoveryDoc)
			})
			t.Run("chunked_upstream", func(t *testing.T) {
				check(t, c.get(t, "/chunked/.well-known/openid-configuration", nil), ctDiscoveryDoc)
			})
			t.Run("conditional_request_gets_the_rewritten_document", func(t *testing.T) {
				r := c.get(t, "/realms/demo/.well-known/openid-configuration", http.Header{"If-None-Match": {`"upstream-etag"`}})
				check(t, r, ctDiscoveryDoc)
				if r.Header.Get("ETag") == `"upstream-etag"` {
					t.Errorf("the upstream's ETag describes the unrewritten document")
				}
			})

			for _, tc := range []struct {
				path, ct string
				status   int
				body     string
			}{
				{"/html/.well-known/openid-configuration", "text/html", 200, "<p>not json</p>"},
				{"/badjson/.well-known/openid-configuration", "application/json", 200, `{"issuer": oops`},
				{"/array/.well-known/openid-configuration", "application/json", 200, `["not","an","object"]`},
				{"/relative-authz/.well-known/openid-configuration", "application/json", 200, `{"issuer":"x","authorization_endpoint":"/authorize"}`},
				{"/notfound/.well-known/openid-configuration", "application/json", 404, ctKeycloakDoc},
				{"/notdiscovery/.well-known/openid-configuration-not-too", "application/json", 200, ctDiscoveryDoc},
			} {
				t.Run("passes_through_untouched"+tc.path, func(t *testing.T) {
					r := c.get(t, tc.path, nil)
					if r.Status != tc.status || string(r.Body) != tc.body || r.Header.Get("Content-Type") != tc.ct {
						t.Errorf("want %d %s %q, got %s", tc.status, tc.ct, tc.body, r)
					}
				})
			}
		})
	}
}

// RFC 9110 §8.6: a Content-Length in a HEAD response MUST equal the length
// the GET response would have had.
func TestCaddyDiscoveryHEADContentLengthMatchesGET(t *testing.T) {
	up := ctNewUpstream(t, map[string]http.HandlerFunc{
		"/realms/demo/.well-known/openid-configuration": ctJSONHandler(ctDiscoveryDoc),
	})
	c := ctStart(t, up, "", ctBlock())
	get := c.get(t, "/realms/demo/.well-known/openid-configuration", nil)
	head := c.do(t, http.MethodHead, "/realms/demo/.well-known/openid-configuration", nil, nil)
	if head.Status != http.StatusOK || len(head.Body) != 0 {
		t.Fatalf("HEAD: %s", head)
	}
	if cl := head.Header.Get("Content-Length"); cl != "" && cl != get.Header.Get("Content-Length") {
		t.Errorf("HEAD Content-Length = %s, GET's is %s (%d bytes)", cl, get.Header.Get("Content-Length"), len(get.Body))
	}
}

// ---------------------------------------------------------------------------
// 11. Store limit

func TestCaddyFullMemoryStoreRefusesPushesButKeepsIssuedRequestURIs(t *testing.T) {
	up := ctNewUpstream(t, nil)
	// Without a reuse grace a redemption frees its room at once (with one,
	// at the grace's end: TestCaddyReuseGraceHoldsRoomUntilItEnds).
	c := ctStart(t, up, "", ctBlock("reuse_grace off", "store memory {\n\t\t\tmax_size 16KiB\n\t\t}"))
	auth := ctBasic(ctAppID, ctAppSecret)

	var issued []string
	full := false
	for i := 0; i < 500; i++ {
		r := c.postForm(t, "/par", ctAppForm().Encode(), auth)
		if r.Status == http.StatusServiceUnavailable {
			ctWantJSONError(t, r, http.StatusServiceUnavailable, "temporarily_unavailable")
			full = true
			break
		}
		if r.Status != http.StatusCreated {
			t.Fatalf("push %d: %s", i, r)
		}
		var b struct {
			RequestURI string `json:"request_uri"`
		}
		_ = json.Unmarshal(r.Body, &b)
		issued = append(issued, b.RequestURI)
	}
	if !full {
		t.Fatalf("no 503 after %d pushes into a 16KiB store", len(issued))
	}
	if len(issued) < 5 {
		t.Fatalf("only %d pushes fit into 16KiB", len(issued))
	}
	t.Logf("%d pushes fit into the 16KiB store", len(issued))

	// Still full: a second attempt is refused too.
	if r := c.postForm(t, "/par", ctAppForm().Encode(), auth); r.Status != http.StatusServiceUnavailable {
		t.Errorf("push into a full store: want 503, got %s", r)
	}

	// Redeem half: every issued request_uri works.
	half := len(issued) / 2
	for i, uri := range issued[:half] {
		if r := c.get(t, ctRedeemQuery(ctAppID, uri), nil); r.Status != http.StatusOK {
			t.Fatalf("redeeming issued request_uri %d of %d: %s", i, len(issued), r)
		}
	}
	// Freed room takes new pushes again.
	for i := range 3 {
		if r := c.postForm(t, "/par", ctAppForm().Encode(), auth); r.Status != http.StatusCreated {
			t.Fatalf("push %d after redeeming %d: want 201, got %s", i, half, r)
		}
	}
	for i, uri := range issued[half:] {
		if r := c.get(t, ctRedeemQuery(ctAppID, uri), nil); r.Status != http.StatusOK {
			t.Fatalf("redeeming issued request_uri %d of %d: %s", half+i, len(issued), r)
		}
	}
}

// ---------------------------------------------------------------------------
// 12. Config reload

func TestCaddyReloadKeepsRequestURIsWhenStoreSettingsAreUnchanged(t *testing.T) {
	up := ctNewUpstream(t, nil)
	store := "store memory {\n\t\t\tmax_size 1MiB\n\t\t}"
	c := ctStart(t, up, "", ctBlock(store))
	uri := c.mustPush(t, ctAppForm(), ctBasic(ctAppID, ctAppSecret))
	spaURI := c.mustPush(t, ctSPAForm(), nil)

	c.reload(t, ctBlock(store, "client new-client {\n\t\t\tsecret new-secret\n\t\t\tredirect_uris https://new.example.test/cb\n\t\t}"))

	if r := c.get(t, ctRedeemQuery(ctAppID, uri), nil); r.Status != http.StatusOK || string(r.Body) != ctUpstreamOK {
		t.Fatalf("redeeming a request_uri pushed before the reload: %s", r)
	}
	// The new client works after the reload.
	newForm := url.Values{"response_type": {"code"}, "client_id": {"new-client"}, "redirect_uri": {"https://new.example.test/cb"}}
	c.mustPush(t, newForm, ctBasic("new-client", "new-secret"))

	t.Run("request_outside_the_policy_after_reload_cannot_redeem", func(t *testing.T) {
		// RFC 9126 §7.4: pushed with scope "openid profile"; the reload
		// narrows web-app to openid.
		uri := c.mustPush(t, ctWith(ctAppForm(), "scope", "openid profile"), ctBasic(ctAppID, ctAppSecret))
		c.reload(t, strings.Replace(ctBlock(store), "allowed_scopes openid profile email", "allowed_scopes openid", 1))
		before := up.count()
		r := c.get(t, ctRedeemQuery(ctAppID, uri), nil)
		ctWantHTMLError(t, r, http.StatusBadRequest, "invalid_request_uri")
		ctWantUpstreamUntouched(t, up, before)
	})

	t.Run("client_removed_by_reload_cannot_redeem", func(t *testing.T) {
		// RFC 9126 §7.4: the policy is checked again at redemption.
		block := strings.Replace(ctBlock(store), "client "+ctSPAID+" {\n\t\t\tpublic\n\t\t\tredirect_uris "+ctSPARedirect+"\n\t\t}", "", 1)
		if strings.Contains(block, "client "+ctSPAID+" ") {
			t.Fatal("test bug: spa client not removed")
		}
		c.reload(t, block)
		before := up.count()
		r := c.get(t, ctRedeemQuery(ctSPAID, spaURI), nil)
		ctWantHTMLError(t, r, http.StatusBadRequest, "invalid_request_uri")
		ctWantUpstreamUntouched(t, up, before)
	})
}

// The memory store is shared across reloads per max_size: a reload that
// changes max_size starts with a new, empty store, so request_uris pushed
// before it are no longer redeemable. (Observed behaviour, documented.)
func TestCaddyReloadChangingMaxSizeStartsWithAnEmptyStore(t *testing.T) {
	up := ctNewUpstream(t, nil)
	c := ctStart(t, up, "", ctBlock("store memory {\n\t\t\tmax_size 1MiB\n\t\t}"))
	uri := c.mustPush(t, ctAppForm(), ctBasic(ctAppID, ctAppSecret))

	c.reload(t, ctBlock("store memory {\n\t\t\tmax_size 2MiB\n\t\t}"))
	r := c.get(t, ctRedeemQuery(ctAppID, uri), nil)
	ctWantHTMLError(t, r, http.StatusBadRequest, "invalid_request_uri")

	// The new store works.
	uri = c.mustPush(t, ctAppForm(), ctBasic(ctAppID, ctAppSecret))
	if r := c.get(t, ctRedeemQuery(ctAppID, uri), nil); r.Status != http.StatusOK {
		t.Fatalf("redeem in the new store: %s", r)
	}
}

// ---------------------------------------------------------------------------
// 14. Logs

func TestCaddyLogsOutcomesWithoutSecretsOrPushedValues(t *testing.T) {
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	global := fmt.Sprintf("log {\n\t\toutput file %s\n\t\tformat json\n\t\tlevel DEBUG\n\t}", logFile)
	up := ctNewUpstream(t, nil)
	c := ctStart(t, up, global, ctBlock())

	const (
		stateSentinel = "STATE-SENTINEL-123"
		nonceSentinel = "NONCE-SENTINEL-456"
		hintSentinel  = "HINT-SENTINEL-789@example.test"
	)
	form := ctWith(ctAppForm(), "state", stateSentinel, "nonce", nonceSentinel, "login_hint", hintSentinel)

	// issued (client_secret_post) and redeemed
	uri := c.mustPush(t, ctWith(form, "client_secret", ctAppSecret), nil)
	if r := c.get(t, ctRedeemQuery(ctAppID, uri), nil); r.Status != http.StatusOK {
		t.Fatalf("redeem: %s", r)
	}
	// rejected at redemption: reuse
	if r := c.get(t, ctRedeemQuery(ctAppID, uri), nil); r.Status != http.StatusBadRequest {
		t.Fatalf("reuse: %s", r)
	}
	// rejected at PAR: wrong secret (Basic) and invalid request
	if r := c.postForm(t, "/par", form.Encode(), ctBasic(ctAppID, ctAppSecret+"-wrong")); r.Status != http.StatusUnauthorized {
		t.Fatalf("wrong secret: %s", r)
	}
	if r := c.postForm(t, "/par", ctWith(form, "scope", "admin").Encode(), ctBasic(ctAppID, ctAppSecret)); r.Status != http.StatusBadRequest {
		t.Fatalf("bad scope: %s", r)
	}
	// passed through (logged at DEBUG)
	if r := c.get(t, "/authorize?"+ctWith(form, "client_id", ctSPAID, "redirect_uri", ctSPARedirect).Encode(), nil); r.Status != http.StatusOK {
		t.Fatalf("pass-through: %s", r)
	}
	// rejected unpushed request of the per-client require_par client
	if r := c.get(t, "/authorize?"+ctWith(form, "client_id", ctStrictID, "redirect_uri", ctStrictRedir).Encode(), nil); r.Status != http.StatusSeeOther {
		t.Fatalf("require_par client: %s", r)
	}
	ref := strings.TrimPrefix(uri, ctURNPrefix)

	type line struct {
		raw    string
		fields map[string]any
	}
	want := []struct{ outcome, clientID, errCode string }{
		{"issued", ctAppID, ""},
		{"redeemed", ctAppID, ""},
		{"rejected", ctAppID, "invalid_request_uri"},
		{"rejected", ctAppID, "invalid_client"},
		{"rejected", ctAppID, "invalid_scope"},
		{"passed_through", ctSPAID, ""},
		{"rejected", ctStrictID, "invalid_request"},
	}
	var ours []line
	var all []byte
	deadline := time.Now().Add(5 * time.Second)
	for {
		var err error
		all, err = os.ReadFile(logFile)
		if err != nil {
			t.Fatal(err)
		}
		ours = ours[:0]
		for _, l := range strings.Split(string(all), "\n") {
			if l == "" {
				continue
			}
			var m map[string]any
			if err := json.Unmarshal([]byte(l), &m); err != nil {
				t.Fatalf("log line is not JSON: %q", l)
			}
			if l, _ := m["logger"].(string); l == "http.handlers.oauth_par" || l == "http.handlers.oauth_par.audit" {
				ours = append(ours, line{l, m})
			}
		}
		if len(ours) >= len(want) || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}

	for _, w := range want {
		found := false
		for _, l := range ours {
			if l.fields["outcome"] == w.outcome && l.fields["client_id"] == w.clientID && (w.errCode == "" || l.fields["error"] == w.errCode) {
				found = true
				break
			}
		}
		if !found {
			t.Errorf("no oauth_par log line with outcome=%s client_id=%s error=%s", w.outcome, w.clientID, w.errCode)
		}
	}
	for _, l := range ours {
		if _, ok := l.fields["outcome"]; !ok {
			continue // e.g. store warnings
		}
		if l.fields["client_id"] == nil {
			t.Errorf("outcome line without client_id: %s", l.raw)
		}
		if l.fields["outcome"] == "rejected" && l.fields["error"] == nil {
			t.Errorf("rejection line without error: %s", l.raw)
		}
	}
	secrets := []string{
		ctAppSecret, url.QueryEscape(ctAppSecret),
		stateSentinel, nonceSentinel, hintSentinel, url.QueryEscape(hintSentinel),
		ref, ref[:16], // nor a meaningful part of the reference
		ctChallenge("verifier-for-web-app-0123456789-abcdefghijklmnop"),
	}
	for _, l := range ours {
		for _, s := range secrets {
			if strings.Contains(l.raw, s) {
				t.Errorf("oauth_par log line contains %q: %s", s, l.raw)
			}
		}
	}
	// The client secret never appears anywhere in Caddy's logs.
	for _, s := range []string{ctAppSecret, url.QueryEscape(ctAppSecret), base64.StdEncoding.EncodeToString([]byte(url.QueryEscape(ctAppID) + ":" + url.QueryEscape(ctAppSecret)))} {
		if bytes.Contains(all, []byte(s)) {
			t.Errorf("Caddy's log contains the client secret (%q)", s)
		}
	}
}

// ---------------------------------------------------------------------------
// 15. Configuration errors

func TestCaddyConfigErrorsNameTheDirective(t *testing.T) {
	up := ctNewUpstream(t, nil)
	storage := t.TempDir()
	const unset = "CADDY_PAR_TEST_SURELY_UNSET_VAR_7F3A"
	if _, ok := os.LookupEnv(unset); ok {
		t.Fatalf("%s is set", unset)
	}
	base := "authorization_endpoint /authorize\n\t\t"
	okClient := "client c1 {\n\t\t\tsecret s\n\t\t\tredirect_uris https://c1.example.test/cb\n\t\t}\n\t\t"

	for _, tc := range []struct {
		name  string
		block string
		want  []string // substrings of the error
	}{
		{"unknown_subdirective", base + okClient + "frobnicate on", []string{"frobnicate"}},
		{"unknown_client_subdirective", base + "client c1 {\n secret s\n redirect_uris https://c1.example.test/cb\n wibble\n }", []string{"c1", "wibble"}},
		{"lifetime_4s", base + okClient + "request_uri_lifetime 4s", []string{"request_uri_lifetime"}},
		{"lifetime_601s", base + okClient + "request_uri_lifetime 601s", []string{"request_uri_lifetime"}},
		{"lifetime_not_a_duration", base + okClient + "request_uri_lifetime soon", []string{"request_uri_lifetime"}},
		{"public_client_with_secret", base + "client pub {\n public\n secret s\n redirect_uris https://p.example.test/cb\n }", []string{`"pub"`, "public", "secret"}},
		{"confidential_client_without_secret", base + "client conf {\n redirect_uris https://p.example.test/cb\n }", []string{`"conf"`, "secret"}},
		{"client_without_redirect_uris", base + "client c2 {\n secret s\n }", []string{`"c2"`, "redirect_uris"}},
		{"relative_redirect_uri", base + "client c2 {\n secret s\n redirect_uris /cb\n }", []string{`"c2"`, "redirect_uris"}},
		{"duplicate_client", base + okClient + okClient, []string{`"c1"`, "more than once"}},
		{"missing_authorization_endpoint", okClient, []string{"authorization_endpoint"}},
		{"unset_env_secret", base + "client envc {\n secret {env." + unset + "}\n redirect_uris https://e.example.test/cb\n }", []string{`"envc"`, "secret"}},
		{"missing_file_secret", base + "client filec {\n secret {file." + filepath.Join(storage, "does-not-exist") + "}\n redirect_uris https://e.example.test/cb\n }", []string{`"filec"`, "secret"}},
		{"forward_method_put", base + okClient + "forward_method put", []string{"forward_method"}},
		{"max_request_size_tiny", base + okClient + "max_request_size 10", []string{"max_request_size"}},
		{"store_unknown_backend", base + okClient + "store bogus", []string{"store"}},
		{"store_max_size_too_small", base + okClient + "store memory {\n max_size 1KiB\n }", []string{"max_size"}},
		{"par_endpoint_equals_authorization_endpoint", base + okClient + "par_endpoint /authorize", []string{"par_endpoint"}},
		{"unsupported_auth_method", base + "client c3 {\n secret s\n redirect_uris https://c3.example.test/cb\n auth_methods private_key_jwt\n }", []string{`"c3"`, "auth_methods"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctWantLoadError(t, up, storage, tc.block, tc.want...)
		})
	}

	for _, lt := range []string{"5s", "600s", "10m"} {
		t.Run("lifetime_"+lt+"_is_accepted", func(t *testing.T) {
			c := ctStart(t, up, "", strings.Replace(ctBlock(), "request_uri_lifetime 90s", "request_uri_lifetime "+lt, 1))
			d, _ := caddy.ParseDuration(lt)
			r := c.pushApp(t, ctAppForm())
			if r.Status != http.StatusCreated || !bytes.Contains(r.Body, []byte(fmt.Sprintf(`"expires_in":%d`, int(d.Seconds())))) {
				t.Errorf("want 201 with expires_in %d, got %s", int(d.Seconds()), r)
			}
		})
	}
}

func TestCaddySecretPlaceholdersAreExpandedAtLoad(t *testing.T) {
	dir := t.TempDir()
	secretFile := filepath.Join(dir, "secret.txt")
	if err := os.WriteFile(secretFile, []byte("file-secret+%:value\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("CADDY_PAR_TEST_ENV_SECRET", "env-secret+%:value")
	block := `authorization_endpoint /authorize
		client file-client {
			secret {file.` + secretFile + `}
			redirect_uris https://f.example.test/cb
		}
		client env-client {
			secret {env.CADDY_PAR_TEST_ENV_SECRET}
			redirect_uris https://e.example.test/cb
		}`
	up := ctNewUpstream(t, nil)
	c := ctStart(t, up, "", block)
	form := func(id, redirect string) string {
		return url.Values{"response_type": {"code"}, "client_id": {id}, "redirect_uri": {redirect}}.Encode()
	}
	for _, tc := range []struct {
		name, id, redirect, secret string
		status                     int
	}{
		{"file_secret_without_trailing_newline_succeeds", "file-client", "https://f.example.test/cb", "file-secret+%:value", 201},
		{"file_secret_with_trailing_newline_fails", "file-client", "https://f.example.test/cb", "file-secret+%:value\n", 401},
		{"literal_placeholder_fails", "file-client", "https://f.example.test/cb", "{file." + secretFile + "}", 401},
		{"env_secret_succeeds", "env-client", "https://e.example.test/cb", "env-secret+%:value", 201},
		{"env_literal_placeholder_fails", "env-client", "https://e.example.test/cb", "{env.CADDY_PAR_TEST_ENV_SECRET}", 401},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := c.postForm(t, "/par", form(tc.id, tc.redirect), ctBasic(tc.id, tc.secret))
			if r.Status != tc.status {
				t.Fatalf("want %d, got %s", tc.status, r)
			}
		})
	}
}
