package main

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
)

// The client every scenario uses, on the gateway and on the peers alike.
const (
	clientID     = "web-app"
	clientSecret = "s3cret"
	redirectURI  = "https://app.example.com/callback"
	scopes       = "openid profile email"
)

// basicAuth is the RFC 6749 §2.3.1 client_secret_basic header value: id and
// secret form-urlencoded, then base64.
func basicAuth(id, secret string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(url.QueryEscape(id)+":"+url.QueryEscape(secret)))
}

// pushHeader is shared by all push requests (read-only).
var pushHeader = http.Header{
	"Content-Type":  {"application/x-www-form-urlencoded"},
	"Authorization": {basicAuth(clientID, clientSecret)},
	"Accept":        {"application/json"},
}

// uniq returns 43 base64url characters (a SHA-256), distinct per (w, seq,
// salt): used for state, nonce and code_challenge, so that every push is a
// different request as it would be from real browsers.
func uniq(w, seq int, salt byte) string {
	var b [17]byte
	binary.LittleEndian.PutUint64(b[0:], uint64(w))
	binary.LittleEndian.PutUint64(b[8:], uint64(seq))
	b[16] = salt
	sum := sha256.Sum256(b[:])
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// pushBody builds a typical authorization request as a PAR body (~600
// bytes form-encoded): the parameters an OIDC web app sends with PKCE, a
// state that carries some app context, and common optional parameters.
// extra (already encoded, may be "") is appended, e.g. authorization_details.
func pushBody(w, seq int, extra string) []byte {
	v := url.Values{}
	v.Set("client_id", clientID)
	v.Set("response_type", "code")
	v.Set("redirect_uri", redirectURI)
	v.Set("scope", scopes)
	// Apps commonly put a random value plus a return path into state.
	v.Set("state", uniq(w, seq, 's')+"."+uniq(w, seq, 't')+".L2FjY291bnQvc2V0dGluZ3M_dGFiPXNlY3VyaXR5")
	v.Set("nonce", uniq(w, seq, 'n'))
	v.Set("code_challenge", uniq(w, seq, 'c'))
	v.Set("code_challenge_method", "S256")
	v.Set("response_mode", "query")
	v.Set("login_hint", "alice.bobson@example.com")
	v.Set("ui_locales", "en-US de-DE fr-FR")
	v.Set("max_age", "3600")
	v.Set("prompt", "login")
	v.Set("acr_values", "urn:example:acr:password urn:example:acr:mfa")
	s := v.Encode()
	if extra != "" {
		s += "&" + extra
	}
	return []byte(s)
}

// authorizationDetails returns an RFC 9396 authorization_details JSON array
// of about size bytes (before form encoding), already form-encoded as a
// parameter ("authorization_details=...").
func authorizationDetails(size int) (param string, jsonLen int) {
	type detail struct {
		Type             string            `json:"type"`
		Locations        []string          `json:"locations"`
		InstructedAmount map[string]string `json:"instructedAmount"`
		CreditorName     string            `json:"creditorName"`
		CreditorAccount  map[string]string `json:"creditorAccount"`
		RemittanceInfo   string            `json:"remittanceInformationUnstructured"`
		Actions          []string          `json:"actions"`
		DataTypes        []string          `json:"datatypes"`
		Identifier       string            `json:"identifier"`
	}
	var ds []detail
	var out []byte
	for i := 0; i < 1000; i++ {
		ds = append(ds, detail{
			Type:             "payment_initiation",
			Locations:        []string{"https://example.com/payments"},
			InstructedAmount: map[string]string{"currency": "EUR", "amount": fmt.Sprintf("%d.%02d", 100+i, i%100)},
			CreditorName:     fmt.Sprintf("Merchant %04d GmbH", i),
			CreditorAccount:  map[string]string{"iban": fmt.Sprintf("DE02100100109307%06d", 118603+i)},
			RemittanceInfo:   fmt.Sprintf("Ref Number Merchant %08d", 1000+i),
			Actions:          []string{"initiate", "status", "cancel"},
			DataTypes:        []string{"payment", "status"},
			Identifier:       fmt.Sprintf("pmt-%08x", i*2654435761),
		})
		b, _ := json.Marshal(ds)
		if len(b) > size {
			break
		}
		out = b
	}
	// Pad the last remittance string so the JSON is close to size bytes.
	if gap := size - len(out); gap > 0 && len(ds) > 1 {
		ds = ds[:len(ds)-1]
		ds[len(ds)-1].RemittanceInfo += strings.Repeat("x", gap)
		out, _ = json.Marshal(ds)
	}
	return "authorization_details=" + url.QueryEscape(string(out)), len(out)
}

// redeemURL is the authorization request that redeems a request_uri.
func redeemURL(base, requestURI string) string {
	return base + "?client_id=" + url.QueryEscape(clientID) + "&request_uri=" + url.QueryEscape(requestURI)
}

// parseRequestURI extracts request_uri from a 201 PAR response body.
func parseRequestURI(body []byte) (string, int64, error) {
	var r struct {
		RequestURI string `json:"request_uri"`
		ExpiresIn  int64  `json:"expires_in"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return "", 0, err
	}
	if !strings.HasPrefix(r.RequestURI, "urn:ietf:params:oauth:request_uri:") {
		return "", 0, fmt.Errorf("unexpected request_uri %q", r.RequestURI)
	}
	return r.RequestURI, r.ExpiresIn, nil
}
