package identity

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/cairnmesh/cairn/internal/spiffe"
)

// Errors of Source, wrapped with the identity and the last failure.
var (
	// ErrNotWanted: no pod on this node holds the identity (it was never
	// wanted, or was dropped).
	ErrNotWanted = errors.New("identity not held on this node")
	// ErrNotIssued: the identity is wanted but its first certificate has
	// not arrived yet.
	ErrNotIssued = errors.New("certificate not issued yet")
	// ErrExpired: the certificate expired and no renewal succeeded in time.
	ErrExpired = errors.New("certificate expired")
)

// Source is the certificate of one identity as TLS wants it: an
// x509svid.Source that always returns the current certificate, so that a
// rotation reaches the next handshake with nothing rebuilt.
//
// A Source looks its identity up on every call, so it may be taken before
// Want (a connection that arrives before its pod is known) and stays
// usable across a drop and a later Want of the same identity.
type Source struct {
	m  *Manager
	id spiffe.Identity
}

var _ x509svid.Source = (*Source)(nil)

// Source returns the certificate source of id. It does not want id:
// certificates are obtained only for identities passed to Want.
func (m *Manager) Source(id spiffe.Identity) *Source { return &Source{m: m, id: id} }

// Identity returns the identity whose certificate the source gives.
func (s *Source) Identity() spiffe.Identity { return s.id }

// GetX509SVID implements x509svid.Source. It does not wait: without a
// valid certificate it fails at once with ErrNotWanted, ErrNotIssued or
// ErrExpired. The interface has no context to bound a wait with; use
// Await where the caller has one (a handshake does).
func (s *Source) GetX509SVID() (*x509svid.SVID, error) {
	svid, _, err := s.m.current(s.id)
	return svid, err
}

// Await returns the certificate of id, waiting until there is a valid one
// or ctx ends. A connection that arrives before its pod's certificate uses
// it to wait rather than fail (bound ctx by what the peer will wait for:
// a handshake's context, or one with a timeout).
func (s *Source) Await(ctx context.Context) (*x509svid.SVID, error) {
	for {
		svid, changed, err := s.m.current(s.id)
		if err == nil {
			return svid, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w (gave up waiting: %w)", err, ctx.Err())
		case <-changed:
		}
	}
}

// current returns id's valid certificate, or why there is none and a
// channel that is closed at the next change. The channel is read in the
// same critical section as the certificate, so a change right after the
// look is never missed.
func (m *Manager) current(id spiffe.Identity) (*x509svid.SVID, <-chan struct{}, error) {
	m.mu.RLock()
	e, changed := m.entries[id], m.changed
	m.mu.RUnlock()
	if e == nil {
		return nil, changed, fmt.Errorf("certs: %s: %w", id, ErrNotWanted)
	}
	cur := e.cert.Load()
	if cur == nil {
		return nil, changed, e.withLastError(fmt.Errorf("certs: %s: %w", id, ErrNotIssued))
	}
	if notAfter := leafOf(cur.svid).NotAfter; !m.clock.Now().Before(notAfter) {
		return nil, changed, e.withLastError(fmt.Errorf("certs: %s: %w at %s", id, ErrExpired, notAfter.UTC().Format(time.RFC3339)))
	}
	return cur.svid, changed, nil
}

// withLastError adds the last failure to err, so that a connection that
// fails for want of a certificate says why the certificate is missing.
func (e *entry) withLastError(err error) error {
	if last := e.progressNow().lastErr; last != nil {
		return fmt.Errorf("%w (last attempt: %w)", err, last)
	}
	return err
}
