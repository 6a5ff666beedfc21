package caddymodule

import (
	"encoding/json"
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// unmarshalRedisStore parses the block of `store redis { ... }`:
//
//	store redis {
//		address             <host:port>
//		sentinel            <master name> <host:port>...
//		sentinel_username   <name>
//		sentinel_password   <secret>
//		username            <name>
//		password            <secret>
//		db                  <n>
//		tls
//		tls_ca_file         <file>
//		tls_server_name     <name>
//		key_prefix          <prefix>
//		dial_timeout        <duration>
//		read_timeout        <duration>
//		pool_size           <n>
//		encryption_key      <base64 of 32 bytes>
//		old_encryption_keys <base64> ...
//	}
func unmarshalRedisStore(d *caddyfile.Dispenser) (json.RawMessage, error) {
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	var rs RedisStore
	for d.NextBlock(1) {
		switch name := d.Val(); name {
		case "address":
			if err := oneArg(d, &rs.Address); err != nil {
				return nil, err
			}
		case "username":
			if err := oneArg(d, &rs.Username); err != nil {
				return nil, err
			}
		case "password":
			if err := oneArg(d, &rs.Password); err != nil {
				return nil, err
			}
		case "sentinel":
			args := d.RemainingArgs()
			if len(args) < 2 {
				return nil, d.Errf("store redis: sentinel: want <master name> <host:port>...")
			}
			rs.SentinelMaster, rs.SentinelAddresses = args[0], append(rs.SentinelAddresses, args[1:]...)
		case "sentinel_username":
			if err := oneArg(d, &rs.SentinelUsername); err != nil {
				return nil, err
			}
		case "sentinel_password":
			if err := oneArg(d, &rs.SentinelPassword); err != nil {
				return nil, err
			}
		case "tls_ca_file":
			if err := oneArg(d, &rs.TLSCAFile); err != nil {
				return nil, err
			}
		case "tls_server_name":
			if err := oneArg(d, &rs.TLSServerName); err != nil {
				return nil, err
			}
		case "key_prefix":
			if err := oneArg(d, &rs.KeyPrefix); err != nil {
				return nil, err
			}
		case "encryption_key":
			if err := oneArg(d, &rs.EncryptionKey); err != nil {
				return nil, err
			}
		case "db", "pool_size":
			var s string
			if err := oneArg(d, &s); err != nil {
				return nil, err
			}
			n, err := strconv.Atoi(s)
			if err != nil || n < 0 {
				return nil, d.Errf("store redis: %s: %q is not a non-negative integer", name, s)
			}
			if name == "db" {
				rs.DB = n
			} else {
				rs.PoolSize = n
			}
		case "dial_timeout", "read_timeout":
			var s string
			if err := oneArg(d, &s); err != nil {
				return nil, err
			}
			dur, err := caddy.ParseDuration(s)
			if err != nil || dur <= 0 {
				return nil, d.Errf("store redis: %s: %q is not a positive duration", name, s)
			}
			if name == "dial_timeout" {
				rs.DialTimeout = caddy.Duration(dur)
			} else {
				rs.ReadTimeout = caddy.Duration(dur)
			}
		case "tls":
			if d.NextArg() {
				return nil, d.ArgErr()
			}
			rs.TLS = true
		case "old_encryption_keys":
			keys := d.RemainingArgs()
			if len(keys) == 0 {
				return nil, d.Errf("store redis: old_encryption_keys: missing value")
			}
			rs.OldEncryptionKeys = append(rs.OldEncryptionKeys, keys...)
		default:
			return nil, d.Errf("store redis: unknown subdirective %q", name)
		}
	}
	return caddyconfig.JSONModuleObject(rs, "backend", "redis", nil), nil
}
