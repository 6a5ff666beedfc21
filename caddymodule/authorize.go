package caddymodule

import (
	"bytes"
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

// nextHandler is the rest of the Caddy handler chain (normally
// reverse_proxy to the IdP).
type nextHandler func(http.ResponseWriter, *http.Request) error

// maxUpstreamHops bounds how many same-origin upstream redirects the gateway
// follows on the browser's behalf after a redemption.
const maxUpstreamHops = 5

// serveAuthorize handles the authorization endpoint: requests with one of
// our request_uris are redeemed and forwarded with the pushed parameters;
// others are passed through, or rejected when PAR is required.
func (g *gateway) serveAuthorize(w http.ResponseWriter, r *http.Request, next nextHandler) error {
	if r.Method != http.MethodGet && r.Method != http.MethodPost {
		e := newError(http.StatusMethodNotAllowed, ErrInvalidRequest, "the authorization endpoint accepts GET and POST")
		e.header = http.Header{"Allow": {"GET, POST"}}
		g.logOutcome(r, epAuthorize, "", "", "rejected", e.Code, "")
		writeBrowserError(w, r, e)
		return nil
	}
	// OpenID Connect Core §3.1.2.1: GET with a query, or POST with a form.
	var params url.Values
	var body []byte
	var err error
	if r.Method == http.MethodGet {
		params, err = parseParams(r.URL.RawQuery)
	} else {
		boundBodyRead(w, r)
		body, params, err = g.readAuthorizeForm(r)
		if err == nil && r.URL.RawQuery != "" {
			// The query of a POST counts too: upstreams that merge query
			// and body (servlet getParameter, for one) would otherwise act
			// on a client_id or request_uri never checked here. A
			// parameter in both is then sent twice (RFC 6749 §3.1).
			var q url.Values
			if q, err = parseParams(r.URL.RawQuery); err == nil {
				for k, vs := range q {
					params[k] = append(params[k], vs...)
				}
			}
		}
	}
	if err != nil {
		e := badRequest(ErrInvalidRequest, err.Error())
		g.logOutcome(r, epAuthorize, "", "", "rejected", e.Code, "")
		writeBrowserError(w, r, e)
		return nil
	}

	requestURI := params.Get("request_uri")
	if strings.HasPrefix(requestURI, requestURIPrefix) {
		return g.redeem(w, r, next, params)
	}

	// RFC 6749 §3.1: no parameter twice. A repeated client_id is refused
	// outright: the upstream might act on a different value than the one
	// whose PAR policy was checked here.
	if len(params["client_id"]) > 1 {
		e := badRequest(ErrInvalidRequest, "client_id must be sent once")
		g.logOutcome(r, epAuthorize, "", "", "rejected", e.Code, "")
		writeBrowserError(w, r, e)
		return nil
	}
	clientID := params.Get("client_id")
	c := g.clients[clientID]
	// RFC 9126 §4 (global) and §6 (per client): requests that did not come
	// through the PAR endpoint are rejected.
	if g.requirePAR || (c != nil && c.requirePAR) {
		desc := "pushed authorization requests are required: push the request to the PAR endpoint and send only client_id and request_uri"
		switch {
		case params.Has("request"):
			desc = "request objects must be pushed to the PAR endpoint"
		case requestURI != "":
			desc = "request_uri must be one issued by the PAR endpoint"
		}
		g.rejectUnpushed(w, r, next, c, params, badRequest(ErrInvalidRequest, desc))
		return nil
	}
	if body != nil {
		r.Body = io.NopCloser(bytes.NewReader(body))
		r.ContentLength = int64(len(body))
	}
	g.logOutcome(r, epAuthorize, logID(clientID), "", "passed_through", "", "")
	return next(w, withoutGatewayCookies(r))
}

// readAuthorizeForm reads a POSTed authorization request, keeping the raw
// body so that a request passed through reaches the upstream unchanged.
func (g *gateway) readAuthorizeForm(r *http.Request) ([]byte, url.Values, error) {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	// RFC 9110 §5.3: one Content-Type. With two, the upstream could parse
	// the body as something else than what was checked here.
	if err != nil || mt != "application/x-www-form-urlencoded" || len(r.Header.Values("Content-Type")) != 1 {
		return nil, nil, errors.New("a POSTed authorization request must be application/x-www-form-urlencoded")
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, g.maxRequestSize+1))
	if err != nil {
		return nil, nil, errors.New("could not read the request body")
	}
	if int64(len(body)) > g.maxRequestSize {
		return nil, nil, errors.New("the request body exceeds " + strconv.FormatInt(g.maxRequestSize, 10) + " bytes")
	}
	params, err := parseParams(string(body))
	switch {
	case errors.Is(err, errTooManyParams):
		return nil, nil, err
	case err != nil:
		return nil, nil, errors.New("malformed form body")
	}
	return body, params, nil
}

