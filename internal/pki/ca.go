package pki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/cairnmesh/cairn/internal/spiffe"
)

// Defaults for leaf and root certificates.
const (
	DefaultLeafTTL   = 24 * time.Hour
	DefaultClockSkew = 5 * time.Minute
	DefaultRootTTL   = 10 * 365 * 24 * time.Hour
)

// CA signs leaf certificates with Key. Cert is the signing certificate and
// Chain the certificates above it, ending with the root; Chain is empty
// when Cert is itself the root.
type CA struct {
	Cert  *x509.Certificate
	Key   crypto.Signer
	Chain []*x509.Certificate
}

// NewRoot creates a self-signed root CA for trust domain td, valid for ttl
// (DefaultRootTTL if zero), with the trust domain's SPIFFE ID as URI SAN.
func NewRoot(td string, ttl time.Duration) (*CA, error) {
	tdid, err := spiffeid.TrustDomainFromString(td)
	if err != nil {
		return nil, fmt.Errorf("trust domain %q: %w", td, err)
	}
	if ttl <= 0 {
		ttl = DefaultRootTTL
	}
	key, err := GenerateKey()
	if err != nil {
		return nil, err
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"Cairn"}, CommonName: "Cairn root CA " + now.UTC().Format("2006-01-02T15:04:05Z")},
		NotBefore:             now.Add(-DefaultClockSkew),
		NotAfter:              now.Add(ttl),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		URIs:                  []*url.URL{tdid.ID().URL()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("creating root certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parsing root certificate: %w", err)
	}
	return &CA{Cert: cert, Key: key}, nil
}

// LoadCA builds a CA from PEM: certPEM holds the signing certificate
// (optionally followed by intermediates), keyPEM its key, and bundlePEM
// (may be empty) more certificates: intermediates and trusted roots. The
// signing certificate must be a CA allowed to sign certificates, match the
// key, and chain to a self-signed root in certPEM or bundlePEM (or be one).
// LoadCA also returns the roots: every self-signed certificate given, those
// of bundlePEM first.
func LoadCA(certPEM, keyPEM, bundlePEM []byte) (*CA, []*x509.Certificate, error) {
	certs, err := ParseCertsPEM(certPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("CA certificate: %w", err)
	}
	key, err := ParseKeyPEM(keyPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("CA key: %w", err)
	}
	signer := certs[0]
	if len(bundlePEM) > 0 {
		more, err := ParseCertsPEM(bundlePEM)
		if err != nil {
			return nil, nil, fmt.Errorf("CA bundle: %w", err)
		}
		// The bundle's order first: the roots come out in the order the
		// user listed them.
		certs = append(more, certs...)
	}
	if !signer.IsCA || signer.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, nil, errors.New("CA certificate is not a CA allowed to sign certificates (needs basicConstraints CA:TRUE and keyCertSign)")
	}
	if !publicKeysEqual(signer.PublicKey, key.Public()) {
		return nil, nil, errors.New("CA key does not match the CA certificate")
	}
	roots := x509.NewCertPool()
	inter := x509.NewCertPool()
	var rootList []*x509.Certificate
	seen := map[string]bool{}
	for _, c := range certs {
		if seen[string(c.Raw)] {
			continue
		}
		seen[string(c.Raw)] = true
		if isSelfSigned(c) {
			roots.AddCert(c)
			rootList = append(rootList, c)
		} else if c != signer {
			inter.AddCert(c)
		}
	}
	if len(rootList) == 0 {
		return nil, nil, errors.New("no self-signed root among the CA certificates (add it to the bundle)")
	}
	chains, err := signer.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	if err != nil {
		return nil, nil, fmt.Errorf("CA certificate does not chain to a given root: %w", err)
	}
	return &CA{Cert: signer, Key: key, Chain: chains[0][1:]}, rootList, nil
}

// Root returns the root of the CA's chain.
func (ca *CA) Root() *x509.Certificate {
	if len(ca.Chain) == 0 {
		return ca.Cert
	}
	return ca.Chain[len(ca.Chain)-1]
}

// LeafOptions tune Sign. Zero values mean the defaults.
type LeafOptions struct {
	TTL       time.Duration // DefaultLeafTTL
	ClockSkew time.Duration // how far NotBefore is backdated; DefaultClockSkew
	Now       func() time.Time
	// DNSNames are added as DNS SANs next to the SPIFFE ID, for servers
	// reached by name (istiod's own certificate). The CA service never sets
	// them: workload certificates carry the SPIFFE ID only.
	DNSNames []string
}

// Sign issues a leaf certificate for id with public key pub: URI SAN = the
// SPIFFE ID and nothing else (unless opts.DNSNames), not a CA, digitalSignature (plus
// keyEncipherment for RSA keys), serverAuth and clientAuth. NotAfter never
// passes the signing certificate's. It returns the leaf; the chain to send
// is the leaf, ca.Cert and ca.Chain.
func (ca *CA) Sign(pub crypto.PublicKey, id spiffe.Identity, opts LeafOptions) (*x509.Certificate, error) {
	sid, err := id.ID()
	if err != nil {
		return nil, err
	}
	ku := x509.KeyUsageDigitalSignature
	switch pub.(type) {
	case *ecdsa.PublicKey:
	case *rsa.PublicKey:
		ku |= x509.KeyUsageKeyEncipherment
	default:
		return nil, fmt.Errorf("unsupported public key type %T", pub)
	}
	ttl, skew, now := opts.TTL, opts.ClockSkew, time.Now
	if ttl <= 0 {
		ttl = DefaultLeafTTL
	}
	if skew <= 0 {
		skew = DefaultClockSkew
	}
	if opts.Now != nil {
		now = opts.Now
	}
	t := now()
	notBefore, notAfter := t.Add(-skew), t.Add(ttl)
	if notBefore.Before(ca.Cert.NotBefore) {
		notBefore = ca.Cert.NotBefore
	}
	if notAfter.After(ca.Cert.NotAfter) {
		notAfter = ca.Cert.NotAfter
	}
	if !notAfter.After(t) {
		return nil, errors.New("CA certificate has expired")
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              ku,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  false,
		URIs:                  []*url.URL{sid.URL()},
		DNSNames:              opts.DNSNames,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("signing certificate for %s: %w", id, err)
	}
	return x509.ParseCertificate(der)
}

// newSerial returns a random positive 128-bit serial number.
func newSerial() (*big.Int, error) {
	s, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("generating serial number: %w", err)
	}
	return s.Add(s, big.NewInt(1)), nil
}

func isSelfSigned(c *x509.Certificate) bool {
	return bytes.Equal(c.RawIssuer, c.RawSubject) && c.CheckSignatureFrom(c) == nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	ea, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ea.Equal(b)
}
