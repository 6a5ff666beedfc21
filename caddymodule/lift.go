package caddymodule

// Issue 10, "lift a legacy IdP to FAPI 2.0 from the outside": the
// configuration and provisioning of iss in authorization responses
// (authzresponse.go), the token endpoint with client authentication
// translation (token.go) and PKCE enforced by the gateway (pkce.go).

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/go-jose/go-jose/v4"
	"go.uber.org/zap"
)

// LiftConfig is the handler's part of the issue 10 configuration. It is
// embedded in Handler, so its members are top-level JSON fields.
type LiftConfig struct {
	// AddIss adds iss to authorization responses (RFC 9207) that lack it
	// and refuses those whose iss is not the issuer; advertised as
	// authorization_response_iss_parameter_supported.
	AddIss bool `json:"add_iss,omitempty"`
	// TokenEndpoint is the path of the upstream's token endpoint through
	// this site. When set, the gateway authenticates clients there with
	// the methods it supports and forwards with the upstream credentials.
	TokenEndpoint string `json:"token_endpoint,omitempty"`
	// GatewayPKCE binds pushed code_challenges to the codes issued for
	// them and checks code_verifier at the token endpoint (RFC 7636 §4.6).
	GatewayPKCE bool `json:"gateway_pkce,omitempty"`
	// UpstreamPKCE "off" strips PKCE parameters before they reach an
	// upstream that cannot handle them. Default "on".
	UpstreamPKCE string `json:"upstream_pkce,omitempty"`
}

// ClientLiftConfig is a client's part of the issue 10 configuration,
// embedded in ClientConfig.
type ClientLiftConfig struct {
	// UpstreamSecret is the secret the upstream knows the client by; the
	// gateway sends it at the token endpoint in place of the client's own
	// credentials. {env.*} and {file.*} are expanded at load.
	UpstreamSecret string `json:"upstream_secret,omitempty"`
	// UpstreamAuthMethod is how UpstreamSecret is sent:
	// client_secret_basic (default) or client_secret_post.
	UpstreamAuthMethod string `json:"upstream_auth_method,omitempty"`
	// RequireGatewayPKCE: at the token endpoint, this client's codes must
	// be ones the gateway bound to a pushed code_challenge.
	RequireGatewayPKCE bool `json:"require_gateway_pkce,omitempty"`
}

// lift is the provisioned issue 10 state of a gateway; nil when none of it
// is configured.
type lift struct {
	addIss        bool
	tokenEndpoint string
	gatewayPKCE   bool
	upstreamPKCE  bool
	// redirects indexes the registered redirect URIs by their part before
	// any query, for the authorization-response check.
	redirects map[string][]redirectTarget
	// clients holds each client's upstream credentials and PKCE rule.
	clients map[string]*liftClient
}

// redirectTarget is one registered redirect URI of one client.
type redirectTarget struct {
	clientID string
	uri      string
	// query is the registered URI's own query ("" when it has none).
	query string
}

// liftClient is a client's provisioned issue 10 configuration.
type liftClient struct {
	upstreamSecret string
	upstreamPost   bool
	requirePKCE    bool
}

func (l *lift) client(id string) *liftClient {
	if l == nil {
		return nil
	}
	return l.clients[id]
}

// requiresGatewayPKCE reports whether a client's codes must have been
// bound by the gateway.
func (l *lift) requiresGatewayPKCE(id string) bool {
	lc := l.client(id)
	return lc != nil && lc.requirePKCE
}

// Issue 10 directives of the oauth_par block.
var liftDirectives = []string{"add_iss", "token_endpoint", "gateway_pkce", "upstream_pkce"}

// unmarshalLift parses an issue 10 subdirective of the oauth_par block;
// handled is false for any other name.
func (h *Handler) unmarshalLift(d *caddyfile.Dispenser) (handled bool, err error) {
	switch d.Val() {
	case "add_iss":
		h.AddIss = true
		return true, flagArg(d)
	case "gateway_pkce":
		h.GatewayPKCE = true
		return true, flagArg(d)
	case "token_endpoint":
		return true, oneArg(d, &h.TokenEndpoint)
	case "upstream_pkce":
		return true, oneArg(d, &h.UpstreamPKCE)
	}
	return false, nil
}

