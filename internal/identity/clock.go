package identity

import "time"

// clock tells time and wakes the manager at a deadline. Deadlines are
// absolute rather than durations so that a clock that moves between
// computing a deadline and arming the timer (a test stepping a fake clock)
// still fires at the right moment instead of one step late.
type clock interface {
	Now() time.Time
	// At returns a channel that receives once t has come, and a function
	// that releases the timer early.
	At(t time.Time) (<-chan time.Time, func() bool)
}

// wallClock is the real clock.
type wallClock struct{}

func (wallClock) Now() time.Time { return time.Now() }

func (wallClock) At(t time.Time) (<-chan time.Time, func() bool) {
	timer := time.NewTimer(time.Until(t))
	return timer.C, timer.Stop
}
