package kubelet

import "time"

// backoff is the restart back-off of crashing containers (and of failed
// image "pulls"), as a kubelet does it: the first restart is immediate,
// the next waits base, then twice as long each time up to max; a container
// that ran for reset before it exited starts over.
type backoff struct {
	base, max, reset time.Duration
}

// crashes returns the number of exits that count for the back-off after
// one more exit, given the count before and how long the container ran.
func (b backoff) crashes(prev int, ranFor time.Duration) int {
	if ranFor >= b.reset {
		return 1
	}
	return prev + 1
}

// delay returns how long to wait before restarting a container that has
// exited crashes times in a row.
func (b backoff) delay(crashes int) time.Duration {
	if crashes <= 1 {
		return 0
	}
	d := b.base
	for i := 2; i < crashes && d < b.max; i++ {
		d *= 2
	}
	return min(d, b.max)
}
