package caddymodule

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/certmagic"
	"github.com/go-jose/go-jose/v4"
)

// Native Go fuzz targets for the parsers that face hostile input. Each has
// seeds here and a committed corpus under testdata/fuzz/<target>/; plain
// `go test` runs both as unit tests. integration/test.sh fuzzes each target
// for a bounded time; README "Fuzzing" shows how to run a longer session.

// fuzzCache is the memory store behind g.
func fuzzCache(t testing.TB, g *gateway) *memoryCache {
	t.Helper()
	c, ok := g.store.(*memoryCache)
	if !ok {
		t.Fatalf("store is %T, want *memoryCache", g.store)
	}
	return c
}

// FuzzPushForm sends a raw form body (with HTTP Basic credentials of
// web-app when basic is set) to the PAR endpoint: it must never panic,
// answer 201 only for a push that validates, and store nothing otherwise.
func FuzzPushForm(f *testing.F) {
	valid := validPush()
	f.Add(valid.Encode(), true)
	post := validPush()
	post.Set("client_secret", testSecret)
	f.Add(post.Encode(), false)
	f.Add("client_id=spa&response_type=code&redirect_uri=http%3A%2F%2F127.0.0.1%2Fcb&code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGjSstw-cM&code_challenge_method=S256", false)
	f.Add(valid.Encode()+"&client_id=web-app", true)
	f.Add(valid.Encode()+"&request_uri=urn%3Aietf%3Aparams%3Aoauth%3Arequest_uri%3Ax", true)
	f.Add("client_id=web-app&response_type=code&redirect_uri=https://app.example.com/cb&scope=openid%00&state=a b", true)
	f.Add("client_id=web-app&request=eyJhbGciOiJub25lIn0.e30.&response_type=code", true)
	f.Add("client_id=web-app&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion=a.b.c", false)
	f.Add("%zz=1&;&&=", true)
	f.Add("", false)

	g := newTestGateway(f, nil)
	cache := fuzzCache(f, g)
	f.Fuzz(func(t *testing.T, body string, basic bool) {
		r := httptest.NewRequest(http.MethodPost, "/par", strings.NewReader(body))
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		if basic {
			r.SetBasicAuth("web-app", url.QueryEscape(testSecret))
		}
		before := cache.used.Load()
		clientID, resp, oerr := g.push(r, nil)
		after := cache.used.Load()
		if oerr != nil {
			if resp != nil {
				t.Fatalf("rejected (%s) with a response", oerr.Code)
			}
			if after != before {
				t.Fatalf("rejected push (%s: %s) changed the store: used %d -> %d", oerr.Code, oerr.Description, before, after)
			}
			return
		}
		// Accepted: the body must be a valid push of an authenticated client.
		form, err := url.ParseQuery(body)
		if err != nil {
			t.Fatalf("accepted a malformed form: %v", err)
		}
		for k, v := range form {
			if len(v) > 1 {
				t.Fatalf("accepted a repeated parameter %q", k)
			}
		}
		c := g.clients[clientID]
		switch {
		case c == nil:
			t.Fatalf("accepted for unknown client %q", clientID)
		case form.Get("client_id") != clientID:
			t.Fatalf("accepted client_id %q as %q", form.Get("client_id"), clientID)
		case basic && clientID != "web-app":
			t.Fatalf("Basic credentials of web-app accepted as %q", clientID)
		case !basic && !c.public && form.Get("client_secret") != testSecret:
			t.Fatalf("confidential client %q accepted without its secret", clientID)
		case form.Has("request_uri"), form.Has("request"):
			t.Fatal("accepted a push with request_uri or request")
		}
		if oerr := validatePush(c, form); oerr != nil {
			t.Fatalf("accepted a push that does not validate: %v", oerr.Description)
		}
		if !strings.HasPrefix(resp.RequestURI, requestURIPrefix) || !validRef(resp.RequestURI[len(requestURIPrefix):]) {
			t.Fatalf("malformed request_uri %q", resp.RequestURI)
		}
		if after <= before {
			t.Fatalf("accepted push did not reach the store: used %d -> %d", before, after)
		}
		// Take it back out, so that the store never fills up, and check
		// what was stored.
		pushed, err := cache.Take(context.Background(), g.storeKey(resp.RequestURI[len(requestURIPrefix):]), oneTime(clientID))
		if err != nil {
			t.Fatalf("issued request_uri cannot be taken: %v", err)
		}
		stored, err := url.ParseQuery(pushed.Params)
		if err != nil {
			t.Fatalf("stored params do not parse: %v", err)
		}
		for _, p := range clientAuthParams {
			if stored.Has(p) {
				t.Fatalf("stored %s", p)
			}
		}
		if oerr := validatePush(c, stored); oerr != nil {
			t.Fatalf("stored push does not validate: %v", oerr.Description)
		}
		if got := cache.used.Load(); got != before {
			t.Fatalf("store not back to its size after Take: used %d -> %d", before, got)
		}
	})
}

