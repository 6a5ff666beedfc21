package caddymodule

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"os"
	"slices"
	"strings"
)

// Client authentication methods (RFC 7591 §2 token_endpoint_auth_method).
const (
	AuthClientSecretBasic       = "client_secret_basic"
	AuthClientSecretPost        = "client_secret_post"
	AuthClientSecretJWT         = "client_secret_jwt"           // RFC 7523, OIDC Core §9
	AuthPrivateKeyJWT           = "private_key_jwt"             // RFC 7523, OIDC Core §9
	AuthTLSClientAuth           = "tls_client_auth"             // RFC 8705 §2.1
	AuthSelfSignedTLSClientAuth = "self_signed_tls_client_auth" // RFC 8705 §2.2
	AuthNone                    = "none"
)

// ClientConfig registers one OAuth client with the gateway.
type ClientConfig struct {
	// ClientID is the client identifier, as registered at the upstream IdP.
	ClientID string `json:"client_id"`
	// Secret makes the client confidential. Placeholders {env.*} and
	// {file.*} are expanded at provision time.
	Secret string `json:"secret,omitempty"`
	// Public marks a client without a secret; PKCE with S256 is then
	// required on every push.
	Public bool `json:"public,omitempty"`
	// AuthMethods restricts the client authentication methods the client may
	// use at the PAR endpoint. Default: client_secret_basic and
	// client_secret_post for confidential clients, none for public ones.
	AuthMethods []string `json:"auth_methods,omitempty"`
	// RedirectURIs are matched exactly (RFC 9700 §4.1.3).
	RedirectURIs []string `json:"redirect_uris"`
	// RequirePAR rejects authorization requests of this client that did not
	// go through the PAR endpoint (RFC 9126 §6).
	RequirePAR bool `json:"require_par,omitempty"`
	// AllowedScopes, when set, limits the scopes the client may push.
	AllowedScopes []string `json:"allowed_scopes,omitempty"`
	// AllowedAuthorizationDetailsTypes, when set, limits the types of
	// pushed authorization_details (RFC 9396).
	AllowedAuthorizationDetailsTypes []string `json:"allowed_authorization_details_types,omitempty"`

	// The client's public keys, for private_key_jwt, signed request objects
	// and self_signed_tls_client_auth: at most one of an inline JWK Set,
	// a JWK Set file, or a JWK Set URL fetched at run time.
	JWKS     json.RawMessage `json:"jwks,omitempty"`
	JWKSFile string          `json:"jwks_file,omitempty"`
	JWKSURI  string          `json:"jwks_uri,omitempty"`

	// TLSClientAuth* name the certificate a tls_client_auth client presents
	// (RFC 8705 §2.1.2): exactly one of them is set for such a client.
	TLSClientAuthSubjectDN string `json:"tls_client_auth_subject_dn,omitempty"`
	TLSClientAuthSANDNS    string `json:"tls_client_auth_san_dns,omitempty"`
	TLSClientAuthSANURI    string `json:"tls_client_auth_san_uri,omitempty"`
	TLSClientAuthSANIP     string `json:"tls_client_auth_san_ip,omitempty"`
	TLSClientAuthSANEmail  string `json:"tls_client_auth_san_email,omitempty"`

	// RequireSignedRequestObject rejects pushes without a signed request
	// object (RFC 9101 §10.5).
	RequireSignedRequestObject bool `json:"require_signed_request_object,omitempty"`
	// RequireDPoP rejects pushes that bind no DPoP key (RFC 9449 §10).
	RequireDPoP bool `json:"require_dpop,omitempty"`

	// RateLimit, when set, replaces rate_limit's per_client for this
	// client (or switches it off); a public client is limited only by it.
	RateLimit *Rate `json:"rate_limit,omitempty"`
	// ClientLiftConfig: upstream credentials and gateway PKCE (lift.go).
	ClientLiftConfig
}

// client is the provisioned, immutable form of a ClientConfig.
type client struct {
	id            string
	secretHash    [32]byte // sha256 of the secret; compared in constant time
	public        bool
	authMethods   map[string]bool
	redirectURIs  map[string]bool
	requirePAR    bool
	allowedScopes map[string]bool // nil: any scope
	// authorizationDetailsTypes: nil allows any type.
	authorizationDetailsTypes map[string]bool

	// hmacKey is the secret itself, kept only when client_secret_jwt is
	// allowed (it is the HMAC key, RFC 7523 §2.2 / OIDC Core §9).
	hmacKey []byte
	// keys are the client's public keys; nil when it has none.
	keys *keySet
	// tlsName is the certificate name of a tls_client_auth client.
	tlsName *tlsClientAuthName

	requireSignedRequestObject bool
	requireDPoP                bool
	// requirePKCE: public clients, and all clients under profile fapi2.
	requirePKCE bool
	// delegated: not configured, authenticated by the upstream
	// (upstream_client_auth); its redirect URIs and scopes are the
	// upstream's to check.
	delegated bool
}

