package identity

import (
	"context"
	"crypto/x509"
	"time"

	cav1 "github.com/cairnmesh/cairn/apis/ca/v1"
	"github.com/cairnmesh/cairn/internal/retry"
)

// renewJitter is the share of a certificate's lifetime by which renewal
// may come early: renewal falls in [0.45, 0.5] of the lifetime. Early only,
// so that a certificate never passes half its life unrenewed; spread, so
// that the identities that a restart fetched together do not all renew in
// the same second ever after.
const renewJitter = 0.05

// maintain is the worker of one identity. It returns when ctx ends or
// when the identity was dropped after its last pod left.
//
// While no pod holds the identity the worker asks the CA for nothing: node
// authorization would refuse it anyway, since no pod of the service account
// runs on the node any more. The certificate it has stays in use until it
// is dropped.
func (m *Manager) maintain(ctx context.Context, client cav1.CertificateServiceClient, e *entry) {
	bo := retry.Backoff{Base: m.cfg.BackoffBase, Max: m.cfg.BackoffMax, Jitter: m.jitter}
	// A worker starts with its entry, before any certificate: the first
	// attempt is at once.
	var next time.Time
	bundleChanged := m.cfg.Bundle.Changed()
	for ctx.Err() == nil {
		now := m.clock.Now()
		releasedAt, released := m.releasedSince(e)
		dropAt := releasedAt.Add(m.cfg.Linger)
		switch {
		case released && !now.Before(dropAt):
			if m.drop(e) {
				return
			}
			continue // wanted again meanwhile
		case !released && !now.Before(next):
			next = m.attempt(ctx, client, e, &bo)
			continue
		}

		wakeAt := next
		if released {
			wakeAt = dropAt
		}
		timer, stop := m.clock.At(wakeAt)
		select {
		case <-ctx.Done():
		case <-timer:
		case <-e.wake:
		case <-bundleChanged:
			bundleChanged = m.cfg.Bundle.Changed()
			if at, ok := m.renewForBundle(e); ok && at.Before(next) {
				next = at
			}
		}
		stop()
	}
}

// renewForBundle says, after the trust bundle changed, whether e should be
// fetched before its scheduled time, and when:
//   - at once when its certificate no longer chains to the roots (the old
//     root was removed: peers that have the new bundle refuse it), or when
//     it has none (the last answer may have been refused for a root that is
//     trusted now);
//   - within RotationSpread when it chains to a root other than the
//     bundle's first, which istiod-lite lists first as the root it signs
//     under: the CA switched its signer, and every certificate must move to
//     the new root before the old one can be removed. The spread keeps the
//     nodes' identities from all asking the CA in the same second.
func (m *Manager) renewForBundle(e *entry) (time.Time, bool) {
	now := m.clock.Now()
	cur := e.cert.Load()
	if cur == nil {
		return now, true
	}
	if !stillTrusted(cur.svid, m.cfg.Bundle, now) {
		m.log.Info("certificate no longer chains to the trust bundle; renewing", "identity", e.id.String())
		return now, true
	}
	roots := m.cfg.Bundle.Roots()
	if len(roots) < 2 || chainsTo(cur.svid, roots[0], now) {
		return time.Time{}, false
	}
	at := now.Add(time.Duration(m.jitter() * float64(m.cfg.RotationSpread)))
	m.log.Info("certificate chains to a root the CA no longer signs under; renewing", "identity", e.id.String(),
		"root", roots[0].Subject.String(), "renew_at", at)
	return at, true
}

// attempt obtains a certificate for e once and returns when to try next:
// at renewal time after a success, after a back-off after a failure.
func (m *Manager) attempt(ctx context.Context, client cav1.CertificateServiceClient, e *entry, bo *retry.Backoff) time.Time {
	e.setFetching(true)
	started := m.clock.Now()
	svid, reason, err := m.fetch(ctx, client, e.id)
	now := m.clock.Now()
	if ctx.Err() != nil {
		e.setFetching(false)
		return now // shutting down: not a failure of the CA
	}
	if err != nil {
		delay := bo.Next()
		next := now.Add(delay)
		e.recordFailure(err, next)
		m.obs.Failed(e.id, reason, err, delay)
		attrs := []any{"identity", e.id.String(), "reason", string(reason), "error", err, "retry_in", delay}
		if cur := e.cert.Load(); cur != nil && now.Before(leafOf(cur.svid).NotAfter) {
			attrs = append(attrs, "serving_until", leafOf(cur.svid).NotAfter)
		}
		m.log.Warn("obtaining certificate failed", attrs...)
		return next
	}
	bo.Reset()
	leaf := leafOf(svid)
	renewAt := renewTime(leaf, started, m.jitter())
	m.install(e, svid, renewAt)
	e.recordSuccess()
	m.obs.Issued(e.id, leaf.NotAfter)
	m.log.Info("certificate issued", "identity", e.id.String(), "serial", leaf.SerialNumber.Text(16),
		"not_after", leaf.NotAfter, "renew_at", renewAt)
	return renewAt
}

// renewTime is when a certificate obtained at requested should be renewed:
// at half of its lifetime, less up to renewJitter of it (r in [0, 1)). The
// lifetime counts from when it was asked for, not from NotBefore, which
// the CA backdates for clock skew: with short lifetimes, the backdated
// half could already be past on arrival and renewal would never rest.
func renewTime(leaf *x509.Certificate, requested time.Time, r float64) time.Time {
	start := requested
	if leaf.NotBefore.After(start) {
		start = leaf.NotBefore
	}
	life := leaf.NotAfter.Sub(start)
	return start.Add(time.Duration(float64(life) * (0.5 - renewJitter*r)))
}

func (e *entry) setFetching(v bool) {
	e.mu.Lock()
	e.progress.fetching = v
	e.mu.Unlock()
}

func (e *entry) recordFailure(err error, next time.Time) {
	e.mu.Lock()
	e.progress = progress{failures: e.progress.failures + 1, lastErr: err, nextAttempt: next}
	e.mu.Unlock()
}

func (e *entry) recordSuccess() {
	e.mu.Lock()
	e.progress = progress{}
	e.mu.Unlock()
}

func (e *entry) progressNow() progress {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.progress
}
