package caddymodule_test

// Hostile input at the PAR endpoint and at the authorization endpoint
// (issue 9), against the real Caddy with a recording upstream standing in
// for the IdP, as in caddy_test.go.
//
// Every rejected case must leave the store unchanged. The sites here use
// the counting_test store, which delegates to the memory store and counts
// Put, Take and Claim calls and successes; before each case a canary
// request is pushed (which also proves the counting store is the one in
// use), and after the hostile request the canary must still redeem exactly
// once, forwarding exactly what was pushed. Rejected authorization requests
// must not reach the upstream at all.
//
// Like caddy_test.go, these tests load the process-global Caddy and must
// run serially. Run them with: go test -race -run Hostile ./caddymodule

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"

	"github.com/caddy-par/caddy-par/caddymodule"
)

// ---------------------------------------------------------------------------
// A counting store: the memory store, with every call counted.

func init() {
	caddy.RegisterModule(hsCountingStore{})
}

// hsCounts are the store calls made so far, process-wide (Caddy creates the
// module; the tests run serially and compare snapshots).
type hsCounts struct {
	Puts, PutOK     int
	Takes, TakeOK   int
	Claims, ClaimOK int
}

var hsCounter struct {
	sync.Mutex
	c hsCounts
}

func hsSnap() hsCounts {
	hsCounter.Lock()
	defer hsCounter.Unlock()
	return hsCounter.c
}

func hsCount(f func(c *hsCounts)) {
	hsCounter.Lock()
	f(&hsCounter.c)
	hsCounter.Unlock()
}

// hsCountingStore is http.handlers.oauth_par.stores.counting_test.
type hsCountingStore struct {
	MaxSize int64 `json:"max_size,omitempty"`

	mem *caddymodule.MemoryStore
}

func (hsCountingStore) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.oauth_par.stores.counting_test",
		New: func() caddy.Module { return new(hsCountingStore) },
	}
}

func (s *hsCountingStore) Provision(ctx caddy.Context) error {
	s.mem = &caddymodule.MemoryStore{MaxSize: s.MaxSize}
	return s.mem.Provision(ctx)
}

func (s *hsCountingStore) Cleanup() error {
	if s.mem == nil {
		return nil
	}
	return s.mem.Cleanup()
}

func (s *hsCountingStore) Store() caddymodule.Store { return hsCountingWrap{s.mem.Store()} }

type hsCountingWrap struct{ inner caddymodule.Store }

func (w hsCountingWrap) Put(ctx context.Context, ref string, req caddymodule.PushedRequest) error {
	err := w.inner.Put(ctx, ref, req)
	hsCount(func(c *hsCounts) {
		c.Puts++
		if err == nil {
			c.PutOK++
		}
	})
	return err
}

func (w hsCountingWrap) Take(ctx context.Context, ref string, rd caddymodule.Redemption) (caddymodule.Redeemed, error) {
	req, err := w.inner.Take(ctx, ref, rd)
	hsCount(func(c *hsCounts) {
		c.Takes++
		if err == nil {
			c.TakeOK++
		}
	})
	return req, err
}

func (w hsCountingWrap) Claim(ctx context.Context, key string, expiresAt time.Time) error {
	err := w.inner.Claim(ctx, key, expiresAt)
	hsCount(func(c *hsCounts) {
		c.Claims++
		if err == nil {
			c.ClaimOK++
		}
	})
	return err
}

var (
	_ caddymodule.StoreProvider = (*hsCountingStore)(nil)
	_ caddy.Provisioner         = (*hsCountingStore)(nil)
	_ caddy.CleanerUpper        = (*hsCountingStore)(nil)
)

// ---------------------------------------------------------------------------
// Harness

// A client whose registered redirect_uri has a query, for the query
// look-alikes.
const (
	hsQueryID       = "hs-query"
	hsQuerySecret   = "hs-query-secret"
	hsQueryRedirect = "https://q.example.test/cb?a=1&b=2"
)

// hsBlock is ctBlock with a chosen max_request_size and the hs-query
// client.
func hsBlock(maxSize string, extra ...string) string {
	return `authorization_endpoint /authorize
		par_endpoint /par
		request_uri_lifetime 90s
		max_request_size ` + maxSize + `
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
		client ` + hsQueryID + ` {
			secret ` + hsQuerySecret + `
			redirect_uris "` + hsQueryRedirect + `"
		}
		` + strings.Join(extra, "\n\t\t")
}

// hsStart loads a site with this oauth_par block over the counting store,
// in front of a fresh recording upstream.
func hsStart(t *testing.T, global, block string) *ctCaddy {
	t.Helper()
	return hsStartUp(t, ctNewUpstream(t, nil), global, block)
}

// hsStartUp is hsStart in front of a given upstream.
func hsStartUp(t *testing.T, up *ctUpstream, global, block string) *ctCaddy {
	t.Helper()
	c := &ctCaddy{port: ctFreePort(t), up: up, global: global, storage: t.TempDir()}
	c.base = fmt.Sprintf("http://127.0.0.1:%d", c.port)
	c.tr = &http.Transport{DisableCompression: true, MaxIdleConnsPerHost: 64}
	c.client = &http.Client{
		Timeout:       ctHTTPTimeout,
		Transport:     c.tr,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt(
		[]byte(ctCaddyfile(c.port, up.addr(), c.storage, global, block, "")),
		map[string]any{"filename": "Caddyfile"})
	if err != nil {
		t.Fatalf("adapt: %v", err)
	}
	if err := caddy.Load(hsWithCountingStore(t, cfg), true); err != nil {
		t.Fatalf("loading Caddy: %v", err)
	}
	t.Cleanup(func() {
		c.tr.CloseIdleConnections()
		if err := caddy.Stop(); err != nil {
			t.Logf("caddy.Stop: %v", err)
		}
	})
	return c
}

// hsWithCountingStore sets the oauth_par handler's store to counting_test
// in an adapted JSON config (the Caddyfile knows only memory and redis).
func hsWithCountingStore(t *testing.T, cfg []byte) []byte {
	t.Helper()
	var doc any
	if err := json.Unmarshal(cfg, &doc); err != nil {
		t.Fatal(err)
	}
	n := 0
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			if v["handler"] == "oauth_par" {
				v["store"] = map[string]any{"backend": "counting_test"}
				n++
			}
			for _, x := range v {
				walk(x)
			}
		case []any:
			for _, x := range v {
				walk(x)
			}
		}
	}
	walk(doc)
	if n != 1 {
		t.Fatalf("adapted config has %d oauth_par handlers, want 1", n)
	}
	out, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// hsCanary is a pushed request that a hostile request must leave alone.
type hsCanary struct {
	uri  string
	form url.Values
}

func (k hsCanary) ref() string { return strings.TrimPrefix(k.uri, ctURNPrefix) }

// hsPushCanary pushes a valid request of web-app, and fails the test if it
// did not go through the counting store.
func hsPushCanary(t *testing.T, c *ctCaddy) hsCanary {
	t.Helper()
	form := ctWith(ctAppForm(), "state", "canary-"+strconv.FormatInt(time.Now().UnixNano(), 36))
	before := hsSnap()
	uri := c.mustPush(t, form, ctBasic(ctAppID, ctAppSecret))
	if after := hsSnap(); after.PutOK != before.PutOK+1 {
		t.Fatalf("the canary push was not stored through the counting store (PutOK %d -> %d)", before.PutOK, after.PutOK)
	}
	return hsCanary{uri: uri, form: form}
}

// wantRedeemsOnce: the canary redeems, forwarding exactly what was pushed,
// and then never again.
func (k hsCanary) wantRedeemsOnce(t *testing.T, c *ctCaddy) {
	t.Helper()
	before := c.up.count()
	r := c.get(t, ctRedeemQuery(ctAppID, k.uri), nil)
	if r.Status != http.StatusOK || string(r.Body) != ctUpstreamOK {
		t.Fatalf("canary request_uri does not redeem after the hostile request: %s", r)
	}
	hsWantForwarded(t, c.up, before, k.form)
	r = c.get(t, ctRedeemQuery(ctAppID, k.uri), http.Header{"Accept": {"application/json"}})
	ctWantJSONError(t, r, http.StatusBadRequest, "invalid_request_uri")
}

// hsWantForwarded: since before, the upstream received one GET of the
// authorization endpoint carrying exactly want.
func hsWantForwarded(t *testing.T, up *ctUpstream, before int, want url.Values) {
	t.Helper()
	reqs := up.requests()
	if len(reqs) != before+1 {
		t.Fatalf("upstream received %d requests, want 1", len(reqs)-before)
	}
	got := reqs[before]
	if got.Method != http.MethodGet || got.Path != "/authorize" || len(got.Body) != 0 {
		t.Errorf("upstream got %s %s with a %d-byte body, want GET /authorize without body", got.Method, got.Path, len(got.Body))
	}
	q, err := url.ParseQuery(got.RawQuery)
	if err != nil {
		t.Fatalf("upstream query does not parse: %v", err)
	}
	if d := hsDiff(q, want); d != "" {
		t.Errorf("upstream did not receive exactly the pushed parameters: %s", d)
	}
}

