package caddymodule

import (
	"encoding/json"
	"math"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("oauth_par", parseCaddyfile)
	// Users put oauth_par before reverse_proxy without a global order option.
	httpcaddyfile.RegisterDirectiveOrder("oauth_par", httpcaddyfile.Before, "reverse_proxy")
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	var m Handler
	err := m.UnmarshalCaddyfile(h.Dispenser)
	return &m, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens:
//
//	oauth_par {
//		authorization_endpoint <path>
//		par_endpoint           <path>
//		request_uri_lifetime   <duration>
//		require_par
//		max_request_size       <size>
//		issuer                 <url>
//		forward_method         get|post
//		client <client_id> {
//			secret         <secret>
//			public
//			auth_methods   <method...>
//			redirect_uris  <uri...>
//			require_par
//			allowed_scopes <scope...>
//		}
//		store memory {
//			max_size <size>
//		}
//	}
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		switch d.Val() {
		case "authorization_endpoint":
			if err := oneArg(d, &h.AuthorizationEndpoint); err != nil {
				return err
			}
		case "par_endpoint":
			if err := oneArg(d, &h.PAREndpoint); err != nil {
				return err
			}
		case "issuer":
			if err := oneArg(d, &h.Issuer); err != nil {
				return err
			}
		case "forward_method":
			if err := oneArg(d, &h.ForwardMethod); err != nil {
				return err
			}
		case "request_uri_lifetime":
			var s string
			if err := oneArg(d, &s); err != nil {
				return err
			}
			dur, err := caddy.ParseDuration(s)
			if err != nil {
				return d.Errf("request_uri_lifetime: %v", err)
			}
			h.RequestURILifetime = caddy.Duration(dur)
		case "require_par":
			if d.NextArg() {
				return d.ArgErr()
			}
			h.RequirePAR = true
		case "max_request_size":
			size, err := sizeArg(d)
			if err != nil {
				return err
			}
			h.MaxRequestSize = size
		case "client":
			c, err := unmarshalClient(d)
			if err != nil {
				return err
			}
			h.Clients = append(h.Clients, c)
		case "store":
			if h.StoreRaw != nil {
				return d.Err("store: specified more than once")
			}
			raw, err := unmarshalStore(d)
			if err != nil {
				return err
			}
			h.StoreRaw = raw
		default:
			return d.Errf("oauth_par: unknown subdirective %q", d.Val())
		}
	}
	return nil
}

func unmarshalClient(d *caddyfile.Dispenser) (ClientConfig, error) {
	var c ClientConfig
	if !d.NextArg() {
		return c, d.Err("client: missing client_id")
	}
	c.ClientID = d.Val()
	if d.NextArg() {
		return c, d.ArgErr()
	}
	for d.NextBlock(1) {
		switch d.Val() {
		case "secret":
			if err := oneArg(d, &c.Secret); err != nil {
				return c, err
			}
		case "public":
			if d.NextArg() {
				return c, d.ArgErr()
			}
			c.Public = true
		case "redirect_uris":
			c.RedirectURIs = append(c.RedirectURIs, d.RemainingArgs()...)
			if len(c.RedirectURIs) == 0 {
				return c, d.Errf("client %q: redirect_uris: at least one URI", c.ClientID)
			}
		case "allowed_scopes":
			c.AllowedScopes = append(c.AllowedScopes, d.RemainingArgs()...)
		case "auth_methods":
			c.AuthMethods = append(c.AuthMethods, d.RemainingArgs()...)
		case "require_par":
			if d.NextArg() {
				return c, d.ArgErr()
			}
			c.RequirePAR = true
		default:
			return c, d.Errf("client %q: unknown subdirective %q", c.ClientID, d.Val())
		}
	}
	return c, nil
}

func unmarshalStore(d *caddyfile.Dispenser) (json.RawMessage, error) {
	if !d.NextArg() {
		return nil, d.Err("store: missing backend name (memory)")
	}
	switch backend := d.Val(); backend {
	case "memory":
		if d.NextArg() {
			return nil, d.ArgErr()
		}
		var ms MemoryStore
		for d.NextBlock(1) {
			switch d.Val() {
			case "max_size":
				size, err := sizeArg(d)
				if err != nil {
					return nil, err
				}
				ms.MaxSize = size
			default:
				return nil, d.Errf("store memory: unknown subdirective %q", d.Val())
			}
		}
		return caddyconfig.JSONModuleObject(ms, "backend", backend, nil), nil
	case "redis":
		return unmarshalRedisStore(d)
	default:
		return nil, d.Errf("store: unknown backend %q", backend)
	}
}

func oneArg(d *caddyfile.Dispenser, dst *string) error {
	name := d.Val()
	if !d.NextArg() {
		return d.Errf("%s: missing value", name)
	}
	*dst = d.Val()
	if d.NextArg() {
		return d.Errf("%s: too many arguments", name)
	}
	return nil
}

func sizeArg(d *caddyfile.Dispenser) (int64, error) {
	name := d.Val()
	var s string
	if err := oneArg(d, &s); err != nil {
		return 0, err
	}
	n, err := humanize.ParseBytes(s)
	if err != nil || n == 0 || n > math.MaxInt64 {
		return 0, d.Errf("%s: invalid size %q", name, s)
	}
	return int64(n), nil
}

// Interface guard
var _ caddyfile.Unmarshaler = (*Handler)(nil)
