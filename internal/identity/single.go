package identity

import (
	"fmt"

	"github.com/cairnmesh/cairn/internal/spiffe"
)

// Single returns a Manager that holds one identity, wanted once and never
// released (a waypoint's own, which istiod-lite's CA always grants to its
// caller), and that identity's Source. The caller runs the Manager; the
// Source serves the certificate once it is issued (Source.Await waits).
func Single(cfg Config, id spiffe.Identity) (*Manager, *Source, error) {
	m, err := New(cfg)
	if err != nil {
		return nil, nil, err
	}
	if err := m.Want(id); err != nil {
		return nil, nil, fmt.Errorf("identity %s: %w", id, err)
	}
	return m, m.Source(id), nil
}
