// Package caddymodule is the oauth_par Caddy HTTP handler: a Pushed
// Authorization Requests (RFC 9126) gateway in front of an OAuth 2.0 /
// OpenID Connect server that lacks PAR.
package caddymodule

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Defaults and bounds of the configuration.
const (
	DefaultPAREndpoint    = "/par"
	DefaultLifetime       = 60 * time.Second
	MinLifetime           = 5 * time.Second   // RFC 9126 §7.1 guidance: 5..600 s
	MaxLifetime           = 600 * time.Second //
	DefaultMaxRequestSize = 64 << 10
)

// Handler is the oauth_par HTTP handler. Placed before reverse_proxy in the
// site that fronts an IdP, it serves a PAR endpoint, redeems request_uris at
// the authorization endpoint, enforces PAR, and advertises it in discovery.
type Handler struct {
	// AuthorizationEndpoint is the path at which the upstream's
	// authorization endpoint is reached through this site. Required.
	AuthorizationEndpoint string `json:"authorization_endpoint"`
	// PAREndpoint is the path of the PAR endpoint. Default: /par.
	PAREndpoint string `json:"par_endpoint,omitempty"`
	// RequestURILifetime is how long a request_uri stays valid, 5s to 600s.
	// Default: 60s.
	RequestURILifetime caddy.Duration `json:"request_uri_lifetime,omitempty"`
	// RequirePAR rejects every authorization request that was not pushed.
	RequirePAR bool `json:"require_par,omitempty"`
	// MaxRequestSize bounds a PAR request body, in bytes. Default: 64KiB.
	MaxRequestSize int64 `json:"max_request_size,omitempty"`
	// Issuer, when set, is sent as iss in the gateway's own authorization
	// error responses (RFC 9207). Default: learned from the upstream's
	// discovery document when it advertises
	// authorization_response_iss_parameter_supported.
	Issuer string `json:"issuer,omitempty"`
	// ForwardMethod is how a redeemed request reaches the upstream: GET with
	// the parameters in the query (default), or POST with a form body, for
	// upstreams that limit URL length (OpenID Connect Core §3.1.2.1).
	ForwardMethod string `json:"forward_method,omitempty"`
	// Clients are the OAuth clients allowed to push.
	Clients []ClientConfig `json:"clients,omitempty"`
	// StoreRaw is the pushed-request store. Default: memory.
	StoreRaw json.RawMessage `json:"store,omitempty" caddy:"namespace=http.handlers.oauth_par.stores inline_key=backend"`

	gw *gateway
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.oauth_par",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision applies defaults, expands client secrets and sets up the store.
func (h *Handler) Provision(ctx caddy.Context) error {
	if h.PAREndpoint == "" {
		h.PAREndpoint = DefaultPAREndpoint
	}
	if h.RequestURILifetime == 0 {
		h.RequestURILifetime = caddy.Duration(DefaultLifetime)
	}
	if h.MaxRequestSize == 0 {
		h.MaxRequestSize = DefaultMaxRequestSize
	}
	if h.ForwardMethod == "" {
		h.ForwardMethod = http.MethodGet
	}
	h.ForwardMethod = strings.ToUpper(h.ForwardMethod)

	if h.StoreRaw == nil {
		h.StoreRaw = json.RawMessage(`{"backend":"memory"}`)
	}
	mod, err := ctx.LoadModule(h, "StoreRaw")
	if err != nil {
		return fmt.Errorf("oauth_par: store: %w", err)
	}
	sp, ok := mod.(StoreProvider)
	if !ok {
		return fmt.Errorf("oauth_par: store: module %T is not a pushed request store", mod)
	}

	// {env.*} and {file.*} in secrets are expanded now, so they never show
	// in the admin API's config.
	repl := caddy.NewReplacer()
	clients := make(map[string]*client, len(h.Clients))
	for _, c := range h.Clients {
		if c.Secret != "" {
			s, err := repl.ReplaceOrErr(c.Secret, true, true)
			if err != nil {
				return fmt.Errorf("oauth_par: client %q: secret: %v", c.ClientID, err)
			}
			c.Secret = s
		}
		clients[c.ClientID] = newClient(c)
	}

	// Entries are partitioned per endpoint pair, so that two sites sharing
	// the same store cannot redeem each other's request_uris.
	p := sha256.Sum256([]byte(h.AuthorizationEndpoint + "\x00" + h.PAREndpoint))
	h.gw = &gateway{
		authorizationEndpoint: h.AuthorizationEndpoint,
		parEndpoint:           h.PAREndpoint,
		lifetime:              time.Duration(h.RequestURILifetime),
		requirePAR:            h.RequirePAR,
		maxRequestSize:        h.MaxRequestSize,
		forwardPOST:           h.ForwardMethod == http.MethodPost,
		issuer:                h.Issuer,
		clients:               clients,
		auth:                  &clientAuthenticator{clients: clients},
		store:                 sp.Store(),
		partition:             base64.RawURLEncoding.EncodeToString(p[:9]) + "/",
		logger:                ctx.Logger(),
		now:                   time.Now,
	}
	return nil
}

// Validate checks the configuration; messages name the Caddyfile
// subdirective at fault.
func (h *Handler) Validate() error {
	if err := h.validate(); err != nil {
		return fmt.Errorf("oauth_par: %w", err)
	}
	return nil
}

func (h *Handler) validate() error {
	if h.AuthorizationEndpoint == "" {
		return fmt.Errorf("authorization_endpoint is required")
	}
	for name, p := range map[string]string{"authorization_endpoint": h.AuthorizationEndpoint, "par_endpoint": h.PAREndpoint} {
		if !strings.HasPrefix(p, "/") || strings.ContainsAny(p, "?#") {
			return fmt.Errorf("%s: %q must be a path starting with /", name, p)
		}
	}
	if h.AuthorizationEndpoint == h.PAREndpoint {
		return fmt.Errorf("par_endpoint: must differ from authorization_endpoint")
	}
	if isDiscoveryPath(h.PAREndpoint) || isDiscoveryPath(h.AuthorizationEndpoint) {
		return fmt.Errorf("par_endpoint/authorization_endpoint: must not be a discovery path")
	}
	if lt := time.Duration(h.RequestURILifetime); lt < MinLifetime || lt > MaxLifetime {
		return fmt.Errorf("request_uri_lifetime: %s is outside %s..%s (RFC 9126 §7.1)", lt, MinLifetime, MaxLifetime)
	}
	if h.MaxRequestSize < 1024 {
		return fmt.Errorf("max_request_size: must be at least 1KiB, got %d bytes", h.MaxRequestSize)
	}
	if h.ForwardMethod != http.MethodGet && h.ForwardMethod != http.MethodPost {
		return fmt.Errorf("forward_method: must be GET or POST, got %q", h.ForwardMethod)
	}
	if h.Issuer != "" {
		if u, err := url.Parse(h.Issuer); err != nil || !u.IsAbs() || u.RawQuery != "" || u.Fragment != "" {
			return fmt.Errorf("issuer: %q must be an absolute URL without query or fragment", h.Issuer)
		}
	}
	seen := map[string]bool{}
	for _, c := range h.Clients {
		if seen[c.ClientID] {
			return fmt.Errorf("client %q: defined more than once", c.ClientID)
		}
		seen[c.ClientID] = true
		if err := c.validate(); err != nil {
			return err
		}
	}
	return nil
}

// ServeHTTP implements caddyhttp.MiddlewareHandler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	return h.gw.serveHTTP(w, r, next.ServeHTTP)
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
