package caddymodule

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(RedisStore{})
}

// Defaults of the Redis store. The timeouts are short on purpose: a push or
// a redemption that cannot reach Redis answers 503 quickly instead of
// holding a browser or a client.
const (
	DefaultRedisKeyPrefix   = "caddy-par:"
	DefaultRedisDialTimeout = 250 * time.Millisecond
	DefaultRedisReadTimeout = 250 * time.Millisecond
	// redisOutageLogEvery is how often a continuing outage is logged again.
	redisOutageLogEvery = 30 * time.Second
)

// RedisStore keeps pushed requests and single-use JWT ids in Redis (or
// Valkey), so that several gateways share them: a request pushed at one
// gateway can be redeemed, exactly once, at any other.
//
// Redis keys are key_prefix plus a keyed hash (HMAC-SHA256) of the store
// key, never the request_uri reference itself. With EncryptionKey, values are
// sealed with AES-256-GCM, the Redis key as additional data.
type RedisStore struct {
	// Address is host:port of the Redis server (the primary). Default:
	// 127.0.0.1:6379, unless SentinelMaster is set.
	Address string `json:"address,omitempty"`
	// SentinelMaster, with SentinelAddresses, finds the primary through
	// Redis Sentinel (and follows failovers) instead of Address.
	SentinelMaster string `json:"sentinel_master,omitempty"`
	// SentinelAddresses are host:port of the Sentinels.
	SentinelAddresses []string `json:"sentinel_addresses,omitempty"`
	// SentinelUsername and SentinelPassword authenticate to the Sentinels
	// ({env.*}/{file.*} expanded).
	SentinelUsername string `json:"sentinel_username,omitempty"`
	SentinelPassword string `json:"sentinel_password,omitempty"`
	// Username for Redis ACL authentication (AUTH username password).
	Username string `json:"username,omitempty"`
	// Password; {env.*} and {file.*} are expanded at provision.
	Password string `json:"password,omitempty"`
	// DB is the logical database number (SELECT).
	DB int `json:"db,omitempty"`
	// TLS connects with TLS, verifying the server against the system roots
	// (or TLSCAFile).
	TLS bool `json:"tls,omitempty"`
	// TLSCAFile is a PEM file of CAs to verify the server with.
	TLSCAFile string `json:"tls_ca_file,omitempty"`
	// TLSServerName overrides the name verified in the server certificate.
	// Default: the host of Address.
	TLSServerName string `json:"tls_server_name,omitempty"`
	// KeyPrefix starts every Redis key the store writes. Default: caddy-par:
	KeyPrefix string `json:"key_prefix,omitempty"`
	// DialTimeout bounds connecting to Redis. Default: 250ms.
	DialTimeout caddy.Duration `json:"dial_timeout,omitempty"`
	// ReadTimeout bounds each command's round trip (and the socket writes,
	// and the wait for a pooled connection). Default: 250ms.
	ReadTimeout caddy.Duration `json:"read_timeout,omitempty"`
	// PoolSize bounds the connections to Redis. Default: 10 per CPU.
	PoolSize int `json:"pool_size,omitempty"`
	// EncryptionKey is 32 bytes, standard base64, that seal the stored
	// values (AES-256-GCM) and key the hash of Redis keys. {env.*} and
	// {file.*} are expanded at provision.
	EncryptionKey string `json:"encryption_key,omitempty"`
	// OldEncryptionKeys only decrypt: entries written under them stay
	// redeemable after a key rotation.
	OldEncryptionKeys []string `json:"old_encryption_keys,omitempty"`

	poolKey string
	backend *redisBackend
}

// CaddyModule returns the Caddy module information.
func (RedisStore) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.oauth_par.stores.redis",
		New: func() caddy.Module { return new(RedisStore) },
	}
}

// redisPool holds one client per distinct store configuration across
// config reloads.
var redisPool = caddy.NewUsagePool()

// redisConfig is the expanded configuration: what identifies a pooled
// client. Its hash is the pool key; it is never logged.
type redisConfig struct {
	Address, Username, Password string
	SentinelMaster              string
	SentinelAddresses           []string
	SentinelUsername            string
	SentinelPassword            string
	DB                          int
	TLS                         bool
	TLSCAFile, TLSServerName    string
	KeyPrefix                   string
	DialTimeout, ReadTimeout    time.Duration
	PoolSize                    int
	Keys                        [][]byte // current first, then the old ones
}

