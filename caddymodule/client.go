package caddymodule

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net/url"
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
	if c.Public && c.Secret != "" {
		return fmt.Errorf("client %q: 'public' and 'secret' are mutually exclusive", c.ClientID)
	}
	if !c.Public && c.Secret == "" {
		return fmt.Errorf("client %q: needs either 'secret' or 'public'", c.ClientID)
	}
	if len(c.RedirectURIs) == 0 {
		return fmt.Errorf("client %q: 'redirect_uris' is required", c.ClientID)
	}
	for _, u := range c.RedirectURIs {
		if err := checkRedirectURI(u); err != nil {
			return fmt.Errorf("client %q: redirect_uris: %v", c.ClientID, err)
		}
	}
	for _, m := range c.AuthMethods {
		switch m {
		case AuthClientSecretBasic, AuthClientSecretPost:
			if c.Public {
				return fmt.Errorf("client %q: auth_methods: %s needs a secret", c.ClientID, m)
			}
		case AuthNone:
			if !c.Public {
				return fmt.Errorf("client %q: auth_methods: 'none' is only for public clients", c.ClientID)
			}
		default:
			return fmt.Errorf("client %q: auth_methods: unsupported method %q", c.ClientID, m)
		}
	}
	for _, s := range c.AllowedScopes {
		if s == "" || strings.ContainsAny(s, " \t\r\n\"\\") {
			return fmt.Errorf("client %q: allowed_scopes: invalid scope %q", c.ClientID, s)
		}
	}
	return nil
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

// newClient builds the runtime client from a validated config whose secret
// has already been expanded.
func newClient(c ClientConfig) *client {
	cl := &client{
		id:           c.ClientID,
		public:       c.Public,
		requirePAR:   c.RequirePAR,
		authMethods:  map[string]bool{},
		redirectURIs: map[string]bool{},
	}
	if !c.Public {
		cl.secretHash = sha256.Sum256([]byte(c.Secret))
	}
	methods := c.AuthMethods
	if len(methods) == 0 {
		if c.Public {
			methods = []string{AuthNone}
		} else {
			methods = []string{AuthClientSecretBasic, AuthClientSecretPost}
		}
	}
	for _, m := range methods {
		cl.authMethods[m] = true
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
	return cl
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