// hsDiff describes how got differs from want, briefly (values may be huge).
func hsDiff(got, want url.Values) string {
	if reflect.DeepEqual(got, want) {
		return ""
	}
	var keys []string
	for k := range got {
		keys = append(keys, k)
	}
	for k := range want {
		if _, ok := got[k]; !ok {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	var out []string
	for _, k := range keys {
		if !reflect.DeepEqual(got[k], want[k]) {
			out = append(out, fmt.Sprintf("%.40q: got %.60q, want %.60q", k, got[k], want[k]))
		}
		if len(out) == 5 {
			out = append(out, "...")
			break
		}
	}
	return fmt.Sprintf("%d vs %d parameters; %s", len(got), len(want), strings.Join(out, "; "))
}

// hsWantStoreUnchanged: nothing stored, taken or claimed since before.
// With takeCalls, failed Take calls are allowed: a reference checked
// against the wrong client, and left in place.
func hsWantStoreUnchanged(t *testing.T, before hsCounts, takeCalls bool) {
	t.Helper()
	after := hsSnap()
	if after.Puts != before.Puts || after.PutOK != before.PutOK {
		t.Errorf("store Put called %d times (%d stored) by a rejected request", after.Puts-before.Puts, after.PutOK-before.PutOK)
	}
	if after.TakeOK != before.TakeOK {
		t.Errorf("a rejected request took %d entries from the store", after.TakeOK-before.TakeOK)
	}
	if !takeCalls && after.Takes != before.Takes {
		t.Errorf("a rejected request called Take %d times; it should not reach the store", after.Takes-before.Takes)
	}
	if after.ClaimOK != before.ClaimOK {
		t.Errorf("a rejected request recorded %d claims", after.ClaimOK-before.ClaimOK)
	}
}

// hsWantDescription: error_description is present and within RFC 6749
// §5.2's set (%x20-21 / %x23-5B / %x5D-7E).
func hsWantDescription(t *testing.T, desc string) {
	t.Helper()
	if desc == "" {
		t.Error("error_description is empty")
	}
	for i := 0; i < len(desc); i++ {
		if c := desc[i]; !(c == 0x20 || c == 0x21 || c >= 0x23 && c <= 0x5b || c >= 0x5d && c <= 0x7e) {
			t.Errorf("error_description %q has byte %#x outside RFC 6749 §5.2's set", desc, c)
			return
		}
	}
}

// hsWantJSONError is ctWantJSONError plus the error_description charset.
func hsWantJSONError(t *testing.T, r ctResp, status int, code string) {
	t.Helper()
	ctWantJSONError(t, r, status, code)
	var e struct {
		Desc string `json:"error_description"`
	}
	_ = json.Unmarshal(r.Body, &e)
	hsWantDescription(t, e.Desc)
}

// hsWantErrorRedirect: a 303 error response to the registered redirect_uri
// (RFC 6749 §4.1.2.1) with one intact Location, carrying state exactly.
func hsWantErrorRedirect(t *testing.T, r ctResp, redirect, code, state string) {
	t.Helper()
	if r.Status != http.StatusSeeOther {
		t.Fatalf("want 303, got %s", r)
	}
	locs := r.Header.Values("Location")
	if len(locs) != 1 {
		t.Fatalf("want one Location, got %q", locs)
	}
	for i := 0; i < len(locs[0]); i++ {
		if c := locs[0][i]; c <= 0x20 || c >= 0x7f {
			t.Fatalf("Location %q has raw byte %#x", locs[0], c)
		}
	}
	loc, err := url.Parse(locs[0])
	if err != nil {
		t.Fatal(err)
	}
	reg, _ := url.Parse(redirect)
	if loc.Scheme != reg.Scheme || loc.Host != reg.Host || loc.Path != reg.Path || loc.User != nil || loc.Fragment != "" {
		t.Errorf("redirected to %q, want the registered %q", locs[0], redirect)
	}
	q := loc.Query()
	for k, v := range reg.Query() {
		if !reflect.DeepEqual(q[k], v) {
			t.Errorf("redirect lost the registered query parameter %s: %q", k, q[k])
		}
	}
	if q.Get("error") != code || q.Has("code") {
		t.Errorf("error response query = %v, want error=%s and no code", q, code)
	}
	hsWantDescription(t, q.Get("error_description"))
	if q.Get("state") != state {
		t.Errorf("state came back as %q, want %q", q.Get("state"), state)
	}
	for _, h := range []string{"Set-Cookie", "X-Injected", "Content-Type"} {
		if v := r.Header.Values(h); len(v) > 0 {
			t.Errorf("error redirect has %s: %q", h, v)
		}
	}
	if len(r.Body) != 0 {
		t.Errorf("error redirect has a body: %q", r.Body)
	}
}

// hsForm is the form-urlencoded base with the named parameters removed and
// raw (already encoded) pairs appended.
func hsForm(base url.Values, drop []string, rawPairs ...string) string {
	s := ctWithout(base, drop...).Encode()
	for _, p := range rawPairs {
		s += "&" + p
	}
	return s
}

// hsAppBody is web-app's valid push with param replaced by a raw value
// (already encoded).
func hsAppBody(param, raw string) string {
	return hsForm(ctAppForm(), []string{param}, url.QueryEscape(param)+"="+raw)
}

// hsPOST sends a form POST; hdr replaces the Content-Type when it has one.
func hsPOST(t *testing.T, c *ctCaddy, target, body string, hdr http.Header) ctResp {
	t.Helper()
	h := http.Header{"Content-Type": {"application/x-www-form-urlencoded"}}
	for k, v := range hdr {
		h[k] = v
	}
	return c.do(t, http.MethodPost, target, strings.NewReader(body), h)
}

// hsWantPARRejected pushes body and wants the JSON error, the PAR endpoint
// not proxied, the store unchanged and the canary intact.
func hsWantPARRejected(t *testing.T, c *ctCaddy, body string, hdr http.Header, status int, code string) {
	t.Helper()
	k := hsPushCanary(t, c)
	before, beforeUp := hsSnap(), c.up.count()
	r := hsPOST(t, c, "/par", body, hdr)
	hsWantJSONError(t, r, status, code)
	ctWantUpstreamUntouched(t, c.up, beforeUp)
	hsWantStoreUnchanged(t, before, false)
	k.wantRedeemsOnce(t, c)
}

// hsWantPARAccepted pushes body, wants 201, and wants the redemption to
// forward exactly want.
func hsWantPARAccepted(t *testing.T, c *ctCaddy, body string, hdr http.Header, clientID string, want url.Values) {
	t.Helper()
	before := hsSnap()
	r := hsPOST(t, c, "/par", body, hdr)
	if r.Status != http.StatusCreated {
		t.Fatalf("want 201, got %s", r)
	}
	if after := hsSnap(); after.PutOK != before.PutOK+1 {
		t.Fatalf("accepted push stored %d entries", after.PutOK-before.PutOK)
	}
	var resp struct {
		RequestURI string `json:"request_uri"`
	}
	if err := json.Unmarshal(r.Body, &resp); err != nil {
		t.Fatal(err)
	}
	beforeUp := c.up.count()
	rr := c.get(t, ctRedeemQuery(clientID, resp.RequestURI), nil)
	if rr.Status != http.StatusOK || string(rr.Body) != ctUpstreamOK {
		t.Fatalf("redeem: want the upstream's page, got %s", rr)
	}
	hsWantForwarded(t, c.up, beforeUp, want)
}

// hsParsed is what a valid form body means, empty values omitted (RFC 6749
// §3.1), i.e. what the upstream must receive.
func hsParsed(t *testing.T, body string) url.Values {
	t.Helper()
	v, err := url.ParseQuery(body)
	if err != nil {
		t.Fatal(err)
	}
	for k, vs := range v {
		if len(vs) == 1 && vs[0] == "" {
			delete(v, k)
		}
	}
	return v
}

// hsAuthzCase is one request at the authorization endpoint. In target and
// body, {URI} is the canary's request_uri, query-escaped, and {REF} its
// random part.
type hsAuthzCase struct {
	name   string
	method string // default GET
	target string
	body   string
	header http.Header

	// What must happen: redeemed (the canary, forwarding exactly what was
	// pushed), an error redirect to redirect, or an error page of status
	// and code.
	redeemed bool
	redirect string
	state    string
	status   int
	code     string
	// take allows failed Take calls (the canary checked against the wrong
	// client and left in place).
	take bool
}

func hsRunAuthz(t *testing.T, c *ctCaddy, tc hsAuthzCase) {
	t.Helper()
	k := hsPushCanary(t, c)
	subst := func(s string) string {
		return strings.NewReplacer("{URI}", url.QueryEscape(k.uri), "{REF}", k.ref()).Replace(s)
	}
	method := tc.method
	if method == "" {
		method = http.MethodGet
	}
	send := func(accept string) ctResp {
		h := http.Header{}
		if method == http.MethodPost {
			h.Set("Content-Type", "application/x-www-form-urlencoded")
		}
		for key, v := range tc.header {
			h[key] = v
		}
		if accept != "" {
			h.Set("Accept", accept)
		}
		var body io.Reader
		if tc.body != "" {
			body = strings.NewReader(subst(tc.body))
		}
		return c.do(t, method, subst(tc.target), body, h)
	}
	before, beforeUp := hsSnap(), c.up.count()
	r := send("")
	switch {
	case tc.redeemed:
		if r.Status != http.StatusOK || string(r.Body) != ctUpstreamOK {
			t.Fatalf("want the redemption to reach the upstream's page, got %s", r)
		}
		hsWantForwarded(t, c.up, beforeUp, k.form)
		if after := hsSnap(); after.TakeOK != before.TakeOK+1 || after.Puts != before.Puts {
			t.Errorf("redemption: %d takes, %d puts; want 1 and 0", after.TakeOK-before.TakeOK, after.Puts-before.Puts)
		}
		r = c.get(t, ctRedeemQuery(ctAppID, k.uri), nil)
		ctWantHTMLError(t, r, http.StatusBadRequest, "invalid_request_uri")
		return
	case tc.redirect != "":
		hsWantErrorRedirect(t, r, tc.redirect, tc.code, tc.state)
	case method == http.MethodHead:
		if r.Status != tc.status || len(r.Body) != 0 || r.Header.Get("Cache-Control") != "no-store" {
			t.Errorf("HEAD: want %d without body, no-store; got %s", tc.status, r)
		}
	default:
		ctWantHTMLError(t, r, tc.status, tc.code)
		hsWantJSONError(t, send("application/json"), tc.status, tc.code)
	}
	ctWantUpstreamUntouched(t, c.up, beforeUp)
	hsWantStoreUnchanged(t, before, tc.take)
	k.wantRedeemsOnce(t, c)
}

// Raw HTTP/1.1, for what net/http's client will not send.

func hsDial(t *testing.T, c *ctCaddy) net.Conn {
	t.Helper()
	conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", c.port), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_ = conn.SetDeadline(time.Now().Add(ctHTTPTimeout))
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// hsHead is a request head; contentLength < 0 sends none.
func hsHead(c *ctCaddy, method, target string, contentLength int, lines ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n", method, target, c.port)
	for _, l := range lines {
		b.WriteString(l + "\r\n")
	}
	if contentLength >= 0 {
		fmt.Fprintf(&b, "Content-Length: %d\r\n", contentLength)
	}
	b.WriteString("\r\n")
	return b.String()
}

func hsReadResp(t *testing.T, br *bufio.Reader, method string) (ctResp, error) {
	t.Helper()
	resp, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		return ctResp{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return ctResp{}, err
	}
	return ctResp{Status: resp.StatusCode, Header: resp.Header, Body: b, ContentLength: resp.ContentLength}, nil
}

// hsRaw sends one raw request (Connection: close) and reads the response.
func hsRaw(t *testing.T, c *ctCaddy, method, target string, lines []string, body string) ctResp {
	t.Helper()
	conn := hsDial(t, c)
	cl := len(body)
	if body == "" && method != http.MethodPost {
		cl = -1
	}
	if _, err := io.WriteString(conn, hsHead(c, method, target, cl, append(lines, "Connection: close")...)+body); err != nil {
		t.Fatal(err)
	}
	r, err := hsReadResp(t, bufio.NewReader(conn), method)
	if err != nil {
		t.Fatalf("%s %s: %v", method, target, err)
	}
	return r
}

func hsBasicLine() string {
	return "Authorization: " + ctBasic(ctAppID, ctAppSecret).Get("Authorization")
}

// ---------------------------------------------------------------------------
// NUL bytes, invalid UTF-8, control characters

func TestHostilePARRejectsNULInvalidUTF8AndControlsInNamesAndValues(t *testing.T) {
	c := hsStart(t, "", hsBlock("64KiB"))
	auth := ctBasic(ctAppID, ctAppSecret)

	app := ctAppForm()
	values := map[string]string{
		"client_id": ctAppID, "redirect_uri": ctAppRedirect, "scope": app.Get("scope"),
		"state": app.Get("state"), "response_type": "code", "code_challenge": app.Get("code_challenge"),
		"code_challenge_method": "S256", "nonce": app.Get("nonce"), "login_hint": "alice@example.test",
		"x_extension": "x", "claims": `{"id_token":{"acr":null}}`, "authorization_details": `[{"type":"t"}]`,
		"request_uri": ctURNPrefix + strings.Repeat("A", 43),
	}
	var params []string
	for p := range values {
		params = append(params, p)
	}
	sort.Strings(params)
	bad := []struct{ name, raw string }{
		{"NUL", "%00"},
		{"raw_NUL_byte", "\x00"},
		{"invalid_UTF-8_byte", "%FF"},
		{"raw_invalid_UTF-8_byte", "\xff"},
		{"overlong_UTF-8_slash", "%C0%AF"},
		{"UTF-16_surrogate_in_UTF-8", "%ED%A0%80"},
		{"truncated_UTF-8_sequence", "%E2%82"},
		{"ESC", "%1B"},
		{"DEL", "%7F"},
	}
	// Parameters with a check of their own keep its error code.
	codes := map[string]string{"scope": "invalid_scope", "response_type": "unsupported_response_type", "authorization_details": "invalid_authorization_details"}
	for _, p := range params {
		code := codes[p]
		if code == "" {
			code = "invalid_request"
		}
		for _, b := range bad {
			t.Run(p+"_with_"+b.name+"_is_400_"+code, func(t *testing.T) {
				hsWantPARRejected(t, c, hsAppBody(p, url.QueryEscape(values[p])+b.raw), auth, http.StatusBadRequest, code)
			})
		}
	}

	// RFC 6749 Appendix A: state, client_id, redirect_uri and the other
	// single-line values have no room for CR, LF or HTAB; a legacy IdP
	// might copy them into a header.
	for _, tc := range []struct{ param, raw string }{
		{"state", "x%0D%0ASet-Cookie:%20injected=1"},
		{"state", "x%0AX-Injected:%201"},
		{"state", "x%0D"},
		{"state", "x%09y"},
		{"redirect_uri", url.QueryEscape(ctAppRedirect) + "%0D%0AX-Injected:%201"},
		{"nonce", "n%0A"},
		{"login_hint", "alice%0D%0A@example.test"},
		{"x_extension", "%0D%0AX-Injected:%201"},
	} {
		t.Run(tc.param+"_with_CR_LF_or_HTAB_is_400_invalid_request:"+tc.raw, func(t *testing.T) {
			hsWantPARRejected(t, c, hsAppBody(tc.param, tc.raw), auth, http.StatusBadRequest, "invalid_request")
		})
	}

	for _, tc := range []struct{ name, pair string }{
		{"NUL_in_a_name", "x%00y=1"},
		{"name_is_a_NUL", "%00=1"},
		{"state_NUL_name_a_truncating_upstream_reads_as_a_second_state", "state%00=evil"},
		{"client_id_NUL_name", "client_id%00=" + ctSPAID},
		{"invalid_UTF-8_in_a_name", "x%FFy=1"},
		{"raw_invalid_byte_as_a_name", "\xff=1"},
		{"overlong_UTF-8_in_a_name", "x%C0%AFy=1"},
		{"CR_LF_in_a_name", "x%0D%0Ay=1"},
		{"HTAB_in_a_name", "x%09y=1"},
		{"DEL_in_a_name", "x%7Fy=1"},
	} {
		t.Run(tc.name+"_is_400_invalid_request", func(t *testing.T) {
			hsWantPARRejected(t, c, hsForm(ctAppForm(), nil, tc.pair), auth, http.StatusBadRequest, "invalid_request")
		})
	}

	// Without Basic, a garbled client_id is an unknown client: 401.
	t.Run("client_secret_post_with_NUL_in_client_id_is_401_invalid_client", func(t *testing.T) {
		body := hsForm(ctAppForm(), []string{"client_id"}, "client_id=web-app%00", "client_secret="+url.QueryEscape(ctAppSecret))
		hsWantPARRejected(t, c, body, nil, http.StatusUnauthorized, "invalid_client")
	})
	t.Run("public_client_id_with_invalid_UTF-8_is_401_invalid_client", func(t *testing.T) {
		body := hsForm(ctSPAForm(), []string{"client_id"}, "client_id=spa%FF")
		hsWantPARRejected(t, c, body, nil, http.StatusUnauthorized, "invalid_client")
	})

	// What stays allowed: non-ASCII UTF-8 in state, and JSON whitespace in
	// the JSON-valued parameters. Forwarded exactly.
	for _, tc := range []struct{ name, body string }{
		{"non_ASCII_UTF-8_state", hsAppBody("state", url.QueryEscape("état ✓ 日本"))},
		{"pretty_printed_claims_with_LF_and_HTAB", hsForm(ctAppForm(), nil, "claims="+url.QueryEscape("{\n\t\"id_token\": {\"acr\": null}\r\n}"))},
		{"pretty_printed_authorization_details", hsForm(ctAppForm(), nil, "authorization_details="+url.QueryEscape("[\n  {\"type\": \"payment\"}\n]"))},
	} {
		t.Run(tc.name+"_is_accepted_and_forwarded_exactly", func(t *testing.T) {
			hsWantPARAccepted(t, c, tc.body, auth, ctAppID, hsParsed(t, tc.body))
		})
	}
}

func TestHostileAuthorizationEndpointNULInvalidUTF8AndEncodingTricks(t *testing.T) {
	c := hsStart(t, "", hsBlock("2KiB", "require_par"))
	prefix := url.QueryEscape(ctURNPrefix)
	var cases []hsAuthzCase
	for _, m := range []string{http.MethodGet, http.MethodPost} {
		// For GET the raw parameters are the query; for POST the body.
		mk := func(tc hsAuthzCase, raw string) hsAuthzCase {
			tc.name = m + "_" + tc.name
			tc.method = m
			if m == http.MethodGet {
				tc.target = "/authorize?" + raw
			} else {
				tc.target, tc.body = "/authorize", raw
			}
			return tc
		}
		rejected := func(name string, status int, code string, take bool, raw string) {
			cases = append(cases, mk(hsAuthzCase{name: name, status: status, code: code, take: take}, raw))
		}
		redeemed := func(name, raw string) {
			cases = append(cases, mk(hsAuthzCase{name: name, redeemed: true}, raw))
		}
		// A garbled client_id is another client: the reference is checked
		// against it and left in place.
		rejected("client_id_with_NUL_is_invalid_request_uri", 400, "invalid_request_uri", true, "client_id=web-app%00&request_uri={URI}")
		rejected("client_id_with_invalid_UTF-8_is_invalid_request_uri", 400, "invalid_request_uri", true, "client_id=web-app%FF&request_uri={URI}")
		rejected("client_id_with_overlong_UTF-8_is_invalid_request_uri", 400, "invalid_request_uri", true, "client_id=web%C0%ADapp&request_uri={URI}")
		// A garbled reference never reaches the store.
		rejected("request_uri_with_trailing_NUL_is_invalid_request_uri", 400, "invalid_request_uri", false, "client_id=web-app&request_uri={URI}%00")
		rejected("request_uri_with_invalid_UTF-8_is_invalid_request_uri", 400, "invalid_request_uri", false, "client_id=web-app&request_uri="+prefix+"%FF{REF}")
		rejected("request_uri_with_trailing_space_is_invalid_request_uri", 400, "invalid_request_uri", false, "client_id=web-app&request_uri={URI}+")
		rejected("request_uri_with_percent-encoded_CRLF_is_invalid_request_uri", 400, "invalid_request_uri", false, "client_id=web-app&request_uri={URI}%0D%0A")
		// Not our URN, and PAR is required: invalid_request, shown (no
		// redirect_uri to return it to).
		rejected("double-encoded_request_uri_is_not_redeemed", 400, "invalid_request", false, "client_id=web-app&request_uri="+url.QueryEscape(prefix)+"{REF}")
		rejected("NUL_inside_the_URN_prefix_is_not_redeemed", 400, "invalid_request", false, "client_id=web-app&request_uri="+url.QueryEscape("urn:ietf:params:oauth:request_uri")+"%00%3A{REF}")
		rejected("uppercase_URN_prefix_is_not_redeemed", 400, "invalid_request", false, "client_id=web-app&request_uri="+url.QueryEscape(strings.ToUpper(ctURNPrefix))+"{REF}")
		rejected("request_uri_name_with_NUL_is_not_redeemed", 400, "invalid_request", false, "client_id=web-app&request_uri%00={URI}")
		// Malformed encodings: nothing is parsed, nothing redeemed.
		rejected("invalid_escape_%zz_is_invalid_request", 400, "invalid_request", false, "client_id=web-app&request_uri={URI}&x=%zz")
		rejected("trailing_percent_is_invalid_request", 400, "invalid_request", false, "client_id=web-app&request_uri={URI}%")
		rejected("truncated_escape_is_invalid_request", 400, "invalid_request", false, "client_id=web-app&request_uri={URI}%4")
		rejected("semicolon_separator_is_invalid_request", 400, "invalid_request", false, "client_id=web-app;request_uri={URI}")
		// Other parameters beside a valid pair are ignored, whatever they hold.
		redeemed("garbage_extra_parameters_are_ignored", "client_id=web-app&request_uri={URI}&state=x%00y&x%00=1&scope=%FF&nonce=%0D%0AX-Injected:%201&redirect_uri=https%3A%2F%2Fevil.example.test%2F%00")
		redeemed("percent-encoded_names_mean_the_same_names", "%63lient_id=web-app&request%5Furi={URI}")
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) { hsRunAuthz(t, c, tc) })
	}
}

// ---------------------------------------------------------------------------
// Percent-encoding tricks at the PAR endpoint

func TestHostilePARPercentEncodingTricks(t *testing.T) {
	c := hsStart(t, "", hsBlock("64KiB"))
	auth := ctBasic(ctAppID, ctAppSecret)
	enc := url.QueryEscape

	for _, tc := range []struct {
		name, body string
		code       string
	}{
		{"redirect_uri_with_%252F_is_not_the_registered_one", hsAppBody("redirect_uri", "https%3A%2F%2Fapp.example.test%252Fcb"), "invalid_request"},
		{"double-encoded_redirect_uri_is_not_the_registered_one", hsAppBody("redirect_uri", enc(enc(ctAppRedirect))), "invalid_request"},
		{"redirect_uri_with_%00_before_a_registered_one", hsAppBody("redirect_uri", enc("https://evil.example.test/")+"%00"+enc(ctAppRedirect)), "invalid_request"},
		{"scope_with_encoded_plus_is_one_unknown_scope", hsAppBody("scope", "openid%2Bprofile"), "invalid_scope"},
		{"scope_with_two_spaces_is_malformed", hsAppBody("scope", "openid++profile"), "invalid_scope"},
		{"scope_with_leading_space_is_malformed", hsAppBody("scope", "%20openid"), "invalid_scope"},
		{"scope_with_double-encoded_space_is_one_unknown_scope", hsAppBody("scope", "openid%2520profile"), "invalid_scope"},
		{"lowercase_s256_is_unsupported", hsAppBody("code_challenge_method", "s256"), "invalid_request"},
		{"response_type_with_%00_suffix", hsAppBody("response_type", "code%00"), "unsupported_response_type"},
		{"invalid_escape_%zz_in_a_value", hsAppBody("state", "a%zz"), "invalid_request"},
		{"trailing_percent_in_a_value", hsAppBody("state", "abc%"), "invalid_request"},
		{"truncated_escape_in_a_value", hsAppBody("state", "abc%4"), "invalid_request"},
		{"percent_percent", hsAppBody("state", "%%41"), "invalid_request"},
		{"IIS-style_%u_escape", hsAppBody("state", "%u0041"), "invalid_request"},
		{"invalid_escape_in_a_name", hsForm(ctAppForm(), nil, "st%zzate=x"), "invalid_request"},
		{"lone_percent_as_a_name", hsForm(ctAppForm(), nil, "%=x"), "invalid_request"},
		{"semicolon_separator", hsAppBody("state", "a;b=c"), "invalid_request"},
	} {
		t.Run(tc.name+"_is_400_"+tc.code, func(t *testing.T) {
			hsWantPARRejected(t, c, tc.body, auth, http.StatusBadRequest, tc.code)
		})
	}

	// Encodings that mean a valid value: accepted, and the upstream gets
	// the same decoded value.
	for _, tc := range []struct{ name, body string }{
		{"plus_in_scope_is_a_space", hsAppBody("scope", "openid+profile")},
		{"%20_in_scope_is_a_space", hsAppBody("scope", "openid%20profile")},
		{"%2525_in_state_stays_a_literal_%25", hsAppBody("state", "%2525")},
		{"%252F_in_state_stays_a_literal_%2F", hsAppBody("state", "a%252Fb")},
		{"encoded_plus_in_state_is_a_plus", hsAppBody("state", "a%2Bb+c")},
		{"encoded_letters_in_response_type", hsAppBody("response_type", "cod%65")},
		{"encoded_letter_in_a_name", hsForm(ctAppForm(), []string{"nonce"}, "%6Eonce=n-1")},
		{"lowercase_hex_escapes", hsAppBody("redirect_uri", "https%3a%2f%2fapp.example.test%2fcb")},
	} {
		t.Run(tc.name+"_is_accepted_and_forwarded_decoded_alike", func(t *testing.T) {
			hsWantPARAccepted(t, c, tc.body, auth, ctAppID, hsParsed(t, tc.body))
		})
	}
}

// ---------------------------------------------------------------------------
// CR/LF: no header injection in the gateway's error redirects

func TestHostileCRLFInStateAndRedirectURIDoesNotInjectHeaders(t *testing.T) {
	c := hsStart(t, "", hsBlock("2KiB", "require_par"))
	// Not pushed, PAR required, registered redirect_uri: the gateway
	// redirects the error back with state, which must come back exactly and
	// percent-encoded, whatever it holds.
	for _, state := range []string{
		"x\r\nSet-Cookie: injected=1",
		"x\nX-Injected: 1",
		"x\r",
		"x\r\n\r\n<html>injected</html>",
		"%0d%0aX-Injected:%201", // literal percent signs
		"x\u0085X-Injected: 1",  // NEL
		"x\u2028X-Injected: 1",  // LINE SEPARATOR
		"x\x00y",
		"\xff\xfe",
	} {
		q := url.Values{"response_type": {"code"}, "client_id": {ctAppID}, "redirect_uri": {ctAppRedirect}, "state": {state}}
		for _, m := range []string{http.MethodGet, http.MethodPost} {
			tc := hsAuthzCase{name: m + "_state_" + strconv.Quote(state), method: m, redirect: ctAppRedirect, code: "invalid_request", state: state}
			if m == http.MethodGet {
				tc.target = "/authorize?" + q.Encode()
			} else {
				tc.target, tc.body = "/authorize", q.Encode()
			}
			t.Run(tc.name+"_comes_back_encoded_in_one_Location", func(t *testing.T) { hsRunAuthz(t, c, tc) })
		}
		t.Run("raw_response_head_for_state_"+strconv.Quote(state), func(t *testing.T) {
			// Read the head as sent: exactly one Location line, nothing
			// injected.
			r := hsRaw(t, c, http.MethodGet, "/authorize?"+q.Encode(), nil, "")
			hsWantErrorRedirect(t, r, ctAppRedirect, "invalid_request", state)
			for name := range r.Header {
				switch name {
				case "Location", "Cache-Control", "Referrer-Policy", "Date", "Content-Length", "Server", "Connection":
				default:
					t.Errorf("unexpected header %s: %q", name, r.Header[name])
				}
			}
		})
	}

	// A redirect_uri with CR/LF is never the registered one: no redirect.
	for _, ru := range []string{
		ctAppRedirect + "\r\nX-Injected: 1",
		ctAppRedirect + "\r\n",
		"https://app.example.test/\r\nLocation: https://evil.example.test/cb",
		ctAppRedirect + "%0D%0ASet-Cookie:%20x=1",
	} {
		q := url.Values{"response_type": {"code"}, "client_id": {ctAppID}, "redirect_uri": {ru}, "state": {"s"}}
		t.Run("redirect_uri_"+strconv.Quote(ru)+"_gets_an_error_page_not_a_redirect", func(t *testing.T) {
			hsRunAuthz(t, c, hsAuthzCase{target: "/authorize?" + q.Encode(), status: 400, code: "invalid_request"})
		})
	}
}

// ---------------------------------------------------------------------------
// redirect_uri look-alikes

func TestHostileRedirectURILookalikesAreNeverAccepted(t *testing.T) {
	c := hsStart(t, "", hsBlock("2KiB", "require_par"))
	lookalikes := map[string][]string{
		ctAppID: {
			"https://app.example.test/cb/",
			"https://APP.example.test/cb",
			"https://App.Example.Test/cb",
			"HTTPS://app.example.test/cb",
			"Https://app.example.test/cb",
			"https://app.example.test/CB",
			"https://app.example.test/Cb",
			"https://app.example.test@evil.example.test/cb",
			"https://evil.example.test@app.example.test/cb",
			"https://user:pw@app.example.test/cb",
			"https://@app.example.test/cb",
			"https://аpp.example.test/cb", // Cyrillic а
			"https://xn--pp-6kc.example.test/cb",
			"https://ａpp.example.test/cb", // fullwidth a
			"https://app.example.test/x/../cb",
			"https://app.example.test/./cb",
			"https://app.example.test//cb",
			"https://app.example.test/cb/.",
			"https://app.example.test/%2e/cb",
			"https://app.example.test/%63b",
			"https://app.example.test/cb%2F",
			"https://app.example.test/cb#",
			"https://app.example.test/cb#frag",
			"https://app.example.test/cb#@evil.example.test",
			"https://app.example.test/cb?",
			"https://app.example.test/cb?x=1",
			"https://app.example.test/cb?redirect=https://evil.example.test/",
			"https://app.example.test:443/cb",
			"https://app.example.test:8443/cb",
			"https://app.example.test:/cb",
			"https://app.example.test:0443/cb",
			`https://app.example.test\cb`,
			`https://app.example.test\@evil.example.test/cb`,
			`https:\\app.example.test\cb`,
			"http://app.example.test/cb",
			"//app.example.test/cb",
			"https:/app.example.test/cb",
			"https:app.example.test/cb",
			"https://app.example.test./cb",
			" https://app.example.test/cb",
			"https://app.example.test/cb ",
			"https://app.example.test/cb%20",
			"https://app.example.test/c",
			"https://app.example.test/cb2/x",
			ctSPARedirect, // registered, but to another client
		},
		hsQueryID: {
			"https://q.example.test/cb?b=2&a=1",
			"https://q.example.test/cb?a=1&b=2&c=3",
			"https://q.example.test/cb?a=1",
			"https://q.example.test/cb?a=1&b=2&a=1",
			"https://q.example.test/cb?a=%31&b=2",
			"https://q.example.test/cb?a=1&amp;b=2",
			"https://q.example.test/cb",
			"https://q.example.test/cb?a=1&b=2#",
			"https://q.example.test/cb/?a=1&b=2",
		},
	}
	secrets := map[string]string{ctAppID: ctAppSecret, hsQueryID: hsQuerySecret}
	registered := map[string]string{ctAppID: ctAppRedirect, hsQueryID: hsQueryRedirect}
	for _, id := range []string{ctAppID, hsQueryID} {
		form := ctWith(ctAppForm(), "client_id", id, "scope", "openid")
		// Controls: the registered URI itself works, so the rejections
		// below are about the URI.
		t.Run(id+"_registered_redirect_uri_is_accepted_at_PAR", func(t *testing.T) {
			f := ctWith(form, "redirect_uri", registered[id])
			hsWantPARAccepted(t, c, f.Encode(), ctBasic(id, secrets[id]), id, f)
		})
		t.Run(id+"_registered_redirect_uri_gets_the_error_redirect", func(t *testing.T) {
			q := url.Values{"response_type": {"code"}, "client_id": {id}, "redirect_uri": {registered[id]}, "state": {"s"}}
			hsRunAuthz(t, c, hsAuthzCase{target: "/authorize?" + q.Encode(), redirect: registered[id], code: "invalid_request", state: "s"})
		})
		for _, ru := range lookalikes[id] {
			t.Run(id+"_PAR_rejects_"+strconv.Quote(ru), func(t *testing.T) {
				hsWantPARRejected(t, c, ctWith(form, "redirect_uri", ru).Encode(), ctBasic(id, secrets[id]), 400, "invalid_request")
			})
			t.Run(id+"_authorize_never_redirects_to_"+strconv.Quote(ru), func(t *testing.T) {
				q := url.Values{"response_type": {"code"}, "client_id": {id}, "redirect_uri": {ru}, "state": {"s"}}
				hsRunAuthz(t, c, hsAuthzCase{target: "/authorize?" + q.Encode(), status: 400, code: "invalid_request"})
			})
		}
	}
}

// ---------------------------------------------------------------------------
// Parameter smuggling at the authorization endpoint

func TestHostileAuthorizationEndpointParameterSmuggling(t *testing.T) {
	// PAR is required for strict-app only: the per-client policy is what
	// smuggling would try to get around.
	c := hsStart(t, "", hsBlock("2KiB"))
	strictPlain := "response_type=code&redirect_uri=" + url.QueryEscape(ctStrictRedir) + "&state=s"
	appPlain := "response_type=code&client_id=" + ctAppID + "&redirect_uri=" + url.QueryEscape(ctAppRedirect) + "&state=s"
	extras := "&scope=" + url.QueryEscape("openid admin") +
		"&redirect_uri=" + url.QueryEscape("https://evil.example.test/cb") +
		"&state=evil&response_type=token&response_mode=fragment&prompt=none&nonce=evil" +
		"&code_challenge=" + ctChallenge("attacker-verifier-0123456789-abcdefghijklmnopq") + "&code_challenge_method=plain" +
		"&request=eyJhbGciOiJub25lIn0.e30.&client_secret=x&claims=%7B%7D&login_hint=mallory&Request_Uri=x&x_ext=1"

	for _, tc := range []hsAuthzCase{
		// A request_uri or client_id in both the body and the query of a
		// POST is sent twice: refused before the store is touched.
		{name: "POST_client_id_in_body_and_a_different_one_in_the_query", method: "POST", target: "/authorize?client_id=" + ctSPAID, body: "client_id=web-app&request_uri={URI}", status: 400, code: "invalid_request_uri"},
		{name: "POST_client_id_in_body_and_the_same_in_the_query", method: "POST", target: "/authorize?client_id=" + ctAppID, body: "client_id=web-app&request_uri={URI}", status: 400, code: "invalid_request_uri"},
		{name: "POST_request_uri_in_body_and_query", method: "POST", target: "/authorize?request_uri={URI}", body: "client_id=web-app&request_uri={URI}", status: 400, code: "invalid_request_uri"},
		{name: "POST_request_uri_in_body_and_another_in_the_query", method: "POST", target: "/authorize?request_uri=" + url.QueryEscape(ctURNPrefix+strings.Repeat("B", 43)), body: "client_id=web-app&request_uri={URI}", status: 400, code: "invalid_request_uri"},
		// An upstream that merges query and body (servlet getParameter)
		// would see strict-app: the policy is checked on what it would see.
		{name: "POST_unpushed_web-app_body_with_strict-app_in_the_query", method: "POST", target: "/authorize?client_id=" + ctStrictID, body: appPlain, status: 400, code: "invalid_request"},
		{name: "POST_unpushed_body_without_client_id_and_strict-app_in_the_query", method: "POST", target: "/authorize?client_id=" + ctStrictID, body: strictPlain, redirect: ctStrictRedir, code: "invalid_request", state: "s"},
		{name: "POST_empty_body_with_the_whole_strict-app_request_in_the_query", method: "POST", target: "/authorize?client_id=" + ctStrictID + "&" + strictPlain, body: "", redirect: ctStrictRedir, code: "invalid_request", state: "s"},
		{name: "GET_client_id_twice_strict-app_last", target: "/authorize?" + appPlain + "&client_id=" + ctStrictID, status: 400, code: "invalid_request"},
		// Two Content-Types: the upstream might parse the body as the other.
		{name: "POST_form_and_multipart_Content-Types", method: "POST", target: "/authorize", body: appPlain, header: http.Header{"Content-Type": {"application/x-www-form-urlencoded", "multipart/form-data; boundary=x"}}, status: 400, code: "invalid_request"},
		{name: "POST_redemption_with_two_Content-Types", method: "POST", target: "/authorize", body: "client_id=web-app&request_uri={URI}", header: http.Header{"Content-Type": {"application/x-www-form-urlencoded", "application/x-www-form-urlencoded"}}, status: 400, code: "invalid_request"},

		// RFC 9126 §4 / RFC 9101 §6.3: only the pushed parameters count.
		// Whatever else comes with a valid request_uri is dropped, never
		// forwarded.
		{name: "GET_request_uri_with_other_parameters", target: "/authorize?client_id=web-app&request_uri={URI}" + extras, redeemed: true},
		{name: "POST_request_uri_with_other_parameters_in_the_body", method: "POST", target: "/authorize", body: "client_id=web-app&request_uri={URI}" + extras, redeemed: true},
		{name: "POST_request_uri_with_other_parameters_in_the_query", method: "POST", target: "/authorize?x=1" + extras, body: "client_id=web-app&request_uri={URI}", redeemed: true},
		{name: "POST_client_id_in_the_query_request_uri_in_the_body", method: "POST", target: "/authorize?client_id=web-app", body: "request_uri={URI}", redeemed: true},
	} {
		t.Run(tc.name, func(t *testing.T) { hsRunAuthz(t, c, tc) })
	}
}

// ---------------------------------------------------------------------------
// Methods

func TestHostileMethodsAtBothEndpointsAre405WithoutSideEffects(t *testing.T) {
	c := hsStart(t, "", hsBlock("2KiB"))
	const marker = "HS-MARKER-7f3a"
	for _, m := range []string{http.MethodHead, http.MethodOptions, "TRACE", http.MethodPut, http.MethodDelete, http.MethodPatch, "PROPFIND"} {
		t.Run("PAR_"+m+"_is_405_with_Allow_POST", func(t *testing.T) {
			k := hsPushCanary(t, c)
			before, beforeUp := hsSnap(), c.up.count()
			h := http.Header{
				"Content-Type":  {"application/x-www-form-urlencoded"},
				"Authorization": ctBasic(ctAppID, ctAppSecret)["Authorization"],
				"Cookie":        {"hs=" + marker},
				"X-Hs-Marker":   {marker},
			}
			r := c.do(t, m, "/par", strings.NewReader(ctAppForm().Encode()+"&x="+marker), h)
			if m == http.MethodHead {
				if r.Status != http.StatusMethodNotAllowed || len(r.Body) != 0 || r.Header.Get("Cache-Control") != "no-store" {
					t.Errorf("want 405 without body, no-store; got %s", r)
				}
			} else {
				hsWantJSONError(t, r, http.StatusMethodNotAllowed, "invalid_request")
			}
			if got := r.Header.Values("Allow"); !reflect.DeepEqual(got, []string{"POST"}) {
				t.Errorf("Allow = %q, want [POST]", got)
			}
			hsWantNoEcho(t, r, marker)
			ctWantUpstreamUntouched(t, c.up, beforeUp)
			hsWantStoreUnchanged(t, before, false)
			k.wantRedeemsOnce(t, c)
		})
		t.Run("authorize_"+m+"_is_405_with_Allow_GET_POST", func(t *testing.T) {
			k := hsPushCanary(t, c)
			before, beforeUp := hsSnap(), c.up.count()
			h := http.Header{"Content-Type": {"application/x-www-form-urlencoded"}, "Cookie": {"hs=" + marker}, "X-Hs-Marker": {marker}}
			body := "client_id=web-app&request_uri=" + url.QueryEscape(k.uri) + "&x=" + marker
			r := c.do(t, m, ctRedeemQuery(ctAppID, k.uri), strings.NewReader(body), h)
			if m == http.MethodHead {
				if r.Status != http.StatusMethodNotAllowed || len(r.Body) != 0 || r.Header.Get("Cache-Control") != "no-store" {
					t.Errorf("want 405 without body, no-store; got %s", r)
				}
			} else {
				ctWantHTMLError(t, r, http.StatusMethodNotAllowed, "invalid_request")
			}
			if got := r.Header.Values("Allow"); !reflect.DeepEqual(got, []string{"GET, POST"}) {
				t.Errorf("Allow = %q, want [GET, POST]", got)
			}
			hsWantNoEcho(t, r, marker)
			ctWantUpstreamUntouched(t, c.up, beforeUp)
			hsWantStoreUnchanged(t, before, false)
			k.wantRedeemsOnce(t, c)
		})
	}
}

// hsWantNoEcho: the response reflects nothing of the request (TRACE must
// not echo it back, cookies and credentials included).
func hsWantNoEcho(t *testing.T, r ctResp, marker string) {
	t.Helper()
	all := string(r.Body)
	for k, vs := range r.Header {
		all += k + ": " + strings.Join(vs, ",") + "\n"
	}
	for _, s := range []string{marker, "TRACE", ctBasic(ctAppID, ctAppSecret).Get("Authorization")} {
		if strings.Contains(all, s) {
			t.Errorf("response echoes %q: %s", s, r)
		}
	}
	if strings.Contains(strings.ToLower(r.Header.Get("Content-Type")), "message/http") {
		t.Errorf("response is a TRACE echo: %s", r)
	}
}

// ---------------------------------------------------------------------------
// Content-Type at the PAR endpoint

func TestHostilePARContentTypeVariants(t *testing.T) {
	c := hsStart(t, "", hsBlock("2KiB"))
	auth := ctBasic(ctAppID, ctAppSecret)
	form := ctAppForm()

	// Accepted. A charset label other than UTF-8 is accepted (Apache
	// HttpClient labels its forms ISO-8859-1 by default), and the body is
	// read as UTF-8 regardless (RFC 6749 Appendix B): non-UTF-8 bytes are
	// refused (below), so no label can make the gateway and the upstream
	// read different characters.
	for _, ct := range []string{
		"application/x-www-form-urlencoded; charset=UTF-8",
		"application/x-www-form-urlencoded;charset=utf-8",
		`application/x-www-form-urlencoded; charset="UTF-8"`,
		"application/x-www-form-urlencoded; charset=ISO-8859-1",
		"APPLICATION/X-WWW-FORM-URLENCODED",
		"application/x-www-form-urlencoded;",
	} {
		t.Run("accepts_"+ct, func(t *testing.T) {
			hsWantPARAccepted(t, c, form.Encode(), http.Header{"Content-Type": {ct}, "Authorization": auth["Authorization"]}, ctAppID, form)
		})
	}
	t.Run("ISO-8859-1_labelled_body_with_a_Latin-1_byte_is_400", func(t *testing.T) {
		hsWantPARRejected(t, c, hsAppBody("state", "%E9t%E9"),
			http.Header{"Content-Type": {"application/x-www-form-urlencoded; charset=ISO-8859-1"}, "Authorization": auth["Authorization"]},
			400, "invalid_request")
	})

	for _, tc := range []struct {
		name string
		ct   []string
		body string
	}{
		{"missing", nil, form.Encode()},
		{"empty", []string{""}, form.Encode()},
		{"multipart", []string{"multipart/form-data; boundary=hs"}, "--hs\r\nContent-Disposition: form-data; name=\"client_id\"\r\n\r\nweb-app\r\n--hs--\r\n"},
		{"json", []string{"application/json"}, `{"client_id":"web-app","response_type":"code"}`},
		{"text_plain", []string{"text/plain"}, form.Encode()},
		{"garbage_parameters", []string{"application/x-www-form-urlencoded;;;"}, form.Encode()},
		{"parameter_without_value", []string{"application/x-www-form-urlencoded; charset"}, form.Encode()},
		{"duplicate_parameter", []string{"application/x-www-form-urlencoded; charset=utf-8; charset=latin1"}, form.Encode()},
		{"list_of_types", []string{"application/x-www-form-urlencoded, application/json"}, form.Encode()},
		{"suffixed_type", []string{"application/x-www-form-urlencodedx"}, form.Encode()},
		{"two_form_Content-Types", []string{"application/x-www-form-urlencoded", "application/x-www-form-urlencoded"}, form.Encode()},
		{"form_then_json_Content-Types", []string{"application/x-www-form-urlencoded", "application/json"}, form.Encode()},
		{"json_then_form_Content-Types", []string{"application/json", "application/x-www-form-urlencoded"}, form.Encode()},
	} {
		t.Run(tc.name+"_is_400_invalid_request", func(t *testing.T) {
			k := hsPushCanary(t, c)
			before := hsSnap()
			// Raw, so that a missing Content-Type is really missing.
			lines := []string{hsBasicLine()}
			for _, ct := range tc.ct {
				lines = append(lines, "Content-Type: "+ct)
			}
			r := hsRaw(t, c, http.MethodPost, "/par", lines, tc.body)
			hsWantJSONError(t, r, 400, "invalid_request")
			hsWantStoreUnchanged(t, before, false)
			k.wantRedeemsOnce(t, c)
		})
	}
}

// ---------------------------------------------------------------------------
// Many parameters, large values

func TestHostileParameterCountIsCappedAndA60KBValueFitsMaxRequestSize(t *testing.T) {
	// Caddy refuses request heads over 16 KiB by default (431, before any
	// handler); raised here so that huge queries reach the gateway.
	c := hsStart(t, "servers {\n\t\tmax_header_size 256KiB\n\t}", hsBlock("64KiB"))
	auth := ctBasic(ctAppID, ctAppSecret)

	// n distinct three-character extension names (upper case and digits:
	// no OAuth parameter looks like that) with value "1".
	names := func(n int) []string {
		const a = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
		out := make([]string, 0, n)
		for i := 0; len(out) < n; i++ {
			out = append(out, string([]byte{a[i/(36*36)%36], a[i/36%36], a[i%36]}))
		}
		return out
	}
	pairs := func(n int) string {
		var b strings.Builder
		for _, k := range names(n) {
			b.WriteString("&" + k + "=1")
		}
		return b.String()
	}
	base := ctAppForm()

	// An authorization request has a few dozen parameters; the gateway
	// takes at most 1,000 (net/url would parse 10,000, at some 30 times the
	// body in allocations, before client authentication).
	t.Run("push_of_1000_parameters_is_accepted_and_forwarded_exactly", func(t *testing.T) {
		body := base.Encode() + pairs(1000-len(base))
		hsWantPARAccepted(t, c, body, auth, ctAppID, hsParsed(t, body))
	})
	for _, n := range []int{1001, 10000, 10001} {
		t.Run("push_of_"+strconv.Itoa(n)+"_parameters_is_400_invalid_request", func(t *testing.T) {
			body := base.Encode() + pairs(n-len(base))
			if len(body) > 64<<10 {
				t.Fatalf("test bug: %d bytes", len(body))
			}
			hsWantPARRejected(t, c, body, auth, 400, "invalid_request")
		})
	}
	t.Run("push_with_a_60KB_state_is_accepted_and_forwarded_exactly", func(t *testing.T) {
		f := ctWith(base, "state", strings.Repeat("s", 60<<10))
		hsWantPARAccepted(t, c, f.Encode(), auth, ctAppID, f)
	})
	t.Run("push_with_a_60KB_extension_name_is_accepted_and_forwarded_exactly", func(t *testing.T) {
		f := ctWith(base, strings.Repeat("n", 60<<10), "1")
		hsWantPARAccepted(t, c, f.Encode(), auth, ctAppID, f)
	})

	// At the authorization endpoint, extra parameters are ignored however
	// many.
	t.Run("redemption_with_998_extra_parameters_forwards_only_the_pushed", func(t *testing.T) {
		hsRunAuthz(t, c, hsAuthzCase{target: "/authorize?client_id=web-app&request_uri={URI}" + pairs(998), redeemed: true})
	})
	t.Run("redemption_with_a_60KB_extra_value_forwards_only_the_pushed", func(t *testing.T) {
		hsRunAuthz(t, c, hsAuthzCase{target: "/authorize?client_id=web-app&request_uri={URI}&state=" + strings.Repeat("s", 60<<10), redeemed: true})
	})
	for _, n := range []int{1001, 10000, 10001} {
		extra := pairs(n - 2)
		t.Run("GET_redemption_with_"+strconv.Itoa(n)+"_parameters_is_400_and_takes_nothing", func(t *testing.T) {
			hsRunAuthz(t, c, hsAuthzCase{target: "/authorize?client_id=web-app&request_uri={URI}" + extra, status: 400, code: "invalid_request"})
		})
		t.Run("POST_redemption_with_"+strconv.Itoa(n)+"_parameters_is_400_and_takes_nothing", func(t *testing.T) {
			hsRunAuthz(t, c, hsAuthzCase{method: "POST", target: "/authorize", body: "client_id=web-app&request_uri={URI}" + extra, status: 400, code: "invalid_request"})
		})
		t.Run("POST_redemption_with_"+strconv.Itoa(n)+"_parameters_in_the_query_is_400_and_takes_nothing", func(t *testing.T) {
			hsRunAuthz(t, c, hsAuthzCase{method: "POST", target: "/authorize?" + strings.TrimPrefix(pairs(n), "&"), body: "client_id=web-app&request_uri={URI}", status: 400, code: "invalid_request"})
		})
	}
}

// ---------------------------------------------------------------------------
// Bodies: too large, slow, truncated, lying about their length

func TestHostileOversizedBodiesAre413WithoutReadingThemWhole(t *testing.T) {
	c := hsStart(t, "", hsBlock("2KiB"))
	auth := ctBasic(ctAppID, ctAppSecret)
	big := hsAppBody("state", strings.Repeat("s", 60<<10))

	t.Run("PAR_60KB_value_with_Content-Length_is_413", func(t *testing.T) {
		hsWantPARRejected(t, c, big, auth, http.StatusRequestEntityTooLarge, "invalid_request")
	})
	t.Run("PAR_60KB_value_chunked_is_413", func(t *testing.T) {
		k := hsPushCanary(t, c)
		before := hsSnap()
		h := http.Header{"Content-Type": {"application/x-www-form-urlencoded"}, "Authorization": auth["Authorization"]}
		r := c.do(t, http.MethodPost, "/par", io.MultiReader(strings.NewReader(big)), h) // no length: chunked
		hsWantJSONError(t, r, http.StatusRequestEntityTooLarge, "invalid_request")
		hsWantStoreUnchanged(t, before, false)
		k.wantRedeemsOnce(t, c)
	})
	t.Run("authorize_POST_of_60KB_is_400_and_takes_nothing", func(t *testing.T) {
		hsRunAuthz(t, c, hsAuthzCase{method: "POST", target: "/authorize", body: "client_id=web-app&request_uri={URI}&x=" + strings.Repeat("x", 60<<10), status: 400, code: "invalid_request"})
	})

	// A chunked stream far beyond max_request_size: the 413 comes while the
	// client is still sending; the gateway reads max_request_size + 1
	// bytes, net/http discards at most 256 KiB more, then the connection
	// closes.
	for _, target := range []string{"/par", "/authorize"} {
		t.Run(target+"_endless_chunked_body_is_answered_before_it_ends", func(t *testing.T) {
			k := hsPushCanary(t, c)
			before := hsSnap()
			conn := hsDial(t, c)
			if _, err := io.WriteString(conn, hsHead(c, http.MethodPost, target, -1, hsBasicLine(),
				"Content-Type: application/x-www-form-urlencoded", "Transfer-Encoding: chunked")); err != nil {
				t.Fatal(err)
			}
			const total = 32 << 20
			chunk := []byte(fmt.Sprintf("%x\r\n%s\r\n", 16<<10, strings.Repeat("s", 16<<10)))
			var sent atomic.Int64
			stop, done := make(chan struct{}), make(chan struct{})
			go func() {
				defer close(done)
				for sent.Load() < total {
					select {
					case <-stop:
						return
					default:
					}
					n, err := conn.Write(chunk)
					sent.Add(int64(n))
					if err != nil {
						return
					}
				}
			}()
			r, err := hsReadResp(t, bufio.NewReader(conn), http.MethodPost)
			close(stop)
			_ = conn.SetDeadline(time.Now()) // unblock the writer
			<-done
			if err != nil {
				t.Fatalf("no response to an endless chunked body: %v", err)
			}
			if target == "/par" {
				hsWantJSONError(t, r, http.StatusRequestEntityTooLarge, "invalid_request")
			} else {
				ctWantHTMLError(t, r, http.StatusBadRequest, "invalid_request")
			}
			if n := sent.Load(); n >= total {
				t.Errorf("the client could send all %d bytes before the answer: the body was read whole", n)
			} else {
				t.Logf("answered after %d bytes had been sent", n)
			}
			hsWantStoreUnchanged(t, before, false)
			k.wantRedeemsOnce(t, c)
		})
	}
}

func TestHostileSlowTruncatedAndLyingBodies(t *testing.T) {
	// The gateway's own bound applies (the site sets no read_body); 800 ms
	// stands in for the default 10 s.
	restore := caddymodule.SetBodyReadTimeoutForTest(800 * time.Millisecond)
	defer restore()
	// PAR is required, so that no prefix of a redemption body passes
	// through as a plain authorization request.
	c := hsStart(t, "", hsBlock("2KiB", "require_par"))
	push := ctAppForm().Encode()

	type target struct {
		name, path string
		body       func(k hsCanary) string
		lines      []string
		// wantErr checks the answer to a body that never arrived whole.
		wantErr func(t *testing.T, r ctResp)
	}
	targets := []target{
		{"PAR", "/par", func(hsCanary) string { return push }, []string{hsBasicLine()},
			func(t *testing.T, r ctResp) { hsWantJSONError(t, r, 400, "invalid_request") }},
		{"authorize_POST", "/authorize", func(k hsCanary) string { return "client_id=web-app&request_uri=" + url.QueryEscape(k.uri) }, nil,
			func(t *testing.T, r ctResp) { ctWantHTMLError(t, r, 400, "invalid_request") }},
	}
	form := "Content-Type: application/x-www-form-urlencoded"

	for _, tg := range targets {
		t.Run(tg.name+"_body_trickled_a_byte_per_100ms_is_cut_off", func(t *testing.T) {
			k := hsPushCanary(t, c)
			before := hsSnap()
			body := tg.body(k)
			conn := hsDial(t, c)
			if _, err := io.WriteString(conn, hsHead(c, http.MethodPost, tg.path, len(body), append(tg.lines, form)...)); err != nil {
				t.Fatal(err)
			}
			var sent atomic.Int64
			stop, done := make(chan struct{}), make(chan struct{})
			go func() {
				defer close(done)
				for i := 0; i < len(body); i++ {
					select {
					case <-stop:
						return
					case <-time.After(100 * time.Millisecond):
					}
					if _, err := conn.Write([]byte{body[i]}); err != nil {
						return
					}
					sent.Add(1)
				}
			}()
			start := time.Now()
			// The whole body would take len(body)/10 s (about 40 s).
			_ = conn.SetReadDeadline(start.Add(5 * time.Second))
			r, err := hsReadResp(t, bufio.NewReader(conn), http.MethodPost)
			close(stop)
			<-done
			if err != nil {
				t.Fatalf("no answer within 5 s while the body trickles (%d of %d bytes sent): nothing bounds a slow body: %v", sent.Load(), len(body), err)
			}
			t.Logf("cut off after %v, %d of %d bytes", time.Since(start).Round(time.Millisecond), sent.Load(), len(body))
			tg.wantErr(t, r)
			hsWantStoreUnchanged(t, before, false)
			k.wantRedeemsOnce(t, c)
		})

		t.Run(tg.name+"_truncated_body_then_close_is_400", func(t *testing.T) {
			k := hsPushCanary(t, c)
			before := hsSnap()
			body := tg.body(k)
			conn := hsDial(t, c)
			if _, err := io.WriteString(conn, hsHead(c, http.MethodPost, tg.path, len(body)+100, append(tg.lines, form)...)+body); err != nil {
				t.Fatal(err)
			}
			_ = conn.(*net.TCPConn).CloseWrite()
			r, err := hsReadResp(t, bufio.NewReader(conn), http.MethodPost)
			if err != nil {
				t.Fatalf("no answer to a truncated body: %v", err)
			}
			tg.wantErr(t, r)
			hsWantStoreUnchanged(t, before, false)
			k.wantRedeemsOnce(t, c)
		})

		t.Run(tg.name+"_Content-Length_shorter_than_the_body_is_not_a_success", func(t *testing.T) {
			k := hsPushCanary(t, c)
			before, beforeUp := hsSnap(), c.up.count()
			body := tg.body(k)
			// Content-Length 40: the push is cut after its first two
			// parameters, the redemption inside its request_uri.
			conn := hsDial(t, c)
			if _, err := io.WriteString(conn, hsHead(c, http.MethodPost, tg.path, 40, append(tg.lines, form)...)+body); err != nil {
				t.Fatal(err)
			}
			br := bufio.NewReader(conn)
			r, err := hsReadResp(t, br, http.MethodPost)
			if err != nil {
				t.Fatalf("no answer: %v", err)
			}
			if r.Status < 400 {
				t.Errorf("want an error for the 40-byte prefix, got %s", r)
			}
			// The rest of the bytes are a new "request" on the connection:
			// garbage, never a success.
			_ = conn.SetReadDeadline(time.Now().Add(time.Second))
			if r2, err := hsReadResp(t, br, http.MethodPost); err == nil && r2.Status < 400 {
				t.Errorf("the rest of the body was served as a request: %s", r2)
			}
			ctWantUpstreamUntouched(t, c.up, beforeUp)
			hsWantStoreUnchanged(t, before, false)
			k.wantRedeemsOnce(t, c)
		})
	}

	t.Run("conflicting_Content-Lengths_are_refused", func(t *testing.T) {
		k := hsPushCanary(t, c)
		before := hsSnap()
		r := hsRaw(t, c, http.MethodPost, "/par", []string{hsBasicLine(), form, "Content-Length: 10"}, push)
		if r.Status != http.StatusBadRequest {
			t.Errorf("want 400, got %s", r)
		}
		hsWantStoreUnchanged(t, before, false)
		k.wantRedeemsOnce(t, c)
	})

	t.Run("a_body_that_arrives_in_time_is_not_cut_off", func(t *testing.T) {
		// Slow but within the bound: 10 pieces 50 ms apart.
		before := hsSnap()
		conn := hsDial(t, c)
		if _, err := io.WriteString(conn, hsHead(c, http.MethodPost, "/par", len(push), hsBasicLine(), form)); err != nil {
			t.Fatal(err)
		}
		step := len(push)/10 + 1
		for i := 0; i < len(push); i += step {
			time.Sleep(50 * time.Millisecond)
			if _, err := io.WriteString(conn, push[i:min(i+step, len(push))]); err != nil {
				t.Fatal(err)
			}
		}
		r, err := hsReadResp(t, bufio.NewReader(conn), http.MethodPost)
		if err != nil || r.Status != http.StatusCreated {
			t.Fatalf("want 201, got %v %s", err, r)
		}
		if hsSnap().PutOK != before.PutOK+1 {
			t.Error("not stored")
		}
	})
}

// The bound is on reading the body only: a redemption whose upstream is
// slower than the bound still completes.
func TestHostileBodyReadBoundDoesNotCutSlowUpstreams(t *testing.T) {
	restore := caddymodule.SetBodyReadTimeoutForTest(300 * time.Millisecond)
	defer restore()
	up := ctNewUpstream(t, map[string]http.HandlerFunc{"/authorize": func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(time.Second)
		_, _ = io.WriteString(w, ctUpstreamOK)
	}})
	c := hsStartUp(t, up, "", hsBlock("2KiB"))
	for _, tc := range []hsAuthzCase{
		{name: "POST_redemption_in_the_body", method: "POST", target: "/authorize", body: "client_id=web-app&request_uri={URI}", redeemed: true},
		{name: "POST_redemption_in_the_query_with_an_empty_body", method: "POST", target: "/authorize?client_id=web-app&request_uri={URI}", redeemed: true},
		{name: "GET_redemption", target: "/authorize?client_id=web-app&request_uri={URI}", redeemed: true},
	} {
		t.Run(tc.name+"_waits_for_a_slow_upstream", func(t *testing.T) { hsRunAuthz(t, c, tc) })
	}
}

