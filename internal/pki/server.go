package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"time"
)

// ServerClientConfig is the client TLS configuration of a connection to a
// server that has a DNS name and a certificate from the mesh's CA, such as
// istiod-lite's xDS and CA port: TLS 1.3, and the server must present a
// certificate for serverName that chains to roots() as they are at the
// moment of the handshake.
//
// crypto/tls verifies only against a fixed RootCAs pool, which would pin
// the roots of the moment the configuration was made and refuse the first
// server certificate from a root added since (a CA root rotation); so the
// chain is verified in VerifyConnection instead, with the checks crypto/tls
// makes (chain, validity, server name, serverAuth usage). roots is called
// once per handshake and must not return nil.
func ServerClientConfig(serverName string, roots func() *x509.CertPool) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		ServerName: serverName,
		// Not insecure: VerifyConnection below does the verification that
		// crypto/tls would, against the current roots.
		InsecureSkipVerify: true, //nolint:gosec // verified in VerifyConnection
		VerifyConnection: func(cs tls.ConnectionState) error {
			return VerifyServer(cs.PeerCertificates, roots(), serverName, time.Now())
		},
	}
}

// VerifyServer checks a server's chain (leaf first) against roots for
// name at now.
func VerifyServer(chain []*x509.Certificate, roots *x509.CertPool, name string, now time.Time) error {
	if len(chain) == 0 {
		return errors.New("the server sent no certificate")
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	_, err := chain[0].Verify(x509.VerifyOptions{
		DNSName:       name,
		Roots:         roots,
		Intermediates: inter,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	if err != nil {
		return fmt.Errorf("server certificate for %s: %w", name, err)
	}
	return nil
}