// FuzzBasicAuth feeds an Authorization header value to presented.
func FuzzBasicAuth(f *testing.F) {
	for _, s := range []string{
		"Basic d2ViLWFwcDpzM2NyZXQlMkIlM0ElMjU=", // web-app:s3cret%2B%3A%25
		"Basic d2ViLWFwcDpzM2NyZXQrOiU=",         // web-app:s3cret+:% (not form-encoded)
		"Basic OnNlY3JldA==",                     // :secret
		"Basic d2ViLWFwcA==",                     // no colon
		"basic   d2ViLWFwcDp4",
		"Basic",
		"Basic !!!",
		"Bearer abc",
		"Basic JXp6OiV6eg==", // %zz:%zz
	} {
		f.Add(s, "")
		f.Add(s, "web-app")
	}
	f.Fuzz(func(t *testing.T, header, clientID string) {
		r := httptest.NewRequest(http.MethodPost, "/par", nil)
		r.Header["Authorization"] = []string{header}
		form := url.Values{}
		if clientID != "" {
			form.Set("client_id", clientID)
		}
		cred, oerr := presented(r, form)
		if oerr != nil {
			if oerr.Code != ErrInvalidClient {
				t.Fatalf("error code %q, want %q", oerr.Code, ErrInvalidClient)
			}
			return
		}
		if cred.method == AuthClientSecretBasic {
			if cred.clientID == "" || !cred.basic {
				t.Fatalf("Basic credentials without a client id: %+v", cred)
			}
		}
	})
}

// FuzzRequestURI sends a request_uri query value to the authorization
// endpoint of a gateway that requires PAR and holds one pushed request: no
// guessed value may be redeemed, reach the upstream or change the store.
func FuzzRequestURI(f *testing.F) {
	for _, s := range []string{
		requestURIPrefix + "0123456789012345678901234567890123456789012",
		requestURIPrefix + "short",
		requestURIPrefix,
		requestURIPrefix + "../../etc/passwd",
		requestURIPrefix + "%00%00",
		"urn:ietf:params:oauth:request_uri",
		"https://evil.example/req",
		"",
		"%",
		"a&request_uri=b",
	} {
		f.Add(s, "web-app", false)
		f.Add(s, "spa", true)
	}
	g := newTestGateway(f, func(g *gateway) {
		g.requirePAR = true
		g.issuer = "https://idp.example"
	})
	cache := fuzzCache(f, g)
	pushed := pushOK(f, g, validPush())
	calls := 0
	next := func(w http.ResponseWriter, r *http.Request) error {
		calls++
		w.WriteHeader(http.StatusOK)
		return nil
	}
	f.Fuzz(func(t *testing.T, requestURI, clientID string, raw bool) {
		if requestURI == pushed {
			t.Skip("the one issued request_uri")
		}
		r := httptest.NewRequest(http.MethodGet, "/authorize", nil)
		// raw puts the value into the query as it is, escapes and all.
		q := "client_id=" + url.QueryEscape(clientID) + "&request_uri="
		if raw {
			q += requestURI
		} else {
			q += url.QueryEscape(requestURI)
		}
		r.URL.RawQuery = q
		before := cache.used.Load()
		w := httptest.NewRecorder()
		if err := g.serveAuthorize(w, r, next); err != nil {
			t.Fatalf("serveAuthorize: %v", err)
		}
		if calls != 0 {
			t.Fatalf("a guessed request_uri reached the upstream (status %d)", w.Code)
		}
		if w.Code < 300 {
			t.Fatalf("status %d for a guessed request_uri", w.Code)
		}
		if got := cache.used.Load(); got != before {
			t.Fatalf("store changed: used %d -> %d", before, got)
		}
	})
}

