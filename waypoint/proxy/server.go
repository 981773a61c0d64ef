// Package proxy is the waypoint's request path: it serves HTTP/1.1 and
// HTTP/2 (prior knowledge) on each tunnel it is handed, decides each
// request with package route against the current state.Snapshot, and
// does it: answers locally (redirect, direct response, errors) or
// forwards through package upstream, streaming bodies both ways, with
// route timeouts, retries, header mutations and mirrors.
package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/cairnmesh/cairn/internal/spiffe"
	"github.com/cairnmesh/cairn/waypoint/route"
	"github.com/cairnmesh/cairn/waypoint/state"
	"github.com/cairnmesh/cairn/waypoint/upstream"
)

// Snapshots gives the current configuration (a *state.Store).
type Snapshots interface {
	Load() *state.Snapshot
}

// Config configures a Server.
type Config struct {
	State    Snapshots
	Upstream *upstream.Pool
	// Rand drives weighted clusters and mirror fractions; it must be safe
	// for concurrent use (default route.GlobalRand).
	Rand   route.Rand
	Limits Limits
	Log    *slog.Logger
}

// Peer is the client of a tunnel, as the HBONE server authenticated it.
type Peer struct {
	Identity spiffe.Identity
	Addr     netip.AddrPort
}

// ErrNoChain is returned by ServeConn when no filter chain takes the
// destination: the caller refuses the tunnel.
var ErrNoChain = errors.New("waypoint: no filter chain for this destination")

// Server serves the tunnels it is handed. Its goroutines (the HTTP
// servers' and the mirror workers') stop with Shutdown or Close.
type Server struct {
	cfg     Config
	handler *handler
	servers [3]*http.Server // by state.Codec
	lns     [3]*connListener
	mirror  *mirrorQueue
	wg      sync.WaitGroup
	tcp     *tcpProxy
}

// New returns a running Server.
func New(cfg Config) (*Server, error) {
	if cfg.State == nil || cfg.Upstream == nil {
		return nil, errors.New("proxy: State and Upstream are required")
	}
	if err := cfg.Limits.Validate(); err != nil {
		return nil, err
	}
	cfg.Limits = cfg.Limits.withDefaults()
	if cfg.Rand == nil {
		cfg.Rand = route.GlobalRand{}
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg}
	s.mirror = newMirrorQueue(cfg)
	s.handler = newHandler(cfg, s.mirror)
	s.tcp = &tcpProxy{cfg: cfg}
	for codec := range s.servers {
		p := new(http.Protocols)
		switch state.Codec(codec) {
		case state.CodecHTTP1:
			p.SetHTTP1(true)
		case state.CodecHTTP2:
			p.SetUnencryptedHTTP2(true)
		default:
			p.SetHTTP1(true)
			p.SetUnencryptedHTTP2(true)
		}
		srv := &http.Server{
			Handler:           s.handler,
			Protocols:         p,
			MaxHeaderBytes:    cfg.Limits.MaxHeaderBytes,
			ReadHeaderTimeout: cfg.Limits.ReadHeaderTimeout,
			IdleTimeout:       cfg.Limits.IdleTimeout,
			HTTP2: &http.HTTP2Config{
				MaxConcurrentStreams: cfg.Limits.MaxConcurrentStreams,
			},
			ConnContext: connContext,
			ErrorLog:    slog.NewLogLogger(cfg.Log.Handler(), slog.LevelDebug),
		}
		ln := newConnListener()
		s.servers[codec], s.lns[codec] = srv, ln
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				cfg.Log.Error("waypoint HTTP server stopped", "codec", state.Codec(codec).String(), "err", err)
			}
		}()
	}
	return s, nil
}

// Handler is the request handler, for serving on an ordinary listener in
// tests; a request served there must carry its destination (WithConn).
func (s *Server) Handler() http.Handler { return s.handler }

