package caddymodule

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"go.uber.org/zap"
)

// requestURIPrefix is the URN namespace of RFC 9126 §2.2; any request_uri
// starting with it is taken to be this gateway's.
const requestURIPrefix = "urn:ietf:params:oauth:request_uri:"

// refBytes is the random part of a reference: 256 bits (RFC 9101 §10.2 asks
// for at least 128).
const refBytes = 32

// refLen is the length of the base64url encoding of refBytes.
var refLen = base64.RawURLEncoding.EncodedLen(refBytes)

// newRef returns a fresh reference from crypto/rand.
func newRef() (string, error) {
	var b [refBytes]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(b[:]), nil
}

// validRef reports whether s has the shape of a reference we issue, so that
// junk never reaches the store.
func validRef(s string) bool {
	return len(s) == refLen && isBase64URL(s)
}

// isBase64URL reports whether s uses only the unpadded base64url alphabet.
func isBase64URL(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// parResponse is the RFC 9126 §2.2 success body.
type parResponse struct {
	RequestURI string
	ExpiresIn  int64
}

// servePAR is the pushed authorization request endpoint (RFC 9126 §2).
func (g *gateway) servePAR(w http.ResponseWriter, r *http.Request, next nextHandler) {
	boundBodyRead(w, r)
	var method string
	clientID, resp, oerr := g.pushAuth(r, next, &method)
	if oerr != nil {
		g.logOutcome(r, epPAR, clientID, method, "rejected", oerr.Code, "")
		writeJSONError(w, oerr)
		return
	}
	g.logOutcome(r, epPAR, clientID, method, "issued", "", resp.RequestURI[len(requestURIPrefix):])
	// The members need no escaping (URN and base64url): skip reflection.
	b := make([]byte, 0, 96)
	b = append(b, `{"request_uri":"`...)
	b = append(b, resp.RequestURI...)
	b = append(b, `","expires_in":`...)
	b = strconv.AppendInt(b, resp.ExpiresIn, 10)
	b = append(b, '}')
	writeJSON(w, http.StatusCreated, b)
}

// pushAuth runs the RFC 9126 §2.1 steps in order: authenticate the client,
// reject request_uri, unpack a request object (§3), check the DPoP key
// binding (RFC 9449 §10), validate the request, then store it. It sets
// *authMethod to the authentication method used or tried.
func (g *gateway) pushAuth(r *http.Request, next nextHandler, authMethod *string) (clientID string, _ *parResponse, _ *oauthError) {
	// The per-source rate limit comes first (429, RFC 9126 §2.3): it
	// guards the body read and the authentication work below. The
	// per-client one is asked by g.auth once the client is authenticated.
	src, oerr := g.limits.checkSource(r)
	if oerr != nil {
		return "", nil, oerr
	}
	if r.Method != http.MethodPost {
		e := newError(http.StatusMethodNotAllowed, ErrInvalidRequest, "the PAR endpoint accepts only POST")
		e.header = http.Header{"Allow": {http.MethodPost}}
		return "", nil, e
	}
	body, form, oerr := g.readForm(r)
	if oerr != nil {
		return "", nil, oerr
	}
	// RFC 6749 §3.1: parameters MUST NOT be included more than once.
	for k, v := range form {
		if len(v) > 1 {
			return "", nil, badRequest(ErrInvalidRequest, "parameter "+strconv.Quote(k)+" is repeated")
		}
	}
	// The audiences (issuer, endpoint URLs) are only needed to check JWTs;
	// a secret-authenticated plain push does not look them up.
	var aud audiences
	if form.Has("client_assertion") || form.Has("request") || r.Header.Get("DPoP") != "" {
		aud = g.audiences(r, next)
	}
	var c *client
	c, *authMethod, oerr = g.auth.authenticate(r, form, aud)
	if oerr != nil {
		if oerr.Code == ErrInvalidClient {
			g.limits.authFailed(src)
		}
		return attemptedClientID(r, form), nil, oerr
	}
	// RFC 9126 §2.1: request_uri MUST NOT be provided in a push.
	if form.Has("request_uri") {
		return c.id, nil, badRequest(ErrInvalidRequest, "request_uri must not be used at the PAR endpoint")
	}
	params, fromObject := form, false
	if form.Has("request") {
		// RFC 9126 §3, RFC 9101 §6.3: only the object's parameters count;
		// outer ones other than client authentication are ignored.
		if params, oerr = g.requestObject(r.Context(), c, form.Get("request"), aud.issuer); oerr != nil {
			return c.id, nil, oerr
		}
		fromObject = true
	} else if g.requireSignedRequestObject || c.requireSignedRequestObject {
		// RFC 9101 §10.5.
		return c.id, nil, badRequest(ErrInvalidRequest, "a signed request object (the request parameter) is required for this client")
	}
	jkt, oerr := g.dpopBinding(r, c, params, aud)
	if oerr != nil {
		return c.id, nil, oerr
	}
	if oerr := validatePush(c, params); oerr != nil {
		return c.id, nil, oerr
	}
	if oerr := g.checkLiftPush(params); oerr != nil {
		return c.id, nil, oerr
	}

	var stored string
	switch {
	case fromObject:
		if jkt != "" {
			params.Set("dpop_jkt", jkt)
		}
		stored = params.Encode()
	default:
		stored = storedParams(body)
		if jkt != "" && !params.Has("dpop_jkt") {
			stored += "&dpop_jkt=" + jkt
		}
	}
	ref, err := newRef()
	if err != nil {
		g.logger.Error("generating request_uri failed", zap.Error(err))
		return c.id, nil, newError(http.StatusInternalServerError, ErrServerError, "could not issue a request_uri")
	}
	expires := g.now().Add(g.lifetime)
	err = g.store.Put(r.Context(), g.storeKey(ref), PushedRequest{ClientID: c.id, Params: stored, ExpiresAt: expires})
	if err != nil {
		// A request_uri is only issued when it will work until it expires.
		// A full store is an expected outcome, logged as such by the caller.
		if !errors.Is(err, ErrStoreUnavailable) {
			g.logger.Error("storing pushed request failed", zap.Error(err))
		}
		return c.id, nil, unavailable("the pushed request could not be stored")
	}
	return c.id, &parResponse{RequestURI: requestURIPrefix + ref, ExpiresIn: int64(g.lifetime / time.Second)}, nil
}

// requestObject verifies a pushed request object and returns its
// parameters (RFC 9101 §6, RFC 9126 §3).
func (g *gateway) requestObject(ctx context.Context, c *client, raw, issuer string) (url.Values, *oauthError) {
	if c.keys == nil {
		return nil, badRequest(ErrInvalidRequestObject, "request objects need the client's keys, and none are registered")
	}
	if issuer == "" {
		return nil, unavailable("the issuer is not known yet, so request objects cannot be checked; set 'issuer'")
	}
	p := g.requestObjectPolicy
	p.Issuer = issuer
	params, err := decodeRequestObject(ctx, raw, c.id, c.keys, p)
	if err != nil {
		return nil, badRequest(ErrInvalidRequestObject, "request object rejected: "+err.Error())
	}
	return params, nil
}

// dpopBinding checks the key the push binds its tokens to (RFC 9449 §10):
// a DPoP proof header, a dpop_jkt parameter, or both when they agree. It
// returns the proof key's thumbprint ("" without a proof).
func (g *gateway) dpopBinding(r *http.Request, c *client, params url.Values, aud audiences) (string, *oauthError) {
	pushed := params.Get("dpop_jkt")
	if pushed != "" && (len(pushed) != 43 || !isBase64URL(pushed)) {
		return "", badRequest(ErrInvalidRequest, "malformed dpop_jkt: a base64url SHA-256 JWK thumbprint is expected")
	}
	proofs := r.Header.Values("DPoP")
	switch {
	case len(proofs) > 1:
		return "", badRequest(ErrInvalidDPoPProof, "more than one DPoP header")
	case len(proofs) == 0:
		if pushed == "" && c.requireDPoP {
			return "", badRequest(ErrInvalidRequest, "this client must bind its tokens to a DPoP key: send a DPoP proof or dpop_jkt")
		}
		return "", nil
	}
	jkt, jti, until, err := verifyDPoPProof(proofs[0], http.MethodPost, aud.endpointURLs, g.dpopPolicy)
	if err != nil {
		return "", badRequest(ErrInvalidDPoPProof, "DPoP proof rejected: "+err.Error())
	}
	// RFC 9449 §10.1: both present and different is an error.
	if pushed != "" && pushed != jkt {
		return "", badRequest(ErrInvalidDPoPProof, "dpop_jkt does not match the key of the DPoP proof")
	}
	// RFC 9449 §11.1: a proof is used once. Recorded per key, so that
	// nobody but the key holder can use up a jti.
	sum := sha256.Sum256([]byte(jti))
	switch err := g.store.Claim(r.Context(), g.partition+"dpop/"+jkt+"/"+hex.EncodeToString(sum[:16]), until); {
	case errors.Is(err, ErrReplay):
		return "", badRequest(ErrInvalidDPoPProof, "DPoP proof rejected: its jti was already used")
	case err != nil:
		return "", unavailable("the DPoP proof could not be recorded")
	}
	return jkt, nil
}

// readForm reads and parses the bounded application/x-www-form-urlencoded
// body.
func (g *gateway) readForm(r *http.Request) (string, url.Values, *oauthError) {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	// RFC 9110 §5.3: Content-Type is a singleton field; two of them are
	// ambiguous, whichever this check would read.
	if err != nil || mt != "application/x-www-form-urlencoded" || len(r.Header.Values("Content-Type")) != 1 {
		return "", nil, badRequest(ErrInvalidRequest, "the request body must be application/x-www-form-urlencoded")
	}
	if r.ContentLength > g.maxRequestSize {
		return "", nil, tooLarge(g.maxRequestSize)
	}
	var raw []byte
	if r.ContentLength >= 0 {
		// net/http ends the body at Content-Length: read it in one piece.
		raw = make([]byte, r.ContentLength)
		_, err = io.ReadFull(r.Body, raw)
	} else {
		raw, err = io.ReadAll(io.LimitReader(r.Body, g.maxRequestSize+1))
	}
	if err != nil {
		return "", nil, badRequest(ErrInvalidRequest, "could not read the request body")
	}
	if int64(len(raw)) > g.maxRequestSize {
		return "", nil, tooLarge(g.maxRequestSize)
	}
	body := string(raw)
	form, err := parseParams(body)
	switch {
	case errors.Is(err, errTooManyParams):
		return "", nil, badRequest(ErrInvalidRequest, err.Error())
	case err != nil:
		return "", nil, badRequest(ErrInvalidRequest, "malformed form body")
	}
	return body, form, nil
}

// maxParams bounds the parameters of a form or query before it is
// parsed. An authorization request has a few dozen; the 10,000 that
// net/url allows, in a 64 KiB body, cost some 30 times the body in
// allocations, before the client is even authenticated.
const maxParams = 1000

var errTooManyParams = fmt.Errorf("more than %d parameters", maxParams)

// parseParams is url.ParseQuery, refusing more than maxParams parameters.
func parseParams(s string) (url.Values, error) {
	if strings.Count(s, "&") >= maxParams {
		return nil, errTooManyParams
	}
	return url.ParseQuery(s)
}

// storedParams is the push in the order sent, minus client credentials and
// the parameters that RFC 6749 §3.1 says to treat as omitted (empty values).
// Each pair is re-encoded: a form body may carry bytes (a raw space, say)
// that are not valid in the query the upstream receives. body has already
// parsed as a valid form.
func storedParams(body string) string {
	var b strings.Builder
	b.Grow(len(body) + len(body)/8)
	for body != "" {
		var pair string
		pair, body, _ = strings.Cut(body, "&")
		k, v, _ := strings.Cut(pair, "=")
		key, err := url.QueryUnescape(k)
		if err != nil || v == "" || isClientAuthParam(key) {
			continue
		}
		if b.Len() > 0 {
			b.WriteByte('&')
		}
		if isQuerySafe(pair) {
			// Already a valid query pair (the usual case): keep it.
			b.WriteString(pair)
			continue
		}
		val, err := url.QueryUnescape(v)
		if err != nil {
			continue
		}
		b.WriteString(url.QueryEscape(key))
		b.WriteByte('=')
		b.WriteString(url.QueryEscape(val))
	}
	return b.String()
}

// isQuerySafe reports whether s has only bytes allowed in a URI query
// (RFC 3986 §3.4: unreserved, pct-encoded, sub-delims, ':', '@', '/', '?').
func isQuerySafe(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("-._~%!$'()*+,;=:@/?", c) >= 0:
		default:
			return false
		}
	}
	return true
}