// Provision expands secrets and gets (or creates) the shared client. It
// does no network I/O (caddy validate runs it): go-redis connects on first
// use, and the maxmemory-policy check runs in the background.
func (s *RedisStore) Provision(ctx caddy.Context) error {
	cfg, err := s.config()
	if err != nil {
		return fmt.Errorf("store redis: %w", err)
	}
	b, _ := json.Marshal(cfg)
	sum := sha256.Sum256(b)
	s.poolKey = "redis/" + hex.EncodeToString(sum[:])
	logger := ctx.Logger()
	v, _, err := redisPool.LoadOrNew(s.poolKey, func() (caddy.Destructor, error) {
		return newRedisBackend(cfg, logger)
	})
	if err != nil {
		return fmt.Errorf("store redis: %w", err)
	}
	s.backend = v.(*redisBackend)
	s.backend.health.setLogger(logger)
	return nil
}

func (s *RedisStore) config() (redisConfig, error) {
	repl := caddy.NewReplacer()
	expand := func(name, v string) (string, error) {
		if v == "" {
			return "", nil
		}
		out, err := repl.ReplaceOrErr(v, true, true)
		if err != nil {
			return "", fmt.Errorf("%s: %v", name, err)
		}
		return out, nil
	}
	cfg := redisConfig{
		Address:       s.Address,
		DB:            s.DB,
		TLS:           s.TLS,
		TLSCAFile:     s.TLSCAFile,
		TLSServerName: s.TLSServerName,
		KeyPrefix:     s.KeyPrefix,
		DialTimeout:   time.Duration(s.DialTimeout),
		ReadTimeout:   time.Duration(s.ReadTimeout),
		PoolSize:      s.PoolSize,
	}
	var err error
	if cfg.Address, err = expand("address", cfg.Address); err != nil {
		return cfg, err
	}
	if cfg.Username, err = expand("username", s.Username); err != nil {
		return cfg, err
	}
	if cfg.Password, err = expand("password", s.Password); err != nil {
		return cfg, err
	}
	cfg.SentinelMaster = s.SentinelMaster
	if cfg.SentinelUsername, err = expand("sentinel_username", s.SentinelUsername); err != nil {
		return cfg, err
	}
	if cfg.SentinelPassword, err = expand("sentinel_password", s.SentinelPassword); err != nil {
		return cfg, err
	}
	for _, a := range s.SentinelAddresses {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return cfg, fmt.Errorf("sentinel: %q is not host:port", a)
		}
		cfg.SentinelAddresses = append(cfg.SentinelAddresses, a)
	}
	switch {
	case cfg.SentinelMaster != "":
		if len(cfg.SentinelAddresses) == 0 {
			return cfg, fmt.Errorf("sentinel: needs at least one Sentinel address")
		}
		if cfg.Address != "" {
			return cfg, fmt.Errorf("address and sentinel are exclusive: with Sentinel the primary's address comes from the Sentinels")
		}
	case len(cfg.SentinelAddresses) > 0 || cfg.SentinelUsername != "" || cfg.SentinelPassword != "":
		return cfg, fmt.Errorf("sentinel: the master name is missing")
	default:
		if cfg.Address == "" {
			cfg.Address = "127.0.0.1:6379"
		}
		if _, _, err := net.SplitHostPort(cfg.Address); err != nil {
			return cfg, fmt.Errorf("address: %q is not host:port", cfg.Address)
		}
	}
	if cfg.DB < 0 {
		return cfg, fmt.Errorf("db: must not be negative")
	}
	if !cfg.TLS && (cfg.TLSCAFile != "" || cfg.TLSServerName != "") {
		return cfg, fmt.Errorf("tls_ca_file/tls_server_name need tls")
	}
	if cfg.KeyPrefix == "" {
		cfg.KeyPrefix = DefaultRedisKeyPrefix
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = DefaultRedisDialTimeout
	}
	if cfg.ReadTimeout == 0 {
		cfg.ReadTimeout = DefaultRedisReadTimeout
	}
	if cfg.DialTimeout < 0 || cfg.ReadTimeout < 0 {
		return cfg, fmt.Errorf("dial_timeout/read_timeout: must be positive")
	}
	if cfg.PoolSize == 0 {
		cfg.PoolSize = 10 * runtime.GOMAXPROCS(0)
	}
	if cfg.PoolSize < 1 || cfg.PoolSize > 10000 {
		return cfg, fmt.Errorf("pool_size: %d is outside 1..10000", cfg.PoolSize)
	}
	if s.EncryptionKey == "" && len(s.OldEncryptionKeys) > 0 {
		return cfg, fmt.Errorf("old_encryption_keys need encryption_key")
	}
	if s.EncryptionKey != "" {
		for i, k := range append([]string{s.EncryptionKey}, s.OldEncryptionKeys...) {
			name := "encryption_key"
			if i > 0 {
				name = fmt.Sprintf("old_encryption_keys[%d]", i-1)
			}
			raw, err := expand(name, k)
			if err != nil {
				return cfg, err
			}
			key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(raw))
			if err != nil || len(key) != 32 {
				return cfg, fmt.Errorf("%s: must be 32 bytes in standard base64 (e.g. openssl rand -base64 32)", name)
			}
			cfg.Keys = append(cfg.Keys, key)
		}
	}
	return cfg, nil
}

