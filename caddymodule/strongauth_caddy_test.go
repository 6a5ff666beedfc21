package caddymodule_test

// In-process Caddy tests of issue 7's client authentication, request
// objects and DPoP at the PAR endpoint, with keys generated in the test and
// every JWT made with go-jose.

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

const (
	saIssuer     = "https://idp.example.test/realms/demo"
	saJWTApp     = "jwt-app"
	saJWTRedir   = "https://jwt.example.test/cb"
	saHSApp      = "hs-app"
	saHSSecret   = "hs-app-secret-that-is-at-least-32-bytes-long"
	saHSRedir    = "https://hs.example.test/cb"
	saJARApp     = "jar-app"
	saJARRedir   = "https://jar.example.test/cb"
	saAssertType = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
)

// saKey is a client signing key with its public JWK.
type saKey struct {
	alg  jose.SignatureAlgorithm
	kid  string
	priv crypto.Signer
}

func (k saKey) publicJWK() jose.JSONWebKey {
	return jose.JSONWebKey{Key: k.priv.Public(), KeyID: k.kid, Algorithm: string(k.alg), Use: "sig"}
}

func saNewKeys(t *testing.T) map[jose.SignatureAlgorithm]saKey {
	t.Helper()
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return map[jose.SignatureAlgorithm]saKey{
		jose.PS256: {jose.PS256, "rsa-1", rsaKey},
		jose.ES256: {jose.ES256, "ec-1", ecKey},
		jose.EdDSA: {jose.EdDSA, "ed-1", edKey},
	}
}

