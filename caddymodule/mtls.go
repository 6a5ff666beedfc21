package caddymodule

import (
	"crypto/x509"
	"time"
)

type tlsClientAuthName struct{ Kind, Value string }

func matchTLSClientAuth(cert *x509.Certificate, n tlsClientAuthName) bool { return false }
func verifyClientChain(certs []*x509.Certificate, pool *x509.CertPool, now time.Time) error {
	return errPlaceholder
}