// Cleanup releases this config's reference to the shared client.
func (s *RedisStore) Cleanup() error {
	if s.poolKey == "" {
		return nil
	}
	_, err := redisPool.Delete(s.poolKey)
	return err
}

// Store returns the store for the handler.
func (s *RedisStore) Store() Store { return s.backend }

// ---- keys and values ----

// keyring is one encryption key's derived material. Without encryption_key
// there is one keyring with a fixed, public hash key and no AEAD: Redis
// keys are then still one-way hashes (a reader cannot turn one back into a
// request_uri), but anyone can compute the hash of a reference they know.
type keyring struct {
	hashKey []byte      // HMAC-SHA256 key for Redis keys and client tags
	aead    cipher.AEAD // nil without encryption_key
}

// publicHashKey is the hash key without encryption_key:
// SHA-256("caddy-par redis key hash v1, no encryption_key").
var publicHashKey = func() []byte {
	s := sha256.Sum256([]byte("caddy-par redis key hash v1, no encryption_key"))
	return s[:]
}()

func newKeyring(key []byte) (keyring, error) {
	if key == nil {
		return keyring{hashKey: publicHashKey}, nil
	}
	hk, err := hkdf.Key(sha256.New, key, nil, "caddy-par redis key hash v1", 32)
	if err != nil {
		return keyring{}, err
	}
	ek, err := hkdf.Key(sha256.New, key, nil, "caddy-par redis aes-256-gcm v1", 32)
	if err != nil {
		return keyring{}, err
	}
	block, err := aes.NewCipher(ek)
	if err != nil {
		return keyring{}, err
	}
	aead, err := cipher.NewGCM(block) // 12-byte random nonces, 16-byte tag
	if err != nil {
		return keyring{}, err
	}
	return keyring{hashKey: hk, aead: aead}, nil
}

func (k keyring) mac(domain byte, s string) []byte {
	m := hmac.New(sha256.New, k.hashKey)
	m.Write([]byte{domain})
	m.Write([]byte(s))
	return m.Sum(nil)
}

// Hash domains: pushed requests, claimed JWT ids and client tags never
// share a hash.
const (
	domainRequest = 'r'
	domainClaim   = 'j'
	domainClient  = 'c'
	domainGrace   = 'g'
)

// requestKey is the Redis key of a pushed request: prefix "r:" base64url(HMAC).
func (k keyring) requestKey(prefix, storeKey string) string {
	return prefix + "r:" + base64.RawURLEncoding.EncodeToString(k.mac(domainRequest, storeKey))
}

// graceKey is where a redeemed request waits out its reuse grace:
// prefix "g:" base64url(HMAC).
func (k keyring) graceKey(prefix, storeKey string) string {
	return prefix + "g:" + base64.RawURLEncoding.EncodeToString(k.mac(domainGrace, storeKey))
}