// minHMACKey is the shortest client secret usable for client_secret_jwt:
// RFC 7518 §3.2 wants a key at least as long as the hash output (HS256).
const minHMACKey = 32

// hasKeys reports whether the config gives the client public keys.
func (c ClientConfig) hasKeys() bool {
	return len(c.JWKS) > 0 || c.JWKSFile != "" || c.JWKSURI != ""
}

// tlsName returns the one configured tls_client_auth name, if any.
func (c ClientConfig) tlsNames() []tlsClientAuthName {
	var out []tlsClientAuthName
	for _, n := range []tlsClientAuthName{
		{"subject_dn", c.TLSClientAuthSubjectDN},
		{"san_dns", c.TLSClientAuthSANDNS},
		{"san_uri", c.TLSClientAuthSANURI},
		{"san_ip", c.TLSClientAuthSANIP},
		{"san_email", c.TLSClientAuthSANEmail},
	} {
		if n.Value != "" {
			out = append(out, n)
		}
	}
	return out
}

// defaultAuthMethods follows from what the client has: a secret gives the
// secret methods, keys give private_key_jwt, a certificate name gives
// tls_client_auth, nothing gives none (a public client).
func (c ClientConfig) defaultAuthMethods() []string {
	if c.Public {
		return []string{AuthNone}
	}
	var m []string
	if c.Secret != "" {
		m = append(m, AuthClientSecretBasic, AuthClientSecretPost)
		if len(c.Secret) >= minHMACKey {
			m = append(m, AuthClientSecretJWT)
		}
	}
	if c.hasKeys() {
		m = append(m, AuthPrivateKeyJWT)
	}
	if len(c.tlsNames()) > 0 {
		m = append(m, AuthTLSClientAuth)
	}
	return m
}

// methods is the effective list of authentication methods.
func (c ClientConfig) methods() []string {
	if len(c.AuthMethods) > 0 {
		return c.AuthMethods
	}
	return c.defaultAuthMethods()
}