// unmarshalClientLift parses an issue 10 subdirective of a client block.
func unmarshalClientLift(d *caddyfile.Dispenser, c *ClientConfig) (handled bool, err error) {
	switch d.Val() {
	case "upstream_secret":
		return true, oneArg(d, &c.UpstreamSecret)
	case "upstream_auth_method":
		return true, oneArg(d, &c.UpstreamAuthMethod)
	case "require_gateway_pkce":
		c.RequireGatewayPKCE = true
		return true, flagArg(d)
	}
	return false, nil
}

// flagArg is noArgs naming the subdirective, not the stray argument.
func flagArg(d *caddyfile.Dispenser) error {
	name := d.Val()
	if d.NextArg() {
		return d.Errf("%s: takes no arguments", name)
	}
	return nil
}

// applyLiftProfile is what profile fapi2 turns on: iss in authorization
// responses (FAPI 2.0 §5.3.2.2, RFC 9207), and, when the token endpoint is
// behind the gateway, PKCE checked by the gateway for every client
// (§5.3.2.2: PKCE with S256).
func (h *Handler) applyLiftProfile() {
	h.AddIss = true
	if h.TokenEndpoint != "" {
		h.GatewayPKCE = true
		for i := range h.Clients {
			h.Clients[i].RequireGatewayPKCE = true
		}
	}
}

// validateLift checks the issue 10 configuration; messages name the
// subdirective.
func (h *Handler) validateLift() error {
	if p := h.TokenEndpoint; p != "" {
		if !strings.HasPrefix(p, "/") || strings.ContainsAny(p, "?#") {
			return fmt.Errorf("token_endpoint: %q must be a path starting with /", p)
		}
		if p == h.AuthorizationEndpoint || p == h.PAREndpoint || isDiscoveryPath(p) ||
			(h.RequestObjectEncryption != nil && p == h.RequestObjectEncryption.JWKSPath) {
			return fmt.Errorf("token_endpoint: %q must be a path of its own (not the authorization, PAR, JWKS or a discovery path)", p)
		}
	}
	switch h.UpstreamPKCE {
	case "", "on":
	case "off":
		if !h.GatewayPKCE && !anyRequirePKCE(h.Clients) {
			return fmt.Errorf("upstream_pkce: off needs gateway_pkce (PKCE would be checked nowhere)")
		}
	default:
		return fmt.Errorf("upstream_pkce: must be on or off, got %q", h.UpstreamPKCE)
	}
	if h.GatewayPKCE && h.TokenEndpoint == "" {
		return fmt.Errorf("gateway_pkce: needs token_endpoint (the code_verifier is checked there)")
	}
	for _, c := range h.Clients {
		fail := func(format string, args ...any) error {
			return fmt.Errorf("client %q: "+format, append([]any{c.ClientID}, args...)...)
		}
		if c.UpstreamSecret != "" && h.TokenEndpoint == "" {
			return fail("upstream_secret: needs token_endpoint (it is sent there)")
		}
		switch c.UpstreamAuthMethod {
		case "":
		case AuthClientSecretBasic, AuthClientSecretPost:
			if c.UpstreamSecret == "" {
				return fail("upstream_auth_method: needs upstream_secret")
			}
		default:
			return fail("upstream_auth_method: must be client_secret_basic or client_secret_post, got %q", c.UpstreamAuthMethod)
		}
		if c.RequireGatewayPKCE && h.TokenEndpoint == "" {
			return fail("require_gateway_pkce: needs token_endpoint (the code_verifier is checked there)")
		}
	}
	return nil
}

