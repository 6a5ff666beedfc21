package caddymodule

import (
	"context"
	"crypto/subtle"
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

// Redemption is one attempt, at the authorization endpoint, to redeem a
// request_uri.
type Redemption struct {
	// ClientID is the client_id sent with the request_uri; it must be the
	// one the request was pushed by, on every redemption (RFC 9126 §4).
	ClientID string
	// Grace, when positive, keeps the entry after its first redemption for
	// that long (never past ExpiresAt), redeemable again only by whoever
	// presents the secret whose hash is Binding: the browser that redeemed
	// it first (reuse_grace). Zero: the first redemption consumes it.
	Grace time.Duration
	// Binding is the SHA-256 of the secret handed to this redeemer (the
	// grace cookie's value). The store records it only if this redemption
	// is the first.
	Binding [32]byte
	// Presented are SHA-256 hashes of the grace secrets this browser sent
	// back. A redemption after the first needs one equal to the recorded
	// Binding.
	Presented [][32]byte
}

// presents reports whether one of the presented hashes is binding.
func (rd Redemption) presents(binding [32]byte) bool {
	ok := false
	for _, p := range rd.Presented {
		if subtle.ConstantTimeCompare(p[:], binding[:]) == 1 {
			ok = true
		}
	}
	return ok
}

// Redeemed is what a successful Take returns.
type Redeemed struct {
	PushedRequest
	// Again is true for a redemption within the grace by the first
	// redeemer; false for the first (consuming) redemption.
	Again bool
}

// Store keeps pushed requests between the push and their redemption.
//
// Implementations must be safe for concurrent use, must make Take atomic
// (of concurrent first redemptions of one reference exactly one succeeds;
// later ones succeed only within that winner's grace and with its
// binding), and must only report success from Put once the entry is
// retrievable.
type Store interface {
	// Put stores req under ref until req.ExpiresAt. It returns
	// ErrStoreUnavailable (possibly wrapped) when it cannot guarantee that
	// the entry stays retrievable until then: the caller must then not
	// issue ref.
	Put(ctx context.Context, ref string, req PushedRequest) error
	// Take redeems the entry for ref if it is bound to rd.ClientID and not
	// expired. The first redemption consumes it: without rd.Grace the entry
	// is removed; with it, the entry stays until min(now + rd.Grace,
	// ExpiresAt), redeemable again (Redeemed.Again) only with one of
	// rd.Presented equal to the first redemption's rd.Binding. Any other
	// attempt on a consumed entry gets ErrNotFound (ErrClientMismatch if it
	// presents bindings with another client_id). An entry bound to another
	// client is left as it is (ErrClientMismatch), so a stolen reference
	// cannot be burnt by a different client.
	Take(ctx context.Context, ref string, rd Redemption) (Redeemed, error)
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