// validate checks a client's static configuration. Errors name the
// Caddyfile subdirective.
func (c ClientConfig) validate() error {
	if c.ClientID == "" {
		return fmt.Errorf("client: client_id is required")
	}
	if strings.ContainsAny(c.ClientID, " \t\r\n") {
		return fmt.Errorf("client %q: client_id must not contain white space", c.ClientID)
	}
	fail := func(format string, args ...any) error {
		return fmt.Errorf("client %q: "+format, append([]any{c.ClientID}, args...)...)
	}
	if c.Public && c.Secret != "" {
		return fail("'public' and 'secret' are mutually exclusive")
	}
	names := c.tlsNames()
	if !c.Public && c.Secret == "" && !c.hasKeys() && len(names) == 0 {
		return fail("needs 'secret', keys ('jwks', 'jwks_file' or 'jwks_uri'), a tls_client_auth_* name, or 'public'")
	}
	if c.Public && len(names) > 0 {
		return fail("a public client cannot use tls_client_auth")
	}
	if len(names) > 1 {
		return fail("tls_client_auth_*: set exactly one of subject_dn, san_dns, san_uri, san_ip, san_email")
	}
	for _, n := range names {
		if err := validTLSClientAuthName(n); err != nil {
			return fail("tls_client_auth_%s: %v", n.Kind, err)
		}
	}
	if n := btoi(len(c.JWKS) > 0) + btoi(c.JWKSFile != "") + btoi(c.JWKSURI != ""); n > 1 {
		return fail("jwks, jwks_file and jwks_uri are mutually exclusive")
	}
	if c.JWKSURI != "" {
		if err := checkJWKSURI(c.JWKSURI); err != nil {
			return fail("jwks_uri: %v", err)
		}
	}
	if len(c.RedirectURIs) == 0 {
		return fail("'redirect_uris' is required")
	}
	for _, u := range c.RedirectURIs {
		if err := checkRedirectURI(u); err != nil {
			return fail("redirect_uris: %v", err)
		}
	}
	if len(c.AuthMethods) == 0 && c.Secret != "" && (c.hasKeys() || len(names) > 0) {
		// Which credential may authenticate is a decision, not a default.
		return fail("has a secret and keys or a certificate name: list the methods it may use in 'auth_methods'")
	}
	for _, m := range c.AuthMethods {
		switch m {
		case AuthClientSecretBasic, AuthClientSecretPost:
			if c.Secret == "" {
				return fail("auth_methods: %s needs a secret", m)
			}
		case AuthClientSecretJWT:
			if len(c.Secret) < minHMACKey {
				return fail("auth_methods: client_secret_jwt needs a secret of at least %d bytes (RFC 7518 §3.2)", minHMACKey)
			}
		case AuthPrivateKeyJWT, AuthSelfSignedTLSClientAuth:
			if !c.hasKeys() {
				return fail("auth_methods: %s needs the client's keys (jwks, jwks_file or jwks_uri)", m)
			}
		case AuthTLSClientAuth:
			if len(names) == 0 {
				return fail("auth_methods: tls_client_auth needs one tls_client_auth_* name")
			}
		case AuthNone:
			if !c.Public {
				return fail("auth_methods: 'none' is only for public clients")
			}
		default:
			return fail("auth_methods: unsupported method %q", m)
		}
		if c.Public && m != AuthNone {
			return fail("auth_methods: a public client can only use 'none'")
		}
	}
	if c.RequireSignedRequestObject && !c.hasKeys() {
		return fail("require_signed_request_object needs the client's keys (jwks, jwks_file or jwks_uri)")
	}
	for _, s := range c.AllowedScopes {
		if s == "" || strings.ContainsAny(s, " \t\r\n\"\\") {
			return fail("allowed_scopes: invalid scope %q", s)
		}
	}
	return nil
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// isLoopbackHost reports whether host is a loopback IP literal or
// "localhost".
func isLoopbackHost(host string) bool {
	return strings.EqualFold(host, "localhost") || isLoopbackIP(host)
}

// isLoopbackIP reports whether host is a loopback IP literal (RFC 8252
// §7.3 loopback redirects use literals, not "localhost").
func isLoopbackIP(host string) bool {
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// checkRedirectURI enforces RFC 6749 §3.1.2: absolute, no fragment.
func checkRedirectURI(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("invalid URI %q: %v", s, err)
	}
	if !u.IsAbs() {
		return fmt.Errorf("%q is not an absolute URI", s)
	}
	if u.Fragment != "" || strings.Contains(s, "#") {
		return fmt.Errorf("%q must not contain a fragment", s)
	}
	return nil
}

// keySource builds what newClient needs to make a client's key set.
type keySource struct {
	readFile func(string) ([]byte, error)
	remote   remoteKeySetOptions
}

// newClient builds the runtime client from a validated config whose secret
// has already been expanded. Static key sets are read and parsed here,
// once; remote ones are fetched on first use.
func newClient(c ClientConfig, ks keySource) (*client, error) {
	cl := &client{
		id:                         c.ClientID,
		public:                     c.Public,
		requirePAR:                 c.RequirePAR,
		authMethods:                map[string]bool{},
		redirectURIs:               map[string]bool{},
		requireSignedRequestObject: c.RequireSignedRequestObject,
		requireDPoP:                c.RequireDPoP,
		requirePKCE:                c.Public,
	}
	if c.Secret != "" {
		cl.secretHash = sha256.Sum256([]byte(c.Secret))
	}
	for _, m := range c.methods() {
		cl.authMethods[m] = true
	}
	if cl.authMethods[AuthClientSecretJWT] {
		cl.hmacKey = []byte(c.Secret)
	}
	if names := c.tlsNames(); len(names) == 1 {
		cl.tlsName = &names[0]
	}
	switch {
	case len(c.JWKS) > 0:
		k, err := newStaticKeySet(c.JWKS)
		if err != nil {
			return nil, fmt.Errorf("client %q: jwks: %v", c.ClientID, err)
		}
		cl.keys = k
	case c.JWKSFile != "":
		read := ks.readFile
		if read == nil {
			read = os.ReadFile
		}
		doc, err := read(c.JWKSFile)
		if err != nil {
			return nil, fmt.Errorf("client %q: jwks_file: %v", c.ClientID, err)
		}
		k, err := newStaticKeySet(doc)
		if err != nil {
			return nil, fmt.Errorf("client %q: jwks_file %s: %v", c.ClientID, c.JWKSFile, err)
		}
		cl.keys = k
	case c.JWKSURI != "":
		cl.keys = newRemoteKeySet(c.JWKSURI, ks.remote)
	}
	for _, u := range c.RedirectURIs {
		cl.redirectURIs[u] = true
	}
	if len(c.AllowedScopes) > 0 {
		cl.allowedScopes = map[string]bool{}
		for _, s := range c.AllowedScopes {
			cl.allowedScopes[s] = true
		}
	}
	if len(c.AllowedAuthorizationDetailsTypes) > 0 {
		cl.authorizationDetailsTypes = map[string]bool{}
		for _, s := range c.AllowedAuthorizationDetailsTypes {
			cl.authorizationDetailsTypes[s] = true
		}
	}
	return cl, nil
}

// authMethodList lists the methods for log and error messages.
func (c *client) authMethodList() []string {
	var out []string
	for m := range c.authMethods {
		out = append(out, m)
	}
	slices.Sort(out)
	return out
}
