// Package lograte bounds how often one kind of log line is written, so
// that a caller who can trigger it at will (an unauthenticated client, a
// refused request) cannot fill the log or spend the process's time on
// it. What is not written is counted, and the next line that is written
// says how many were left out; the caller counts every event in a metric
// anyway.
package lograte

import (
	"sync"
	"time"
)

// Limiter is a token bucket: Burst lines at once, then one line per
// Every. The zero value allows nothing; use New. Safe for concurrent use.
type Limiter struct {
	every time.Duration
	burst float64
	now   func() time.Time

	mu         sync.Mutex
	tokens     float64
	last       time.Time
	suppressed uint64
}

// New returns a Limiter that allows burst lines at once and then one line
// per every. every <= 0 allows every line; burst < 1 counts as 1.
func New(every time.Duration, burst int) *Limiter {
	return &Limiter{every: every, burst: float64(max(burst, 1)), tokens: float64(max(burst, 1)), now: time.Now}
}

// Allow reports whether a line may be written now. When it may, suppressed
// is the number of lines refused since the last one allowed (to be logged
// with it); when it may not, the line is counted as suppressed.
func (l *Limiter) Allow() (ok bool, suppressed uint64) {
	if l == nil {
		return true, 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.every <= 0 {
		return true, 0
	}
	now := l.now()
	if !l.last.IsZero() {
		l.tokens = min(l.burst, l.tokens+float64(now.Sub(l.last))/float64(l.every))
	}
	l.last = now
	if l.tokens < 1 {
		l.suppressed++
		return false, 0
	}
	l.tokens--
	suppressed, l.suppressed = l.suppressed, 0
	return true, suppressed
}
