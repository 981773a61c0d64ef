package certs

import (
	"testing"
	"time"
)

func TestBackoffDoublesToMaxWithJitterInUpperHalf(t *testing.T) {
	for _, r := range []float64{0, 0.999} {
		b := backoff{base: time.Second, max: 8 * time.Second, jitter: func() float64 { return r }}
		for i, ceiling := range []time.Duration{1, 2, 4, 8, 8} {
			ceiling *= time.Second
			got := b.next()
			if got < ceiling/2 || got >= ceiling {
				t.Errorf("r=%v attempt %d: %v not in [%v, %v)", r, i, got, ceiling/2, ceiling)
			}
		}
		b.reset()
		if got := b.next(); got >= time.Second {
			t.Errorf("after reset: %v, want below the base", got)
		}
	}
}
