package xdsclient

import (
	"testing"
	"time"
)

func TestBackoff(t *testing.T) {
	b := newBackoff(100*time.Millisecond, time.Second)
	var j float64
	b.jitter = func() float64 { return j }

	// The lowest draws: half of a ceiling that doubles up to max.
	want := []time.Duration{50, 100, 200, 400, 500, 500, 500}
	for i, w := range want {
		if got := b.next(); got != w*time.Millisecond {
			t.Errorf("wait %d with no jitter: %v, want %v", i, got, w*time.Millisecond)
		}
	}
	// The highest draws stay below the ceiling, and never above max.
	b.reset()
	j = 0.999999
	for i, ceiling := range []time.Duration{100, 200, 400, 800, 1000, 1000} {
		got := b.next()
		if got < ceiling*time.Millisecond/2 || got >= ceiling*time.Millisecond {
			t.Errorf("wait %d with full jitter: %v, want in [%v, %v)", i, got, ceiling*time.Millisecond/2, ceiling*time.Millisecond)
		}
	}
	if b.failures != 6 {
		t.Errorf("failures %d after 6 waits", b.failures)
	}
	b.reset()
	j = 0
	if got := b.next(); got != 50*time.Millisecond {
		t.Errorf("first wait after reset: %v", got)
	}
}

func TestBackoffRealJitterInRange(t *testing.T) {
	b := newBackoff(time.Millisecond, 8*time.Millisecond)
	for i := range 1000 {
		if d := b.next(); d < time.Millisecond/2 || d >= 8*time.Millisecond {
			t.Fatalf("wait %d: %v out of [0.5ms, 8ms)", i, d)
		}
	}
}
