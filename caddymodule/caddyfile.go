package caddymodule

import (
	"encoding/json"
	"math"
	"strconv"

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
//		reuse_grace            <duration>|off
//		require_par
//		max_request_size       <size>
//		issuer                 <url>
//		forward_method         get|post
//		profile                fapi2|fapi2_message_signing
//		clock_skew             <duration>
//		assertion_max_lifetime <duration>
//		client_assertion_signing_algs <alg...>
//		request_object_signing_algs   <alg...>
//		request_object_max_lifetime   <duration>
//		require_request_object_typ
//		require_signed_request_object
//		request_object_encryption {
//			key_file  <path>
//			jwks_path <path>
//			algs      <alg...>
//			encs      <enc...>
//		}
//		dpop_signing_algs      <alg...>
//		mtls_endpoint          <url>
//		client_ca_file         <path>
//		upstream_client_auth [<token_endpoint>] {
//			token_endpoint       <url>
//			methods              <method...>
//			timeout              <duration>
//			cache_ttl            <duration>
//			cache_size           <n>
//			failure_limit        <n> <window>
//			global_failure_limit <n> <window>
//			allow_public
//		}
//		client <client_id> {
//			secret         <secret>
//			public
//			auth_methods   <method...>
//			redirect_uris  <uri...>
//			require_par
//			allowed_scopes <scope...>
//			allowed_authorization_details_types <type...>
//			jwks           <JWK Set JSON>
//			jwks_file      <path>
//			jwks_uri       <url>
//			tls_client_auth_subject_dn|_san_dns|_san_uri|_san_ip|_san_email <value>
//			require_signed_request_object
//			require_dpop
//			rate_limit     <events>/<duration> [burst <n>] | off
//		}
//		rate_limit off | {
//			per_client <events>/<duration> [burst <n>] | off
//			per_source <events>/<duration> [burst <n>] | off
//			source_ipv6_prefix <bits>
//			max_sources        <n>
//			auth_failure_cost  <n>
//		}
//		store memory {
//			max_size <size>
//		}
//		audit on|off
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
			if err := durationArg(d, &h.RequestURILifetime); err != nil {
				return err
			}
		case "require_par":
			if err := noArgs(d); err != nil {
				return err
			}
			h.RequirePAR = true
		case "reuse_grace":
			var v string
			if err := oneArg(d, &v); err != nil {
				return err
			}
			var rg caddy.Duration
			if v != "off" {
				dur, err := caddy.ParseDuration(v)
				if err != nil {
					return d.Errf("reuse_grace: %v (a duration, or off)", err)
				}
				rg = caddy.Duration(dur)
			}
			h.ReuseGrace = &rg
		case "profile":
			if err := oneArg(d, &h.Profile); err != nil {
				return err
			}
		case "clock_skew", "assertion_max_lifetime", "request_object_max_lifetime":
			dst := map[string]*caddy.Duration{
				"clock_skew":                  &h.ClockSkew,
				"assertion_max_lifetime":      &h.AssertionMaxLifetime,
				"request_object_max_lifetime": &h.RequestObjectMaxLifetime,
			}[d.Val()]
			if err := durationArg(d, dst); err != nil {
				return err
			}
		case "client_assertion_signing_algs":
			if err := someArgs(d, &h.ClientAssertionSigningAlgs); err != nil {
				return err
			}
		case "request_object_signing_algs":
			if err := someArgs(d, &h.RequestObjectSigningAlgs); err != nil {
				return err
			}
		case "dpop_signing_algs":
			if err := someArgs(d, &h.DPoPSigningAlgs); err != nil {
				return err
			}
		case "require_request_object_typ":
			if err := noArgs(d); err != nil {
				return err
			}
			h.RequireRequestObjectTyp = true
		case "require_signed_request_object":
			if err := noArgs(d); err != nil {
				return err
			}
			h.RequireSignedRequestObject = true
		case "request_object_encryption":
			if h.RequestObjectEncryption != nil {
				return d.Err("request_object_encryption: specified more than once")
			}
			enc, err := unmarshalEncryption(d)
			if err != nil {
				return err
			}
			h.RequestObjectEncryption = enc
		case "mtls_endpoint":
			if err := oneArg(d, &h.MTLSEndpoint); err != nil {
				return err
			}
		case "client_ca_file":
			if err := oneArg(d, &h.ClientCAFile); err != nil {
				return err
			}
		case "max_request_size":
			size, err := sizeArg(d)
			if err != nil {
				return err
			}
			h.MaxRequestSize = size
		case "upstream_client_auth":
			if h.UpstreamClientAuth != nil {
				return d.Err("upstream_client_auth: specified more than once")
			}
			u, err := unmarshalUpstreamClientAuth(d)
			if err != nil {
				return err
			}
			h.UpstreamClientAuth = u
		case "client":
			c, err := unmarshalClient(d)
			if err != nil {
				return err
			}
			h.Clients = append(h.Clients, c)
		case "rate_limit":
			if h.RateLimit != nil {
				return d.Err("rate_limit: specified more than once")
			}
			rl, err := unmarshalRateLimit(d)
			if err != nil {
				return err
			}
			h.RateLimit = rl
		case "audit":
			var v string
			if err := oneArg(d, &v); err != nil {
				return err
			}
			switch v {
			case "on":
				h.DisableAudit = false
			case "off":
				h.DisableAudit = true
			default:
				return d.Errf("audit: %q is not on or off", v)
			}
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
			if ok, err := h.unmarshalLift(d); ok {
				if err != nil {
					return err
				}
				continue
			}
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
			if err := noArgs(d); err != nil {
				return c, err
			}
			c.Public = true
		case "redirect_uris":
			c.RedirectURIs = append(c.RedirectURIs, d.RemainingArgs()...)
			if len(c.RedirectURIs) == 0 {
				return c, d.Errf("client %q: redirect_uris: at least one URI", c.ClientID)
			}
		case "allowed_scopes":
			c.AllowedScopes = append(c.AllowedScopes, d.RemainingArgs()...)
		case "allowed_authorization_details_types":
			if err := someArgs(d, &c.AllowedAuthorizationDetailsTypes); err != nil {
				return c, err
			}
		case "auth_methods":
			c.AuthMethods = append(c.AuthMethods, d.RemainingArgs()...)
		case "require_par":
			if err := noArgs(d); err != nil {
				return c, err
			}
			c.RequirePAR = true
		case "jwks":
			var doc string
			if err := oneArg(d, &doc); err != nil {
				return c, err
			}
			if !json.Valid([]byte(doc)) {
				return c, d.Errf("client %q: jwks: not valid JSON (quote the JWK Set with backticks)", c.ClientID)
			}
			c.JWKS = json.RawMessage(doc)
		case "jwks_file":
			if err := oneArg(d, &c.JWKSFile); err != nil {
				return c, err
			}
		case "jwks_uri":
			if err := oneArg(d, &c.JWKSURI); err != nil {
				return c, err
			}
		case "tls_client_auth_subject_dn":
			if err := oneArg(d, &c.TLSClientAuthSubjectDN); err != nil {
				return c, err
			}
		case "tls_client_auth_san_dns":
			if err := oneArg(d, &c.TLSClientAuthSANDNS); err != nil {
				return c, err
			}
		case "tls_client_auth_san_uri":
			if err := oneArg(d, &c.TLSClientAuthSANURI); err != nil {
				return c, err
			}
		case "tls_client_auth_san_ip":
			if err := oneArg(d, &c.TLSClientAuthSANIP); err != nil {
				return c, err
			}
		case "tls_client_auth_san_email":
			if err := oneArg(d, &c.TLSClientAuthSANEmail); err != nil {
				return c, err
			}
		case "require_signed_request_object":
			if err := noArgs(d); err != nil {
				return c, err
			}
			c.RequireSignedRequestObject = true
		case "require_dpop":
			if err := noArgs(d); err != nil {
				return c, err
			}
			c.RequireDPoP = true
		case "rate_limit":
			r, err := rateArgs(d, "client "+strconv.Quote(c.ClientID)+": rate_limit")
			if err != nil {
				return c, err
			}
			c.RateLimit = r
		default:
			if ok, err := unmarshalClientLift(d, &c); ok {
				if err != nil {
					return c, err
				}
				continue
			}
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

// unmarshalEncryption parses a request_object_encryption block.
func unmarshalEncryption(d *caddyfile.Dispenser) (*EncryptionConfig, error) {
	if d.NextArg() {
		return nil, d.Err("request_object_encryption: takes a block, not arguments")
	}
	enc := &EncryptionConfig{}
	for d.NextBlock(1) {
		switch d.Val() {
		case "key_file":
			if err := oneArg(d, &enc.KeyFile); err != nil {
				return nil, err
			}
		case "jwks_path":
			if err := oneArg(d, &enc.JWKSPath); err != nil {
				return nil, err
			}
		case "algs":
			if err := someArgs(d, &enc.Algs); err != nil {
				return nil, err
			}
		case "encs":
			if err := someArgs(d, &enc.Encs); err != nil {
				return nil, err
			}
		default:
			return nil, d.Errf("request_object_encryption: unknown subdirective %q", d.Val())
		}
	}
	return enc, nil
}

func noArgs(d *caddyfile.Dispenser) error {
	if d.NextArg() {
		return d.Errf("%s: takes no arguments", d.Val())
	}
	return nil
}

func someArgs(d *caddyfile.Dispenser, dst *[]string) error {
	name := d.Val()
	args := d.RemainingArgs()
	if len(args) == 0 {
		return d.Errf("%s: at least one value", name)
	}
	*dst = append(*dst, args...)
	return nil
}

func durationArg(d *caddyfile.Dispenser, dst *caddy.Duration) error {
	name := d.Val()
	var s string
	if err := oneArg(d, &s); err != nil {
		return err
	}
	dur, err := caddy.ParseDuration(s)
	if err != nil {
		return d.Errf("%s: %v", name, err)
	}
	*dst = caddy.Duration(dur)
	return nil
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
