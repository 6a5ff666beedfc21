package caddymodule_test

// In-process Caddy test of RFC 8705 client authentication: an https site
// whose certificate request comes from Caddy's own TLS client_auth, and a
// client presenting certificates made in the test.

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/go-jose/go-jose/v4"
)

// mtCert is a certificate with its key.
type mtCert struct {
	cert *x509.Certificate
	key  crypto.Signer
}

func (c mtCert) tls() tls.Certificate {
	return tls.Certificate{Certificate: [][]byte{c.cert.Raw}, PrivateKey: c.key, Leaf: c.cert}
}

// mtIssue makes a certificate for subject, signed by parent (self-signed
// when parent is nil).
func mtIssue(t *testing.T, subject pkix.Name, parent *mtCert, isCA bool, eku []x509.ExtKeyUsage, dnsNames ...string) mtCert {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: subject,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: eku, DNSNames: dnsNames,
		BasicConstraintsValid: true, IsCA: isCA,
	}
	if isCA {
		tmpl.KeyUsage |= x509.KeyUsageCertSign
	}
	signer, signerCert := crypto.Signer(key), tmpl
	if parent != nil {
		signer, signerCert = parent.key, parent.cert
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signerCert, key.Public(), signer)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return mtCert{cert, key}
}

func mtWritePEM(t *testing.T, dir, name string, c mtCert) (certFile, keyFile string) {
	t.Helper()
	certFile, keyFile = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+".key")
	der, err := x509.MarshalPKCS8PrivateKey(c.key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.cert.Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

func TestCaddyMTLSClientAuthentication(t *testing.T) {
	dir := t.TempDir()
	clientAuth := []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	ca := mtIssue(t, pkix.Name{CommonName: "Test Client CA"}, nil, true, nil)
	pki := mtIssue(t, pkix.Name{CommonName: "pki-app", Organization: []string{"Example Bank"}, Country: []string{"GB"}}, &ca, false, clientAuth)
	forged := mtIssue(t, pki.cert.Subject, nil, false, clientAuth) // same DN, not issued by the CA
	selfSigned := mtIssue(t, pkix.Name{CommonName: "ss-app"}, nil, false, clientAuth)
	otherSelf := mtIssue(t, pkix.Name{CommonName: "ss-app"}, nil, false, clientAuth)
	// Caddy matches SNI to the site when client_auth is on, so the site is a
	// host name (served on 127.0.0.1), as it is in production.
	server := mtIssue(t, pkix.Name{CommonName: "localhost"}, nil, false, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, "localhost")
	serverCert, serverKey := mtWritePEM(t, dir, "server", server)
	caFile, _ := mtWritePEM(t, dir, "ca", ca)
	jwks, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: selfSigned.key.Public(), KeyID: "ss", Use: "sig"}}})
	if err != nil {
		t.Fatal(err)
	}
	up := ctNewUpstream(t, nil)

	load := func(t *testing.T, clientAuthBlock, extra string) (base string) {
		t.Helper()
		port := ctFreePort(t)
		cfg := fmt.Sprintf(`{
	admin off
	auto_https off
	persist_config off
	storage file_system %s
	log {
		output discard
	}
}

https://localhost:%d {
	bind 127.0.0.1
	tls %s %s {
		client_auth {
			%s
		}
	}
	oauth_par {
		authorization_endpoint /authorize
		issuer %s
		%s
		client pki-app {
			tls_client_auth_subject_dn "CN=pki-app,O=Example Bank,C=GB"
			redirect_uris https://pki.example.test/cb
		}
		client ss-app {
			jwks `+"`%s`"+`
			auth_methods self_signed_tls_client_auth
			redirect_uris https://ss.example.test/cb
		}
	}
	reverse_proxy %s
}
`, dir, port, serverCert, serverKey, clientAuthBlock, saIssuer, extra, jwks, up.addr())
		if err := ctAdaptLoad(cfg); err != nil {
			t.Fatalf("loading Caddy: %v", err)
		}
		t.Cleanup(func() { _ = caddy.Stop() })
		return fmt.Sprintf("https://localhost:%d", port)
	}
	roots := x509.NewCertPool()
	roots.AddCert(server.cert)
	push := func(t *testing.T, base, clientID, redirect string, cert *mtCert) (int, string) {
		t.Helper()
		tc := &tls.Config{RootCAs: roots}
		if cert != nil {
			c := cert.tls()
			tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &c, nil }
		}
		dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
			_, port, _ := net.SplitHostPort(addr)
			return (&net.Dialer{}).DialContext(ctx, "tcp", net.JoinHostPort("127.0.0.1", port))
		}
		cl := &http.Client{Timeout: ctHTTPTimeout, Transport: &http.Transport{TLSClientConfig: tc, DialContext: dial}}
		defer cl.CloseIdleConnections()
		form := saForm(clientID, redirect)
		resp, err := cl.Post(base+"/par", "application/x-www-form-urlencoded", strings.NewReader(form.Encode()))
		if err != nil {
			t.Fatalf("push: %v", err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	t.Run("mode_request_with_client_ca_file", func(t *testing.T) {
		base := load(t, "mode request", "client_ca_file "+caFile)
		for _, tc := range []struct {
			name, client, redirect string
			cert                   *mtCert
			want                   int
		}{
			{"pki_client_with_its_certificate", "pki-app", "https://pki.example.test/cb", &pki, http.StatusCreated},
			{"pki_client_with_a_forged_certificate_of_the_same_DN", "pki-app", "https://pki.example.test/cb", &forged, http.StatusUnauthorized},
			{"pki_client_with_another_subject", "pki-app", "https://pki.example.test/cb", &selfSigned, http.StatusUnauthorized},
			{"pki_client_without_certificate", "pki-app", "https://pki.example.test/cb", nil, http.StatusUnauthorized},
			{"self_signed_client_with_its_key", "ss-app", "https://ss.example.test/cb", &selfSigned, http.StatusCreated},
			{"self_signed_client_with_another_key", "ss-app", "https://ss.example.test/cb", &otherSelf, http.StatusUnauthorized},
			{"self_signed_client_with_a_CA_issued_certificate", "ss-app", "https://ss.example.test/cb", &pki, http.StatusUnauthorized},
		} {
			t.Run(tc.name, func(t *testing.T) {
				status, body := push(t, base, tc.client, tc.redirect, tc.cert)
				if status != tc.want {
					t.Fatalf("status %d, want %d: %s", status, tc.want, body)
				}
				if tc.want == http.StatusUnauthorized && !strings.Contains(body, `"invalid_client"`) {
					t.Errorf("body %s", body)
				}
			})
		}
	})

	t.Run("mode_request_without_client_ca_file_refuses_unvalidated_chains", func(t *testing.T) {
		base := load(t, "mode request", "")
		if status, body := push(t, base, "pki-app", "https://pki.example.test/cb", &pki); status != http.StatusUnauthorized || !strings.Contains(body, "not validated") {
			t.Fatalf("status %d: %s", status, body)
		}
	})

	t.Run("mode_verify_if_given_lets_Caddy_validate_the_chain", func(t *testing.T) {
		base := load(t, "mode verify_if_given\n\t\t\ttrust_pool file "+caFile, "")
		if status, body := push(t, base, "pki-app", "https://pki.example.test/cb", &pki); status != http.StatusCreated {
			t.Fatalf("status %d: %s", status, body)
		}
	})
}
