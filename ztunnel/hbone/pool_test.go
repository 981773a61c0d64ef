package hbone_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cairnmesh/cairn/internal/spiffe"
	"github.com/cairnmesh/cairn/ztunnel/hbone"
)

func TestConcurrentTunnelsShareConnection(t *testing.T) {
	e := newEnv(t)
	const n = 50
	tuns := make([]*hbone.Tunnel, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			tun, err := e.pool.Dial(context.Background(), e.key(), e.app)
			if err != nil {
				t.Error(err)
				return
			}
			tuns[i] = tun
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	// All n are open at once; now use them at once.
	for i, tun := range tuns {
		wg.Go(func() {
			defer tun.Close()
			msg := []byte(fmt.Sprintf("tunnel %d", i))
			if got := roundTrip(t, tun, msg); !bytes.Equal(got, msg) {
				t.Errorf("tunnel %d echoed %q", i, got)
			}
		})
	}
	wg.Wait()
	if d := e.dials.Load(); d != 1 {
		t.Errorf("%d connections for %d concurrent tunnels, want 1", d, n)
	}
	if c := e.pool.PooledConns(e.key()); c != 1 {
		t.Errorf("pool holds %d connections, want 1", c)
	}
}

// Callers that find no connection at the same time wait for one dial.
func TestConcurrentFirstDialsShareOneHandshake(t *testing.T) {
	const n = 20
	var entered atomic.Int32
	release := make(chan struct{})
	e := newEnv(t, func(_ *env, _ *hbone.ServerConfig, p *hbone.PoolConfig) {
		dial := p.Dialer
		p.Dialer = func(ctx context.Context, network, addr string) (net.Conn, error) {
			<-release // hold the first dial until every caller has started
			return dial(ctx, network, addr)
		}
	})
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			entered.Add(1)
			tun, err := e.pool.Dial(context.Background(), e.key(), e.app)
			if err != nil {
				t.Error(err)
				return
			}
			tun.Close()
		})
	}
	eventually(t, "all callers to start", func() bool { return entered.Load() == n })
	close(release)
	wg.Wait()
	if d := e.dials.Load(); d != 1 {
		t.Errorf("%d dials (TLS handshakes) for %d concurrent first callers, want 1", d, n)
	}
}

// A dial that fails for a reason of the destination fails its waiters too,
// instead of each of them trying again in turn.
func TestFailedDialFailsWaiters(t *testing.T) {
	const n = 5
	var entered atomic.Int32
	release := make(chan struct{})
	refused := errors.New("connection refused (test)")
	e := newEnv(t, func(_ *env, _ *hbone.ServerConfig, p *hbone.PoolConfig) {
		p.Dialer = func(context.Context, string, string) (net.Conn, error) {
			<-release
			return nil, refused
		}
	})
	var wg sync.WaitGroup
	var calls atomic.Int32
	for range n {
		wg.Go(func() {
			entered.Add(1)
			_, err := e.pool.Dial(context.Background(), e.key(), e.app)
			calls.Add(1)
			if !errors.Is(err, refused) {
				t.Errorf("Dial: %v, want the dial error", err)
			}
		})
	}
	eventually(t, "all callers to start", func() bool { return entered.Load() == n })
	close(release)
	wg.Wait()
}

func TestStreamCapOpensSecondConnection(t *testing.T) {
	e := newEnv(t, func(_ *env, _ *hbone.ServerConfig, p *hbone.PoolConfig) { p.MaxStreamsPerConn = 2 })
	a, b := e.dial(t), e.dial(t)
	if d := e.dials.Load(); d != 1 {
		t.Fatalf("%d connections for 2 tunnels with a cap of 2, want 1", d)
	}
	c := e.dial(t)
	if d := e.dials.Load(); d != 2 {
		t.Fatalf("%d connections for 3 tunnels with a cap of 2, want 2", d)
	}
	for _, tun := range []*hbone.Tunnel{b, c} {
		if got := roundTrip(t, tun, []byte("hi")); string(got) != "hi" {
			t.Errorf("echoed %q", got)
		}
	}
	// A freed slot is reused instead of dialing again.
	a.Close()
	d := e.dial(t)
	if n := e.dials.Load(); n != 2 {
		t.Errorf("%d connections after reusing a freed slot, want 2", n)
	}
	for _, tun := range []*hbone.Tunnel{b, c, d} {
		tun.Close()
	}
	if n := e.pool.PooledConns(e.key()); n != 2 {
		t.Errorf("pool holds %d connections, want 2", n)
	}
}