// FuzzRewriteMetadata feeds a discovery document to rewriteMetadata: a
// document it accepts comes out as valid JSON with the same issuer.
func FuzzRewriteMetadata(f *testing.F) {
	for _, s := range []string{
		`{"issuer":"https://idp.example/realms/demo","authorization_endpoint":"https://idp.example/auth","token_endpoint":"https://idp.example/token"}`,
		`{"issuer":"https://idp.example","authorization_endpoint":"https://idp.example/auth","pushed_authorization_request_endpoint":"https://idp.example/par","require_pushed_authorization_requests":false,"mtls_endpoint_aliases":{"token_endpoint":"https://mtls.idp.example/token","pushed_authorization_request_endpoint":"https://mtls.idp.example/par"},"n":1.50}`,
		`{"issuer":"a","issuer":"b","authorization_endpoint":"https://x/auth","jwks_uri":"https://x/jwks","dpop_signing_alg_values_supported":["ES256"]}`,
		` { "authorization_endpoint" : "https://x/a" , "issuer" : "\u0068ttps://x" } `,
		`{"authorization_endpoint":"https://x/a","mtls_endpoint_aliases":[]}`,
		`{"authorization_endpoint":"/relative"}`,
		`{"authorization_endpoint":"https://x/a"}garbage`,
		`[]`,
		`{`,
		``,
	} {
		f.Add([]byte(s))
	}
	adv := advertisement{
		members:  []member{{name: "dpop_signing_alg_values_supported", value: json.RawMessage(`["ES256","PS256"]`)}},
		mtls:     true,
		jwksPath: "/jwks",
	}
	issuerOf := func(doc []byte) (any, bool) {
		var m map[string]json.RawMessage
		if json.Unmarshal(doc, &m) != nil {
			return nil, false
		}
		raw, ok := m["issuer"]
		if !ok {
			return nil, true
		}
		var v any
		if json.Unmarshal(raw, &v) != nil {
			return nil, false
		}
		return v, true
	}
	f.Fuzz(func(t *testing.T, doc []byte) {
		for _, a := range []advertisement{{}, adv} {
			out, _, err := rewriteMetadata(doc, "/par", true, a)
			if err != nil {
				continue
			}
			if !json.Valid(out) {
				t.Fatalf("invalid JSON out:\n%s\nfrom:\n%q", out, doc)
			}
			got, ok := issuerOf(out)
			if !ok {
				t.Fatalf("output is not a JSON object: %s", out)
			}
			if want, ok := issuerOf(doc); ok && !reflect.DeepEqual(got, want) {
				t.Fatalf("issuer changed: %v -> %v", want, got)
			}
		}
	})
}

