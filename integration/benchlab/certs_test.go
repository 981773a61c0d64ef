package benchlab

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"time"
)

// The names the haproxy pair's certificates carry; the client side
// (haproxy-1) checks the server's (verifyhost), as ztunnel checks its
// peer's SPIFFE identity.
const (
	haproxyServerName = "haproxy-2.benchlab"
	haproxyClientName = "haproxy-1.benchlab"
)

// tlsFiles are the PEM files of the haproxy pair: the CA, and the server's
// (haproxy-2) and client's (haproxy-1) certificate each followed by its
// key, as haproxy's crt option reads them. Keys are ECDSA P-256, as
// ztunnel's workload certificates are (internal/pki).
type tlsFiles struct{ ca, server, client []byte }

func newTLSFiles() (tlsFiles, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tlsFiles{}, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "benchlab haproxy CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return tlsFiles{}, fmt.Errorf("creating the CA: %w", err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return tlsFiles{}, err
	}
	leaf := func(serial int64, name string, usage x509.ExtKeyUsage) ([]byte, error) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial),
			Subject:      pkix.Name{CommonName: name},
			DNSNames:     []string{name},
			NotBefore:    now.Add(-time.Hour),
			NotAfter:     now.Add(24 * time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{usage},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			return nil, fmt.Errorf("signing %s: %w", name, err)
		}
		keyDER, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return nil, err
		}
		return append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
			pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})...), nil
	}
	server, err := leaf(2, haproxyServerName, x509.ExtKeyUsageServerAuth)
	if err != nil {
		return tlsFiles{}, err
	}
	client, err := leaf(3, haproxyClientName, x509.ExtKeyUsageClientAuth)
	if err != nil {
		return tlsFiles{}, err
	}
	return tlsFiles{
		ca:     pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		server: server,
		client: client,
	}, nil
}
