package caddymodule

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"math/big"
	"net"
	"net/url"
	"testing"
	"time"
)

type mtlsCert struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

var mtlsSerial int64

// mtlsIssue makes a certificate from tmpl, signed by parent (self-signed
// when parent is nil).
func mtlsIssue(t *testing.T, tmpl *x509.Certificate, parent *mtlsCert) *mtlsCert {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	mtlsSerial++
	tmpl.SerialNumber = big.NewInt(mtlsSerial)
	if tmpl.NotBefore.IsZero() {
		tmpl.NotBefore = time.Now().Add(-time.Hour)
		tmpl.NotAfter = time.Now().Add(time.Hour)
	}
	signer, signerKey := tmpl, key
	if parent != nil {
		signer, signerKey = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, &key.PublicKey, signerKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &mtlsCert{c, key}
}

func mtlsCA(t *testing.T, name string, parent *mtlsCert) *mtlsCert {
	return mtlsIssue(t, &x509.Certificate{
		Subject:               pkix.Name{CommonName: name},
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}, parent)
}

func mtlsLeaf(t *testing.T, parent *mtlsCert, eku []x509.ExtKeyUsage) *mtlsCert {
	u, _ := url.Parse("spiffe://example.org/client/1")
	return mtlsIssue(t, &x509.Certificate{
		Subject:        pkix.Name{Country: []string{"US"}, Organization: []string{"Org"}, CommonName: "leaf"},
		ExtKeyUsage:    eku,
		KeyUsage:       x509.KeyUsageDigitalSignature,
		DNSNames:       []string{"client.example.com"},
		URIs:           []*url.URL{u},
		IPAddresses:    []net.IP{net.ParseIP("192.0.2.7"), net.ParseIP("2001:db8::1")},
		EmailAddresses: []string{"alice@Example.COM"},
	}, parent)
}

// mtlsRaw makes a self-signed certificate with the given raw subject.
func mtlsRaw(t *testing.T, seq pkix.RDNSequence) *x509.Certificate {
	t.Helper()
	raw, err := asn1.Marshal(seq)
	if err != nil {
		t.Fatal(err)
	}
	return mtlsIssue(t, &x509.Certificate{RawSubject: raw}, nil).cert
}

var (
	oidC   = asn1.ObjectIdentifier{2, 5, 4, 6}
	oidO   = asn1.ObjectIdentifier{2, 5, 4, 10}
	oidOU  = asn1.ObjectIdentifier{2, 5, 4, 11}
	oidCN  = asn1.ObjectIdentifier{2, 5, 4, 3}
	oidDC  = asn1.ObjectIdentifier{0, 9, 2342, 19200300, 100, 1, 25}
	oidUID = asn1.ObjectIdentifier{0, 9, 2342, 19200300, 100, 1, 1}
	oidE   = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 1}
)

func atv(oid asn1.ObjectIdentifier, v string) pkix.AttributeTypeAndValue {
	return pkix.AttributeTypeAndValue{Type: oid, Value: v}
}