func tooLarge(limit int64) *oauthError {
	return newError(http.StatusRequestEntityTooLarge, ErrInvalidRequest,
		fmt.Sprintf("the request body exceeds %d bytes", limit))
}

func isClientAuthParam(k string) bool {
	for _, p := range clientAuthParams {
		if k == p {
			return true
		}
	}
	return false
}

// validatePush validates a pushed request as an authorization request
// (RFC 9126 §2.1) for the authenticated client c.
func validatePush(c *client, form url.Values) *oauthError {
	if form.Has("request_uri") {
		return badRequest(ErrInvalidRequest, "request_uri must not be used at the PAR endpoint")
	}
	if form.Has("request") {
		return badRequest(ErrInvalidRequestObject, "a request object must not contain request")
	}
	// RFC 9126 §2.1: client_id is required in the body, also with HTTP
	// Basic, and must be the authenticated client.
	switch id := form.Get("client_id"); {
	case id == "":
		return badRequest(ErrInvalidRequest, "client_id is required")
	case id != c.id:
		return badRequest(ErrInvalidRequest, "client_id does not match the authenticated client")
	}
	switch rt := form.Get("response_type"); {
	case rt == "":
		return badRequest(ErrInvalidRequest, "response_type is required")
	case rt != "code":
		return badRequest(ErrUnsupportedResponseType, "only response_type=code is supported")
	}
	switch ru := form.Get("redirect_uri"); {
	case ru == "":
		return badRequest(ErrInvalidRequest, "redirect_uri is required")
	case c.delegated:
		// Registered at the upstream only, which checks it at
		// authorization (RFC 9126 §2.1); here only its syntax.
		if checkRedirectURI(ru) != nil {
			return badRequest(ErrInvalidRequest, "redirect_uri must be an absolute URI without a fragment")
		}
	case !c.redirectURIs[ru]:
		return badRequest(ErrInvalidRequest, "redirect_uri is not registered for this client")
	}
	if oerr := validateScope(c, form.Get("scope")); oerr != nil {
		return oerr
	}
	if form.Has("authorization_details") {
		if oerr := validateAuthorizationDetails(c, form.Get("authorization_details")); oerr != nil {
			return oerr
		}
	}
	if oerr := validatePKCE(c, form.Get("code_challenge"), form.Get("code_challenge_method")); oerr != nil {
		return oerr
	}
	// Last, so that the checks above keep their own error codes.
	return checkParamChars(form)
}