func TestIdleEviction(t *testing.T) {
	e := newEnv(t, func(_ *env, _ *hbone.ServerConfig, p *hbone.PoolConfig) { p.IdleTimeout = 20 * time.Millisecond })
	busyKey := e.key()
	idleKey := hbone.Key{Source: otherID, Destination: serverID, Address: e.hbone}

	busy := e.dial(t)
	defer busy.Close()
	idle, err := e.pool.Dial(context.Background(), idleKey, e.app)
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, idle, []byte("once"))
	idle.Close()

	eventually(t, "the idle connection to be evicted", func() bool { return e.pool.PooledConns(idleKey) == 0 })
	eventually(t, "the idle connection to be closed", func() bool { return e.pool.OpenConns() == 1 })
	// The janitor has run past the timeout: a connection with a tunnel on
	// it stayed.
	if n := e.pool.PooledConns(busyKey); n != 1 {
		t.Fatalf("busy key has %d connections, want 1", n)
	}
	if got := roundTrip(t, busy, []byte("still here")); string(got) != "still here" {
		t.Errorf("busy tunnel echoed %q", got)
	}

	again, err := e.pool.Dial(context.Background(), idleKey, e.app)
	if err != nil {
		t.Fatal(err)
	}
	again.Close()
	if d := e.dials.Load(); d != 3 {
		t.Errorf("%d dials, want 3 (busy, idle, idle again)", d)
	}
}

