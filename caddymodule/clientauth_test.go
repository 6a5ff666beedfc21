package caddymodule

import (
	"encoding/base64"
	"net/http"
	"net/url"
	"testing"
)

func TestClientAuthentication(t *testing.T) {
	a := newTestGateway(t, nil).auth
	tests := []struct {
		name       string
		basic      string // raw Authorization header value
		form       url.Values
		wantClient string
		wantMethod string
		wantBasic  bool // WWW-Authenticate expected on failure
	}{
		{name: "basic", basic: basicHeader("web-app", testSecret), form: url.Values{"client_id": {"web-app"}}, wantClient: "web-app", wantMethod: AuthClientSecretBasic},
		{name: "basic parts are form-urlencoded", basic: "Basic " + base64.StdEncoding.EncodeToString([]byte("web-app:s3cret%2B%3A%25")), wantClient: "web-app", wantMethod: AuthClientSecretBasic},
		{name: "post", form: url.Values{"client_id": {"web-app"}, "client_secret": {testSecret}}, wantClient: "web-app", wantMethod: AuthClientSecretPost},
		{name: "public client by client_id", form: url.Values{"client_id": {"spa"}}, wantClient: "spa", wantMethod: AuthNone},
		{name: "wrong basic secret", basic: basicHeader("web-app", "nope"), wantBasic: true},
		{name: "unknown client basic", basic: basicHeader("ghost", testSecret), wantBasic: true},
		{name: "unknown client post", form: url.Values{"client_id": {"ghost"}, "client_secret": {"x"}}},
		{name: "confidential client without secret", form: url.Values{"client_id": {"web-app"}}},
		{name: "public client sending a secret", form: url.Values{"client_id": {"spa"}, "client_secret": {"x"}}},
		{name: "two methods at once", basic: basicHeader("web-app", testSecret), form: url.Values{"client_id": {"web-app"}, "client_secret": {testSecret}}, wantBasic: true},
		{name: "assertion from a client without assertion methods", form: url.Values{"client_id": {"web-app"}, "client_assertion_type": {"urn:ietf:params:oauth:client-assertion-type:jwt-bearer"}, "client_assertion": {"x.y.z"}}},
		{name: "basic parts sent without form-encoding", basic: "Basic " + base64.StdEncoding.EncodeToString([]byte("web-app:"+testSecret)), wantClient: "web-app", wantMethod: AuthClientSecretBasic},
		{name: "malformed basic", basic: "Basic !!!", wantBasic: true},
		{name: "no client at all"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, _ := http.NewRequest(http.MethodPost, "/par", nil)
			if tt.basic != "" {
				r.Header.Set("Authorization", tt.basic)
			}
			form := tt.form
			if form == nil {
				form = url.Values{}
			}
			c, method, oerr := a.authenticate(r, form, audiences{})
			if tt.wantClient != "" {
				if oerr != nil || c == nil || c.id != tt.wantClient || method != tt.wantMethod {
					t.Fatalf("got %v %q %v, want %s via %s", c, method, oerr, tt.wantClient, tt.wantMethod)
				}
				return
			}
			if oerr == nil || oerr.Code != ErrInvalidClient || oerr.Status != http.StatusUnauthorized {
				t.Fatalf("got %v, want 401 invalid_client", oerr)
			}
			if oerr.basicTried != tt.wantBasic {
				t.Fatalf("basicTried = %v, want %v", oerr.basicTried, tt.wantBasic)
			}
		})
	}
}

func TestAuthMethodsRestrictClient(t *testing.T) {
	c := ClientConfig{ClientID: "basic-only", Secret: "x", RedirectURIs: []string{"https://a/cb"}, AuthMethods: []string{AuthClientSecretBasic}}
	if err := c.validate(); err != nil {
		t.Fatal(err)
	}
	a := &clientAuthenticator{clients: map[string]*client{c.ClientID: mustClient(t, c)}}
	r, _ := http.NewRequest(http.MethodPost, "/par", nil)
	if _, _, oerr := a.authenticate(r, url.Values{"client_id": {"basic-only"}, "client_secret": {"x"}}, audiences{}); oerr == nil {
		t.Fatal("client_secret_post accepted for a basic-only client")
	}
	r.Header.Set("Authorization", basicHeader("basic-only", "x"))
	if _, _, oerr := a.authenticate(r, url.Values{}, audiences{}); oerr != nil {
		t.Fatalf("basic rejected: %v", oerr)
	}
}

func basicHeader(id, secret string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(url.QueryEscape(id)+":"+url.QueryEscape(secret)))
}