// rejectUnpushed answers a request that should have been pushed. The error
// goes back to the client when the redirect_uri is registered for it
// (RFC 6749 §4.1.2.1); otherwise it is shown to the user, never redirected.
func (g *gateway) rejectUnpushed(w http.ResponseWriter, r *http.Request, next nextHandler, c *client, params url.Values, e *oauthError) {
	ru := params.Get("redirect_uri")
	if c != nil && len(params["redirect_uri"]) == 1 && c.redirectURIs[ru] && len(params["state"]) <= 1 {
		g.logOutcome(r, epAuthorize, c.id, "", "rejected", e.Code, "")
		redirectError(w, ru, params.Get("state"), g.responseIssuer(r, next), e)
		return
	}
	id := logID(params.Get("client_id"))
	switch {
	case c == nil && g.auth.delegatedClient(params.Get("client_id")) != nil:
		e.Description += "; the error cannot be returned to the application because its redirect URIs are registered only at the authorization server"
	case c == nil:
		e.Description += "; the error cannot be returned to the application because the client is unknown"
	default:
		id = c.id
		e.Description += "; the error cannot be returned to the application because the redirect_uri is missing or not registered"
	}
	g.logOutcome(r, epAuthorize, id, "", "rejected", e.Code, "")
	writeBrowserError(w, r, e)
}

