package caddymodule

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"testing"
)

func TestIsDiscoveryPath(t *testing.T) {
	tests := map[string]bool{
		"/.well-known/openid-configuration":                   true,
		"/realms/demo/.well-known/openid-configuration":       true,
		"/.well-known/oauth-authorization-server":             true,
		"/.well-known/oauth-authorization-server/realms/demo": true,
		"/realms/demo/.well-known/oauth-authorization-server": true,
		"/.well-known/openid-configuration/x":                 false,
		"/.well-known/oauth-authorization-serverx":            false,
		"/par": false,
	}
	for p, want := range tests {
		if got := isDiscoveryPath(p); got != want {
			t.Errorf("isDiscoveryPath(%q) = %v, want %v", p, got, want)
		}
	}
}

func TestRewriteMetadataKeepsMembersAndOrder(t *testing.T) {
	doc := []byte(`{
  "issuer": "https://idp.example/realms/demo",
  "authorization_endpoint": "https://idp.example/realms/demo/protocol/openid-connect/auth",
  "pushed_authorization_request_endpoint": "https://idp.example/realms/demo/protocol/openid-connect/ext/par/request",
  "scopes_supported": ["openid", "profile"],
  "require_pushed_authorization_requests": false,
  "mtls_endpoint_aliases": {"token_endpoint": "https://mtls.idp.example/token"},
  "number": 1.50
}`)
	out, info, err := rewriteMetadata(doc, "/par", true, advertisement{})
	if err != nil {
		t.Fatal(err)
	}
	want := `{"issuer":"https://idp.example/realms/demo","authorization_endpoint":"https://idp.example/realms/demo/protocol/openid-connect/auth","scopes_supported":["openid", "profile"],"mtls_endpoint_aliases":{"token_endpoint": "https://mtls.idp.example/token"},"number":1.50,"pushed_authorization_request_endpoint":"https://idp.example/par","require_pushed_authorization_requests":true}`
	if string(out) != want {
		t.Fatalf("got  %s\nwant %s", out, want)
	}
	if !json.Valid(out) || info.issuer != "https://idp.example/realms/demo" {
		t.Fatalf("info %+v", info)
	}
}

func TestRewriteMetadataRefusesNonMetadata(t *testing.T) {
	for _, doc := range []string{`[]`, `{"issuer":"x"}`, `{"authorization_endpoint":"/relative"}`, `{"a":1} {"b":2}`, `{"a":`} {
		if _, _, err := rewriteMetadata([]byte(doc), "/par", false, advertisement{}); err == nil {
			t.Errorf("rewrote %s", doc)
		}
	}
}

func TestRewriteMetadataGzip(t *testing.T) {
	g := newTestGateway(t, nil)
	var buf bytes.Buffer
	zw := newGzipWriter(&buf)
	_, _ = zw.Write([]byte(`{"authorization_endpoint":"http://127.0.0.1:8080/authorize"}`))
	_ = zw.Close()
	out, _, err := g.decodeAndRewrite("gzip", buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(out, &m); err != nil || m["pushed_authorization_request_endpoint"] != "http://127.0.0.1:8080/par" {
		t.Fatalf("got %s (%v)", out, err)
	}
	if _, _, err := g.decodeAndRewrite("br", buf.Bytes()); err == nil {
		t.Fatal("unknown encoding rewritten")
	}
}

func newGzipWriter(w *bytes.Buffer) *gzip.Writer { return gzip.NewWriter(w) }

func TestRewriteMetadataDropsUpstreamMTLSPARAlias(t *testing.T) {
	doc := `{"authorization_endpoint":"https://idp.example/auth","mtls_endpoint_aliases":{"token_endpoint":"https://idp.example/token","pushed_authorization_request_endpoint":"https://idp.example/ext/par/request"}}`
	out, _, err := rewriteMetadata([]byte(doc), "/par", false, advertisement{})
	if err != nil {
		t.Fatal(err)
	}
	want := `{"authorization_endpoint":"https://idp.example/auth","mtls_endpoint_aliases":{"token_endpoint":"https://idp.example/token"},"pushed_authorization_request_endpoint":"https://idp.example/par","require_pushed_authorization_requests":false}`
	if string(out) != want {
		t.Fatalf("got  %s\nwant %s", out, want)
	}
}
