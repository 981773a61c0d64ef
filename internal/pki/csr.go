package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"

	"github.com/cairnmesh/cairn/internal/spiffe"
)

// NewCSR returns a PEM PKCS#10 request for id, signed by key, whose only
// subject alternative name is the SPIFFE URI of id.
func NewCSR(key crypto.Signer, id spiffe.Identity) ([]byte, error) {
	sid, err := id.ID()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.CertificateRequest{URIs: []*url.URL{sid.URL()}}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		return nil, fmt.Errorf("creating CSR for %s: %w", id, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemCSR, Bytes: der}), nil
}

// ParseCSR parses a PEM PKCS#10 request and checks its signature.
func ParseCSR(data []byte) (*x509.CertificateRequest, error) {
	block, rest := pem.Decode(data)
	if block == nil {
		return nil, errors.New("CSR: no PEM block")
	}
	if block.Type != pemCSR && block.Type != "NEW CERTIFICATE REQUEST" {
		return nil, fmt.Errorf("CSR: PEM block of type %q, want %q", block.Type, pemCSR)
	}
	if b, _ := pem.Decode(rest); b != nil {
		return nil, errors.New("CSR: more than one PEM block")
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("CSR: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("CSR: bad signature: %w", err)
	}
	return csr, nil
}

// CSRIdentity returns the one identity a CSR asks for: it must carry
// exactly one URI SAN, a workload SPIFFE ID, and no DNS, IP or e-mail SANs.
func CSRIdentity(csr *x509.CertificateRequest) (spiffe.Identity, error) {
	if n := len(csr.DNSNames) + len(csr.IPAddresses) + len(csr.EmailAddresses); n > 0 {
		return spiffe.Identity{}, fmt.Errorf("CSR has %d DNS, IP or e-mail SANs; only one SPIFFE URI SAN is allowed", n)
	}
	if n := len(csr.URIs); n != 1 {
		return spiffe.Identity{}, fmt.Errorf("CSR has %d URI SANs, want exactly one SPIFFE ID", n)
	}
	return spiffe.Parse(csr.URIs[0].String())
}

// CheckLeafKey accepts the public keys the CA signs: ECDSA P-256 or P-384,
// or RSA of at least 2048 bits.
func CheckLeafKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return fmt.Errorf("ECDSA curve %s not accepted (use P-256)", k.Curve.Params().Name)
		}
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return fmt.Errorf("RSA key of %d bits is too short (minimum 2048)", k.N.BitLen())
		}
	default:
		return fmt.Errorf("public key type %T not accepted (use ECDSA P-256)", pub)
	}
	return nil
}