func (k keyring) claimKey(prefix, key string) string {
	return prefix + "j:" + base64.RawURLEncoding.EncodeToString(k.mac(domainClaim, key))
}

// clientTag binds an entry to its client without revealing the client_id
// to the Lua script (which sees no plaintext when values are encrypted).
func (k keyring) clientTag(clientID string) []byte {
	return k.mac(domainClient, clientID)[:clientTagLen]
}

// Value format. A header the Take script reads, then the body:
//
//	version  1 byte   valuePlain (1) or valueSealed (2)
//	expires  8 bytes  big-endian Unix milliseconds (authoritative expiry)
//	tag      16 bytes clientTag of the bound client
//	body     plain:  uvarint len(client_id) | client_id | params
//	         sealed: 12-byte nonce | AES-256-GCM(plain body), additional
//	                 data = Redis key | header
const (
	valuePlain   = 1
	valueSealed  = 2
	clientTagLen = 16
	headerLen    = 1 + 8 + clientTagLen
)

func (k keyring) seal(redisKey string, req PushedRequest) ([]byte, error) {
	body := binary.AppendUvarint(make([]byte, 0, binary.MaxVarintLen64+len(req.ClientID)+len(req.Params)), uint64(len(req.ClientID)))
	body = append(body, req.ClientID...)
	body = append(body, req.Params...)
	version := byte(valuePlain)
	if k.aead != nil {
		version = valueSealed
	}
	out := make([]byte, headerLen, headerLen+12+len(body)+16)
	out[0] = version
	binary.BigEndian.PutUint64(out[1:9], uint64(req.ExpiresAt.UnixMilli()))
	copy(out[9:headerLen], k.clientTag(req.ClientID))
	if k.aead == nil {
		return append(out, body...), nil
	}
	nonce := make([]byte, k.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	out = append(out, nonce...)
	return k.aead.Seal(out, nonce, body, additionalData(redisKey, out[:headerLen])), nil
}

func additionalData(redisKey string, header []byte) []byte {
	return append([]byte(redisKey), header...)
}

var errBadValue = errors.New("stored value cannot be read")

func (k keyring) open(redisKey string, v []byte) (PushedRequest, error) {
	if len(v) < headerLen {
		return PushedRequest{}, errBadValue
	}
	body := v[headerLen:]
	switch {
	case v[0] == valuePlain && k.aead == nil:
	case v[0] == valueSealed && k.aead != nil:
		ns := k.aead.NonceSize()
		if len(body) < ns {
			return PushedRequest{}, errBadValue
		}
		var err error
		body, err = k.aead.Open(nil, body[:ns], body[ns:], additionalData(redisKey, v[:headerLen]))
		if err != nil {
			return PushedRequest{}, errBadValue
		}
	default:
		// A plain entry read with encryption_key set (or the reverse): the
		// key hashes differ, so this only happens on tampering.
		return PushedRequest{}, errBadValue
	}
	n, w := binary.Uvarint(body)
	if w <= 0 || n > uint64(len(body)-w) {
		return PushedRequest{}, errBadValue
	}
	return PushedRequest{
		ClientID:  string(body[w : w+int(n)]),
		Params:    string(body[w+int(n):]),
		ExpiresAt: time.UnixMilli(int64(binary.BigEndian.Uint64(v[1:9]))),
	}, nil
}

// ---- the shared backend ----

// takeScript redeems a pushed request in one atomic server-side step.
//
// Why Lua rather than GETDEL plus a re-put on a client mismatch: GETDEL
// removes the entry before the client binding can be checked, so a request
// with a wrong client_id would burn the reference (the memory store
// promises it does not), and between the GETDEL and the re-put the entry is
// missing: a concurrent legitimate redemption on another gateway would get
// "unknown request_uri", and a gateway dying in between would lose it. The
// script reads, checks expiry and binding, and deletes only on a match; Redis
// runs it without interleaving any other command, so of N concurrent
// redemptions on any number of gateways exactly one gets the value. It is
// one round trip (EVALSHA; EVAL once after a Redis restart flushed the
// script cache).
//
// With a reuse grace, the first redemption moves the value, as stored, to
// the grace key behind the binding (the SHA-256 of the first redeemer's
// cookie), with a PX of the grace capped at the entry's expiry: the entry
// key is gone as without a grace, and the grace key disappears by itself.
// A later redemption finds only the grace key and gets the value when it
// presents the binding. Encrypted values are moved unopened: they stay
// sealed to the entry key.
//
// With n hash keys (the current one, then the old ones), KEYS[i] is the
// entry's key and KEYS[n+i] its grace key under key i. ARGV[1] is the
// gateway's clock in Unix ms, ARGV[1+i] the client tag under key i,
// ARGV[n+2] the grace in ms (0: none), ARGV[n+3] the binding to record,
// ARGV[n+4...] the bindings the browser presented. Replies: nil (not
// found, or consumed and no presented binding matches), 0 (expired, now
// deleted), 1 (bound to another client, left in place), {i, value, 0}
// (first redemption), {i, value, 1} (redeemed again within the grace).
var takeScript = redis.NewScript(`
local n = #KEYS / 2
local now = tonumber(ARGV[1])
local grace = tonumber(ARGV[n + 2])
local function expiry(v)
  local exp = 0
  for j = 2, 9 do exp = exp * 256 + string.byte(v, j) end
  return exp
end
for i = 1, n do
  local k = KEYS[i]
  local v = redis.call('GET', k)
  if v then
    local exp = expiry(v)
    if exp <= now then
      redis.call('DEL', k)
      return 0
    end
    if string.sub(v, 10, 25) ~= ARGV[1 + i] then
      return 1
    end
    redis.call('DEL', k)
    if grace > 0 then
      local px = math.min(grace, exp - now)
      redis.call('SET', KEYS[n + i], ARGV[n + 3] .. v, 'PX', string.format('%d', px))
    end
    return {i, v, 0}
  end
end
if #ARGV < n + 4 then
  return false
end
for i = 1, n do
  local g = redis.call('GET', KEYS[n + i])
  if g then
    local v = string.sub(g, 33)
    if expiry(v) <= now then
      redis.call('DEL', KEYS[n + i])
      return 0
    end
    if string.sub(v, 10, 25) ~= ARGV[1 + i] then
      return 1
    end
    local binding = string.sub(g, 1, 32)
    for j = n + 4, #ARGV do
      if ARGV[j] == binding then
        return {i, v, 1}
      end
    end
    return false
  end
end
return false
`)

// claimScript is Claim while old encryption keys are configured: a JWT id
// claimed under an old key's hash is still a replay.
var claimScript = redis.NewScript(`
for i = 2, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then return 0 end
end
if redis.call('SET', KEYS[1], '1', 'PX', ARGV[1], 'NX') then return 1 end
return 0
`)

// redisBackend is the pooled client and the Store over it.
type redisBackend struct {
	client  *redis.Client
	prefix  string
	rings   []keyring // current first
	timeout time.Duration
	now     func() time.Time
	health  *redisHealth
	cancel  context.CancelFunc
}

func newRedisBackend(cfg redisConfig, logger *zap.Logger) (*redisBackend, error) {
	opt := &redis.Options{
		Addr:         cfg.Address,
		Username:     cfg.Username,
		Password:     cfg.Password,
		DB:           cfg.DB,
		DialTimeout:  cfg.DialTimeout,
		ReadTimeout:  cfg.ReadTimeout,
		WriteTimeout: cfg.ReadTimeout,
		// A command waits at most this long for a free connection, and
		// MaxActiveConns bounds the pool: when Redis is slow, requests fail
		// fast instead of queueing without bound.
		PoolTimeout:    cfg.ReadTimeout,
		PoolSize:       cfg.PoolSize,
		MaxActiveConns: cfg.PoolSize,
		// No retries: a retried Take could be reported as "already used",
		// and retries multiply the time a request waits on a dead Redis.
		MaxRetries:    -1,
		DialerRetries: 1,
		// Honour the request's context (client gone, deadline).
		ContextTimeoutEnabled: true,
		// Only the commands the README's ACL allows: no CLIENT SETINFO, no
		// CLIENT MAINT_NOTIFICATIONS on connect.
		DisableIdentity:          true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	}
	if cfg.TLS {
		host, _, _ := net.SplitHostPort(cfg.Address) // with Sentinel: set tls_server_name
		tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: host}
		if cfg.TLSServerName != "" {
			tc.ServerName = cfg.TLSServerName
		}
		if cfg.TLSCAFile != "" {
			pem, err := os.ReadFile(cfg.TLSCAFile)
			if err != nil {
				return nil, fmt.Errorf("tls_ca_file: %v", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("tls_ca_file: no PEM certificates in %s", cfg.TLSCAFile)
			}
			tc.RootCAs = pool
		}
		opt.TLSConfig = tc
	}
	b := &redisBackend{
		prefix: cfg.KeyPrefix,
		// One budget for a whole operation: a dial, the command's write and
		// its read. A slow Redis cannot hold a request longer.
		timeout: cfg.DialTimeout + 2*cfg.ReadTimeout,
		now:     time.Now,
		health:  &redisHealth{address: cfg.Address, every: redisOutageLogEvery},
	}
	if cfg.SentinelMaster != "" {
		b.health.address = "sentinel:" + cfg.SentinelMaster
	}
	if len(cfg.Keys) == 0 {
		r, _ := newKeyring(nil)
		b.rings = []keyring{r}
	}
	for _, k := range cfg.Keys {
		r, err := newKeyring(k)
		if err != nil {
			return nil, err
		}
		b.rings = append(b.rings, r)
	}
	quietRedisLogs()
	b.health.setLogger(logger)
	if cfg.SentinelMaster == "" {
		b.client = redis.NewClient(opt)
	} else {
		// The same client type and code path, with the primary's address
		// from the Sentinels; commands go to the primary only (no
		// ReplicaOnly, RouteByLatency or RouteRandomly).
		b.client = redis.NewFailoverClient(&redis.FailoverOptions{
			MasterName: cfg.SentinelMaster, SentinelAddrs: cfg.SentinelAddresses,
			SentinelUsername: cfg.SentinelUsername, SentinelPassword: cfg.SentinelPassword,
			Username: opt.Username, Password: opt.Password, DB: opt.DB,
			DialTimeout: opt.DialTimeout, ReadTimeout: opt.ReadTimeout, WriteTimeout: opt.WriteTimeout,
			PoolTimeout: opt.PoolTimeout, PoolSize: opt.PoolSize, MaxActiveConns: opt.MaxActiveConns,
			MaxRetries: opt.MaxRetries, DialerRetries: opt.DialerRetries,
			ContextTimeoutEnabled: opt.ContextTimeoutEnabled, DisableIdentity: opt.DisableIdentity,
			TLSConfig: opt.TLSConfig,
		})
	}
	ctx, cancel := context.WithCancel(context.Background())
	b.cancel = cancel
	go b.checkEvictionPolicy(ctx)
	return b, nil
}

// checkEvictionPolicy warns when Redis may evict entries before they expire
// (maxmemory-policy other than noeviction), which would break "a 201 means
// retrievable until expiry". It runs once per client, in the background, so
// that an unreachable Redis never fails a config load; a Redis that refuses
// CONFIG (managed services, a restricted ACL user) is noted at debug level.
func (b *redisBackend) checkEvictionPolicy(ctx context.Context) {
	for attempt := 0; attempt < 5; attempt++ {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Duration(attempt) * 2 * time.Second):
			}
		}
		cctx, cancel := context.WithTimeout(ctx, b.timeout)
		res, err := b.client.ConfigGet(cctx, "maxmemory-policy").Result()
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			var rerr redis.Error
			if errors.As(err, &rerr) {
				// NOPERM, unknown command: the server answered; do not ask again.
				b.health.log().Debug("cannot check maxmemory-policy (make sure it is noeviction)", zap.String("reply", rerr.Error()))
				return
			}
			continue // not reachable yet: try again a little later
		}
		if p := res["maxmemory-policy"]; p != "" && p != "noeviction" {
			b.health.log().Warn("Redis maxmemory-policy is not noeviction: when Redis is full it may evict pushed requests before they expire, so a request_uri answered with 201 can fail; set maxmemory-policy noeviction",
				zap.String("maxmemory_policy", p))
		}
		return
	}
}

