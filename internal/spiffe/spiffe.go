// Package spiffe names workload identities the Istio way: a Kubernetes
// service account in a namespace of a trust domain, written as the SPIFFE ID
// spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>. Parsing and
// formatting go through go-spiffe's spiffeid, so an Identity is always a
// valid SPIFFE ID.
package spiffe

import (
	"crypto/x509"
	"errors"
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// DefaultTrustDomain is the trust domain when none is configured.
const DefaultTrustDomain = "cluster.local"

// Identity is a workload identity: a service account in a namespace of a
// trust domain.
type Identity struct {
	TrustDomain    string
	Namespace      string
	ServiceAccount string
}

// ErrNotWorkloadID is returned (wrapped) for a valid SPIFFE ID whose path is
// not /ns/<namespace>/sa/<service-account>.
var ErrNotWorkloadID = errors.New("not a workload identity (want spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>)")

// New returns the identity of service account sa in namespace ns of trust
// domain td, or an error when the parts do not make a valid SPIFFE ID.
func New(td, ns, sa string) (Identity, error) {
	id := Identity{TrustDomain: td, Namespace: ns, ServiceAccount: sa}
	if _, err := id.ID(); err != nil {
		return Identity{}, err
	}
	return id, nil
}

// Parse parses spiffe://<td>/ns/<ns>/sa/<sa> and rejects anything else.
func Parse(s string) (Identity, error) {
	id, err := spiffeid.FromString(s)
	if err != nil {
		return Identity{}, fmt.Errorf("parsing SPIFFE ID %q: %w", s, err)
	}
	return FromID(id)
}

// FromID turns a SPIFFE ID into an Identity; the path must be exactly
// /ns/<namespace>/sa/<service-account>.
func FromID(id spiffeid.ID) (Identity, error) {
	if id.IsZero() {
		return Identity{}, fmt.Errorf("empty SPIFFE ID: %w", ErrNotWorkloadID)
	}
	parts := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
	if len(parts) != 4 || parts[0] != "ns" || parts[2] != "sa" || parts[1] == "" || parts[3] == "" {
		return Identity{}, fmt.Errorf("SPIFFE ID %q: %w", id, ErrNotWorkloadID)
	}
	return Identity{TrustDomain: id.TrustDomain().Name(), Namespace: parts[1], ServiceAccount: parts[3]}, nil
}

// FromCert returns the identity in the certificate's URI SAN. The
// certificate must carry exactly one URI SAN, as X.509-SVIDs do.
func FromCert(cert *x509.Certificate) (Identity, error) {
	if cert == nil {
		return Identity{}, errors.New("no certificate")
	}
	if n := len(cert.URIs); n != 1 {
		return Identity{}, fmt.Errorf("certificate has %d URI SANs, want exactly one SPIFFE ID", n)
	}
	id, err := spiffeid.FromURI(cert.URIs[0])
	if err != nil {
		return Identity{}, fmt.Errorf("certificate URI SAN %q: %w", cert.URIs[0], err)
	}
	return FromID(id)
}

// ID returns the identity as a go-spiffe ID.
func (i Identity) ID() (spiffeid.ID, error) {
	if i.Namespace == "" || i.ServiceAccount == "" {
		return spiffeid.ID{}, fmt.Errorf("identity %+v: namespace and service account must not be empty", i)
	}
	td, err := spiffeid.TrustDomainFromString(i.TrustDomain)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("trust domain %q: %w", i.TrustDomain, err)
	}
	id, err := spiffeid.FromSegments(td, "ns", i.Namespace, "sa", i.ServiceAccount)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("identity %+v: %w", i, err)
	}
	return id, nil
}

// RequireID is ID for identities known to be valid (built by New, Parse,
// FromID or FromCert); it panics otherwise.
func (i Identity) RequireID() spiffeid.ID {
	id, err := i.ID()
	if err != nil {
		panic(err)
	}
	return id
}

// String returns the SPIFFE URI. It does not validate; use ID for that.
func (i Identity) String() string {
	return "spiffe://" + i.TrustDomain + "/ns/" + i.Namespace + "/sa/" + i.ServiceAccount
}

// IsZero reports whether i is the zero Identity.
func (i Identity) IsZero() bool { return i == Identity{} }

// MarshalText writes the SPIFFE ID, so that logs and JSON show an identity
// as the string users know ("spiffe://td/ns/x/sa/y"); the zero Identity
// is "".
func (i Identity) MarshalText() ([]byte, error) {
	if i.IsZero() {
		return []byte{}, nil
	}
	return []byte(i.String()), nil
}
