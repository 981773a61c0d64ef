package daemon

import (
	"errors"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/cairnmesh/cairn/internal/identity"
	"github.com/cairnmesh/cairn/internal/spiffe"
	"github.com/cairnmesh/cairn/internal/xdsclient"
	"github.com/cairnmesh/cairn/ztunnel/state"
)

// storeHandler applies workload discovery to the state store. The store
// keeps the valid resources of a response and refuses the others one by
// one; the client NACKs those and counts the rest as accepted.
type storeHandler struct{ store *state.Store }

func (h storeHandler) Apply(u xdsclient.Update) error {
	err := h.store.Apply(u.TypeURL, u.Resources, u.Removed)
	var partial *state.ApplyError
	if errors.As(err, &partial) {
		names := make([]string, 0, len(partial.Rejected))
		for _, r := range partial.Rejected {
			names = append(names, r.Name)
		}
		return &xdsclient.RejectedError{Names: names, Err: err}
	}
	return err
}

// identities adapts the certificate manager to what enrolment and the
// proxies ask of it.
type identities struct{ *identity.Manager }

func (i identities) Source(id spiffe.Identity) x509svid.Source { return i.Manager.Source(id) }