// FuzzJWT feeds arbitrary strings to the three JWT verifiers. The keys are
// fixed and the seeds are correctly signed but each fails one claim check,
// so no input may ever be accepted: the fuzzer cannot forge a signature.
func FuzzJWT(f *testing.F) {
	keys := newTestKeys(f)
	ks := testKeySet(f, keys...)
	now := time.Unix(1_800_000_000, 0)
	const iss = "https://idp.example"
	const htu = "https://idp.example/par"
	secret := []byte("0123456789abcdef0123456789abcdef")
	sk, err := loadOrCreateServerKeys(context.Background(), &certmagic.FileStorage{Path: f.TempDir()}, "k/jwks.json", skAlgs, skEncs)
	if err != nil {
		f.Fatal(err)
	}
	assertion := assertionPolicy{Algs: asymmetricAlgs, Audiences: []string{iss, htu}, MaxLifetime: 5 * time.Minute, Times: fixedTimes(now)}
	object := requestObjectPolicy{Algs: asymmetricAlgs, Issuer: iss, MaxLifetime: time.Hour, RequireTyp: false, Times: fixedTimes(now), Decrypt: sk.decrypt}
	dpop := dpopPolicy{Algs: asymmetricAlgs, MaxAge: time.Minute, Times: fixedTimes(now)}

	// Seeds: each signed correctly, each wrong in one claim.
	exp := now.Add(time.Minute).Unix()
	for _, k := range keys {
		h := map[jose.HeaderKey]any{"kid": k.kid}
		f.Add(signJWT(f, k.priv, k.alg, h, map[string]any{"iss": "app", "sub": "app", "aud": "https://rp.example", "jti": "j", "iat": now.Unix(), "exp": exp}))
		f.Add(signJWT(f, k.priv, k.alg, h, map[string]any{"iss": "app", "sub": "app", "aud": iss, "jti": "j", "iat": now.Add(-time.Hour).Unix(), "exp": now.Add(-time.Minute).Unix()}))
		f.Add(signJWT(f, k.priv, k.alg, map[jose.HeaderKey]any{"typ": "oauth-authz-req+jwt", "kid": k.kid},
			map[string]any{"iss": "app", "aud": iss, "exp": exp, "client_id": "other", "response_type": "code", "redirect_uri": "https://app.example/cb"}))
		f.Add(signJWT(f, k.priv, k.alg, map[jose.HeaderKey]any{"typ": "dpop+jwt", "jwk": jose.JSONWebKey{Key: k.priv.Public()}},
			map[string]any{"htm": "POST", "htu": "https://other.example/par", "iat": now.Unix(), "jti": "p1"}))
		f.Add(signJWT(f, k.priv, k.alg, map[jose.HeaderKey]any{"typ": "dpop+jwt", "jwk": jose.JSONWebKey{Key: k.priv.Public()}},
			map[string]any{"htm": "POST", "htu": htu, "iat": now.Add(-time.Hour).Unix(), "jti": "p1"}))
	}
	f.Add(signJWT(f, secret, jose.HS256, nil, map[string]any{"iss": "app", "sub": "app", "aud": iss, "jti": "j", "exp": now.Add(-time.Minute).Unix()}))
	// A request object for another client, encrypted to the gateway.
	var pub jose.JSONWebKeySet
	if err := json.Unmarshal(sk.publicJWKS(), &pub); err != nil {
		f.Fatal(err)
	}
	inner := signJWT(f, keys[1].priv, keys[1].alg, map[jose.HeaderKey]any{"kid": "ec"},
		map[string]any{"iss": "other", "aud": iss, "exp": exp, "client_id": "other", "response_type": "code"})
	for _, k := range pub.Keys {
		enc, err := jose.NewEncrypter(jose.A128GCM, jose.Recipient{Algorithm: jose.KeyAlgorithm(k.Algorithm), Key: k.Key, KeyID: k.KeyID}, (&jose.EncrypterOptions{}).WithContentType("JWT"))
		if err != nil {
			f.Fatal(err)
		}
		obj, err := enc.Encrypt([]byte(inner))
		if err != nil {
			f.Fatal(err)
		}
		s, err := obj.CompactSerialize()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(s)
	}
	for _, s := range []string{"", ".", "..", "....", "a.b.c", "eyJhbGciOiJub25lIn0.e30.", "eyJhbGciOiJFUzI1NiJ9.e30.AAAA", "e30.e30.e30.e30.e30"} {
		f.Add(s)
	}

	f.Fuzz(func(t *testing.T, raw string) {
		ctx := context.Background()
		if _, _, err := verifyClientAssertion(ctx, raw, AuthPrivateKeyJWT, "app", ks, nil, assertion); err == nil {
			t.Fatal("private_key_jwt assertion accepted")
		}
		if _, _, err := verifyClientAssertion(ctx, raw, AuthClientSecretJWT, "app", nil, secret, assertion); err == nil {
			t.Fatal("client_secret_jwt assertion accepted")
		}
		if _, err := decodeRequestObject(ctx, raw, "app", ks, object); err == nil {
			t.Fatal("request object accepted")
		}
		if _, _, _, err := verifyDPoPProof(raw, http.MethodPost, []string{htu}, dpop); err == nil {
			t.Fatal("DPoP proof accepted")
		}
	})
}

