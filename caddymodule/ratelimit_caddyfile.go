package caddymodule

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// unmarshalRateLimit parses the rate_limit subdirective:
//
//	rate_limit off
//	rate_limit {
//		per_client <events>/<duration> [burst <n>] | off
//		per_source <events>/<duration> [burst <n>] | off
//		source_ipv6_prefix <bits>
//		max_sources <n>
//		auth_failure_cost <n>
//	}
//
// Ranges are checked at provisioning, for JSON configs too.
func unmarshalRateLimit(d *caddyfile.Dispenser) (*RateLimitConfig, error) {
	cfg := &RateLimitConfig{}
	if d.NextArg() {
		if d.Val() != "off" {
			return nil, d.Errf("rate_limit: %q: expected 'off' or a block", d.Val())
		}
		if d.NextArg() {
			return nil, d.Err("rate_limit: too many arguments")
		}
		if d.NextBlock(1) {
			return nil, d.Err("rate_limit off: takes no block")
		}
		cfg.Off = true
		return cfg, nil
	}
	block := false
	for d.NextBlock(1) {
		block = true
		name := d.Val()
		var err error
		switch name {
		case "per_client", "per_source":
			dst := &cfg.PerClient
			if name == "per_source" {
				dst = &cfg.PerSource
			}
			if *dst != nil {
				return nil, d.Errf("rate_limit: %s: specified more than once", name)
			}
			*dst, err = rateArgs(d, "rate_limit: "+name)
		case "source_ipv6_prefix":
			err = intArg(d, "rate_limit: ", &cfg.SourceIPv6Prefix)
		case "max_sources":
			err = intArg(d, "rate_limit: ", &cfg.MaxSources)
		case "auth_failure_cost":
			err = intArg(d, "rate_limit: ", &cfg.AuthFailureCost)
		default:
			return nil, d.Errf("rate_limit: unknown subdirective %q", name)
		}
		if err != nil {
			return nil, err
		}
	}
	if !block {
		return nil, d.Err("rate_limit: expected 'off' or a block (per_client, per_source, source_ipv6_prefix, max_sources, auth_failure_cost)")
	}
	return cfg, nil
}

// rateArgs parses "<events>/<duration> [burst <n>]" or "off", the
// remaining arguments of the current line. name prefixes errors.
func rateArgs(d *caddyfile.Dispenser, name string) (*Rate, error) {
	args := d.RemainingArgs()
	switch {
	case len(args) == 1 && args[0] == "off":
		return &Rate{Off: true}, nil
	case len(args) == 1, len(args) == 3 && args[1] == "burst":
	default:
		return nil, d.Errf("%s: expected <events>/<duration> [burst <n>], or off", name)
	}
	r, err := parseRate(args[0])
	if err != nil {
		return nil, d.Errf("%s: %v", name, err)
	}
	if len(args) == 3 {
		b, err := strconv.Atoi(args[2])
		if err != nil || b < 1 {
			return nil, d.Errf("%s: burst: %q is not a positive integer", name, args[2])
		}
		r.Burst = b
	}
	return r, nil
}

// parseRate parses "<events>/<duration>": 600/1m, 10/s (a bare unit means
// one of it), 1000/90s.
func parseRate(s string) (*Rate, error) {
	n, per, ok := strings.Cut(s, "/")
	if !ok {
		return nil, fmt.Errorf("%q: expected <events>/<duration>, for example 600/1m", s)
	}
	events, err := strconv.Atoi(n)
	if err != nil || events < 1 {
		return nil, fmt.Errorf("%q: the number of events must be a positive integer", s)
	}
	w, err := caddy.ParseDuration(per)
	if err != nil {
		if w, err = caddy.ParseDuration("1" + per); err != nil {
			return nil, fmt.Errorf("%q: %q is not a duration", s, per)
		}
	}
	if w <= 0 {
		return nil, fmt.Errorf("%q: the duration must be positive", s)
	}
	return &Rate{Events: events, Window: caddy.Duration(w)}, nil
}

// intArg parses one positive integer argument into dst (0 would mean
// the default in JSON).
func intArg(d *caddyfile.Dispenser, prefix string, dst *int) error {
	name := d.Val()
	args := d.RemainingArgs()
	if len(args) != 1 {
		return d.Errf("%s%s: expected one integer", prefix, name)
	}
	s := args[0]
	v, err := strconv.Atoi(s)
	if err != nil || v < 1 {
		return d.Errf("%s%s: %q is not a positive integer", prefix, name, s)
	}
	*dst = v
	return nil
}
