package hbone_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cairnmesh/cairn/ztunnel/hbone"
)

// hostile is a second loopback address: connections from it count as
// another client (another pod) for the node's limits.
var hostile = netip.MustParseAddr("127.0.0.2")

// withLimits gives the server a Limiter of l.
func withLimits(t *testing.T, l hbone.Limits) (option, *hbone.Limiter) {
	lim, err := hbone.NewLimiter(l)
	if err != nil {
		t.Fatal(err)
	}
	return func(_ *env, s *hbone.ServerConfig, _ *hbone.PoolConfig) {
		s.Limiter = lim
		s.HandshakeTimeout = time.Minute // the limits act, not the timeout
	}, lim
}

// idleConn opens a TCP connection to e's server from src and sends
// nothing. A connection the server refused so fast that the connect
// itself saw the reset is returned as one that is closed.
func idleConn(t *testing.T, e *env, src netip.Addr) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: src.AsSlice()}, Timeout: 10 * time.Second}
	c, err := d.Dial("tcp", e.hbone.String())
	if errors.Is(err, syscall.ECONNRESET) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// closedAtOnce reports whether the server closed c (it reads an end
// within a generous bound) rather than holding it open (the short read
// deadline passes).
func closedAtOnce(c net.Conn, hold time.Duration) bool {
	if c == nil {
		return true
	}
	c.SetReadDeadline(time.Now().Add(hold))
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	return !(errors.As(err, &ne) && ne.Timeout())
}

// heldOpen reports whether the server keeps c open for hold.
func heldOpen(c net.Conn, hold time.Duration) bool { return !closedAtOnce(c, hold) }

// Connections over the node's limit are closed at once; below it, they
// are held (here, until their handshake timeout).
func TestConnectionLimit(t *testing.T) {
	opt, lim := withLimits(t, hbone.Limits{MaxConnections: 4, MaxHandshakes: 4, MaxStreams: 10, MaxBuffered: 1 << 20, SourceShare: 100})
	e := newEnv(t, opt)
	var held []net.Conn
	for range 4 {
		held = append(held, idleConn(t, e, hostile))
	}
	over := idleConn(t, e, hostile)
	if !closedAtOnce(over, stuckBound) {
		t.Fatal("a connection over the limit was held open")
	}
	for i, c := range held {
		if !heldOpen(c, 50*time.Millisecond) {
			t.Errorf("connection %d under the limit was closed", i)
		}
	}
	st := lim.Stats()
	if st.InUse["connections"] != 4 || st.Refused["connections"] < 1 {
		t.Errorf("stats %+v, want 4 connections in use and a refusal", st)
	}
	if held[0] == nil {
		t.Fatal("a connection under the limit was refused")
	}
	held[0].Close()
	eventually(t, "the closed connection to free its slot", func() bool { return lim.Stats().InUse["connections"] == 3 })
	if again := idleConn(t, e, hostile); !heldOpen(again, 100*time.Millisecond) {
		t.Error("a connection was refused after one below the limit closed")
	}
}

// One client that opens connections and handshakes without end gets its
// share of the node's slots, not all of them: another client's tunnel
// still opens at once.
func TestSourceShareKeepsRoomForOthers(t *testing.T) {
	opt, lim := withLimits(t, hbone.Limits{MaxConnections: 8, MaxHandshakes: 4, MaxStreams: 10, MaxBuffered: 1 << 20, SourceShare: 50})
	e := newEnv(t, opt)
	var conns []net.Conn
	for range 10 {
		conns = append(conns, idleConn(t, e, hostile))
	}
	refused := 0
	for _, c := range conns {
		if closedAtOnce(c, 100*time.Millisecond) {
			refused++
		}
	}
	if refused != 6 {
		t.Errorf("%d of 10 connections from one client refused, want 6 (its share is 4 of 8)", refused)
	}
	ctx, cancel := context.WithTimeout(context.Background(), stuckBound)
	defer cancel()
	tun, err := e.pool.Dial(ctx, e.key(), e.app)
	if err != nil {
		t.Fatalf("another client's dial failed while one held its share: %v", err)
	}
	defer tun.Close()
	if got := roundTrip(t, tun, []byte("fair")); string(got) != "fair" {
		t.Errorf("echo %q", got)
	}
	if st := lim.Stats(); st.InUse["handshakes"] != 2 {
		t.Errorf("%d handshakes in use, want the hostile client's 2", st.InUse["handshakes"])
	}
}

