package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"

	"github.com/cairnmesh/cairn/waypoint/state"
)

// tcpProxy carries the connections of tcp_proxy filter chains: each to an
// endpoint of the chain's cluster, bytes copied both ways with half-close.
type tcpProxy struct {
	cfg   Config
	mu    sync.Mutex
	conns map[net.Conn]struct{}
	ctx   context.Context
	stop  context.CancelFunc
	once  sync.Once
}

func (t *tcpProxy) init() {
	t.once.Do(func() {
		t.conns = map[net.Conn]struct{}{}
		t.ctx, t.stop = context.WithCancel(context.Background())
	})
}

func (t *tcpProxy) serve(c net.Conn, dst netip.AddrPort, chain *state.Chain, wg *sync.WaitGroup) error {
	t.init()
	// The WaitGroup is added to under the lock that closeAll takes, so no
	// Add can follow the Wait of Shutdown (which calls closeAll first).
	t.mu.Lock()
	if t.ctx.Err() != nil {
		t.mu.Unlock()
		return net.ErrClosed
	}
	t.conns[c] = struct{}{}
	wg.Add(1)
	t.mu.Unlock()
	go func() {
		defer wg.Done()
		defer t.untrack(c)
		t.proxy(c, dst, chain)
	}()
	return nil
}

func (t *tcpProxy) proxy(c net.Conn, dst netip.AddrPort, chain *state.Chain) {
	defer c.Close()
	snap := t.cfg.State.Load()
	cluster := snap.Cluster(chain.TCPCluster)
	if cluster == nil {
		t.cfg.Log.Debug("waypoint: TCP cluster not found", "dst", dst, "cluster", chain.TCPCluster)
		return
	}
	ep, err := t.cfg.Upstream.Pick(cluster, snap.Endpoints(cluster), nil)
	if err != nil {
		t.cfg.Log.Debug("waypoint: TCP destination without endpoints", "dst", dst, "cluster", cluster.Name)
		return
	}
	done := ep.Begin()
	defer done()
	up, err := t.cfg.Upstream.Dial(t.ctx, ep, cluster.ConnectTimeout)
	if err != nil {
		t.cfg.Log.Debug("waypoint: TCP connect failed", "dst", dst, "err", err)
		return
	}
	if !t.track(up) {
		up.Close()
		return
	}
	defer t.untrack(up)
	defer up.Close()
	var copies sync.WaitGroup
	copies.Add(2)
	go func() { defer copies.Done(); pipe(up, c) }()
	go func() { defer copies.Done(); pipe(c, up) }()
	copies.Wait()
}

// pipe copies src to dst, then half-closes dst's write side (or closes it).
func pipe(dst, src net.Conn) {
	_, err := io.Copy(dst, src)
	if cw, ok := dst.(interface{ CloseWrite() error }); ok && err == nil {
		_ = cw.CloseWrite()
	} else {
		_ = dst.Close()
	}
	if err != nil && !errors.Is(err, net.ErrClosed) {
		_ = src.Close()
	}
}

func (t *tcpProxy) track(c net.Conn) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.ctx.Err() != nil {
		return false
	}
	t.conns[c] = struct{}{}
	return true
}

func (t *tcpProxy) untrack(c net.Conn) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.conns, c)
}

func (t *tcpProxy) closeAll() {
	t.init()
	t.mu.Lock()
	defer t.mu.Unlock()
	t.stop()
	for c := range t.conns {
		_ = c.Close()
	}
}
