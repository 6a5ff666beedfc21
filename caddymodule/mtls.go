package caddymodule

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// tlsClientAuthName is the certificate name a tls_client_auth client
// registered (RFC 8705 §2.1.2). Kind is subject_dn, san_dns, san_uri,
// san_ip or san_email.
type tlsClientAuthName struct{ Kind, Value string }

// dnAttributeTypes are the RFC 4514 §3 names (and a few common others),
// upper case.
var dnAttributeTypes = map[string]asn1.ObjectIdentifier{
	"CN":           {2, 5, 4, 3},
	"SERIALNUMBER": {2, 5, 4, 5},
	"C":            {2, 5, 4, 6},
	"L":            {2, 5, 4, 7},
	"ST":           {2, 5, 4, 8},
	"STREET":       {2, 5, 4, 9},
	"O":            {2, 5, 4, 10},
	"OU":           {2, 5, 4, 11},
	"DC":           {0, 9, 2342, 19200300, 100, 1, 25},
	"UID":          {0, 9, 2342, 19200300, 100, 1, 1},
	"E":            {1, 2, 840, 113549, 1, 9, 1},
	"EMAILADDRESS": {1, 2, 840, 113549, 1, 9, 1},
}

// dnAttr is one attribute of a configured DN.
type dnAttr struct {
	Type  asn1.ObjectIdentifier
	Value string
}

// parseDNType reads an attribute type: a known name (any case) or a
// dotted OID.
func parseDNType(s string) (asn1.ObjectIdentifier, error) {
	if oid, ok := dnAttributeTypes[strings.ToUpper(s)]; ok {
		return oid, nil
	}
	if s == "" {
		return nil, errors.New("empty attribute type")
	}
	if s[0] >= '0' && s[0] <= '9' {
		parts := strings.Split(s, ".")
		if len(parts) < 2 {
			return nil, fmt.Errorf("attribute type %q is not a dotted OID", s)
		}
		oid := make(asn1.ObjectIdentifier, 0, len(parts))
		for _, p := range parts {
			if p == "" || (len(p) > 1 && p[0] == '0') || strings.TrimLeft(p, "0123456789") != "" {
				return nil, fmt.Errorf("attribute type %q is not a dotted OID", s)
			}
			n, err := strconv.Atoi(p)
			if err != nil {
				return nil, fmt.Errorf("attribute type %q is not a dotted OID", s)
			}
			oid = append(oid, n)
		}
		return oid, nil
	}
	return nil, fmt.Errorf("unknown attribute type %q", s)
}