// provisionLift builds the gateway's issue 10 state and what discovery
// advertises for it. h.gw is provisioned.
func (h *Handler) provisionLift(logger *zap.Logger) error {
	// upstream_secret and require_gateway_pkce need token_endpoint
	// (Validate refuses them without it).
	if !h.AddIss && h.TokenEndpoint == "" && !h.GatewayPKCE {
		return nil
	}
	g := h.gw
	l := &lift{
		addIss:        h.AddIss,
		tokenEndpoint: h.TokenEndpoint,
		gatewayPKCE:   h.GatewayPKCE || anyRequirePKCE(h.Clients),
		upstreamPKCE:  h.UpstreamPKCE != "off",
		redirects:     map[string][]redirectTarget{},
		clients:       map[string]*liftClient{},
	}
	repl := caddy.NewReplacer()
	for _, c := range h.Clients {
		lc := &liftClient{upstreamPost: c.UpstreamAuthMethod == AuthClientSecretPost, requirePKCE: c.RequireGatewayPKCE}
		if c.UpstreamSecret != "" {
			s, err := repl.ReplaceOrErr(c.UpstreamSecret, true, true)
			if err != nil {
				return fmt.Errorf("oauth_par: client %q: upstream_secret: %v", c.ClientID, err)
			}
			if s == "" {
				return fmt.Errorf("oauth_par: client %q: upstream_secret: expands to nothing", c.ClientID)
			}
			lc.upstreamSecret = s
		}
		l.clients[c.ClientID] = lc
		if lc.requirePKCE {
			// The code_challenge the gateway checks must have been pushed.
			if cl := g.clients[c.ClientID]; cl != nil {
				cl.requirePKCE = true
			}
		}
		for _, u := range c.RedirectURIs {
			base, q, _ := strings.Cut(u, "?")
			l.redirects[base] = append(l.redirects[base], redirectTarget{clientID: c.ClientID, uri: u, query: q})
		}
	}
	adv := &g.advertise
	if l.addIss {
		adv.members = append(adv.members, member{"authorization_response_iss_parameter_supported", json.RawMessage("true")})
	}
	if l.gatewayPKCE {
		adv.members = append(adv.members, member{"code_challenge_methods_supported", json.RawMessage(`["S256"]`)})
	}
	if l.tokenEndpoint != "" {
		methods, algs := tokenEndpointAuth(g.clients, g.auth.algs)
		adv.members = append(adv.members, member{"token_endpoint_auth_methods_supported", jsonStrings(methods)})
		if len(algs) > 0 {
			adv.members = append(adv.members, member{"token_endpoint_auth_signing_alg_values_supported", jsonStrings(algs)})
		} else {
			adv.drop = append(adv.drop, "token_endpoint_auth_signing_alg_values_supported")
		}
	}
	if h.fapi2() && h.TokenEndpoint == "" {
		logger.Warn("profile fapi2 without token_endpoint: PKCE and client authentication at the token endpoint are left to the upstream")
	}
	g.lift = l
	return nil
}

func anyRequirePKCE(cs []ClientConfig) bool {
	return slices.ContainsFunc(cs, func(c ClientConfig) bool { return c.RequireGatewayPKCE })
}

// tokenEndpointAuth is what the token endpoint accepts: the union of the
// clients' methods, and the JWS algorithms of the JWT methods among them.
func tokenEndpointAuth(clients map[string]*client, assertionAlgs []jose.SignatureAlgorithm) ([]string, []string) {
	var methods []string
	for _, c := range clients {
		for m := range c.authMethods {
			if !slices.Contains(methods, m) {
				methods = append(methods, m)
			}
		}
	}
	slices.Sort(methods)
	var algs []string
	if slices.Contains(methods, AuthPrivateKeyJWT) {
		for _, a := range assertionAlgs {
			algs = append(algs, string(a))
		}
	}
	if slices.Contains(methods, AuthClientSecretJWT) {
		for _, a := range hmacAlgs {
			algs = append(algs, string(a))
		}
	}
	return methods, algs
}
