// Package drain is the shutdown sequence of a Cairn proxy (ztunnel, the
// waypoint): readiness fails first, the listeners stay open for a handover
// to a successor, then open connections get a bounded time to finish.
package drain

import (
	"context"
	"sync/atomic"
	"time"
)

// Reason is what readiness answers while draining.
const Reason = "draining for shutdown"

// State, once set, makes readiness fail while connections drain. The zero
// value is not draining.
type State struct{ v atomic.Bool }

// Set starts draining; it cannot be undone.
func (s *State) Set() { s.v.Store(true) }

// Draining reports whether Set was called.
func (s *State) Draining() bool { return s.v.Load() }

// Reason says why readiness fails while draining.
func (s *State) Reason() string { return Reason }

// Run drains: it sets st, keeps the listeners open for handover (so that a
// successor binds the same ports, SO_REUSEPORT, meanwhile), then calls stop
// with a context that ends after timeout, for the open connections to
// finish. When ctx has already ended (a component failed: nothing will take
// over), the handover is skipped. Run returns when stop does.
func Run(ctx context.Context, st *State, handover, timeout time.Duration, stop func(context.Context)) {
	st.Set()
	if ctx.Err() == nil && handover > 0 {
		t := time.NewTimer(handover)
		<-t.C // bounded by handover, a flag; not cut short, as a successor may be binding
	}
	dctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	stop(dctx)
}