// An operator's read_body timeout is Caddy's to enforce; the gateway does
// not lengthen it with its own bound.
func TestHostileOperatorReadTimeoutIsNotLengthened(t *testing.T) {
	restore := caddymodule.SetBodyReadTimeoutForTest(time.Minute)
	defer restore()
	c := hsStart(t, "servers {\n\t\ttimeouts {\n\t\t\tread_body 700ms\n\t\t}\n\t}", hsBlock("2KiB"))
	k := hsPushCanary(t, c)
	before := hsSnap()
	body := ctAppForm().Encode()
	conn := hsDial(t, c)
	if _, err := io.WriteString(conn, hsHead(c, http.MethodPost, "/par", len(body), hsBasicLine(), "Content-Type: application/x-www-form-urlencoded")+body[:10]); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_ = conn.SetReadDeadline(start.Add(5 * time.Second))
	r, err := hsReadResp(t, bufio.NewReader(conn), http.MethodPost)
	if err != nil {
		t.Fatalf("read_body 700ms did not cut the stalled body off within 5 s: %v", err)
	}
	t.Logf("cut off after %v", time.Since(start).Round(time.Millisecond))
	hsWantJSONError(t, r, 400, "invalid_request")
	hsWantStoreUnchanged(t, before, false)
	k.wantRedeemsOnce(t, c)
}