// redeem consumes a request_uri and forwards the pushed request upstream
// in place of whatever the browser sent (RFC 9126 §4).
func (g *gateway) redeem(w http.ResponseWriter, r *http.Request, next nextHandler, params url.Values) error {
	clientID := params.Get("client_id")
	fail := func(status int, code, desc, ref string) error {
		g.logOutcome(r, epRedeem, logID(clientID), "", "rejected", code, ref)
		writeBrowserError(w, r, newError(status, code, desc))
		return nil
	}
	if len(params["request_uri"]) > 1 || len(params["client_id"]) > 1 {
		return fail(http.StatusBadRequest, ErrInvalidRequestURI, "client_id and request_uri must each be sent once", "")
	}
	// RFC 9126 §4: the client_id is required and MUST match the pushed one.
	if clientID == "" {
		return fail(http.StatusBadRequest, ErrInvalidRequestURI, "client_id is required with request_uri", "")
	}
	ref := params.Get("request_uri")[len(requestURIPrefix):]
	if !validRef(ref) {
		return fail(http.StatusBadRequest, ErrInvalidRequestURI, "request_uri is unknown, expired or already used", "")
	}
	rd := Redemption{ClientID: clientID}
	var cookieName, cookieValue string
	if g.reuseGrace > 0 {
		cookieName = graceCookieName(ref)
		cookieValue, rd.Binding = newGraceSecret()
		rd.Grace = g.reuseGrace
		rd.Presented = presentedGrace(r, cookieName)
	}
	taken, err := g.store.Take(r.Context(), g.storeKey(ref), rd)
	if err != nil {
		switch {
		case errors.Is(err, ErrExpired):
			return fail(http.StatusBadRequest, ErrInvalidRequestURI, "request_uri has expired", ref)
		case errors.Is(err, ErrClientMismatch):
			return fail(http.StatusBadRequest, ErrInvalidRequestURI, "request_uri was not issued to this client", ref)
		case errors.Is(err, ErrNotFound):
			return fail(http.StatusBadRequest, ErrInvalidRequestURI, "request_uri is unknown, expired or already used", ref)
		default:
			// An unavailable store logs its outage itself, once per interval.
			if !errors.Is(err, ErrStoreUnavailable) {
				g.logger.Error("pushed request store failed", zap.Error(err))
			}
			return fail(http.StatusServiceUnavailable, ErrTemporarilyUnavailable, "the authorization request could not be processed; retry later", ref)
		}
	}
	pushed := taken.PushedRequest
	values, err := url.ParseQuery(pushed.Params)
	if err != nil {
		g.logger.Error("stored pushed request is malformed", zap.Error(err))
		return fail(http.StatusInternalServerError, ErrServerError, "the pushed request could not be read", ref)
	}
	// RFC 9126 §7.4: the client's policy is checked again at redemption, as
	// it may have changed (a config reload) since the push.
	c := g.clients[pushed.ClientID]
	if c == nil {
		c = g.auth.delegatedClient(pushed.ClientID) // nil unless upstream_client_auth
	}
	if c == nil {
		return fail(http.StatusBadRequest, ErrInvalidRequestURI, "the client is no longer registered", ref)
	}
	if oerr := validatePush(c, values); oerr != nil {
		return fail(http.StatusBadRequest, ErrInvalidRequestURI, "the pushed request no longer satisfies the client's policy: "+oerr.Description, ref)
	}
	// Issue 10 §2: the browser binding of gateway PKCE (pkce.go).
	var berr *oauthError
	if pushed.Params, berr = g.bindRedemption(w, r, c, values, pushed.Params); berr != nil {
		return fail(berr.Status, berr.Code, berr.Description, ref)
	}

	fwd := r.Clone(r.Context())
	stripGraceCookies(fwd.Header)
	fwd.Header.Del("Content-Length")
	fwd.Header.Del("Content-Type")
	fwd.URL.RawQuery = ""
	fwd.Body = http.NoBody
	fwd.ContentLength = 0
	if g.forwardPOST {
		// OpenID Connect Core §3.1.2.1 form serialization: no URL length
		// limit upstream.
		fwd.Method = http.MethodPost
		fwd.Body = io.NopCloser(strings.NewReader(pushed.Params))
		fwd.ContentLength = int64(len(pushed.Params))
		fwd.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	} else {
		fwd.Method = http.MethodGet
		fwd.URL.RawQuery = pushed.Params
	}
	fwd.RequestURI = fwd.URL.RequestURI()
	if taken.Again {
		// The same browser within the grace (a reload, a retry): the same
		// pushed request again, and no new cookie, so the window stays the
		// one the first redemption opened.
		g.logOutcome(r, epRedeem, c.id, "", "redeemed_again", "", ref)
		return g.forwardKeepingPushedPrivate(w, fwd, next, values)
	}
	if rd.Grace > 0 {
		// The store keeps the grace until min(now + grace, expiry); the
		// cookie lives no longer.
		life := min(rd.Grace, pushed.ExpiresAt.Sub(g.now()))
		http.SetCookie(w, g.graceCookie(cookieName, cookieValue, life))
	}
	g.logOutcome(r, epRedeem, c.id, "", "redeemed", "", ref)
	return g.forwardKeepingPushedPrivate(w, fwd, next, values)
}