// checkParamChars refuses parameters a legacy upstream could read
// differently from this gateway: form values are UTF-8 (RFC 6749
// Appendix B), so invalid UTF-8 is malformed, and RFC 6749 Appendix A
// allows no control characters in names or in state, client_id,
// redirect_uri and the other defined values. A NUL may truncate a value
// upstream, a CR or LF may end up in a header. Only the JSON-valued
// parameters may carry JSON whitespace (HTAB, LF, CR).
func checkParamChars(form url.Values) *oauthError {
	for k, vs := range form {
		if !utf8.ValidString(k) || hasControl(k, false) {
			return badRequest(ErrInvalidRequest, "a parameter name contains a control character or is not UTF-8")
		}
		jsonValued := k == "claims" || k == "authorization_details"
		for _, v := range vs {
			if !utf8.ValidString(v) || hasControl(v, jsonValued) {
				return badRequest(ErrInvalidRequest, "parameter "+strconv.Quote(logID(k))+" contains a control character or is not UTF-8")
			}
		}
	}
	return nil
}

// hasControl reports whether s has a C0 control character or DEL; with
// jsonSpace, HTAB, LF and CR are allowed.
func hasControl(s string, jsonSpace bool) bool {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\t' || c == '\n' || c == '\r':
			if !jsonSpace {
				return true
			}
		case c < 0x20 || c == 0x7f:
			return true
		}
	}
	return false
}