// Destruct closes the client when the last config using it is gone.
func (b *redisBackend) Destruct() error {
	b.cancel()
	return b.client.Close()
}

func (b *redisBackend) opContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, b.timeout)
}

// unavailable wraps a Redis failure and records it for the outage log.
func (b *redisBackend) unavailable(op string, err error) error {
	b.health.fail(err)
	return fmt.Errorf("%w: redis %s: %v", ErrStoreUnavailable, op, err)
}

// Put writes the entry with SET NX PX: one round trip, answered only after
// Redis acknowledged the write. NX makes a (astronomically unlikely) key
// collision fail instead of overwriting another client's entry.
func (b *redisBackend) Put(ctx context.Context, key string, req PushedRequest) error {
	ttl := req.ExpiresAt.Sub(b.now())
	if ttl <= 0 {
		return fmt.Errorf("%w: entry already expired", ErrStoreUnavailable)
	}
	r := b.rings[0]
	rk := r.requestKey(b.prefix, key)
	v, err := r.seal(rk, req)
	if err != nil {
		return fmt.Errorf("%w: sealing: %v", ErrStoreUnavailable, err)
	}
	ctx, cancel := b.opContext(ctx)
	defer cancel()
	err = b.client.Do(ctx, "SET", rk, v, "PX", ceilMillis(ttl), "NX").Err()
	if errors.Is(err, redis.Nil) {
		b.health.ok()
		return fmt.Errorf("%w: key already exists", ErrStoreUnavailable)
	}
	if err != nil {
		return b.unavailable("SET", err)
	}
	b.health.ok()
	return nil
}