func TestTLSClientAuthDN(t *testing.T) {
	ca := mtlsCA(t, "ca", nil)
	leaf := mtlsLeaf(t, ca, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}).cert
	dn := func(v string) tlsClientAuthName { return tlsClientAuthName{"subject_dn", v} }
	for _, tc := range []struct {
		dn   string
		want bool
	}{
		// RFC 4514 order: most significant (C) last.
		{"CN=leaf,O=Org,C=US", true},
		{"CN=leaf, O=Org, C=US", true},
		{"cn=leaf,o=Org,c=US", true},
		{"2.5.4.3=leaf,2.5.4.10=Org,2.5.4.6=US", true},
		// Certificate order is not RFC 4514 order.
		{"C=US,O=Org,CN=leaf", false},
		{"CN=leaf,C=US,O=Org", false},
		// Exact values.
		{"CN=Leaf,O=Org,C=US", false},
		{"CN=leaf,O=Org,C=U", false},
		// Extra or missing attributes.
		{"CN=leaf,OU=X,O=Org,C=US", false},
		{"CN=leaf+OU=X,O=Org,C=US", false},
		{"CN=leaf,O=Org", false},
		{"O=Org,C=US", false},
		// Multi-valued RDN where the certificate has two RDNs.
		{"CN=leaf,O=Org+C=US", false},
		// Malformed.
		{"CN=leaf,O=Org,C=US,", false},
		{"CN=leaf;O=Org;C=US", false},
		{"", false},
	} {
		if got := matchTLSClientAuth(leaf, dn(tc.dn)); got != tc.want {
			t.Errorf("%q: got %v, want %v", tc.dn, got, tc.want)
		}
	}

	// Escapes, multi-valued RDNs and attributes ToRDNSequence would drop.
	raw := mtlsRaw(t, pkix.RDNSequence{
		{atv(oidDC, "org")},
		{atv(oidDC, "example")},
		{atv(oidC, "US")},
		{atv(oidO, "Acme, Inc.")},
		{atv(oidOU, "café"), atv(oidUID, "u1")},
		{atv(oidCN, `a+b"c\d=e <x>;#`)},
		{atv(oidE, "alice@example.com")},
	})
	for _, tc := range []struct {
		dn   string
		want bool
	}{
		{`E=alice@example.com,CN=a\+b\"c\\d\=e \<x\>\;#,OU=caf\C3\A9+UID=u1,O=Acme\, Inc.,C=US,DC=example,DC=org`, true},
		{`emailAddress=alice@example.com,CN=a\2Bb\22c\5Cd=e \3Cx\3E\3B\23,UID=u1+OU=café,O=Acme\2C Inc.,C=US,DC=example,DC=org`, true},
		// Multi-valued RDN split into two.
		{`E=alice@example.com,CN=a\+b\"c\\d\=e \<x\>\;#,OU=café,UID=u1,O=Acme\, Inc.,C=US,DC=example,DC=org`, false},
		// Multi-valued RDN missing a member.
		{`E=alice@example.com,CN=a\+b\"c\\d\=e \<x\>\;#,OU=café,O=Acme\, Inc.,C=US,DC=example,DC=org`, false},
		// DCs reversed.
		{`E=alice@example.com,CN=a\+b\"c\\d\=e \<x\>\;#,OU=café+UID=u1,O=Acme\, Inc.,C=US,DC=org,DC=example`, false},
		// Unescaped comma splits the O.
		{`E=alice@example.com,CN=a\+b\"c\\d\=e \<x\>\;#,OU=café+UID=u1,O=Acme, Inc.,C=US,DC=example,DC=org`, false},
	} {
		if got := matchTLSClientAuth(raw, dn(tc.dn)); got != tc.want {
			t.Errorf("%q: got %v, want %v", tc.dn, got, tc.want)
		}
	}

	// Escaped leading and trailing spaces are kept.
	sp := mtlsRaw(t, pkix.RDNSequence{{atv(oidCN, " x ")}})
	if !matchTLSClientAuth(sp, dn(`CN=\ x\ `)) || matchTLSClientAuth(sp, dn(`CN= x `)) {
		t.Error("escaped spaces")
	}
}

func TestTLSClientAuthDNParse(t *testing.T) {
	good := []string{
		"CN=a", "cn=a,o=b", `CN=a\,b`, `CN=\#a`, `CN=a#`, "CN=a=b", `O=\C3\A9`,
		"CN=a+OU=b,O=c", "1.2.3=x", "SERIALNUMBER=1,STREET=s,ST=s,L=l,DC=d,UID=u,E=e@x",
	}
	for _, s := range good {
		if err := validTLSClientAuthName(tlsClientAuthName{"subject_dn", s}); err != nil {
			t.Errorf("%q: %v", s, err)
		}
	}
	bad := []string{
		"", "CN", "=a", "CN=", "CN=a,", "CN=a+", ",CN=a", "CN=a;O=b", `CN=a\`, `CN=a\zz`, `CN=a\4`,
		"XX=a", "CN=#0403", "CN=a<b", `CN=a"b`, "1=a", "1..2=a", "01.2=a", `O=\FF`, "C N=a",
	}
	for _, s := range bad {
		if err := validTLSClientAuthName(tlsClientAuthName{"subject_dn", s}); err == nil {
			t.Errorf("%q: accepted", s)
		}
	}
	rdns, err := parseDN("CN=leaf+UID=1,O=Org,C=US")
	if err != nil || len(rdns) != 3 || len(rdns[0]) != 2 || rdns[2][0].Value != "US" || !rdns[0][1].Type.Equal(oidUID) {
		t.Errorf("parseDN = %v, %v", rdns, err)
	}
	for _, n := range []tlsClientAuthName{
		{"san_dns", "a.example"}, {"san_uri", "https://a.example/x"}, {"san_ip", "::1"}, {"san_email", "a@b"},
	} {
		if err := validTLSClientAuthName(n); err != nil {
			t.Errorf("%v: %v", n, err)
		}
	}
	for _, n := range []tlsClientAuthName{
		{"san_dns", ""}, {"san_uri", "relative/path"}, {"san_ip", "300.1.1.1"}, {"san_email", "nobody"},
		{"san_email", "@b"}, {"bogus", "x"},
	} {
		if err := validTLSClientAuthName(n); err == nil {
			t.Errorf("%v: accepted", n)
		}
	}
}