// validateScope checks RFC 6749 §3.3 syntax and the client's allowed scopes.
func validateScope(c *client, scope string) *oauthError {
	if scope == "" {
		return nil
	}
	for _, s := range strings.Split(scope, " ") {
		if s == "" || !isScopeToken(s) {
			return badRequest(ErrInvalidScope, "malformed scope")
		}
		if c.allowedScopes != nil && !c.allowedScopes[s] {
			return badRequest(ErrInvalidScope, "scope "+strconv.Quote(s)+" is not allowed for this client")
		}
	}
	return nil
}

// validateAuthorizationDetails applies RFC 9396 §2: a JSON array of
// objects, each with a string type, here also one the client may use.
func validateAuthorizationDetails(c *client, raw string) *oauthError {
	types, ok := authorizationDetailTypes(raw)
	if !ok || len(types) == 0 {
		return badRequest(ErrInvalidAuthorizationDetails, "authorization_details must be a non-empty JSON array of objects")
	}
	for i, typ := range types {
		if typ == "" {
			return badRequest(ErrInvalidAuthorizationDetails, "authorization_details["+strconv.Itoa(i)+"] has no type")
		}
		if c.authorizationDetailsTypes != nil && !c.authorizationDetailsTypes[typ] {
			return badRequest(ErrInvalidAuthorizationDetails, "authorization_details type "+strconv.Quote(typ)+" is not allowed for this client")
		}
	}
	return nil
}

