package identity

import (
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/cairnmesh/cairn/internal/pki"
	"github.com/cairnmesh/cairn/internal/spiffe"
)

// verifyChain turns the CA's answer into the SVID ztunnel presents for id.
// The CA is trusted to sign, not to be right: a leaf for another identity
// would let this node's pods impersonate someone else (or be refused by
// every peer), and a chain to a root that peers do not trust would make
// every handshake fail. So the answer must hold a leaf for exactly id,
// for key's public key, that chains to the current trust bundle at now.
//
// The SVID carries the leaf and the intermediates of the verified chain,
// not the root: peers have the root, and sending it is wasted bytes in
// every handshake.
func verifyChain(pemChain []string, id spiffe.Identity, key crypto.Signer, bundle x509bundle.Source, now time.Time) (*x509svid.SVID, error) {
	if len(pemChain) == 0 {
		return nil, errors.New("CA returned an empty certificate chain")
	}
	certs, err := pki.ParseCertsPEM([]byte(strings.Join(pemChain, "\n")))
	if err != nil {
		return nil, fmt.Errorf("CA returned an unreadable chain: %w", err)
	}
	leaf := certs[0]
	got, err := spiffe.FromCert(leaf)
	if err != nil {
		return nil, fmt.Errorf("CA returned a leaf without a workload identity: %w", err)
	}
	if got != id {
		return nil, fmt.Errorf("CA returned a certificate for %s, requested %s", got, id)
	}
	if n := len(leaf.DNSNames) + len(leaf.IPAddresses) + len(leaf.EmailAddresses); n > 0 {
		return nil, fmt.Errorf("CA returned a certificate for %s with %d DNS, IP or e-mail names besides the SPIFFE ID", id, n)
	}
	pub, ok := leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(key.Public()) {
		return nil, fmt.Errorf("CA returned a certificate for %s whose public key is not the one of the CSR", id)
	}
	_, chains, err := x509svid.Verify(certs, bundle, x509svid.WithTime(now))
	if err != nil {
		return nil, fmt.Errorf("CA returned a certificate for %s that does not verify against the trust bundle: %w", id, err)
	}
	chain := chains[0]
	svid, err := pki.NewSVID(chain[:len(chain)-1], key)
	if err != nil {
		return nil, fmt.Errorf("CA returned an unusable certificate for %s: %w", id, err)
	}
	return svid, nil
}

// stillTrusted reports whether svid chains to bundle at now; false after
// a root rotation removed the root it was issued under.
func stillTrusted(svid *x509svid.SVID, bundle x509bundle.Source, now time.Time) bool {
	_, _, err := x509svid.Verify(svid.Certificates, bundle, x509svid.WithTime(now))
	return err == nil
}

// chainsTo reports whether svid chains to root at now.
func chainsTo(svid *x509svid.SVID, root *x509.Certificate, now time.Time) bool {
	_, _, err := x509svid.Verify(svid.Certificates, x509bundle.FromX509Authorities(svid.ID.TrustDomain(), []*x509.Certificate{root}), x509svid.WithTime(now))
	return err == nil
}

// leafOf returns the leaf of an SVID.
func leafOf(svid *x509svid.SVID) *x509.Certificate { return svid.Certificates[0] }
