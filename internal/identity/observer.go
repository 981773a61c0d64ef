package identity

import (
	"time"

	"github.com/cairnmesh/cairn/internal/spiffe"
)

// Reason says which step of obtaining a certificate failed, as a metric
// label: each points an operator at a different culprit.
type Reason string

// The reasons of Observer.Failed.
const (
	// ReasonToken: ztunnel's own token could not be read (the projected
	// volume is missing or empty).
	ReasonToken Reason = "token"
	// ReasonRequest: the key or the CSR could not be made.
	ReasonRequest Reason = "request"
	// ReasonCA: CreateCertificate failed: the CA was unreachable, refused
	// the token, or refused to sign (node authorization).
	ReasonCA Reason = "ca"
	// ReasonInvalid: the CA answered with a chain that ztunnel refused
	// (another identity, a foreign root, a key that is not ours).
	ReasonInvalid Reason = "invalid"
)

// Observer is told what the manager does, for metrics. Its methods are
// called synchronously from the manager's goroutines, possibly from
// several at once: they must be fast, safe for concurrent use, and must
// not block. Embed NopObserver to implement only some of them.
//
// Time to expiry is not pushed: an implementation keeps notAfter from
// Issued and computes the remaining time when it is scraped (a Prometheus
// GaugeFunc or collector), which is exact at any moment, and forgets the
// identity on Dropped.
type Observer interface {
	// Issued: a certificate for id was validated and installed; it is
	// valid until notAfter.
	Issued(id spiffe.Identity, notAfter time.Time)
	// Failed: an attempt to obtain a certificate for id failed at the step
	// reason names; the next attempt comes after retryIn.
	Failed(id spiffe.Identity, reason Reason, err error, retryIn time.Duration)
	// Dropped: the last pod of id left some time ago, and its certificate
	// was discarded.
	Dropped(id spiffe.Identity)
}

// NopObserver ignores everything.
type NopObserver struct{}

var _ Observer = NopObserver{}

// Issued does nothing.
func (NopObserver) Issued(spiffe.Identity, time.Time) {}

// Failed does nothing.
func (NopObserver) Failed(spiffe.Identity, Reason, error, time.Duration) {}

// Dropped does nothing.
func (NopObserver) Dropped(spiffe.Identity) {}
