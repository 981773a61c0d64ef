// Package retry paces the retries of the mesh's clients (ztunnel's xDS
// stream and its certificate requests): exponential back-off with jitter.
package retry

import (
	"math/rand/v2"
	"time"
)

// Backoff computes the waits between failed attempts: the ceiling doubles
// from Base up to Max with each consecutive failure, and each wait is drawn
// from [ceiling/2, ceiling). The lower half makes a run of failures really
// slow down; the random upper half spreads the retries of every ztunnel of
// the cluster after a control-plane outage, so that they do not arrive
// together.
type Backoff struct {
	Base, Max time.Duration
	// Jitter returns a value in [0, 1); nil means math/rand/v2.Float64.
	Jitter   func() float64
	failures int
}

// Next records one more failure and returns the wait before the next
// attempt.
func (b *Backoff) Next() time.Duration {
	ceiling := b.Base
	for i := 0; i < b.failures && ceiling < b.Max; i++ {
		ceiling *= 2
	}
	ceiling = min(ceiling, b.Max)
	b.failures++
	jitter := b.Jitter
	if jitter == nil {
		jitter = rand.Float64
	}
	half := ceiling / 2
	return half + time.Duration(jitter()*float64(ceiling-half))
}

// Failures is the number of consecutive failures so far.
func (b *Backoff) Failures() int { return b.failures }

// Reset starts over from Base, after a success.
func (b *Backoff) Reset() { b.failures = 0 }