// Take redeems the entry with takeScript; see there.
func (b *redisBackend) Take(ctx context.Context, key string, rd Redemption) (Redeemed, error) {
	n := len(b.rings)
	keys := make([]string, 2*n)
	args := make([]any, 0, 3+n+len(rd.Presented))
	args = append(args, b.now().UnixMilli())
	for i, r := range b.rings {
		keys[i] = r.requestKey(b.prefix, key)
		keys[n+i] = r.graceKey(b.prefix, key)
		args = append(args, r.clientTag(rd.ClientID))
	}
	if rd.Grace > 0 {
		args = append(args, ceilMillis(rd.Grace), rd.Binding[:])
	} else {
		args = append(args, 0, "")
	}
	for _, p := range rd.Presented {
		args = append(args, p[:])
	}
	ctx, cancel := b.opContext(ctx)
	defer cancel()
	res, err := takeScript.Run(ctx, b.client, keys, args...).Result()
	if errors.Is(err, redis.Nil) {
		b.health.ok()
		return Redeemed{}, ErrNotFound
	}
	if err != nil {
		return Redeemed{}, b.unavailable("EVALSHA", err)
	}
	b.health.ok()
	switch res := res.(type) {
	case int64:
		if res == 0 {
			return Redeemed{}, ErrExpired
		}
		return Redeemed{}, ErrClientMismatch
	case []any:
		if len(res) == 3 {
			i, _ := res[0].(int64)
			v, _ := res[1].(string)
			again, _ := res[2].(int64)
			if i >= 1 && int(i) <= n {
				req, err := b.rings[i-1].open(keys[i-1], []byte(v))
				if err != nil {
					// Already deleted; only tampering or a foreign writer
					// gets here. Report it as unusable, not as an outage.
					b.health.log().Warn("a pushed request read from Redis could not be opened (tampered, or written by something else); refused")
					return Redeemed{}, fmt.Errorf("%w: %v", ErrNotFound, err)
				}
				// The authenticated body is authoritative.
				if subtle.ConstantTimeCompare([]byte(req.ClientID), []byte(rd.ClientID)) != 1 {
					return Redeemed{}, fmt.Errorf("%w: stored client differs", ErrNotFound)
				}
				if !b.now().Before(req.ExpiresAt) {
					return Redeemed{}, ErrExpired
				}
				return Redeemed{PushedRequest: req, Again: again == 1}, nil
			}
		}
	}
	return Redeemed{}, fmt.Errorf("%w: unexpected reply from the take script", ErrNotFound)
}