// MirrorStats returns the mirrored requests sent and dropped so far.
func (s *Server) MirrorStats() (sent, dropped uint64) {
	return s.mirror.sent.Load(), s.mirror.dropped.Load()
}

// ServeConn serves one tunnel to dst from peer: HTTP per the filter
// chain's codec, or TCP to the chain's cluster. It returns once the
// connection is handed over; the Server then owns it. ErrNoChain (the
// connection is not touched) if no chain takes dst.
func (s *Server) ServeConn(c net.Conn, dst netip.AddrPort, peer Peer) error {
	chain := s.cfg.State.Load().Chain(dst)
	if chain == nil {
		return ErrNoChain
	}
	if chain.HTTP == nil {
		return s.tcp.serve(c, dst, chain, &s.wg)
	}
	info := newConnInfo(dst, peer)
	ln := s.lns[chain.HTTP.Codec]
	if err := ln.push(&infoConn{Conn: c, info: info}); err != nil {
		return fmt.Errorf("waypoint: handing over a connection: %w", err)
	}
	return nil
}

// Shutdown stops taking connections and waits for the requests in flight
// (until ctx ends), then stops the mirror workers.
func (s *Server) Shutdown(ctx context.Context) error {
	var errs []error
	for _, srv := range s.servers {
		if err := srv.Shutdown(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	s.tcp.closeAll()
	s.mirror.stop()
	s.wg.Wait()
	return errors.Join(errs...)
}

// Close closes everything at once.
func (s *Server) Close() error {
	var errs []error
	for _, srv := range s.servers {
		if err := srv.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	s.tcp.closeAll()
	s.mirror.stop()
	s.wg.Wait()
	return errors.Join(errs...)
}

// connInfo is what the request path knows of a connection.
type connInfo struct {
	dst       netip.AddrPort
	peer      Peer
	principal string // the peer's SPIFFE ID, made once per connection
}

func newConnInfo(dst netip.AddrPort, peer Peer) *connInfo {
	ci := &connInfo{dst: dst, peer: peer}
	if !peer.Identity.IsZero() {
		ci.principal = peer.Identity.String()
	}
	return ci
}

type connInfoKey struct{}

// WithConn returns ctx carrying a connection's destination and peer, as
// ServeConn's connections carry them; for requests served by Handler.
func WithConn(ctx context.Context, dst netip.AddrPort, peer Peer) context.Context {
	return context.WithValue(ctx, connInfoKey{}, newConnInfo(dst, peer))
}

func connContext(ctx context.Context, c net.Conn) context.Context {
	if ic, ok := c.(*infoConn); ok {
		return context.WithValue(ctx, connInfoKey{}, ic.info)
	}
	return ctx
}

// infoConn is a handed-over connection with what ServeConn knew of it.
type infoConn struct {
	net.Conn
	info *connInfo
}

// connListener is the net.Listener of one http.Server: it "accepts" the
// connections ServeConn hands over.
type connListener struct {
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func newConnListener() *connListener {
	return &connListener{ch: make(chan net.Conn), done: make(chan struct{})}
}

func (l *connListener) push(c net.Conn) error {
	select {
	case l.ch <- c:
		return nil
	case <-l.done:
		return net.ErrClosed
	}
}

func (l *connListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *connListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *connListener) Addr() net.Addr { return tunnelAddr{} }

type tunnelAddr struct{}

func (tunnelAddr) Network() string { return "hbone" }
func (tunnelAddr) String() string  { return "hbone" }

// backoff sleeps a fully jittered exponential back-off: a random time up
// to min(base * 2^retry, max). False if ctx ended first.
func backoff(ctx context.Context, rnd route.Rand, retry int, base, maxInterval time.Duration) bool {
	d := base << min(retry, 20)
	if d > maxInterval || d <= 0 {
		d = maxInterval
	}
	if d <= 0 {
		return ctx.Err() == nil
	}
	wait := time.Duration(rnd.Uint64N(uint64(d)) + 1)
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
