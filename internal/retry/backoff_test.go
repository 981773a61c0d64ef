package retry

import (
	"testing"
	"time"
)

func TestBackoff(t *testing.T) {
	var j float64
	b := Backoff{Base: 100 * time.Millisecond, Max: time.Second, Jitter: func() float64 { return j }}

	// The lowest draws: half of a ceiling that doubles up to Max.
	for i, w := range []time.Duration{50, 100, 200, 400, 500, 500, 500} {
		if got := b.Next(); got != w*time.Millisecond {
			t.Errorf("wait %d with no jitter: %v, want %v", i, got, w*time.Millisecond)
		}
	}
	// The highest draws stay below the ceiling, and never above Max.
	b.Reset()
	j = 0.999999
	for i, ceiling := range []time.Duration{100, 200, 400, 800, 1000, 1000} {
		got := b.Next()
		if got < ceiling*time.Millisecond/2 || got >= ceiling*time.Millisecond {
			t.Errorf("wait %d with full jitter: %v, want in [%v, %v)", i, got, ceiling*time.Millisecond/2, ceiling*time.Millisecond)
		}
	}
	if b.Failures() != 6 {
		t.Errorf("failures %d after 6 waits", b.Failures())
	}
	b.Reset()
	j = 0
	if got := b.Next(); got != 50*time.Millisecond {
		t.Errorf("first wait after Reset: %v", got)
	}
}

func TestBackoffRealJitterInRange(t *testing.T) {
	b := Backoff{Base: time.Millisecond, Max: 8 * time.Millisecond}
	for i := range 1000 {
		if d := b.Next(); d < time.Millisecond/2 || d >= 8*time.Millisecond {
			t.Fatalf("wait %d: %v out of [0.5ms, 8ms)", i, d)
		}
	}
}