// forwardKeepingPushedPrivate hands the redeemed request upstream. PAR's
// promise is that pushed parameters never reach the user agent; some IdPs
// (Dex) answer with a same-origin redirect that repeats the whole query.
// Such redirects are followed here, server-side, until the upstream answers
// with something that does not carry pushed values.
func (g *gateway) forwardKeepingPushedPrivate(w http.ResponseWriter, r *http.Request, next nextHandler, pushed url.Values) error {
	baseHeader := w.Header().Clone()
	redirectTo := pushed.Get("redirect_uri")
	var cookies []string
	for hop := 0; ; hop++ {
		var buf bytes.Buffer
		rec := caddyhttp.NewResponseRecorder(w, &buf, func(status int, h http.Header) bool {
			return status >= 300 && status < 400 && leaksPushed(h.Get("Location"), r, redirectTo, pushed)
		})
		if err := next(rec, r); err != nil {
			return err
		}
		if !rec.Buffered() {
			return nil
		}
		// The recorder shares the header map with w: keep the cookies the
		// upstream set on this hop, then reset it for the next one.
		upstreamHeader := w.Header().Clone()
		for k := range w.Header() {
			delete(w.Header(), k)
		}
		for k, v := range baseHeader {
			w.Header()[k] = v
		}
		cookies = append(cookies, upstreamHeader.Values("Set-Cookie")...)
		for _, sc := range cookies {
			w.Header().Add("Set-Cookie", sc)
		}
		if hop+1 >= maxUpstreamHops {
			g.logger.Warn("upstream kept redirecting with pushed parameters", zap.Int("hops", hop+1))
			writeBrowserError(w, r, newError(http.StatusBadGateway, ErrServerError, "the authorization server redirected too many times"))
			return nil
		}
		loc, err := r.URL.Parse(upstreamHeader.Get("Location"))
		if err != nil {
			return caddyhttp.Error(http.StatusBadGateway, err)
		}
		nr := r.Clone(r.Context())
		nr.Method = http.MethodGet
		nr.Body = http.NoBody
		nr.ContentLength = 0
		nr.Header.Del("Content-Type")
		nr.Header.Del("Content-Length")
		nr.URL = &url.URL{Path: loc.Path, RawPath: loc.RawPath, RawQuery: loc.RawQuery}
		nr.RequestURI = nr.URL.RequestURI()
		for _, ck := range (&http.Response{Header: http.Header{"Set-Cookie": upstreamHeader.Values("Set-Cookie")}}).Cookies() {
			setCookie(nr, ck)
		}
		r = nr
	}
}

// leaksPushed reports whether an upstream redirect to location would put
// pushed values into the browser's address bar: a same-origin location
// whose query repeats a pushed parameter. Redirects to the client's
// redirect_uri are the authorization response and always go to the browser.
func leaksPushed(location string, r *http.Request, redirectURI string, pushed url.Values) bool {
	u, err := url.Parse(location)
	if location == "" || err != nil || u.RawQuery == "" {
		return false
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	target := (&url.URL{Scheme: scheme, Host: r.Host, Path: r.URL.Path}).ResolveReference(u)
	if !strings.EqualFold(target.Host, r.Host) {
		return false
	}
	if redirectURI != "" && withoutQuery(target) == strings.SplitN(redirectURI, "?", 2)[0] {
		return false
	}
	q := target.Query()
	for k, vs := range pushed {
		switch k {
		case "client_id", "state", "response_type", "response_mode":
			// Not secret, and expected in upstream-internal URLs.
			continue
		}
		if v := q.Get(k); v != "" && v == vs[0] {
			return true
		}
	}
	return false
}

func withoutQuery(u *url.URL) string {
	c := *u
	c.RawQuery, c.Fragment, c.ForceQuery = "", "", false
	return c.String()
}

// setCookie sets or replaces one cookie in a request's Cookie header.
func setCookie(r *http.Request, ck *http.Cookie) {
	cs := r.Cookies()
	r.Header.Del("Cookie")
	for _, c := range cs {
		if c.Name != ck.Name {
			r.AddCookie(c)
		}
	}
	if ck.MaxAge >= 0 && ck.Value != "" {
		r.AddCookie(&http.Cookie{Name: ck.Name, Value: ck.Value})
	}
}