func unhex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// parseDN parses an RFC 4514 string into RDNs, in the string's order (most
// significant LAST). Escapes: \ before one of ` "#+,;<=>\` and \XX hex;
// multi-valued RDNs with +. Unescaped spaces around types and values are
// ignored. The #hex value form and empty values are refused.
func parseDN(s string) ([][]dnAttr, error) {
	var rdns [][]dnAttr
	var cur []dnAttr
	i := 0
	for {
		// attribute type
		eq := strings.IndexByte(s[i:], '=')
		if eq < 0 {
			return nil, errors.New("attribute without '='")
		}
		typ := strings.TrimSpace(s[i : i+eq])
		if strings.ContainsAny(typ, `,+\"`) {
			return nil, fmt.Errorf("malformed attribute type %q", typ)
		}
		oid, err := parseDNType(typ)
		if err != nil {
			return nil, err
		}
		i += eq + 1
		// value
		for i < len(s) && s[i] == ' ' {
			i++
		}
		if i < len(s) && s[i] == '#' {
			return nil, errors.New("the #hex value form is not supported")
		}
		var buf []byte
		keep := 0 // length of buf without unescaped trailing spaces
		var sep byte
	value:
		for ; i < len(s); i++ {
			c := s[i]
			switch c {
			case '\\':
				if i+1 >= len(s) {
					return nil, errors.New("dangling escape")
				}
				n := s[i+1]
				if strings.IndexByte(` "#+,;<=>\`, n) >= 0 {
					buf = append(buf, n)
					i++
				} else {
					h, ok1 := unhex(n)
					var l byte
					ok2 := false
					if i+2 < len(s) {
						l, ok2 = unhex(s[i+2])
					}
					if !ok1 || !ok2 {
						return nil, errors.New("invalid escape")
					}
					buf = append(buf, h<<4|l)
					i += 2
				}
				keep = len(buf)
			case ',', '+':
				sep = c
				i++
				break value
			case '"', ';', '<', '>', 0:
				return nil, fmt.Errorf("unescaped %q in a value", c)
			default:
				buf = append(buf, c)
				if c != ' ' {
					keep = len(buf)
				}
			}
		}
		v := buf[:keep]
		if len(v) == 0 {
			return nil, errors.New("empty value")
		}
		if !utf8.Valid(v) {
			return nil, errors.New("value is not UTF-8")
		}
		cur = append(cur, dnAttr{Type: oid, Value: string(v)})
		switch sep {
		case '+':
			continue
		case ',':
			rdns = append(rdns, cur)
			cur = nil
			continue
		}
		rdns = append(rdns, cur)
		return rdns, nil
	}
}

// certSubjectRDNs is the subject as encoded in the certificate (order and
// multi-valued RDNs kept); pkix.Name.ToRDNSequence would reorder it and
// drop attributes such as DC, UID and emailAddress of a parsed
// certificate.
func certSubjectRDNs(cert *x509.Certificate) (pkix.RDNSequence, bool) {
	if len(cert.RawSubject) == 0 {
		return cert.Subject.ToRDNSequence(), true
	}
	var seq pkix.RDNSequence
	rest, err := asn1.Unmarshal(cert.RawSubject, &seq)
	if err != nil || len(rest) != 0 {
		return nil, false
	}
	return seq, true
}

// matchDN compares a configured DN (RFC 4514 order) with the subject:
// RDN by RDN in reverse, attributes by OID and exact string value, the
// attributes of a multi-valued RDN in any order. Extra or missing
// attributes do not match.
func matchDN(cert *x509.Certificate, want [][]dnAttr) bool {
	seq, ok := certSubjectRDNs(cert)
	if !ok || len(seq) != len(want) || len(want) == 0 {
		return false
	}
	for i, rdn := range seq {
		w := want[len(want)-1-i]
		if len(rdn) != len(w) {
			return false
		}
		used := make([]bool, len(rdn))
		for _, a := range w {
			found := false
			for j, atv := range rdn {
				if used[j] || !atv.Type.Equal(a.Type) {
					continue
				}
				if v, ok := atv.Value.(string); ok && v == a.Value {
					used[j], found = true, true
					break
				}
			}
			if !found {
				return false
			}
		}
	}
	return true
}

// splitEmail splits at the last '@'; both parts non-empty.
func splitEmail(s string) (local, domain string, ok bool) {
	at := strings.LastIndexByte(s, '@')
	if at <= 0 || at == len(s)-1 {
		return "", "", false
	}
	return s[:at], s[at+1:], true
}

// validTLSClientAuthName checks a configured name, for config load.
func validTLSClientAuthName(n tlsClientAuthName) error {
	if n.Value == "" {
		return fmt.Errorf("tls_client_auth %s: empty", n.Kind)
	}
	switch n.Kind {
	case "subject_dn":
		if _, err := parseDN(n.Value); err != nil {
			return fmt.Errorf("tls_client_auth_subject_dn %q: %w", n.Value, err)
		}
	case "san_dns":
		if strings.ContainsAny(n.Value, " \t/@") {
			return fmt.Errorf("tls_client_auth_san_dns %q: not a DNS name", n.Value)
		}
	case "san_uri":
		u, err := url.Parse(n.Value)
		if err != nil || u.Scheme == "" {
			return fmt.Errorf("tls_client_auth_san_uri %q: not an absolute URI", n.Value)
		}
	case "san_ip":
		if net.ParseIP(n.Value) == nil {
			return fmt.Errorf("tls_client_auth_san_ip %q: not an IP address", n.Value)
		}
	case "san_email":
		if _, _, ok := splitEmail(n.Value); !ok {
			return fmt.Errorf("tls_client_auth_san_email %q: not an email address", n.Value)
		}
	default:
		return fmt.Errorf("unknown tls_client_auth name kind %q", n.Kind)
	}
	return nil
}

// matchTLSClientAuth reports whether the certificate carries the name
// (RFC 8705 §2.1.2). A malformed configured name never matches.
func matchTLSClientAuth(cert *x509.Certificate, n tlsClientAuthName) bool {
	if cert == nil || n.Value == "" {
		return false
	}
	switch n.Kind {
	case "subject_dn":
		want, err := parseDN(n.Value)
		return err == nil && matchDN(cert, want)
	case "san_dns":
		for _, d := range cert.DNSNames {
			if strings.EqualFold(d, n.Value) {
				return true
			}
		}
	case "san_uri":
		for _, u := range cert.URIs {
			if u != nil && u.String() == n.Value {
				return true
			}
		}
	case "san_ip":
		ip := net.ParseIP(n.Value)
		if ip == nil {
			return false
		}
		for _, c := range cert.IPAddresses {
			if c.Equal(ip) {
				return true
			}
		}
	case "san_email":
		wl, wd, ok := splitEmail(n.Value)
		if !ok {
			return false
		}
		for _, e := range cert.EmailAddresses {
			if l, d, ok := splitEmail(e); ok && l == wl && strings.EqualFold(d, wd) {
				return true
			}
		}
	}
	return false
}

// verifyClientChain validates the presented chain (leaf first, then
// intermediates) against the trusted CAs, for client authentication
// (RFC 8705 §2.1).
func verifyClientChain(certs []*x509.Certificate, pool *x509.CertPool, now time.Time) error {
	if len(certs) == 0 || certs[0] == nil {
		return errors.New("no client certificate")
	}
	if pool == nil {
		return errors.New("no trusted client CAs")
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		if c != nil {
			inter.AddCert(c)
		}
	}
	_, err := certs[0].Verify(x509.VerifyOptions{
		Roots:         pool,
		Intermediates: inter,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	return err
}