// Claim records key with SET NX PX (one round trip; a script while old
// encryption keys are configured); see Store.
func (b *redisBackend) Claim(ctx context.Context, key string, expiresAt time.Time) error {
	ttl := expiresAt.Sub(b.now())
	if ttl <= 0 {
		return nil // the JWT's own expiry already refuses a replay
	}
	ctx, cancel := b.opContext(ctx)
	defer cancel()
	if len(b.rings) == 1 {
		err := b.client.Do(ctx, "SET", b.rings[0].claimKey(b.prefix, key), "1", "PX", ceilMillis(ttl), "NX").Err()
		switch {
		case errors.Is(err, redis.Nil):
			b.health.ok()
			return ErrReplay
		case err != nil:
			return b.unavailable("SET", err)
		}
		b.health.ok()
		return nil
	}
	keys := make([]string, len(b.rings))
	for i, r := range b.rings {
		keys[i] = r.claimKey(b.prefix, key)
	}
	n, err := claimScript.Run(ctx, b.client, keys, ceilMillis(ttl)).Int64()
	if err != nil {
		return b.unavailable("EVALSHA", err)
	}
	b.health.ok()
	if n != 1 {
		return ErrReplay
	}
	return nil
}

func ceilMillis(d time.Duration) int64 {
	return int64((d + time.Millisecond - 1) / time.Millisecond)
}

