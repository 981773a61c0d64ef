package certs

import "time"

// backoff computes the waits between failed attempts to obtain a
// certificate: the ceiling doubles from base up to max with each
// consecutive failure, and each wait is drawn from [ceiling/2, ceiling).
// The lower half makes a run of failures really slow down; the random
// upper half spreads the retries of every identity of every node after a
// CA outage, so they do not arrive at istiod together.
type backoff struct {
	base, max time.Duration
	jitter    func() float64 // in [0, 1)
	failures  int
}

// next records one more failure and returns the wait before the next
// attempt.
func (b *backoff) next() time.Duration {
	ceiling := b.base
	for i := 0; i < b.failures && ceiling < b.max; i++ {
		ceiling *= 2
	}
	ceiling = min(ceiling, b.max)
	b.failures++
	half := ceiling / 2
	return half + time.Duration(b.jitter()*float64(ceiling-half))
}

// reset starts over from base after a success.
func (b *backoff) reset() { b.failures = 0 }
