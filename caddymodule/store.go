package caddymodule

import (
	"context"
	"errors"
	"time"
)

// PushedRequest is what the PAR endpoint keeps for one request_uri.
type PushedRequest struct {
	// ClientID is the authenticated client the request is bound to
	// (RFC 9126 §2.2, §4).
	ClientID string
	// Params is the pushed authorization request, form-encoded, without
	// client-authentication parameters. It is forwarded upstream as is.
	Params string
	// ExpiresAt is the absolute expiry; stores must not hand out the entry
	// after it, whatever their own TTL bookkeeping says.
	ExpiresAt time.Time
}

// Store keeps pushed requests between the push and their one redemption.
//
// Implementations must be safe for concurrent use, must make Take atomic
// (of concurrent Takes for one reference at most one succeeds), and must
// only report success from Put once the entry is retrievable.
type Store interface {
	// Put stores req under ref until req.ExpiresAt. It returns
	// ErrStoreUnavailable (possibly wrapped) when it cannot guarantee that
	// the entry stays retrievable until then: the caller must then not
	// issue ref.
	Put(ctx context.Context, ref string, req PushedRequest) error
	// Take removes and returns the entry for ref if it is bound to clientID
	// and not expired. An entry bound to another client is left in place
	// (ErrClientMismatch), so a stolen reference cannot be burnt by a
	// different client.
	Take(ctx context.Context, ref, clientID string) (PushedRequest, error)
	// Claim records key as used until expiresAt. Of concurrent Claims for
	// one key exactly one succeeds; the others, and every later one until
	// expiresAt, get ErrReplay. It backs single-use jti values of client
	// assertions (RFC 7523 §3) and DPoP proofs (RFC 9449 §11.1). It returns
	// ErrStoreUnavailable (possibly wrapped) when it cannot record the key:
	// the caller must then refuse the JWT, never accept it unrecorded.
	Claim(ctx context.Context, key string, expiresAt time.Time) error
}

// Store errors. Callers compare with errors.Is.
var (
	ErrNotFound         = errors.New("unknown or already used request_uri")
	ErrExpired          = errors.New("expired request_uri")
	ErrClientMismatch   = errors.New("request_uri was issued to another client")
	ErrStoreUnavailable = errors.New("pushed request store unavailable")
	ErrReplay           = errors.New("already used")
)

// StoreProvider is implemented by store modules in the
// http.handlers.oauth_par.stores namespace.
type StoreProvider interface {
	Store() Store
}
