package kubeserver

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"time"
)

// KeyAlgorithm selects the kind of private key generated for the CA, the
// certificates it issues and the service-account signing key.
type KeyAlgorithm int

const (
	// ECDSA generates P-256 keys. Generation takes well under a millisecond,
	// and Kubernetes accepts ES256 service-account signing keys.
	ECDSA KeyAlgorithm = iota
	// RSA generates 2048-bit keys, as kubeadm does by default. Slower
	// (tens of milliseconds per key) but closest to most real clusters.
	RSA
)

func (a KeyAlgorithm) String() string {
	switch a {
	case ECDSA:
		return "ECDSA"
	case RSA:
		return "RSA"
	default:
		return fmt.Sprintf("KeyAlgorithm(%d)", int(a))
	}
}

// certValidity is how long generated certificates are valid. Test clusters
// live for seconds and labs for hours; a year leaves room for both.
const certValidity = 365 * 24 * time.Hour

// KeyPair is a PEM-encoded certificate and its PEM-encoded private key
// (PKCS#8).
type KeyPair struct {
	CertPEM []byte
	KeyPEM  []byte
}

// CA is a self-signed certificate authority that issues the API server's
// serving certificate and client certificates for users such as the admin.
type CA struct {
	Cert *x509.Certificate
	// CertPEM is Cert, PEM-encoded: what clients put in their trust store.
	CertPEM []byte

	key crypto.Signer
	alg KeyAlgorithm
}

// NewCA generates a self-signed CA with the given common name.
func NewCA(commonName string, alg KeyAlgorithm) (*CA, error) {
	key, err := GenerateKey(alg)
	if err != nil {
		return nil, err
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName},
		NotBefore:             now.Add(-time.Hour), // tolerate small clock skew
		NotAfter:              now.Add(certValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("creating CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parsing CA certificate: %w", err)
	}
	return &CA{Cert: cert, CertPEM: encodeCert(der), key: key, alg: alg}, nil
}

// KeyPEM returns the CA's private key, PEM-encoded (PKCS#8). The lab needs it
// to run components that sign with the cluster CA.
func (ca *CA) KeyPEM() ([]byte, error) { return encodeKey(ca.key) }

// IssueServing issues a TLS server certificate for the given IP addresses
// and DNS names. The first DNS name (or, without one, the first IP) becomes
// the common name.
func (ca *CA) IssueServing(ips []net.IP, dnsNames []string) (KeyPair, error) {
	cn := ""
	switch {
	case len(dnsNames) > 0:
		cn = dnsNames[0]
	case len(ips) > 0:
		cn = ips[0].String()
	default:
		return KeyPair{}, fmt.Errorf("serving certificate needs at least one IP or DNS name")
	}
	return ca.issue(&x509.Certificate{
		Subject:     pkix.Name{CommonName: cn},
		IPAddresses: ips,
		DNSNames:    dnsNames,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
}

// IssueClient issues a TLS client certificate that the API server
// authenticates as user with the given groups (CN and O, the
// Kubernetes x509 convention). Group "system:masters" bypasses authorization.
func (ca *CA) IssueClient(user string, groups []string) (KeyPair, error) {
	if user == "" {
		return KeyPair{}, fmt.Errorf("client certificate needs a user name")
	}
	return ca.issue(&x509.Certificate{
		Subject:     pkix.Name{CommonName: user, Organization: groups},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
}

func (ca *CA) issue(tmpl *x509.Certificate) (KeyPair, error) {
	key, err := GenerateKey(ca.alg)
	if err != nil {
		return KeyPair{}, err
	}
	serial, err := randomSerial()
	if err != nil {
		return KeyPair{}, err
	}
	now := time.Now()
	tmpl.SerialNumber = serial
	tmpl.NotBefore = now.Add(-time.Hour)
	tmpl.NotAfter = now.Add(certValidity)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	if _, isRSA := key.(*rsa.PrivateKey); isRSA {
		tmpl.KeyUsage |= x509.KeyUsageKeyEncipherment
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.key)
	if err != nil {
		return KeyPair{}, fmt.Errorf("creating certificate for %q: %w", tmpl.Subject.CommonName, err)
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return KeyPair{}, err
	}
	return KeyPair{CertPEM: encodeCert(der), KeyPEM: keyPEM}, nil
}

// GenerateKey returns a new private key of the given algorithm.
func GenerateKey(alg KeyAlgorithm) (crypto.Signer, error) {
	var (
		key crypto.Signer
		err error
	)
	switch alg {
	case ECDSA:
		key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case RSA:
		key, err = rsa.GenerateKey(rand.Reader, 2048)
	default:
		return nil, fmt.Errorf("unknown key algorithm %v", alg)
	}
	if err != nil {
		return nil, fmt.Errorf("generating %v key: %w", alg, err)
	}
	return key, nil
}

// EncodePublicKey returns the PKIX ("PUBLIC KEY") PEM encoding of key's
// public half, the format of --service-account-key-file.
func EncodePublicKey(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return nil, fmt.Errorf("encoding public key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}

func encodeKey(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encoding private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func encodeCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func randomSerial() (*big.Int, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("generating serial number: %w", err)
	}
	return serial, nil
}
