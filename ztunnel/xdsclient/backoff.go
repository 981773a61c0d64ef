package xdsclient

import (
	"math/rand/v2"
	"time"
)

// backoff computes the waits between reconnection attempts: the ceiling
// doubles from base up to max with each consecutive failure, and each wait
// is drawn from [ceiling/2, ceiling). The lower half keeps the ceiling
// meaningful (a run of failures really slows down), while the random upper
// half spreads the reconnects of every ztunnel in the cluster after a
// control plane restart, instead of having them arrive together.
type backoff struct {
	base, max time.Duration
	jitter    func() float64 // in [0, 1)
	failures  int
}

func newBackoff(base, max time.Duration) *backoff {
	return &backoff{base: base, max: max, jitter: rand.Float64}
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

// reset starts over from base, after a stream that lived long enough to
// show that the control plane is healthy again.
func (b *backoff) reset() { b.failures = 0 }