// A connection beyond the handshake limit waits for a slot (within its
// handshake timeout) instead of being refused: bursts of dials after a
// restart get through.
func TestHandshakeWaitsForSlot(t *testing.T) {
	opt, _ := withLimits(t, hbone.Limits{MaxConnections: 8, MaxHandshakes: 1, MaxStreams: 10, MaxBuffered: 1 << 20, SourceShare: 100})
	e := newEnv(t, opt)
	blocker := idleConn(t, e, hostile)
	if blocker == nil {
		t.Fatal("the first connection was refused")
	}
	time.Sleep(50 * time.Millisecond) // let it take the slot; not a timing target
	type result struct {
		tun *hbone.Tunnel
		err error
	}
	done := make(chan result, 1)
	go func() {
		tun, err := e.pool.Dial(context.Background(), e.key(), e.app)
		done <- result{tun, err}
	}()
	select {
	case r := <-done:
		if r.tun != nil {
			r.tun.Close()
		}
		t.Fatalf("the dial finished (%v) while the only handshake slot was taken", r.err)
	case <-time.After(300 * time.Millisecond):
	}
	blocker.Close()
	r := <-done
	if r.err != nil {
		t.Fatalf("the dial failed once the slot freed: %v", r.err)
	}
	r.tun.Close()
}

// Streams over the node's limit are refused (REFUSED_STREAM); those
// being served go on.
func TestStreamLimit(t *testing.T) {
	release := make(chan struct{})
	var authorized atomic.Int32
	opt, lim := withLimits(t, hbone.Limits{MaxConnections: 8, MaxHandshakes: 8, MaxStreams: 2, MaxBuffered: 1 << 20, SourceShare: 100})
	e := newEnv(t, opt, func(_ *env, s *hbone.ServerConfig, _ *hbone.PoolConfig) {
		s.Authorize = func(ctx context.Context, _ hbone.Peer, _ netip.AddrPort) error {
			authorized.Add(1)
			select {
			case <-release:
			case <-ctx.Done():
			}
			return nil
		}
	})
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for range 2 {
		wg.Go(func() {
			tun, err := e.pool.Dial(context.Background(), e.key(), e.app)
			if err == nil {
				tun.Close()
			}
			errs <- err
		})
	}
	eventually(t, "two streams served", func() bool { return lim.Stats().InUse["streams"] == 2 })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	tun, err := e.pool.Dial(ctx, e.key(), e.app)
	cancel()
	if err == nil {
		tun.Close()
	}
	t.Logf("the third CONNECT: %v", err)
	if n := authorized.Load(); n != 2 {
		t.Errorf("%d requests were served, want 2 (the limit)", n)
	}
	close(release)
	wg.Wait()
	for range 2 {
		if err := <-errs; err != nil {
			t.Errorf("a stream within the limit failed: %v", err)
		}
	}
	if st := lim.Stats(); st.Refused["streams"] == 0 {
		t.Errorf("stats %+v, want refused streams", st)
	}
	eventually(t, "the streams to be counted out", func() bool { return lim.Stats().InUse["streams"] == 0 })
}

// An application that does not read makes the server hold what the
// client sends; over the node's buffer limit the stream is reset, and
// every byte held is counted out again.
func TestBufferLimit(t *testing.T) {
	hold := make(chan struct{})
	opt, lim := withLimits(t, hbone.Limits{MaxConnections: 8, MaxHandshakes: 8, MaxStreams: 8, MaxBuffered: 256 << 10, SourceShare: 100})
	e := newEnv(t, opt)
	e.app = startApp(t, func(c net.Conn) {
		<-hold
		io.Copy(io.Discard, c)
	})
	defer close(hold)
	tun := e.dial(t)
	defer tun.Close()
	sent := make(chan error, 1)
	go func() {
		buf := make([]byte, 64<<10)
		for {
			if _, err := tun.Write(buf); err != nil {
				sent <- err
				return
			}
		}
	}()
	select {
	case err := <-sent:
		t.Logf("the client's write failed: %v", err)
	case <-time.After(stuckBound):
		t.Fatal("the server held everything for an application that does not read")
	}
	st := lim.Stats()
	if st.Refused["buffered_bytes"] == 0 {
		t.Errorf("stats %+v, want a stream refused for the buffer limit", st)
	}
	eventually(t, "the buffered bytes to be counted out", func() bool { return lim.Stats().InUse["buffered_bytes"] == 0 })
}

func TestLimitsValidate(t *testing.T) {
	good := hbone.DefaultLimits()
	if err := good.Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	for name, mutate := range map[string]func(*hbone.Limits){
		"no connections": func(l *hbone.Limits) { l.MaxConnections = 0 },
		"no handshakes":  func(l *hbone.Limits) { l.MaxHandshakes = -1 },
		"no streams":     func(l *hbone.Limits) { l.MaxStreams = 0 },
		"no buffer":      func(l *hbone.Limits) { l.MaxBuffered = 0 },
		"share 0":        func(l *hbone.Limits) { l.SourceShare = 0 },
		"share 101":      func(l *hbone.Limits) { l.SourceShare = 101 },
	} {
		l := good
		mutate(&l)
		if _, err := hbone.NewLimiter(l); err == nil {
			t.Errorf("%s: NewLimiter accepted %+v", name, l)
		}
	}
}