func saJWKS(t *testing.T, keys ...saKey) string {
	t.Helper()
	var set jose.JSONWebKeySet
	for _, k := range keys {
		set.Keys = append(set.Keys, k.publicJWK())
	}
	b, err := json.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// saSign signs claims as a compact JWS with the given header type.
func saSign(t *testing.T, key any, alg jose.SignatureAlgorithm, kid, typ string, claims any, extra map[jose.HeaderKey]any) string {
	t.Helper()
	opts := (&jose.SignerOptions{}).WithType(jose.ContentType(typ))
	if typ == "" {
		opts = &jose.SignerOptions{}
	}
	if kid != "" {
		opts = opts.WithHeader("kid", kid)
	}
	for k, v := range extra {
		opts = opts.WithHeader(k, v)
	}
	sig, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, opts)
	if err != nil {
		t.Fatal(err)
	}
	s, err := jwt.Signed(sig).Claims(claims).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

var saJTI atomic.Int64

func saNextJTI() string {
	return "jti-" + strconv.FormatInt(time.Now().UnixNano(), 36) + "-" + strconv.FormatInt(saJTI.Add(1), 10)
}

// saAssertion is a client assertion of clientID for aud.
func saAssertion(t *testing.T, k saKey, clientID string, aud any, mod func(map[string]any)) string {
	t.Helper()
	now := time.Now()
	claims := map[string]any{
		"iss": clientID, "sub": clientID, "aud": aud, "jti": saNextJTI(),
		"iat": now.Unix(), "exp": now.Add(time.Minute).Unix(),
	}
	if mod != nil {
		mod(claims)
	}
	return saSign(t, k.priv, k.alg, k.kid, "", claims, nil)
}

func saBlock(t *testing.T, keys map[jose.SignatureAlgorithm]saKey, extra ...string) string {
	jwks := saJWKS(t, keys[jose.PS256], keys[jose.ES256], keys[jose.EdDSA])
	// The HMAC key comes through a placeholder, expanded at load.
	t.Setenv("CADDY_PAR_TEST_HS_SECRET", saHSSecret)
	return `authorization_endpoint /authorize
		par_endpoint /par
		issuer ` + saIssuer + `
		dpop_signing_algs ES256 PS256 EdDSA
		request_object_encryption
		client ` + saJWTApp + ` {
			jwks ` + "`" + jwks + "`" + `
			redirect_uris ` + saJWTRedir + `
		}
		client ` + saHSApp + ` {
			secret {env.CADDY_PAR_TEST_HS_SECRET}
			auth_methods client_secret_jwt
			redirect_uris ` + saHSRedir + `
		}
		client ` + saJARApp + ` {
			jwks ` + "`" + jwks + "`" + `
			redirect_uris ` + saJARRedir + `
			require_signed_request_object
			require_dpop
		}
		` + strings.Join(extra, "\n\t\t")
}

func saForm(clientID, redirect string) url.Values {
	return url.Values{
		"response_type":         {"code"},
		"client_id":             {clientID},
		"redirect_uri":          {redirect},
		"scope":                 {"openid"},
		"state":                 {"st-" + saNextJTI()},
		"code_challenge":        {ctChallenge("verifier-0123456789-abcdefghijklmnopqrstuvwxyz")},
		"code_challenge_method": {"S256"},
	}
}

func saWithAssertion(form url.Values, assertion string) url.Values {
	return ctWith(form, "client_assertion_type", saAssertType, "client_assertion", assertion)
}

// saRedeemed redeems requestURI and returns the query the upstream got.
func saRedeemed(t *testing.T, c *ctCaddy, up *ctUpstream, clientID, requestURI string) url.Values {
	t.Helper()
	r := c.get(t, ctRedeemQuery(clientID, requestURI), nil)
	if r.Status != http.StatusOK {
		t.Fatalf("redeem: %s", r)
	}
	q, err := url.ParseQuery(up.last(t).RawQuery)
	if err != nil {
		t.Fatal(err)
	}
	return q
}

func TestCaddyPrivateKeyJWTAuthenticatesPushes(t *testing.T) {
	keys := saNewKeys(t)
	up := ctNewUpstream(t, nil)
	c := ctStart(t, up, "", saBlock(t, keys))
	parURL := c.base + "/par"

	for _, alg := range []jose.SignatureAlgorithm{jose.PS256, jose.ES256, jose.EdDSA} {
		t.Run(string(alg)+"_accepted_and_credentials_not_forwarded", func(t *testing.T) {
			a := saAssertion(t, keys[alg], saJWTApp, saIssuer, nil)
			ru := c.mustPush(t, saWithAssertion(saForm(saJWTApp, saJWTRedir), a), nil)
			q := saRedeemed(t, c, up, saJWTApp, ru)
			if q.Has("client_assertion") || q.Has("client_assertion_type") {
				t.Errorf("client assertion forwarded upstream: %v", q)
			}
			if q.Get("redirect_uri") != saJWTRedir {
				t.Errorf("forwarded %v", q)
			}
		})
	}

	t.Run("every_audience_RFC_9126_allows", func(t *testing.T) {
		for _, aud := range []any{saIssuer, parURL, []string{"https://other.example", parURL}} {
			a := saAssertion(t, keys[jose.ES256], saJWTApp, aud, nil)
			c.mustPush(t, saWithAssertion(saForm(saJWTApp, saJWTRedir), a), nil)
		}
	})

	before := up.count()
	for _, tc := range []struct {
		name      string
		assertion func() string
	}{
		{"wrong_audience", func() string { return saAssertion(t, keys[jose.ES256], saJWTApp, "https://elsewhere.example", nil) }},
		{"wrong_issuer", func() string {
			return saAssertion(t, keys[jose.ES256], saJWTApp, saIssuer, func(m map[string]any) { m["iss"] = "someone-else" })
		}},
		{"wrong_subject", func() string {
			return saAssertion(t, keys[jose.ES256], saJWTApp, saIssuer, func(m map[string]any) { m["sub"] = saHSApp })
		}},
		{"expired", func() string {
			return saAssertion(t, keys[jose.ES256], saJWTApp, saIssuer, func(m map[string]any) { m["exp"] = time.Now().Add(-time.Minute).Unix() })
		}},
		{"exp_beyond_max_lifetime", func() string {
			return saAssertion(t, keys[jose.ES256], saJWTApp, saIssuer, func(m map[string]any) { m["exp"] = time.Now().Add(time.Hour).Unix() })
		}},
		{"no_exp", func() string {
			return saAssertion(t, keys[jose.ES256], saJWTApp, saIssuer, func(m map[string]any) { delete(m, "exp") })
		}},
		{"no_jti", func() string {
			return saAssertion(t, keys[jose.ES256], saJWTApp, saIssuer, func(m map[string]any) { delete(m, "jti") })
		}},
		{"iat_60s_ahead", func() string {
			return saAssertion(t, keys[jose.ES256], saJWTApp, saIssuer, func(m map[string]any) { m["iat"] = time.Now().Add(60 * time.Second).Unix() })
		}},
		{"unknown_key", func() string {
			return saAssertion(t, saNewKeys(t)[jose.ES256], saJWTApp, saIssuer, nil)
		}},
		{"hmac_with_a_public_key_as_secret", func() string {
			pub, _ := json.Marshal(keys[jose.ES256].publicJWK())
			now := time.Now()
			return saSign(t, pub, jose.HS256, "ec-1", "", map[string]any{"iss": saJWTApp, "sub": saJWTApp, "aud": saIssuer, "jti": saNextJTI(), "exp": now.Add(time.Minute).Unix()}, nil)
		}},
		{"garbage", func() string { return "not.a.jwt" }},
	} {
		t.Run("rejects_"+tc.name, func(t *testing.T) {
			r := c.postForm(t, "/par", saWithAssertion(saForm(saJWTApp, saJWTRedir), tc.assertion()).Encode(), nil)
			ctWantJSONError(t, r, http.StatusUnauthorized, "invalid_client")
		})
	}
	ctWantUpstreamUntouched(t, up, before)

	t.Run("iat_8s_ahead_accepted", func(t *testing.T) {
		a := saAssertion(t, keys[jose.ES256], saJWTApp, saIssuer, func(m map[string]any) { m["iat"] = time.Now().Add(8 * time.Second).Unix() })
		c.mustPush(t, saWithAssertion(saForm(saJWTApp, saJWTRedir), a), nil)
	})

	t.Run("replayed_jti_rejected", func(t *testing.T) {
		a := saAssertion(t, keys[jose.ES256], saJWTApp, saIssuer, nil)
		c.mustPush(t, saWithAssertion(saForm(saJWTApp, saJWTRedir), a), nil)
		r := c.postForm(t, "/par", saWithAssertion(saForm(saJWTApp, saJWTRedir), a).Encode(), nil)
		ctWantJSONError(t, r, http.StatusUnauthorized, "invalid_client")
		if !strings.Contains(string(r.Body), "jti") {
			t.Errorf("description does not say the jti was reused: %s", r.Body)
		}
	})

	t.Run("client_id_may_be_omitted_beside_an_assertion_but_is_then_missing_from_the_request", func(t *testing.T) {
		// RFC 9126 §2.1 wants client_id in the push even so.
		a := saAssertion(t, keys[jose.ES256], saJWTApp, saIssuer, nil)
		r := c.postForm(t, "/par", saWithAssertion(ctWithout(saForm(saJWTApp, saJWTRedir), "client_id"), a).Encode(), nil)
		ctWantJSONError(t, r, http.StatusBadRequest, "invalid_request")
	})

	t.Run("secret_methods_not_allowed_for_a_key_client", func(t *testing.T) {
		r := c.postForm(t, "/par", saForm(saJWTApp, saJWTRedir).Encode(), ctBasic(saJWTApp, "anything"))
		ctWantJSONError(t, r, http.StatusUnauthorized, "invalid_client")
	})
}

func TestCaddyClientSecretJWTAuthenticatesPushes(t *testing.T) {
	keys := saNewKeys(t)
	up := ctNewUpstream(t, nil)
	c := ctStart(t, up, "", saBlock(t, keys))
	hs := func(alg jose.SignatureAlgorithm, secret string) string {
		now := time.Now()
		return saSign(t, []byte(secret), alg, "", "", map[string]any{"iss": saHSApp, "sub": saHSApp, "aud": saIssuer, "jti": saNextJTI(), "iat": now.Unix(), "exp": now.Add(time.Minute).Unix()}, nil)
	}
	c.mustPush(t, saWithAssertion(saForm(saHSApp, saHSRedir), hs(jose.HS256, saHSSecret)), nil)
	r := c.postForm(t, "/par", saWithAssertion(saForm(saHSApp, saHSRedir), hs(jose.HS256, saHSSecret+"x")).Encode(), nil)
	ctWantJSONError(t, r, http.StatusUnauthorized, "invalid_client")
	// auth_methods lists only client_secret_jwt: Basic with the right secret is refused.
	r = c.postForm(t, "/par", saForm(saHSApp, saHSRedir).Encode(), ctBasic(saHSApp, saHSSecret))
	ctWantJSONError(t, r, http.StatusUnauthorized, "invalid_client")
	// An asymmetric signature cannot stand in for the secret.
	a := saAssertion(t, keys[jose.ES256], saHSApp, saIssuer, nil)
	r = c.postForm(t, "/par", saWithAssertion(saForm(saHSApp, saHSRedir), a).Encode(), nil)
	ctWantJSONError(t, r, http.StatusUnauthorized, "invalid_client")
}

// saRequestObject signs the authorization parameters of form as a request
// object of clientID (RFC 9101 §4).
func saRequestObject(t *testing.T, k saKey, clientID string, form url.Values, mod func(map[string]any)) string {
	t.Helper()
	now := time.Now()
	claims := map[string]any{"iss": clientID, "aud": saIssuer, "exp": now.Add(5 * time.Minute).Unix(), "nbf": now.Unix(), "iat": now.Unix(), "jti": saNextJTI()}
	for k := range form {
		claims[k] = form.Get(k)
	}
	if mod != nil {
		mod(claims)
	}
	return saSign(t, k.priv, k.alg, k.kid, "oauth-authz-req+jwt", claims, nil)
}

func saJARPush(t *testing.T, keys map[jose.SignatureAlgorithm]saKey, c *ctCaddy, request string, extra url.Values) ctResp {
	t.Helper()
	form := url.Values{"client_id": {saJARApp}, "request": {request}}
	for k, v := range extra {
		form[k] = v
	}
	a := saAssertion(t, keys[jose.ES256], saJARApp, saIssuer, nil)
	hdr := http.Header{"DPoP": {saDPoP(t, keys[jose.ES256], "POST", c.base+"/par", nil)}}
	return c.postForm(t, "/par", saWithAssertion(form, a).Encode(), hdr)
}

func TestCaddySignedRequestObjectIsTheOnlySourceOfParameters(t *testing.T) {
	keys := saNewKeys(t)
	up := ctNewUpstream(t, nil)
	c := ctStart(t, up, "", saBlock(t, keys))
	inner := saForm(saJARApp, saJARRedir)
	inner.Set("claims", `{"id_token":{"acr":{"essential":true}}}`)

	ro := saRequestObject(t, keys[jose.PS256], saJARApp, inner, nil)
	r := saJARPush(t, keys, c, ro, url.Values{"scope": {"outer-scope-is-ignored"}, "state": {"outer-state"}})
	if r.Status != http.StatusCreated {
		t.Fatalf("push with a signed request object: %s", r)
	}
	var body struct {
		RequestURI string `json:"request_uri"`
	}
	_ = json.Unmarshal(r.Body, &body)
	q := saRedeemed(t, c, up, saJARApp, body.RequestURI)
	for _, k := range []string{"response_type", "client_id", "redirect_uri", "scope", "state", "code_challenge", "code_challenge_method", "claims"} {
		if q.Get(k) != inner.Get(k) {
			t.Errorf("forwarded %s = %q, want the object's %q", k, q.Get(k), inner.Get(k))
		}
	}
	for _, k := range []string{"request", "iss", "aud", "exp", "nbf", "iat", "jti", "client_assertion"} {
		if q.Has(k) {
			t.Errorf("forwarded %s upstream: %v", k, q)
		}
	}
	if len(q.Get("dpop_jkt")) != 43 {
		t.Errorf("dpop_jkt not forwarded: %v", q)
	}

	before := up.count()
	for _, tc := range []struct {
		name string
		mod  func(map[string]any)
		code string
	}{
		{"wrong_aud", func(m map[string]any) { m["aud"] = "https://elsewhere.example" }, "invalid_request_object"},
		{"wrong_iss", func(m map[string]any) { m["iss"] = saJWTApp }, "invalid_request_object"},
		{"client_id_claim_of_another_client", func(m map[string]any) { m["client_id"] = saJWTApp }, "invalid_request_object"},
		{"no_exp", func(m map[string]any) { delete(m, "exp") }, "invalid_request_object"},
		{"lifetime_over_60_minutes", func(m map[string]any) { m["exp"] = time.Now().Add(61 * time.Minute).Unix() }, "invalid_request_object"},
		{"nbf_in_the_future", func(m map[string]any) { m["nbf"] = time.Now().Add(2 * time.Minute).Unix() }, "invalid_request_object"},
		{"request_uri_inside", func(m map[string]any) { m["request_uri"] = "urn:x" }, "invalid_request_object"},
		{"unregistered_redirect_uri_inside", func(m map[string]any) { m["redirect_uri"] = "https://evil.example/cb" }, "invalid_request"},
		{"plain_pkce_inside", func(m map[string]any) { m["code_challenge_method"] = "plain" }, "invalid_request"},
	} {
		t.Run("rejects_"+tc.name, func(t *testing.T) {
			r := saJARPush(t, keys, c, saRequestObject(t, keys[jose.ES256], saJARApp, inner, tc.mod), nil)
			ctWantJSONError(t, r, http.StatusBadRequest, tc.code)
		})
	}
	t.Run("rejects_an_object_signed_by_an_unknown_key", func(t *testing.T) {
		r := saJARPush(t, keys, c, saRequestObject(t, saNewKeys(t)[jose.ES256], saJARApp, inner, nil), nil)
		ctWantJSONError(t, r, http.StatusBadRequest, "invalid_request_object")
	})
	t.Run("rejects_an_unsigned_object", func(t *testing.T) {
		r := saJARPush(t, keys, c, "eyJhbGciOiJub25lIn0."+strings.Split(ro, ".")[1]+".", nil)
		ctWantJSONError(t, r, http.StatusBadRequest, "invalid_request_object")
	})
	t.Run("require_signed_request_object_refuses_a_plain_push", func(t *testing.T) {
		form := saWithAssertion(inner, saAssertion(t, keys[jose.ES256], saJARApp, saIssuer, nil))
		hdr := http.Header{"DPoP": {saDPoP(t, keys[jose.ES256], "POST", c.base+"/par", nil)}}
		ctWantJSONError(t, c.postForm(t, "/par", form.Encode(), hdr), http.StatusBadRequest, "invalid_request")
	})
	ctWantUpstreamUntouched(t, up, before)
}

func TestCaddyEncryptedRequestObjectIsDecryptedWithTheGatewayKey(t *testing.T) {
	keys := saNewKeys(t)
	up := ctNewUpstream(t, nil)
	c := ctStart(t, up, "", saBlock(t, keys))
	r := c.get(t, "/par/jwks", nil)
	if r.Status != http.StatusOK {
		t.Fatalf("GET /par/jwks: %s", r)
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(r.Body, &set); err != nil || len(set.Keys) == 0 {
		t.Fatalf("gateway JWKS: %v %s", err, r.Body)
	}
	for _, priv := range []string{`"d"`, `"p"`, `"q"`, `"dp"`, `"dq"`, `"qi"`} {
		if strings.Contains(string(r.Body), priv) {
			t.Fatalf("gateway JWKS holds private member %s", priv)
		}
	}
	inner := saForm(saJARApp, saJARRedir)
	for _, alg := range []jose.KeyAlgorithm{jose.RSA_OAEP_256, jose.ECDH_ES, jose.ECDH_ES_A256KW} {
		t.Run(string(alg), func(t *testing.T) {
			var key *jose.JSONWebKey
			for i := range set.Keys {
				k := &set.Keys[i]
				if _, isRSA := k.Key.(*rsa.PublicKey); isRSA == (alg == jose.RSA_OAEP_256) {
					key = k
					break
				}
			}
			if key == nil {
				t.Fatalf("no key for %s in %s", alg, r.Body)
			}
			enc, err := jose.NewEncrypter(jose.A256GCM, jose.Recipient{Algorithm: alg, Key: key.Key, KeyID: key.KeyID},
				(&jose.EncrypterOptions{}).WithContentType("JWT"))
			if err != nil {
				t.Fatal(err)
			}
			obj, err := enc.Encrypt([]byte(saRequestObject(t, keys[jose.EdDSA], saJARApp, inner, nil)))
			if err != nil {
				t.Fatal(err)
			}
			compact, _ := obj.CompactSerialize()
			resp := saJARPush(t, keys, c, compact, nil)
			if resp.Status != http.StatusCreated {
				t.Fatalf("encrypted push: %s", resp)
			}
			var body struct {
				RequestURI string `json:"request_uri"`
			}
			_ = json.Unmarshal(resp.Body, &body)
			if q := saRedeemed(t, c, up, saJARApp, body.RequestURI); q.Get("state") != inner.Get("state") {
				t.Errorf("forwarded %v", q)
			}
		})
	}
	t.Run("unsigned_payload_inside_the_JWE_is_refused", func(t *testing.T) {
		var key *jose.JSONWebKey
		for i := range set.Keys {
			if _, ok := set.Keys[i].Key.(*rsa.PublicKey); ok {
				key = &set.Keys[i]
			}
		}
		enc, err := jose.NewEncrypter(jose.A128GCM, jose.Recipient{Algorithm: jose.RSA_OAEP_256, Key: key.Key, KeyID: key.KeyID}, nil)
		if err != nil {
			t.Fatal(err)
		}
		claims, _ := json.Marshal(map[string]any{"iss": saJARApp, "aud": saIssuer, "client_id": saJARApp, "exp": time.Now().Add(time.Minute).Unix()})
		obj, _ := enc.Encrypt(claims)
		compact, _ := obj.CompactSerialize()
		ctWantJSONError(t, saJARPush(t, keys, c, compact, nil), http.StatusBadRequest, "invalid_request_object")
	})
}

// saDPoP is a DPoP proof (RFC 9449 §4.2) by k for htm and htu.
func saDPoP(t *testing.T, k saKey, htm, htu string, mod func(map[string]any)) string {
	t.Helper()
	claims := map[string]any{"htm": htm, "htu": htu, "iat": time.Now().Unix(), "jti": saNextJTI()}
	if mod != nil {
		mod(claims)
	}
	jwk := jose.JSONWebKey{Key: k.priv.Public()}
	return saSign(t, k.priv, k.alg, "", "dpop+jwt", claims, map[jose.HeaderKey]any{"jwk": jwk})
}

func saThumbprint(t *testing.T, k saKey) string {
	t.Helper()
	jwk := jose.JSONWebKey{Key: k.priv.Public()}
	tp, err := jwk.Thumbprint(crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	return base64.RawURLEncoding.EncodeToString(tp)
}

func TestCaddyDPoPProofAtPARBindsTheKey(t *testing.T) {
	keys := saNewKeys(t)
	up := ctNewUpstream(t, nil)
	c := ctStart(t, up, "", saBlock(t, keys))
	htu := c.base + "/par"
	push := func(form url.Values, proof string) ctResp {
		a := saAssertion(t, keys[jose.ES256], saJWTApp, saIssuer, nil)
		var hdr http.Header
		if proof != "" {
			hdr = http.Header{"DPoP": {proof}}
		}
		return c.postForm(t, "/par", saWithAssertion(form, a).Encode(), hdr)
	}

	dpopKey := saNewKeys(t)[jose.ES256]
	r := push(saForm(saJWTApp, saJWTRedir), saDPoP(t, dpopKey, "POST", htu, nil))
	if r.Status != http.StatusCreated {
		t.Fatalf("push with DPoP: %s", r)
	}
	var body struct {
		RequestURI string `json:"request_uri"`
	}
	_ = json.Unmarshal(r.Body, &body)
	if got, want := saRedeemed(t, c, up, saJWTApp, body.RequestURI).Get("dpop_jkt"), saThumbprint(t, dpopKey); got != want {
		t.Errorf("forwarded dpop_jkt = %q, want the proof key's thumbprint %q", got, want)
	}

	t.Run("matching_dpop_jkt_accepted", func(t *testing.T) {
		r := push(ctWith(saForm(saJWTApp, saJWTRedir), "dpop_jkt", saThumbprint(t, dpopKey)), saDPoP(t, dpopKey, "POST", htu, nil))
		if r.Status != http.StatusCreated {
			t.Fatalf("%s", r)
		}
	})
	before := up.count()
	for _, tc := range []struct {
		name  string
		form  url.Values
		proof func() string
		code  string
	}{
		{"mismatched_dpop_jkt", ctWith(saForm(saJWTApp, saJWTRedir), "dpop_jkt", saThumbprint(t, keys[jose.ES256])), func() string { return saDPoP(t, dpopKey, "POST", htu, nil) }, "invalid_dpop_proof"},
		{"wrong_htm", saForm(saJWTApp, saJWTRedir), func() string { return saDPoP(t, dpopKey, "GET", htu, nil) }, "invalid_dpop_proof"},
		{"wrong_htu", saForm(saJWTApp, saJWTRedir), func() string { return saDPoP(t, dpopKey, "POST", "https://elsewhere.example/par", nil) }, "invalid_dpop_proof"},
		{"stale_iat", saForm(saJWTApp, saJWTRedir), func() string {
			return saDPoP(t, dpopKey, "POST", htu, func(m map[string]any) { m["iat"] = time.Now().Add(-10 * time.Minute).Unix() })
		}, "invalid_dpop_proof"},
		{"not_a_jwt", saForm(saJWTApp, saJWTRedir), func() string { return "garbage" }, "invalid_dpop_proof"},
	} {
		t.Run("rejects_"+tc.name, func(t *testing.T) {
			ctWantJSONError(t, push(tc.form, tc.proof()), http.StatusBadRequest, tc.code)
		})
	}
	t.Run("rejects_a_replayed_proof", func(t *testing.T) {
		p := saDPoP(t, dpopKey, "POST", htu, nil)
		if r := push(saForm(saJWTApp, saJWTRedir), p); r.Status != http.StatusCreated {
			t.Fatalf("first use: %s", r)
		}
		ctWantJSONError(t, push(saForm(saJWTApp, saJWTRedir), p), http.StatusBadRequest, "invalid_dpop_proof")
	})
	t.Run("require_dpop_refuses_a_push_without_binding", func(t *testing.T) {
		ro := saRequestObject(t, keys[jose.ES256], saJARApp, saForm(saJARApp, saJARRedir), nil)
		form := saWithAssertion(url.Values{"client_id": {saJARApp}, "request": {ro}}, saAssertion(t, keys[jose.ES256], saJARApp, saIssuer, nil))
		ctWantJSONError(t, c.postForm(t, "/par", form.Encode(), nil), http.StatusBadRequest, "invalid_request")
	})
	ctWantUpstreamUntouched(t, up, before)
}

func TestCaddyProfileFAPI2(t *testing.T) {
	keys := saNewKeys(t)
	jwks := "`" + saJWKS(t, keys[jose.ES256]) + "`"
	base := "authorization_endpoint /authorize\n\t\tprofile fapi2\n\t\tissuer " + saIssuer + "\n\t\t"
	keyClient := "client fapi {\n\t\t\tjwks " + jwks + "\n\t\t\tredirect_uris https://fapi.example.test/cb\n\t\t}\n\t\t"
	up := ctNewUpstream(t, nil)
	storage := t.TempDir()

	for _, tc := range []struct {
		name, block string
		want        []string
	}{
		{"public_client", base + "client pub {\n public\n redirect_uris https://p.example.test/cb\n }", []string{"fapi2", `"pub"`, "public"}},
		{"secret_only_client", base + "client sec {\n secret s\n redirect_uris https://s.example.test/cb\n }", []string{"fapi2", `"sec"`, "client_secret_basic"}},
		{"secret_method_listed", base + "client sec {\n secret s\n jwks " + jwks + "\n auth_methods private_key_jwt client_secret_post\n redirect_uris https://s.example.test/cb\n }", []string{"fapi2", `"sec"`, "client_secret_post"}},
		{"http_redirect_uri", base + "client fapi {\n jwks " + jwks + "\n redirect_uris http://app.example.test/cb\n }", []string{"fapi2", `"fapi"`, "redirect_uris"}},
		{"no_issuer", "authorization_endpoint /authorize\n profile fapi2\n " + keyClient, []string{"fapi2", "issuer"}},
		{"lifetime_600s", base + keyClient + "request_uri_lifetime 600s", []string{"fapi2", "request_uri_lifetime"}},
		{"rs256_allowed", base + keyClient + "client_assertion_signing_algs RS256", []string{"fapi2", "client_assertion_signing_algs", "RS256"}},
		{"message_signing_client_without_keys", "authorization_endpoint /authorize\n profile fapi2_message_signing\n issuer " + saIssuer + "\n client m {\n tls_client_auth_san_dns m.example.test\n redirect_uris https://m.example.test/cb\n }", []string{"fapi2_message_signing", `"m"`, "keys"}},
		{"unknown_profile", "authorization_endpoint /authorize\n profile fapi3\n " + keyClient, []string{"profile", "fapi3"}},
	} {
		t.Run("load_refuses_"+tc.name, func(t *testing.T) {
			ctWantLoadError(t, up, storage, tc.block, tc.want...)
		})
	}

	t.Run("enforced_at_the_PAR_endpoint", func(t *testing.T) {
		c := ctStart(t, up, "", base+keyClient+"client loop {\n jwks "+jwks+"\n redirect_uris http://127.0.0.1:8765/cb\n }")
		form := func() url.Values { return saForm("fapi", "https://fapi.example.test/cb") }
		push := func(f url.Values, aud any) ctResp {
			return c.postForm(t, "/par", saWithAssertion(f, saAssertion(t, keys[jose.ES256], f.Get("client_id"), aud, nil)).Encode(), nil)
		}
		if r := push(form(), saIssuer); r.Status != http.StatusCreated {
			t.Fatalf("issuer as aud: %s", r)
		}
		if r := push(saForm("loop", "http://127.0.0.1:8765/cb"), saIssuer); r.Status != http.StatusCreated {
			t.Fatalf("loopback http redirect of a native app: %s", r)
		}
		ctWantJSONError(t, push(form(), []string{saIssuer}), http.StatusUnauthorized, "invalid_client")
		ctWantJSONError(t, push(form(), c.base+"/par"), http.StatusUnauthorized, "invalid_client")
		ctWantJSONError(t, push(ctWithout(form(), "code_challenge", "code_challenge_method"), saIssuer), http.StatusBadRequest, "invalid_request")
		// PAR is required: a plain authorization request is refused.
		r := c.get(t, "/authorize?"+form().Encode(), nil)
		if r.Status != http.StatusSeeOther || !strings.Contains(r.Header.Get("Location"), "error=invalid_request") {
			t.Errorf("plain request under fapi2: %s", r)
		}
	})
}

func TestCaddyDiscoveryAdvertisesStrongClientAuthentication(t *testing.T) {
	keys := saNewKeys(t)
	doc := `{"issuer":"` + saIssuer + `","authorization_endpoint":"https://idp.example.test/authorize","token_endpoint":"https://idp.example.test/token",` +
		`"token_endpoint_auth_methods_supported":["client_secret_basic"],"request_object_signing_alg_values_supported":["none","RS256"]}`
	up := ctNewUpstream(t, map[string]http.HandlerFunc{"/.well-known/openid-configuration": ctJSONHandler(doc)})
	c := ctStart(t, up, "", saBlock(t, keys, "require_signed_request_object", "client mtls {\n tls_client_auth_san_dns m.example.test\n redirect_uris https://m.example.test/cb\n }"))
	r := c.get(t, "/.well-known/openid-configuration", nil)
	m := ctDecode(t, r.Body)
	want := map[string]string{
		"request_object_signing_alg_values_supported":    `["PS256","ES256","EdDSA","RS256"]`,
		"request_object_encryption_alg_values_supported": `["RSA-OAEP-256","ECDH-ES","ECDH-ES+A128KW","ECDH-ES+A256KW"]`,
		"request_object_encryption_enc_values_supported": `["A128GCM","A256GCM"]`,
		"require_signed_request_object":                  `true`,
		"dpop_signing_alg_values_supported":              `["ES256","PS256","EdDSA"]`,
		"mtls_endpoint_aliases":                          `{"pushed_authorization_request_endpoint":"https://idp.example.test/par"}`,
		"jwks_uri":                                       `"https://idp.example.test/par/jwks"`,
		// Not the gateway's to change: the upstream's token endpoint.
		"token_endpoint_auth_methods_supported": `["client_secret_basic"]`,
	}
	for k, w := range want {
		got, _ := json.Marshal(m[k])
		if string(got) != w {
			t.Errorf("%s = %s, want %s", k, got, w)
		}
	}
	if _, ok := m["tls_client_certificate_bound_access_tokens"]; ok {
		t.Errorf("tls_client_certificate_bound_access_tokens advertised although the upstream does not")
	}
}

func TestCaddyStrongAuthConfigErrorsNameTheDirective(t *testing.T) {
	keys := saNewKeys(t)
	jwks := "`" + saJWKS(t, keys[jose.ES256]) + "`"
	up := ctNewUpstream(t, nil)
	storage := t.TempDir()
	base := "authorization_endpoint /authorize\n\t\tissuer " + saIssuer + "\n\t\t"
	client := func(lines ...string) string {
		return "client c {\n" + strings.Join(lines, "\n") + "\nredirect_uris https://c.example.test/cb\n}\n"
	}
	for _, tc := range []struct {
		name, block string
		want        []string
	}{
		{"two_key_sources", base + client("jwks "+jwks, "jwks_file /nonexistent"), []string{`"c"`, "jwks"}},
		{"jwks_not_json", base + client("jwks `{not json`"), []string{`"c"`, "jwks"}},
		{"jwks_file_missing", base + client("jwks_file "+storage+"/missing.json"), []string{`"c"`, "jwks_file"}},
		{"jwks_uri_plain_http", base + client("jwks_uri http://keys.example.test/jwks"), []string{`"c"`, "jwks_uri"}},
		{"client_secret_jwt_short_secret", base + client("secret short", "auth_methods client_secret_jwt"), []string{`"c"`, "client_secret_jwt", "32"}},
		{"private_key_jwt_without_keys", base + client("secret s", "auth_methods private_key_jwt"), []string{`"c"`, "private_key_jwt"}},
		{"two_tls_names", base + client("tls_client_auth_san_dns a.example.test", "tls_client_auth_san_uri https://a.example.test"), []string{`"c"`, "tls_client_auth"}},
		{"secret_and_keys_without_auth_methods", base + client("secret s", "jwks "+jwks), []string{`"c"`, "auth_methods"}},
		{"require_signed_request_object_without_keys", base + client("secret s", "require_signed_request_object"), []string{`"c"`, "require_signed_request_object"}},
		{"none_algorithm", base + client("jwks "+jwks) + "client_assertion_signing_algs none", []string{"client_assertion_signing_algs", "none"}},
		{"hmac_algorithm_for_request_objects", base + client("jwks "+jwks) + "request_object_signing_algs HS256", []string{"request_object_signing_algs", "HS256"}},
		{"clock_skew_60s", base + client("jwks "+jwks) + "clock_skew 60s", []string{"clock_skew"}},
		{"request_object_lifetime_2h", base + client("jwks "+jwks) + "request_object_max_lifetime 2h", []string{"request_object_max_lifetime"}},
		{"encryption_unknown_alg", base + client("jwks "+jwks) + "request_object_encryption {\n algs RSA1_5\n }", []string{"request_object_encryption", "RSA1_5"}},
		{"mtls_endpoint_http", base + client("tls_client_auth_san_dns a.example.test") + "mtls_endpoint http://mtls.example.test/par", []string{"mtls_endpoint"}},
		{"client_ca_file_missing", base + client("tls_client_auth_san_dns a.example.test") + "client_ca_file " + storage + "/missing.pem", []string{"client_ca_file"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctWantLoadError(t, up, storage, tc.block, tc.want...)
		})
	}
}

// The token endpoint, learned from discovery, is an assertion audience
// (RFC 9126 §2), but not the htu of a DPoP proof sent to the PAR endpoint
// (RFC 9449 §4.3).
func TestCaddyTokenEndpointIsAnAssertionAudienceButNotADPoPTarget(t *testing.T) {
	keys := saNewKeys(t)
	doc := `{"issuer":"` + saIssuer + `","authorization_endpoint":"https://idp.example.test/authorize","token_endpoint":"https://idp.example.test/token"}`
	up := ctNewUpstream(t, map[string]http.HandlerFunc{"/.well-known/openid-configuration": ctJSONHandler(doc)})
	c := ctStart(t, up, "", saBlock(t, keys))
	const tokenURL = "https://idp.example.test/token"
	form := saWithAssertion(saForm(saJWTApp, saJWTRedir), saAssertion(t, keys[jose.ES256], saJWTApp, tokenURL, nil))
	if r := c.postForm(t, "/par", form.Encode(), nil); r.Status != http.StatusCreated {
		t.Fatalf("assertion with the token endpoint as aud: %s", r)
	}
	form = saWithAssertion(saForm(saJWTApp, saJWTRedir), saAssertion(t, keys[jose.ES256], saJWTApp, saIssuer, nil))
	hdr := http.Header{"DPoP": {saDPoP(t, saNewKeys(t)[jose.ES256], "POST", tokenURL, nil)}}
	ctWantJSONError(t, c.postForm(t, "/par", form.Encode(), hdr), http.StatusBadRequest, "invalid_dpop_proof")
	// The PAR URL that discovery advertises is one (the gateway's origin
	// as the upstream names it).
	hdr = http.Header{"DPoP": {saDPoP(t, saNewKeys(t)[jose.ES256], "POST", "https://idp.example.test/par", nil)}}
	form = saWithAssertion(saForm(saJWTApp, saJWTRedir), saAssertion(t, keys[jose.ES256], saJWTApp, saIssuer, nil))
	if r := c.postForm(t, "/par", form.Encode(), hdr); r.Status != http.StatusCreated {
		t.Fatalf("DPoP proof for the advertised PAR URL: %s", r)
	}
}
