package caddymodule

import (
	"fmt"
	"net/url"
	"slices"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// Security profiles the `profile` subdirective switches on.
const (
	// ProfileFAPI2 is the FAPI 2.0 Security Profile (final), authorization
	// side.
	ProfileFAPI2 = "fapi2"
	// ProfileFAPI2MessageSigning adds FAPI 2.0 Message Signing's signed
	// request objects at the PAR endpoint.
	ProfileFAPI2MessageSigning = "fapi2_message_signing"
)

// fapi2Algs are the only JWS algorithms FAPI 2.0 §5.4.1 permits.
var fapi2Algs = []string{"PS256", "ES256", "EdDSA"}

// fapi2AuthMethods are the only client authentication methods FAPI 2.0
// §5.3.2.1 permits.
var fapi2AuthMethods = []string{AuthPrivateKeyJWT, AuthTLSClientAuth, AuthSelfSignedTLSClientAuth}

func (h *Handler) fapi2() bool {
	return h.Profile == ProfileFAPI2 || h.Profile == ProfileFAPI2MessageSigning
}

// applyProfile turns on what the profile makes mandatory, before defaults
// are applied.
func (h *Handler) applyProfile() {
	if !h.fapi2() {
		return
	}
	// FAPI 2.0 §5.3.2.2: PAR required, every request pushed.
	h.RequirePAR = true
	// FAPI 2.0 wants request_uris used once: no reuse grace unless the
	// configuration asks for one explicitly.
	if h.ReuseGrace == nil {
		off := caddy.Duration(0)
		h.ReuseGrace = &off
	}
	h.applyLiftProfile()
	if h.Profile == ProfileFAPI2MessageSigning {
		// FAPI 2.0 Message Signing §5.3.1: signed request objects at PAR.
		h.RequireSignedRequestObject = true
	}
}

// checkProfile refuses a configuration that cannot meet the profile. Each
// message names the client or subdirective and the rule.
func (h *Handler) checkProfile() error {
	switch h.Profile {
	case "", ProfileFAPI2, ProfileFAPI2MessageSigning:
	default:
		return fmt.Errorf("profile: unknown profile %q (fapi2, fapi2_message_signing)", h.Profile)
	}
	if !h.fapi2() {
		return nil
	}
	p := "profile " + h.Profile + ": "
	if h.Issuer == "" {
		// The assertion audience must be the issuer alone (FAPI 2.0
		// §5.3.2.1), so it has to be known for certain, not learned.
		return fmt.Errorf("%sissuer is required (client assertions must have the issuer as aud)", p)
	}
	if time.Duration(h.RequestURILifetime) >= 600*time.Second {
		return fmt.Errorf("%srequest_uri_lifetime must be under 600s (FAPI 2.0 §5.3.2.2)", p)
	}
	for name, algs := range map[string][]string{
		"client_assertion_signing_algs": h.ClientAssertionSigningAlgs,
		"request_object_signing_algs":   h.RequestObjectSigningAlgs,
		"dpop_signing_algs":             h.DPoPSigningAlgs,
	} {
		for _, a := range algs {
			if !slices.Contains(fapi2Algs, a) {
				return fmt.Errorf("%s%s: %s is not allowed (FAPI 2.0 §5.4.1: PS256, ES256, EdDSA)", p, name, a)
			}
		}
	}
	for _, c := range h.Clients {
		cp := fmt.Sprintf("%sclient %q: ", p, c.ClientID)
		if c.Public {
			return fmt.Errorf("%spublic clients are not allowed (FAPI 2.0 §5.3.2.1: confidential clients only)", cp)
		}
		methods := c.methods()
		if len(methods) == 0 {
			return fmt.Errorf("%sneeds private_key_jwt or mTLS: configure jwks, jwks_file, jwks_uri or a tls_client_auth_* name", cp)
		}
		for _, m := range methods {
			if !slices.Contains(fapi2AuthMethods, m) {
				if len(c.AuthMethods) == 0 {
					return fmt.Errorf("%sauthenticates with %s by default; FAPI 2.0 §5.3.2.1 allows only private_key_jwt and mTLS: configure keys or a certificate name, and auth_methods", cp, m)
				}
				return fmt.Errorf("%sauth_methods: %s is not allowed (FAPI 2.0 §5.3.2.1: private_key_jwt, tls_client_auth, self_signed_tls_client_auth)", cp, m)
			}
		}
		for _, ru := range c.RedirectURIs {
			if u, err := url.Parse(ru); err == nil && u.Scheme == "http" && !isLoopbackIP(u.Hostname()) {
				return fmt.Errorf("%sredirect_uris: %s uses http; only loopback redirect URIs of native apps may (FAPI 2.0 §5.3.2.2)", cp, ru)
			}
		}
		if h.Profile == ProfileFAPI2MessageSigning && !c.hasKeys() {
			return fmt.Errorf("%ssigned request objects are required, so the client needs keys (jwks, jwks_file or jwks_uri)", cp)
		}
	}
	return nil
}
