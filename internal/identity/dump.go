package identity

import (
	"cmp"
	"slices"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// State is an identity's certificate state, for people reading a dump.
type State string

// The states of an identity's certificate.
const (
	// StatePending: no certificate yet and no failure yet; the first
	// request is on its way.
	StatePending State = "pending"
	// StateValid: a valid certificate, not yet due for renewal.
	StateValid State = "valid"
	// StateRenewing: a valid certificate that is due for renewal; the
	// renewal is on its way or waits for a retry after failures.
	StateRenewing State = "renewing"
	// StateFailed: no valid certificate (none yet, or expired) and the
	// last attempt failed.
	StateFailed State = "failed"
)

// CertificateDump is one identity in /config_dump.
type CertificateDump struct {
	Identity string `json:"identity"`
	State    State  `json:"state"`
	// Pods is the number of pods on the node that hold the identity;
	// zero while a released identity lingers.
	Pods int `json:"pods"`
	// Serial is the certificate's serial number in hexadecimal.
	Serial string `json:"serial,omitempty"`
	// RootSerial is the serial number of the root of the trust bundle the
	// certificate chains to (see the bundle's roots): during a CA root
	// rotation, which certificates have moved to the new root. Empty when
	// it chains to none of them.
	RootSerial  string    `json:"rootSerial,omitempty"`
	NotBefore   time.Time `json:"notBefore,omitzero"`
	NotAfter    time.Time `json:"notAfter,omitzero"`
	RenewAt     time.Time `json:"renewAt,omitzero"`
	DropAt      time.Time `json:"dropAt,omitzero"`
	Failures    int       `json:"failures,omitempty"` // consecutive
	LastError   string    `json:"lastError,omitempty"`
	NextAttempt time.Time `json:"nextAttempt,omitzero"`
}

// Dump returns every identity the manager holds, sorted by identity.
func (m *Manager) Dump() []CertificateDump {
	now := m.clock.Now()
	m.mu.RLock()
	out := make([]CertificateDump, 0, len(m.entries))
	for _, e := range m.entries {
		d := CertificateDump{Identity: e.id.String(), Pods: e.refs}
		if e.refs == 0 {
			d.DropAt = e.releasedAt.Add(m.cfg.Linger)
		}
		out = append(out, m.dumpEntry(e, d, now))
	}
	m.mu.RUnlock()
	slices.SortFunc(out, func(a, b CertificateDump) int { return cmp.Compare(a.Identity, b.Identity) })
	return out
}

func (m *Manager) dumpEntry(e *entry, d CertificateDump, now time.Time) CertificateDump {
	st := e.progressNow()
	d.Failures = st.failures
	if st.lastErr != nil {
		d.LastError = st.lastErr.Error()
		d.NextAttempt = st.nextAttempt
	}
	cur := e.cert.Load()
	if cur != nil {
		leaf := leafOf(cur.svid)
		d.Serial = leaf.SerialNumber.Text(16)
		if _, chains, err := x509svid.Verify(cur.svid.Certificates, m.cfg.Bundle, x509svid.WithTime(now)); err == nil {
			chain := chains[0]
			d.RootSerial = chain[len(chain)-1].SerialNumber.Text(16)
		}
		d.NotBefore, d.NotAfter, d.RenewAt = leaf.NotBefore, leaf.NotAfter, cur.renewAt
	}
	switch {
	case cur != nil && now.Before(d.NotAfter):
		d.State = StateValid
		if st.fetching || st.failures > 0 || !now.Before(cur.renewAt) {
			d.State = StateRenewing
		}
	case cur != nil:
		d.State = StateFailed
		if d.LastError == "" {
			d.LastError = ErrExpired.Error()
		}
	case st.failures > 0:
		d.State = StateFailed
	default:
		d.State = StatePending
	}
	return d
}

// BundleDump is the trust bundle in /config_dump.
type BundleDump struct {
	Path        string     `json:"path"`
	TrustDomain string     `json:"trustDomain"`
	Roots       []RootDump `json:"roots"`
	LoadedAt    time.Time  `json:"loadedAt"`
	// LastError is why the file's current content is not in use (the
	// previous roots are), empty when it is.
	LastError string `json:"lastError,omitempty"`
}

// RootDump is one root of the trust bundle.
type RootDump struct {
	Subject  string    `json:"subject"`
	Serial   string    `json:"serial"`
	NotAfter time.Time `json:"notAfter"`
}

// Dump returns the roots in use and the state of the file.
func (b *Bundle) Dump() BundleDump {
	cur := b.current.Load()
	d := BundleDump{Path: b.path, TrustDomain: b.td.Name(), LoadedAt: cur.loadedAt}
	for _, r := range cur.bundle.X509Authorities() {
		d.Roots = append(d.Roots, RootDump{Subject: r.Subject.String(), Serial: r.SerialNumber.Text(16), NotAfter: r.NotAfter})
	}
	b.mu.Lock()
	if b.lastErr != nil {
		d.LastError = b.lastErr.Error()
	}
	b.mu.Unlock()
	return d
}
