package lograte

import (
	"testing"
	"time"
)

func TestLimiterAllowsBurstThenRate(t *testing.T) {
	now := time.Unix(1000, 0)
	l := New(time.Second, 3)
	l.now = func() time.Time { return now }
	allowed := 0
	for range 100 {
		if ok, _ := l.Allow(); ok {
			allowed++
		}
	}
	if allowed != 3 {
		t.Fatalf("a burst of 100 lines let %d through, want 3", allowed)
	}
	now = now.Add(time.Second)
	ok, suppressed := l.Allow()
	if !ok || suppressed != 97 {
		t.Fatalf("one interval later: ok=%v suppressed=%d, want true and 97", ok, suppressed)
	}
	if ok, _ := l.Allow(); ok {
		t.Fatal("a second line within the same interval was allowed")
	}
	// A long quiet period refills the bucket up to the burst, not beyond.
	now = now.Add(time.Hour)
	allowed = 0
	for range 10 {
		if ok, _ := l.Allow(); ok {
			allowed++
		}
	}
	if allowed != 3 {
		t.Fatalf("after an hour's quiet %d lines went through, want the burst of 3", allowed)
	}
}

func TestLimiterUnlimited(t *testing.T) {
	l := New(0, 1)
	for range 10 {
		if ok, _ := l.Allow(); !ok {
			t.Fatal("every <= 0 must allow every line")
		}
	}
	var nilLimiter *Limiter
	if ok, _ := nilLimiter.Allow(); !ok {
		t.Fatal("a nil Limiter must allow every line")
	}
}
