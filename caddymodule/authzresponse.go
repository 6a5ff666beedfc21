package caddymodule

// Authorization responses passing through the gateway (issue 10 §1-2): an
// upstream redirect to a registered redirect_uri carrying code or error
// gets iss (RFC 9207) when it lacks it, is refused when its iss is not
// the issuer, and (pkce.go) has its code bound to the pushed request.
//
// The response usually does not come from the authorization endpoint:
// Keycloak answers the login form's POST at /realms/<r>/login-actions/...,
// Dex at /dex/approval. So every response of every path the gateway fronts
// is watched, cheaply: only WriteHeader of a 3xx with a Location is looked
// at, bodies are never buffered.

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// watchAuthzResponse wraps w so that authorization responses written
// through it are checked; w itself when nothing is to be checked.
func (g *gateway) watchAuthzResponse(w http.ResponseWriter, r *http.Request, next nextHandler) http.ResponseWriter {
	l := g.lift
	if l == nil || (!l.addIss && !l.gatewayPKCE) || len(l.redirects) == 0 {
		return w
	}
	return &authzResponseWriter{ResponseWriterWrapper: &caddyhttp.ResponseWriterWrapper{ResponseWriter: w}, g: g, r: r, next: next}
}

// authzResponseWriter watches the status line of one response. After it
// replaced a response by an error page, whatever the upstream writes
// next is discarded.
type authzResponseWriter struct {
	*caddyhttp.ResponseWriterWrapper
	g       *gateway
	r       *http.Request
	next    nextHandler
	wrote   bool
	discard bool
	// redeemed is the browser binding a redemption made in this very
	// request (pkce.go), for an upstream that answers it with the
	// authorization response at once (an existing session).
	redeemed *browserBinding
}

func (aw *authzResponseWriter) WriteHeader(code int) {
	if aw.wrote {
		return
	}
	if code >= 100 && code < 200 {
		// Informational (103, 101 before a hijack): not the final answer.
		aw.ResponseWriter.WriteHeader(code)
		return
	}
	aw.wrote = true
	if code >= 300 && code < 400 {
		h := aw.Header()
		if loc := h.Get("Location"); loc != "" {
			if e := aw.g.checkAuthzResponse(aw, h, loc); e != nil {
				aw.discard = true
				for k := range h {
					delete(h, k)
				}
				writeBrowserError(aw.ResponseWriter, aw.r, e)
				return
			}
		}
	}
	aw.ResponseWriter.WriteHeader(code)
}

func (aw *authzResponseWriter) Write(p []byte) (int, error) {
	if !aw.wrote {
		aw.WriteHeader(http.StatusOK)
	}
	if aw.discard {
		return len(p), nil
	}
	return aw.ResponseWriter.Write(p)
}

// ReadFrom keeps the wrapper in the path of io.Copy's fast path.
func (aw *authzResponseWriter) ReadFrom(src io.Reader) (int64, error) {
	if !aw.wrote {
		aw.WriteHeader(http.StatusOK)
	}
	if aw.discard {
		return io.Copy(io.Discard, src)
	}
	return aw.ResponseWriterWrapper.ReadFrom(src)
}

// Flush and Hijack are there for callers that type-assert instead of
// using http.ResponseController (which finds them through Unwrap).
func (aw *authzResponseWriter) Flush() {
	_ = http.NewResponseController(aw.ResponseWriter).Flush()
}

func (aw *authzResponseWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return http.NewResponseController(aw.ResponseWriter).Hijack()
}

type authzWriterKey struct{}

// withAuthzWriter lets a redemption in r find the writer watching its
// response (see redeemed).
func withAuthzWriter(r *http.Request, w http.ResponseWriter) *http.Request {
	aw, ok := w.(*authzResponseWriter)
	if !ok {
		return r
	}
	r = r.WithContext(context.WithValue(r.Context(), authzWriterKey{}, aw))
	aw.r = r
	return r
}

func authzWriterFrom(ctx context.Context) *authzResponseWriter {
	aw, _ := ctx.Value(authzWriterKey{}).(*authzResponseWriter)
	return aw
}

// authzResponse is a redirect to a registered redirect_uri that carries
// an authorization response.
type authzResponse struct {
	// targets are the registered URIs (and their clients) it goes to.
	targets []redirectTarget
	// params are the response parameters: the query, or the fragment in
	// fragment response mode.
	params   url.Values
	fragment bool
}

// parseAuthzResponse recognises an authorization response in a Location:
// its part before the query must be that of a registered redirect URI,
// with that URI's own query at the start of the query, and the response
// parameters (query, or fragment) must have code or error.
func (l *lift) parseAuthzResponse(loc string) (authzResponse, bool) {
	beforeFrag, frag, hasFrag := strings.Cut(loc, "#")
	base, query, _ := strings.Cut(beforeFrag, "?")
	cands := l.redirects[base]
	if len(cands) == 0 {
		return authzResponse{}, false
	}
	var res authzResponse
	for _, t := range cands {
		if t.query == "" || query == t.query || strings.HasPrefix(query, t.query+"&") {
			res.targets = append(res.targets, t)
		}
	}
	if len(res.targets) == 0 {
		return authzResponse{}, false
	}
	if hasFrag {
		if fp, _ := url.ParseQuery(frag); fp.Has("code") || fp.Has("error") {
			res.params, res.fragment = fp, true
			return res, true
		}
	}
	if qp, _ := url.ParseQuery(query); qp.Has("code") || qp.Has("error") {
		res.params = qp
		return res, true
	}
	return authzResponse{}, false
}

