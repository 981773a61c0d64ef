package pki

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/cairnmesh/cairn/internal/spiffe"
)

// NewSVID checks that chain (leaf first) and key make an X.509-SVID (the
// leaf has one SPIFFE URI SAN, is not a CA, matches the key) and returns it.
func NewSVID(chain []*x509.Certificate, key crypto.Signer) (*x509svid.SVID, error) {
	if len(chain) == 0 {
		return nil, errors.New("empty certificate chain")
	}
	var raw []byte
	for _, c := range chain {
		raw = append(raw, c.Raw...)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encoding key: %w", err)
	}
	svid, err := x509svid.ParseRaw(raw, keyDER)
	if err != nil {
		return nil, fmt.Errorf("building SVID: %w", err)
	}
	return svid, nil
}

// Source is an x509svid.Source whose SVID can be replaced at any time (for
// rotation): the next handshake uses the new one. Its zero value has no
// SVID and fails handshakes until Set is called.
type Source struct{ p atomic.Pointer[x509svid.SVID] }

var _ x509svid.Source = (*Source)(nil)

// Set replaces the SVID.
func (s *Source) Set(svid *x509svid.SVID) { s.p.Store(svid) }

// GetX509SVID implements x509svid.Source.
func (s *Source) GetX509SVID() (*x509svid.SVID, error) {
	if v := s.p.Load(); v != nil {
		return v, nil
	}
	return nil, errors.New("no certificate yet")
}

// NewBundle returns the trust bundle of trust domain td with the given roots.
func NewBundle(td string, roots []*x509.Certificate) (*x509bundle.Bundle, error) {
	tdid, err := spiffeid.TrustDomainFromString(td)
	if err != nil {
		return nil, fmt.Errorf("trust domain %q: %w", td, err)
	}
	if len(roots) == 0 {
		return nil, errors.New("trust bundle without roots")
	}
	return x509bundle.FromX509Authorities(tdid, roots), nil
}

// AuthorizeIdentity accepts a peer only if its SPIFFE ID is one of ids.
func AuthorizeIdentity(ids ...spiffe.Identity) tlsconfig.Authorizer {
	allowed := make([]spiffeid.ID, 0, len(ids))
	for _, id := range ids {
		sid, err := id.ID()
		if err != nil {
			// An invalid expectation matches nobody.
			return func(spiffeid.ID, [][]*x509.Certificate) error {
				return fmt.Errorf("invalid expected identity: %w", err)
			}
		}
		allowed = append(allowed, sid)
	}
	return tlsconfig.AuthorizeOneOf(allowed...)
}

// ServerConfig is a TLS 1.3 server configuration that presents svid,
// requires a client certificate that chains to bundle, and accepts the
// client only if authorize accepts its SPIFFE ID.
func ServerConfig(svid x509svid.Source, bundle x509bundle.Source, authorize tlsconfig.Authorizer) *tls.Config {
	c := tlsconfig.MTLSServerConfig(svid, bundle, authorize)
	c.MinVersion = tls.VersionTLS13
	return c
}

// ClientConfig is a TLS 1.3 client configuration that presents svid and
// accepts the server only if its certificate chains to bundle and authorize
// accepts its SPIFFE ID (there is no host name check: SPIFFE IDs replace
// it). With TLS 1.3 a client's Handshake can succeed before the server
// rejects the client's certificate; the failure shows on the first read.
func ClientConfig(svid x509svid.Source, bundle x509bundle.Source, authorize tlsconfig.Authorizer) *tls.Config {
	c := tlsconfig.MTLSClientConfig(svid, bundle, authorize)
	c.MinVersion = tls.VersionTLS13
	return c
}

// PeerIdentity returns the identity of the peer's leaf certificate of a
// completed handshake.
func PeerIdentity(cs tls.ConnectionState) (spiffe.Identity, error) {
	if len(cs.PeerCertificates) == 0 {
		return spiffe.Identity{}, errors.New("peer sent no certificate")
	}
	return spiffe.FromCert(cs.PeerCertificates[0])
}
