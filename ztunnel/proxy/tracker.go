package proxy

import (
	"cmp"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Tracker holds the open connections of every pod, for /debug/connections.
type Tracker struct {
	next  atomic.Uint64
	mu    sync.Mutex
	conns map[uint64]*ConnInfo
}

// ConnInfo describes one open connection.
type ConnInfo struct {
	ID          uint64    `json:"id"`
	Pod         string    `json:"pod"`
	Direction   string    `json:"direction"` // outbound, inbound (HBONE) or inbound-plaintext
	Source      string    `json:"source"`
	Destination string    `json:"destination"`
	Identity    string    `json:"peerIdentity,omitempty"`
	Via         string    `json:"via"` // hbone, passthrough, direct, plaintext
	Started     time.Time `json:"started"`
}

// NewTracker returns an empty Tracker.
func NewTracker() *Tracker { return &Tracker{conns: make(map[uint64]*ConnInfo)} }

func (t *Tracker) add(c ConnInfo) func() {
	c.ID = t.next.Add(1)
	c.Started = time.Now()
	t.mu.Lock()
	t.conns[c.ID] = &c
	t.mu.Unlock()
	return func() {
		t.mu.Lock()
		delete(t.conns, c.ID)
		t.mu.Unlock()
	}
}

// List returns the open connections, oldest first.
func (t *Tracker) List() []ConnInfo {
	t.mu.Lock()
	out := make([]ConnInfo, 0, len(t.conns))
	for _, c := range t.conns {
		out = append(out, *c)
	}
	t.mu.Unlock()
	slices.SortFunc(out, func(a, b ConnInfo) int { return cmp.Compare(a.ID, b.ID) })
	return out
}