// withParam appends one parameter to the response part (query or
// fragment) of loc, leaving every other byte as the upstream wrote it.
func withParam(loc string, fragment bool, name, value string) string {
	pair := name + "=" + url.QueryEscape(value)
	if fragment {
		if strings.HasSuffix(loc, "#") {
			return loc + pair
		}
		return loc + "&" + pair
	}
	beforeFrag, frag, hasFrag := strings.Cut(loc, "#")
	switch {
	case !strings.Contains(beforeFrag, "?"):
		beforeFrag += "?" + pair
	case strings.HasSuffix(beforeFrag, "?"):
		beforeFrag += pair
	default:
		beforeFrag += "&" + pair
	}
	if hasFrag {
		return beforeFrag + "#" + frag
	}
	return beforeFrag
}

// checkAuthzResponse looks at a redirect about to go to the browser. It
// changes h (Location, cookies) for an authorization response, or returns
// the error to show instead of forwarding it.
func (g *gateway) checkAuthzResponse(aw *authzResponseWriter, h http.Header, loc string) *oauthError {
	l := g.lift
	res, ok := l.parseAuthzResponse(loc)
	if !ok {
		return nil
	}
	if len(h.Values("Location")) > 1 {
		g.logOutcome(aw.r, epAuthzResponse, res.targets[0].clientID, "", "rejected", ErrServerError, "")
		return newError(http.StatusBadGateway, ErrServerError, "the authorization server's response has more than one Location")
	}
	if l.addIss {
		iss := g.authzIssuer(aw.r, aw.next)
		got := res.params["iss"]
		switch {
		case len(got) > 1:
			g.logOutcome(aw.r, epAuthzResponse, res.targets[0].clientID, "", "rejected", ErrServerError, "")
			return newError(http.StatusBadGateway, ErrServerError, "the authorization server's response carries iss more than once")
		case len(got) == 1 && (iss == "" || got[0] != iss):
			// RFC 9207 §2.4: a response naming another issuer must not
			// reach the client as if it were ours (mix-up).
			g.logOutcome(aw.r, epAuthzResponse, res.targets[0].clientID, "", "rejected", ErrServerError, "")
			return newError(http.StatusBadGateway, ErrServerError, "the authorization server's response names an issuer other than this one")
		case len(got) == 0 && iss == "":
			g.logger.Warn("the issuer is not known, so an authorization response cannot carry iss; set 'issuer'")
			g.logOutcome(aw.r, epAuthzResponse, res.targets[0].clientID, "", "rejected", ErrServerError, "")
			return newError(http.StatusBadGateway, ErrServerError, "the authorization response cannot be completed: the issuer is not known")
		case len(got) == 0:
			loc = withParam(loc, res.fragment, "iss", iss)
			h.Set("Location", loc)
		}
	}
	if l.gatewayPKCE {
		if e := g.captureCode(aw, h, res); e != nil {
			return e
		}
	}
	g.logOutcome(aw.r, epAuthzResponse, res.targets[0].clientID, "", "checked", "", "")
	return nil
}

// authzIssuer is the issuer that authorization responses carry: the
// configured one, else the one of the upstream's discovery document
// (probed when no client has fetched it yet), whether or not the upstream
// itself promises iss.
func (g *gateway) authzIssuer(r *http.Request, next nextHandler) string {
	if g.issuer != "" {
		return g.issuer
	}
	if m := g.learnedMeta.Load(); m != nil {
		return m.issuer
	}
	g.probeDiscovery(r, next)
	if m := g.learnedMeta.Load(); m != nil {
		return m.issuer
	}
	return ""
}

// liftIssuer is the iss of the gateway's own error redirects under
// add_iss (discovery then promises iss whatever the upstream says).
func (g *gateway) liftIssuer(r *http.Request, next nextHandler) (string, bool) {
	if g.lift == nil || !g.lift.addIss {
		return "", false
	}
	return g.authzIssuer(r, next), true
}

// checkLiftPush is what issue 10 adds to a push's validation: a response
// mode whose response the gateway cannot complete is refused under
// add_iss or gateway PKCE.
func (g *gateway) checkLiftPush(params url.Values) *oauthError {
	l := g.lift
	if l == nil || (!l.addIss && !l.gatewayPKCE) {
		return nil
	}
	// form_post answers with a 200 page whose form posts the response:
	// watching every such page would mean buffering and parsing bodies on
	// every path. query and fragment responses are redirects.
	switch params.Get("response_mode") {
	case "", "query", "fragment":
		return nil
	}
	return badRequest(ErrInvalidRequest, "response_mode "+params.Get("response_mode")+" is not supported (query or fragment: the gateway completes the authorization response)")
}
