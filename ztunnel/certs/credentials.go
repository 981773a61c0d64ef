package certs

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc/credentials"
)

// caTLS is the client TLS configuration of the CA connection: istiod must
// present a certificate for serverName that chains to the trust bundle as
// it is at the time of the handshake. crypto/tls only verifies against a
// fixed RootCAs pool, which would pin the roots ztunnel started with and
// break the first reconnect after a root rotation; so the chain is checked
// in VerifyConnection instead, with the same checks crypto/tls makes
// (chain, validity, server name, serverAuth usage).
func caTLS(bundle *Bundle, serverName string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		ServerName: serverName,
		// Not insecure: VerifyConnection below does the verification that
		// crypto/tls would, against the current roots.
		InsecureSkipVerify: true, //nolint:gosec // verified in VerifyConnection
		VerifyConnection: func(cs tls.ConnectionState) error {
			return verifyServer(cs.PeerCertificates, bundle.pool(), serverName, time.Now())
		},
	}
}

// verifyServer checks a server's chain (leaf first) against roots for
// name. The wall clock is right here even in tests with a fake clock: this
// is a real handshake.
func verifyServer(chain []*x509.Certificate, roots *x509.CertPool, name string, now time.Time) error {
	if len(chain) == 0 {
		return errors.New("CA server sent no certificate")
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
		return fmt.Errorf("CA server certificate: %w", err)
	}
	return nil
}

// readToken reads ztunnel's projected service account token. It is read
// again for every request because the kubelet rotates projected tokens in
// place: a token read once at start expires within hours.
func readToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("reading token: %w", err)
	}
	token := strings.TrimSpace(string(b))
	if token == "" {
		return "", fmt.Errorf("token file %s is empty", path)
	}
	return token, nil
}

// bearer sends one token as "authorization: Bearer <token>" on one call.
type bearer string

var _ credentials.PerRPCCredentials = bearer("")

// GetRequestMetadata implements credentials.PerRPCCredentials.
func (t bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(t)}, nil
}

// RequireTransportSecurity implements credentials.PerRPCCredentials: gRPC
// refuses to send a token over a connection without TLS.
func (bearer) RequireTransportSecurity() bool { return true }
