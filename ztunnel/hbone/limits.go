package hbone

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
)

// Limits are node-wide bounds on what inbound HBONE may hold: one Limiter
// with them is shared by the Servers of every pod on the node, so that the
// node's ztunnel, on which every one of those pods depends, has a ceiling
// whatever its clients do.
//
// Fairness: a client address (a pod: HBONE connections leave from the
// client pod's own address) may hold at most SourceShare percent of each
// limit, so that one hostile pod cannot take the node's slots from the
// others. Several hostile pods together can.
type Limits struct {
	// MaxConnections bounds the HBONE connections open at once, in every
	// phase from accept to close. A connection over it is closed at once.
	MaxConnections int
	// MaxHandshakes bounds the connections in their TLS handshake (which
	// runs until the client's HTTP/2 preface). Connections over it wait
	// for a slot, within the handshake timeout.
	MaxHandshakes int
	// MaxStreams bounds the CONNECT streams being served. A stream over
	// it is refused (RST_STREAM REFUSED_STREAM); clients retry it.
	MaxStreams int
	// MaxBuffered bounds the bytes held for applications that read slower
	// than their clients send. A stream that would go over it is reset
	// (RST_STREAM ENHANCE_YOUR_CALM).
	MaxBuffered int64
	// SourceShare is the percentage of each limit one client address may
	// hold (1-100).
	SourceShare int
}

// Default Limits. They keep what a node's HBONE servers may hold, every
// limit full at once, near 130 MiB of heap, within the ztunnel
// DaemonSet's 256 MiB memory limit (install/manifests/ztunnel.yaml) with
// room for the garbage collector. Measured in process (both ends, loopback):
// a connection waiting for its handshake holds about 12 KiB, an idle
// HBONE connection about 40 KiB on the server's side, an open tunnel
// 20-35 KiB besides what it buffers. A node that needs more raises them
// with the memory limit.
const (
	DefaultMaxConnections = 1024
	DefaultMaxHandshakes  = 128
	DefaultMaxStreams     = 2048
	DefaultMaxBuffered    = 32 << 20
	DefaultSourceShare    = 25
)

// DefaultLimits returns the default node-wide limits.
func DefaultLimits() Limits {
	return Limits{
		MaxConnections: DefaultMaxConnections,
		MaxHandshakes:  DefaultMaxHandshakes,
		MaxStreams:     DefaultMaxStreams,
		MaxBuffered:    DefaultMaxBuffered,
		SourceShare:    DefaultSourceShare,
	}
}

// Validate reports a limit that is not positive, or a share outside 1-100.
func (l Limits) Validate() error {
	switch {
	case l.MaxConnections <= 0, l.MaxHandshakes <= 0, l.MaxStreams <= 0, l.MaxBuffered <= 0:
		return fmt.Errorf("hbone: limits must be positive: %+v", l)
	case l.SourceShare < 1 || l.SourceShare > 100:
		return fmt.Errorf("hbone: the source share is a percentage (1-100), not %d", l.SourceShare)
	}
	return nil
}

// limit names what a Limiter counts, for Stats and metrics.
type limit int

const (
	limitConnections limit = iota
	limitHandshakes
	limitStreams
	limitBuffered
	numLimits
)

var limitNames = [numLimits]string{"connections", "handshakes", "streams", "buffered_bytes"}

// LimiterStats is what a Limiter holds and has turned away, by limit
// ("connections", "handshakes", "streams", "buffered_bytes").
type LimiterStats struct {
	InUse   map[string]int64
	Max     map[string]int64
	Refused map[string]uint64 // connections closed, handshakes timed out waiting, streams refused or reset
}

// Limiter enforces Limits for the Servers that share it. It is safe for
// concurrent use.
type Limiter struct {
	node   [numLimits]int64 // the node-wide caps
	source [numLimits]int64 // one source's caps

	// Streams and buffered bytes are counted with atomics (they change on
	// the data path); connections and handshakes under mu.
	streams  atomic.Int64
	buffered atomic.Int64
	refused  [numLimits]atomic.Uint64

	mu          sync.Mutex
	conns       int64
	handshakes  int64
	sources     map[netip.Addr]*source
	handshakeCh chan struct{} // closed (and replaced) when a handshake slot frees
}

// source is what one client address holds.
type source struct {
	addr       netip.Addr
	conns      int64 // under Limiter.mu; the entry goes when it drops to 0
	handshakes int64 // under Limiter.mu
	freed      chan struct{}
	streams    atomic.Int64
	buffered   atomic.Int64
}