// FuzzCaddyfile feeds the body of an oauth_par block to UnmarshalCaddyfile.
// The tokens come from caddyfile.Tokenize, not NewTestDispenser: that one
// calls log.Fatalf on a lexer error (a bad heredoc marker, say), which kills
// the fuzzing worker; such input never reaches a handler in Caddy either,
// whose adapter returns the lexer's error.
func FuzzCaddyfile(f *testing.F) {
	for _, s := range []string{
		"authorization_endpoint /auth\npar_endpoint /par\nrequest_uri_lifetime 60s\nrequire_par\n",
		"max_request_size 64KiB\nissuer https://idp.example\nforward_method post\nprofile fapi2\nclock_skew 5s\n",
		"client_assertion_signing_algs ES256 PS256\nrequest_object_signing_algs EdDSA\nrequest_object_max_lifetime 1h\nrequire_request_object_typ\nrequire_signed_request_object\n",
		"request_object_encryption {\n\tkey_file /k.json\n\tjwks_path /jwks\n\talgs RSA-OAEP-256\n\tencs A128GCM\n}\n",
		"dpop_signing_algs ES256\nmtls_endpoint https://mtls.example\nclient_ca_file /ca.pem\n",
		"client web-app {\n\tsecret s3cret\n\tauth_methods client_secret_basic private_key_jwt\n\tredirect_uris https://app.example/cb\n\tallowed_scopes openid\n\trequire_par\n\tjwks `{\"keys\":[]}`\n\trequire_dpop\n}\n",
		"client spa {\n\tpublic\n\ttls_client_auth_subject_dn \"CN=a,O=b\"\n\ttls_client_auth_san_ip 127.0.0.1\n}\n",
		"store memory {\n\tmax_size 1MiB\n}\n",
		"store redis {\n\taddress 127.0.0.1:6379\n}\n",
		"client\n", "store\n", "store {\n", "}\n}\n{", "max_request_size -1\n", "request_uri_lifetime forever\n", "\"unterminated\n", "`", "{\n{\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		tokens, err := caddyfile.Tokenize([]byte("oauth_par {\n"+body+"\n}"), "Caddyfile")
		if err != nil {
			return
		}
		d := caddyfile.NewDispenser(tokens)
		var h Handler
		_ = h.UnmarshalCaddyfile(d)
	})
}

// FuzzParseDN feeds RFC 4514 strings to parseDN.
func FuzzParseDN(f *testing.F) {
	for _, s := range []string{
		"CN=leaf+UID=1,O=Org,C=US",
		`CN=a\,b,O=\"q\"`,
		`CN=\41\42,2.5.4.10=x`,
		"CN = spaced , O = x ",
		"CN=#04024869",
		"CN=,O=x",
		"=x", "CN", "CN=a,", "CN=a+", `CN=\`, `CN=\4`, `CN=\zz`, "1.2.3=x", "cn=x;o=y",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		rdns, err := parseDN(s)
		if err != nil {
			return
		}
		if len(rdns) == 0 {
			t.Fatalf("parseDN(%q): no RDNs and no error", s)
		}
		for _, rdn := range rdns {
			if len(rdn) == 0 {
				t.Fatalf("parseDN(%q): an empty RDN", s)
			}
			for _, a := range rdn {
				if len(a.Type) == 0 || a.Value == "" {
					t.Fatalf("parseDN(%q): attribute %+v", s, a)
				}
			}
		}
	})
}