func TestTLSClientAuthSAN(t *testing.T) {
	ca := mtlsCA(t, "ca", nil)
	leaf := mtlsLeaf(t, ca, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}).cert
	for _, tc := range []struct {
		n    tlsClientAuthName
		want bool
	}{
		{tlsClientAuthName{"san_dns", "client.example.com"}, true},
		{tlsClientAuthName{"san_dns", "CLIENT.Example.com"}, true},
		{tlsClientAuthName{"san_dns", "example.com"}, false},
		{tlsClientAuthName{"san_dns", "*.example.com"}, false},
		{tlsClientAuthName{"san_dns", "client.example.com."}, false},
		{tlsClientAuthName{"san_uri", "spiffe://example.org/client/1"}, true},
		{tlsClientAuthName{"san_uri", "spiffe://example.org/client/1/"}, false},
		{tlsClientAuthName{"san_uri", "SPIFFE://example.org/client/1"}, false},
		{tlsClientAuthName{"san_ip", "192.0.2.7"}, true},
		{tlsClientAuthName{"san_ip", "::ffff:192.0.2.7"}, true},
		{tlsClientAuthName{"san_ip", "2001:db8:0::1"}, true},
		{tlsClientAuthName{"san_ip", "192.0.2.8"}, false},
		{tlsClientAuthName{"san_ip", "not-an-ip"}, false},
		{tlsClientAuthName{"san_email", "alice@example.com"}, true},
		{tlsClientAuthName{"san_email", "alice@EXAMPLE.com"}, true},
		{tlsClientAuthName{"san_email", "Alice@example.com"}, false},
		{tlsClientAuthName{"san_email", "bob@example.com"}, false},
		{tlsClientAuthName{"san_email", "alice"}, false},
		// A name of one kind does not match a SAN of another.
		{tlsClientAuthName{"san_dns", "192.0.2.7"}, false},
		{tlsClientAuthName{"san_email", "client.example.com"}, false},
		{tlsClientAuthName{"bogus", "client.example.com"}, false},
		{tlsClientAuthName{"san_dns", ""}, false},
	} {
		if got := matchTLSClientAuth(leaf, tc.n); got != tc.want {
			t.Errorf("%v: got %v, want %v", tc.n, got, tc.want)
		}
	}
	if matchTLSClientAuth(nil, tlsClientAuthName{"san_dns", "client.example.com"}) {
		t.Error("nil certificate matched")
	}
}

func TestClientChain(t *testing.T) {
	now := time.Now()
	ca := mtlsCA(t, "ca", nil)
	otherCA := mtlsCA(t, "other", nil)
	inter := mtlsCA(t, "intermediate", ca)
	client := []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}

	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	otherPool := x509.NewCertPool()
	otherPool.AddCert(otherCA.cert)

	leaf := mtlsLeaf(t, ca, client).cert
	viaInter := mtlsLeaf(t, inter, client).cert
	selfSigned := mtlsLeaf(t, nil, client).cert
	serverOnly := mtlsLeaf(t, ca, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}).cert
	anyEKU := mtlsLeaf(t, ca, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}).cert
	expired := mtlsIssue(t, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "expired"},
		ExtKeyUsage: client,
		NotBefore:   now.Add(-48 * time.Hour),
		NotAfter:    now.Add(-24 * time.Hour),
	}, ca).cert

	for _, tc := range []struct {
		name  string
		certs []*x509.Certificate
		pool  *x509.CertPool
		ok    bool
	}{
		{"ok", []*x509.Certificate{leaf}, pool, true},
		{"ok, both EKUs", []*x509.Certificate{anyEKU}, pool, true},
		{"ok via intermediate", []*x509.Certificate{viaInter, inter.cert}, pool, true},
		{"intermediate missing", []*x509.Certificate{viaInter}, pool, false},
		{"wrong CA", []*x509.Certificate{leaf}, otherPool, false},
		{"self-signed", []*x509.Certificate{selfSigned}, pool, false},
		{"expired", []*x509.Certificate{expired}, pool, false},
		{"serverAuth only", []*x509.Certificate{serverOnly}, pool, false},
		{"no certs", nil, pool, false},
		{"no pool", []*x509.Certificate{leaf}, nil, false},
	} {
		err := verifyClientChain(tc.certs, tc.pool, now)
		if (err == nil) != tc.ok {
			t.Errorf("%s: err = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
	// The time given is the one checked.
	oldCA := mtlsIssue(t, &x509.Certificate{
		Subject: pkix.Name{CommonName: "old ca"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign, NotBefore: now.Add(-72 * time.Hour), NotAfter: now.Add(time.Hour),
	}, nil)
	oldPool := x509.NewCertPool()
	oldPool.AddCert(oldCA.cert)
	expired = mtlsIssue(t, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "expired"},
		ExtKeyUsage: client,
		NotBefore:   now.Add(-48 * time.Hour),
		NotAfter:    now.Add(-24 * time.Hour),
	}, oldCA).cert
	if err := verifyClientChain([]*x509.Certificate{expired}, oldPool, now); err == nil {
		t.Error("expired leaf accepted")
	}
	if err := verifyClientChain([]*x509.Certificate{expired}, oldPool, now.Add(-36*time.Hour)); err != nil {
		t.Errorf("expired leaf at a time it was valid: %v", err)
	}
	if err := verifyClientChain([]*x509.Certificate{leaf}, pool, now.Add(2*time.Hour)); err == nil {
		t.Error("leaf accepted after NotAfter")
	}
}