// ---- outage logging ----

var quietOnce sync.Once

// quietRedisLogs sends go-redis's own log lines (one per failed dial, to
// stderr by default: per request during an outage) to Caddy's log at
// DEBUG; redisHealth reports outages instead. go-redis has one logger per
// process, so this applies to every go-redis user in this Caddy.
func quietRedisLogs() {
	quietOnce.Do(func() {
		redis.SetLogger(goRedisLogger{caddy.Log().Named("go-redis")})
	})
}

type goRedisLogger struct{ l *zap.Logger }

func (g goRedisLogger) Printf(_ context.Context, format string, v ...any) {
	if ce := g.l.Check(zap.DebugLevel, "go-redis"); ce != nil {
		ce.Write(zap.String("detail", fmt.Sprintf(format, v...)))
	}
}

// redisHealth logs an outage once when it starts, again at most every
// `every` while it lasts (with the number of failed operations), and once
// when Redis answers again. Never keys, values or passwords: go-redis
// errors name the address and the failure only.
type redisHealth struct {
	address string
	every   time.Duration
	// logger is the most recently provisioned config's: a reload may
	// change where logs go, and the old config's writers close with it.
	logger atomic.Pointer[zap.Logger]

	// down is read without the lock on every success (the hot path).
	down     atomic.Bool
	mu       sync.Mutex
	since    time.Time
	lastLog  time.Time
	failures int64
}

func (h *redisHealth) setLogger(l *zap.Logger) {
	h.logger.Store(l.With(zap.String("store", "redis"), zap.String("address", h.address)))
}

func (h *redisHealth) log() *zap.Logger { return h.logger.Load() }

func (h *redisHealth) fail(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	now := time.Now()
	h.failures++
	if !h.down.Load() {
		h.down.Store(true)
		h.since, h.lastLog = now, now
		h.log().Error("Redis store unavailable: pushes get 503 and redemptions an error page until it is back", zap.Error(err))
		return
	}
	if now.Sub(h.lastLog) >= h.every {
		h.lastLog = now
		h.log().Error("Redis store still unavailable", zap.Duration("for", now.Sub(h.since).Round(time.Millisecond)),
			zap.Int64("failed_operations", h.failures), zap.Error(err))
	}
}

func (h *redisHealth) ok() {
	if !h.down.Load() {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.down.Load() {
		return
	}
	h.log().Info("Redis store available again", zap.Duration("outage", time.Since(h.since).Round(time.Millisecond)),
		zap.Int64("failed_operations", h.failures))
	h.down.Store(false)
	h.failures = 0
}

// Interface guards
var (
	_ caddy.Provisioner  = (*RedisStore)(nil)
	_ caddy.CleanerUpper = (*RedisStore)(nil)
	_ StoreProvider      = (*RedisStore)(nil)
	_ Store              = (*redisBackend)(nil)
	_ caddy.Destructor   = (*redisBackend)(nil)
)
