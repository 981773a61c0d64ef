package identity

import (
	"context"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	cav1 "github.com/cairnmesh/cairn/apis/ca/v1"
	"github.com/cairnmesh/cairn/internal/cpconn"
	"github.com/cairnmesh/cairn/internal/pki"
	"github.com/cairnmesh/cairn/internal/spiffe"
)

// fetch obtains one new certificate for id: a fresh key (a renewal never
// reuses the old one, so a key that leaked stops being useful at the next
// rotation), a CSR naming id, CreateCertificate with ztunnel's current
// token, and the answer verified. On failure it says which step failed.
func (m *Manager) fetch(ctx context.Context, client cav1.CertificateServiceClient, id spiffe.Identity) (*x509svid.SVID, Reason, error) {
	// The connection sends the token (once per call); reading it here
	// first tells a missing token apart from the CA's refusal.
	if _, err := cpconn.ReadToken(m.cfg.TokenFile); err != nil {
		return nil, ReasonToken, err
	}
	key, err := pki.GenerateKey()
	if err != nil {
		return nil, ReasonRequest, err
	}
	csr, err := pki.NewCSR(key, id)
	if err != nil {
		return nil, ReasonRequest, err
	}

	// Bound what one node asks of istiod at once: after a restart, every
	// identity of the node wants its certificate at the same moment.
	select {
	case m.inFlight <- struct{}{}:
	case <-ctx.Done():
		return nil, ReasonCA, ctx.Err()
	}
	defer func() { <-m.inFlight }()

	ctx, cancel := context.WithTimeout(ctx, m.cfg.RequestTimeout)
	defer cancel()
	resp, err := client.CreateCertificate(ctx, &cav1.CreateCertificateRequest{
		Csr:             string(csr),
		ValiditySeconds: int64(m.cfg.TTL.Seconds()),
	})
	if err != nil {
		return nil, ReasonCA, fmt.Errorf("CreateCertificate: %w", err)
	}
	svid, err := verifyChain(resp.GetCertChain(), id, key, m.cfg.Bundle, m.clock.Now())
	if err != nil {
		return nil, ReasonInvalid, err
	}
	return svid, "", nil
}