// NewLimiter returns a Limiter for l, which must be valid.
func NewLimiter(l Limits) (*Limiter, error) {
	if err := l.Validate(); err != nil {
		return nil, err
	}
	lim := &Limiter{sources: make(map[netip.Addr]*source), handshakeCh: make(chan struct{})}
	lim.node = [numLimits]int64{int64(l.MaxConnections), int64(l.MaxHandshakes), int64(l.MaxStreams), l.MaxBuffered}
	for i, n := range lim.node {
		lim.source[i] = max(1, n*int64(l.SourceShare)/100)
	}
	return lim, nil
}

// Stats returns what the Limiter holds now and has refused so far.
func (l *Limiter) Stats() LimiterStats {
	s := LimiterStats{InUse: map[string]int64{}, Max: map[string]int64{}, Refused: map[string]uint64{}}
	l.mu.Lock()
	inUse := [numLimits]int64{l.conns, l.handshakes, l.streams.Load(), l.buffered.Load()}
	l.mu.Unlock()
	for i, name := range limitNames {
		s.InUse[name] = inUse[i]
		s.Max[name] = l.node[i]
		s.Refused[name] = l.refused[i].Load()
	}
	return s
}

// admit counts a new connection from src, or refuses it when src or the
// node is at its connection limit. The admission must be released.
func (l *Limiter) admit(src netip.Addr) (*admission, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.sources[src]
	if l.conns >= l.node[limitConnections] || s != nil && s.conns >= l.source[limitConnections] {
		l.refused[limitConnections].Add(1)
		return nil, false
	}
	if s == nil {
		s = &source{addr: src, freed: make(chan struct{})}
		l.sources[src] = s
	}
	s.conns++
	l.conns++
	return &admission{l: l, src: s}, true
}

// admission is one connection's hold on a Limiter. Its methods are called
// by the connection's own goroutines; release must be the last.
type admission struct {
	l         *Limiter
	src       *source
	handshake bool // holds a handshake slot
}

// startHandshake waits until the connection may start its handshake, or
// ctx ends (its handshake deadline).
func (a *admission) startHandshake(ctx context.Context) error {
	l, s := a.l, a.src
	for {
		l.mu.Lock()
		var wait chan struct{}
		switch {
		case s.handshakes >= l.source[limitHandshakes]:
			wait = s.freed
		case l.handshakes >= l.node[limitHandshakes]:
			wait = l.handshakeCh
		default:
			s.handshakes++
			l.handshakes++
			a.handshake = true
			l.mu.Unlock()
			return nil
		}
		l.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			l.refused[limitHandshakes].Add(1)
			return fmt.Errorf("waiting for one of %d handshake slots (%d per client address): %w",
				l.node[limitHandshakes], l.source[limitHandshakes], context.Cause(ctx))
		}
	}
}

// endHandshake gives the handshake slot back (it may be called without
// one).
func (a *admission) endHandshake() {
	if !a.handshake {
		return
	}
	a.handshake = false
	l, s := a.l, a.src
	l.mu.Lock()
	s.handshakes--
	l.handshakes--
	close(s.freed)
	s.freed = make(chan struct{})
	close(l.handshakeCh)
	l.handshakeCh = make(chan struct{})
	l.mu.Unlock()
}

// release ends the connection's hold.
func (a *admission) release() {
	a.endHandshake()
	l, s := a.l, a.src
	l.mu.Lock()
	s.conns--
	l.conns--
	if s.conns == 0 {
		delete(l.sources, s.addr)
	}
	l.mu.Unlock()
}

// takeStream counts a new stream unless that goes over a limit.
func (a *admission) takeStream() bool {
	if !take(&a.l.streams, a.l.node[limitStreams], 1) {
		a.l.refused[limitStreams].Add(1)
		return false
	}
	if !take(&a.src.streams, a.l.source[limitStreams], 1) {
		a.l.streams.Add(-1)
		a.l.refused[limitStreams].Add(1)
		return false
	}
	return true
}

func (a *admission) endStream() {
	a.src.streams.Add(-1)
	a.l.streams.Add(-1)
}

// takeBuffer counts n more bytes held for a slow application unless that
// goes over a limit.
func (a *admission) takeBuffer(n int64) bool {
	if !take(&a.l.buffered, a.l.node[limitBuffered], n) {
		a.l.refused[limitBuffered].Add(1)
		return false
	}
	if !take(&a.src.buffered, a.l.source[limitBuffered], n) {
		a.l.buffered.Add(-n)
		a.l.refused[limitBuffered].Add(1)
		return false
	}
	return true
}

// freeBuffer counts n bytes no longer held.
func (a *admission) freeBuffer(n int64) {
	a.src.buffered.Add(-n)
	a.l.buffered.Add(-n)
}

// take adds n to v unless that exceeds limit.
func take(v *atomic.Int64, limit, n int64) bool {
	if v.Add(n) > limit {
		v.Add(-n)
		return false
	}
	return true
}