// authorizationDetailTypes returns the type of each element of a JSON array
// of objects ("" for an element without a string type, or with two type
// members, which an upstream could read either way); ok is false when raw
// is not valid UTF-8 JSON or not an array of objects. It walks the document
// instead of decoding it: the other members (often kilobytes of payment
// details) are skipped, not built into maps.
func authorizationDetailTypes(raw string) (types []string, ok bool) {
	// Not UTF-8: encoding/json would read replacement characters where an
	// upstream might read something else (RFC 8259 §8.1).
	if !utf8.ValidString(raw) || !json.Valid([]byte(raw)) {
		return nil, false
	}
	// raw is valid JSON from here on: every token is well-formed.
	i := skipSpace(raw, 0)
	if raw[i] != '[' {
		return nil, false
	}
	i = skipSpace(raw, i+1)
	if raw[i] == ']' {
		return nil, true
	}
	for {
		if raw[i] != '{' {
			return nil, false
		}
		typ, seen := "", 0
		i = skipSpace(raw, i+1)
		for raw[i] != '}' {
			end := stringEnd(raw, i)
			key := raw[i:end]
			i = skipSpace(raw, end)
			i = skipSpace(raw, i+1) // the ':'
			vend := valueEnd(raw, i)
			if jsonString(key) == "type" {
				seen++
				if raw[i] == '"' {
					typ = jsonString(raw[i:vend])
				} else {
					typ = ""
				}
			}
			i = skipSpace(raw, vend)
			if raw[i] == ',' {
				i = skipSpace(raw, i+1)
			}
		}
		if seen != 1 {
			typ = ""
		}
		types = append(types, typ)
		i = skipSpace(raw, i+1)
		if raw[i] == ']' {
			return types, true
		}
		i = skipSpace(raw, i+1) // the ','
	}
}

// skipSpace returns the index of the first non-whitespace byte from i.
func skipSpace(s string, i int) int {
	for i < len(s) && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r') {
		i++
	}
	return i
}

// stringEnd returns the index just past the JSON string starting at i.
func stringEnd(s string, i int) int {
	for j := i + 1; j < len(s); j++ {
		switch s[j] {
		case '\\':
			j++
		case '"':
			return j + 1
		}
	}
	return len(s)
}

// valueEnd returns the index just past the JSON value starting at i.
func valueEnd(s string, i int) int {
	switch s[i] {
	case '"':
		return stringEnd(s, i)
	case '{', '[':
		depth := 0
		for j := i; j < len(s); j++ {
			switch s[j] {
			case '"':
				j = stringEnd(s, j) - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return j + 1
				}
			}
		}
		return len(s)
	default: // number, true, false, null
		j := i
		for j < len(s) && s[j] != ',' && s[j] != '}' && s[j] != ']' && s[j] != ' ' && s[j] != '\t' && s[j] != '\n' && s[j] != '\r' {
			j++
		}
		return j
	}
}

// jsonString decodes a JSON string token; escapes are rare, so only then
// does it go through encoding/json.
func jsonString(tok string) string {
	if !strings.Contains(tok, "\\") {
		return tok[1 : len(tok)-1]
	}
	var v string
	if json.Unmarshal([]byte(tok), &v) != nil {
		return ""
	}
	return v
}

// isScopeToken: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ).
func isScopeToken(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x21 || c > 0x7e || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}

// validatePKCE applies RFC 7636. Only S256 is accepted (RFC 9700 §2.1.1);
// public clients, and every client under profile fapi2, must use it.
func validatePKCE(c *client, challenge, method string) *oauthError {
	if challenge == "" {
		if method != "" {
			return badRequest(ErrInvalidRequest, "code_challenge_method without code_challenge")
		}
		if c.requirePKCE {
			return badRequest(ErrInvalidRequest, "PKCE is required for this client: code_challenge with code_challenge_method=S256")
		}
		return nil
	}
	switch method {
	case "S256":
	case "", "plain":
		// RFC 7636 §4.3: a missing method means plain.
		return badRequest(ErrInvalidRequest, "code_challenge_method must be S256")
	default:
		return badRequest(ErrInvalidRequest, "unsupported code_challenge_method")
	}
	// S256 challenges are base64url(sha256) without padding: 43 characters.
	if len(challenge) != 43 || !isBase64URL(challenge) {
		return badRequest(ErrInvalidRequest, "malformed code_challenge")
	}
	return nil
}

// logID bounds an unauthenticated, caller-chosen client_id before it is
// logged.
// attemptedClientID is the client_id a request that failed client
// authentication claimed (the form's, or HTTP Basic's), for the log and
// the audit trail.
func attemptedClientID(r *http.Request, form url.Values) string {
	if cred, oerr := presented(r, form); oerr == nil && cred.clientID != "" {
		return logID(cred.clientID)
	}
	return logID(form.Get("client_id"))
}

func logID(id string) string {
	if len(id) > 64 {
		return id[:64] + "…"
	}
	return id
}