// A server's GOAWAY takes its connection out of the pool at once; the next
// Dial reconnects while tunnels already open finish undisturbed, and the
// server's Shutdown returns when they have.
func TestGoAwayEvictsAndNextDialReconnects(t *testing.T) {
	ca := newCA(t)
	app := startApp(t, echo)
	cfg := hbone.ServerConfig{
		Certificate: ca.svid(t, serverID),
		Bundle:      ca.bundle,
		Addrs:       []netip.Addr{podIP},
		Logger:      testLogger(t),
	}
	old, oldAddr := startServer(t, cfg)
	_, newAddr := startServer(t, cfg)

	// The key keeps naming the old address (the pod's IP does not change
	// when its ztunnel restarts); the dialer decides where it lands.
	var target atomic.Value
	target.Store(oldAddr.String())
	var dials atomic.Int32
	var d net.Dialer
	pool, err := hbone.NewPool(hbone.PoolConfig{
		Certificate: ca.certs(t),
		Bundle:      ca.bundle,
		Logger:      testLogger(t),
		Dialer: func(ctx context.Context, network, _ string) (net.Conn, error) {
			dials.Add(1)
			return d.DialContext(ctx, network, target.Load().(string))
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	key := hbone.Key{Source: clientID, Destination: serverID, Address: oldAddr}

	first, err := pool.Dial(context.Background(), key, app)
	if err != nil {
		t.Fatal(err)
	}
	shutdown := make(chan error, 1)
	go func() { shutdown <- old.Shutdown(context.Background()) }()

	eventually(t, "GOAWAY to evict the connection", func() bool { return pool.PooledConns(key) == 0 })
	target.Store(newAddr.String())
	second, err := pool.Dial(context.Background(), key, app)
	if err != nil {
		t.Fatal(err)
	}
	if n := dials.Load(); n != 2 {
		t.Errorf("%d dials, want 2", n)
	}
	if got := roundTrip(t, second, []byte("new")); string(got) != "new" {
		t.Errorf("new tunnel echoed %q", got)
	}
	second.Close()

	select {
	case err := <-shutdown:
		t.Fatalf("Shutdown returned (%v) while a stream was open", err)
	default:
	}
	if got := roundTrip(t, first, []byte("old")); string(got) != "old" {
		t.Errorf("draining tunnel echoed %q", got)
	}
	first.Close()
	if err := <-shutdown; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	eventually(t, "the drained connection to close", func() bool { return pool.OpenConns() == 1 })
}

func TestWrongPeerIdentityRefused(t *testing.T) {
	e := newEnv(t)
	key := e.key()
	key.Destination = otherID // the server is serverID
	_, err := e.pool.Dial(context.Background(), key, e.app)
	if err == nil {
		t.Fatal("Dial succeeded to a server with the wrong identity")
	}
	var se *hbone.StatusError
	if errors.As(err, &se) {
		t.Errorf("got status %d; the client itself must refuse", se.Code)
	}
	if !strings.Contains(err.Error(), otherID.String()) {
		t.Errorf("error %q does not name the expected identity", err)
	}
	if n := e.appDials.Load(); n != 0 {
		t.Errorf("server dialed the application %d times", n)
	}
	if n := e.pool.OpenConns(); n != 0 {
		t.Errorf("pool kept %d connections", n)
	}
}

func TestDialCancelledWhileWaitingForAnswer(t *testing.T) {
	entered := make(chan struct{}, 1)
	release := make(chan struct{})
	e := newEnv(t, func(_ *env, s *hbone.ServerConfig, p *hbone.PoolConfig) {
		p.MaxStreamsPerConn = 1
		s.Authorize = func(ctx context.Context, _ hbone.Peer, _ netip.AddrPort) error {
			select {
			case entered <- struct{}{}:
			default:
			}
			select {
			case <-release:
			case <-ctx.Done():
			}
			return nil
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := e.pool.Dial(ctx, e.key(), e.app)
		errc <- err
	}()
	<-entered
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("Dial: %v, want context.Canceled", err)
	}
	close(release)
	// The cancelled tunnel gave its only slot back: no second connection.
	tun := e.dial(t)
	tun.Close()
	if d := e.dials.Load(); d != 1 {
		t.Errorf("%d dials, want 1", d)
	}
}

func TestPoolClose(t *testing.T) {
	e := newEnv(t)
	tun := e.dial(t)
	if err := e.pool.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := tun.Read(make([]byte, 1)); err == nil {
		t.Error("tunnel still readable after the pool closed")
	}
	tun.Close()
	if _, err := e.pool.Dial(context.Background(), e.key(), e.app); !errors.Is(err, hbone.ErrPoolClosed) {
		t.Errorf("Dial after Close: %v, want ErrPoolClosed", err)
	}
	if n := e.pool.OpenConns(); n != 0 {
		t.Errorf("%d connections open after Close", n)
	}
}

func TestDialRejectsInvalidKey(t *testing.T) {
	e := newEnv(t)
	for name, key := range map[string]hbone.Key{
		"no source":      {Destination: serverID, Address: e.hbone},
		"no destination": {Source: clientID, Address: e.hbone},
		"no address":     {Source: clientID, Destination: serverID},
		"bad identity":   {Source: clientID, Destination: spiffe.Identity{TrustDomain: "x y", Namespace: "a", ServiceAccount: "b"}, Address: e.hbone},
	} {
		if _, err := e.pool.Dial(context.Background(), key, e.app); err == nil {
			t.Errorf("%s: Dial succeeded", name)
		}
	}
	if _, err := e.pool.Dial(context.Background(), e.key(), netip.AddrPort{}); err == nil {
		t.Error("Dial with no authority succeeded")
	}
	if d := e.dials.Load(); d != 0 {
		t.Errorf("%d dials for invalid input", d)
	}
}

func TestNewPoolValidates(t *testing.T) {
	ca := newCA(t)
	if _, err := hbone.NewPool(hbone.PoolConfig{Bundle: ca.bundle}); err == nil {
		t.Error("NewPool without a certificate provider succeeded")
	}
	if _, err := hbone.NewPool(hbone.PoolConfig{Certificate: ca.certs(t)}); err == nil {
		t.Error("NewPool without a bundle succeeded")
	}
}