// ---------------------------------------------------------------------------
// Look-alike paths of the authorization endpoint

func TestHostileAuthorizationEndpointPathLookalikesCannotBypassPAR(t *testing.T) {
	c := hsStart(t, "", hsBlock("2KiB"))
	strict := "client_id=" + ctStrictID + "&response_type=code&redirect_uri=" + url.QueryEscape(ctStrictRedir) + "&state=s"
	// Keycloak 26 serves its authorization endpoint at .../auth/ too;
	// servlet containers drop ;parameters; some servers clean dot segments
	// and double slashes, turn backslashes into slashes or match paths
	// case-insensitively. Passed through, each would reach the upstream's
	// authorization endpoint with require_par unchecked.
	for _, p := range []string{
		"/authorize/",
		"/authorize//",
		"//authorize",
		"/./authorize",
		"/x/../authorize",
		"/authorize/.",
		"/authorize;jsessionid=1",
		"/authorize;",
		"/authorize;/",
		`/authorize\`,
		"/authorize%2F",
		"/authorize%5C",
		"/AUTHORIZE",
		"/Authorize",
		"/%2E/authorize",
	} {
		t.Run(strconv.Quote(p)+"_is_400_not_passed_through", func(t *testing.T) {
			before, beforeUp := hsSnap(), c.up.count()
			r := hsRaw(t, c, http.MethodGet, p+"?"+strict, nil, "")
			ctWantHTMLError(t, r, http.StatusBadRequest, "invalid_request")
			ctWantUpstreamUntouched(t, c.up, beforeUp)
			hsWantStoreUnchanged(t, before, false)
		})
	}
	t.Run("a_request_uri_at_a_lookalike_path_is_not_taken", func(t *testing.T) {
		k := hsPushCanary(t, c)
		before, beforeUp := hsSnap(), c.up.count()
		r := hsRaw(t, c, http.MethodGet, "/authorize/?client_id=web-app&request_uri="+url.QueryEscape(k.uri), nil, "")
		ctWantHTMLError(t, r, http.StatusBadRequest, "invalid_request")
		ctWantUpstreamUntouched(t, c.up, beforeUp)
		hsWantStoreUnchanged(t, before, false)
		k.wantRedeemsOnce(t, c)
	})
	// Pages below the endpoint and other paths still pass through.
	for _, p := range []string{"/authorize/callback", "/authorizex", "/authoriz", "/x/authorize"} {
		t.Run(strconv.Quote(p)+"_still_passes_through", func(t *testing.T) {
			beforeUp := c.up.count()
			r := hsRaw(t, c, http.MethodGet, p+"?"+strict, nil, "")
			if r.Status != http.StatusNotFound || c.up.count() != beforeUp+1 {
				t.Errorf("want the upstream's 404, got %s", r)
			}
		})
	}
}
