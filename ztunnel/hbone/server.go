package hbone

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/cairnmesh/cairn/internal/pki"
)

// Defaults for ServerConfig and PoolConfig.
const (
	DefaultCertificateWait  = 10 * time.Second
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultDialTimeout      = 10 * time.Second
	DefaultMaxHeaderBytes   = 16 << 10
)

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = errors.New("hbone: server closed")

// ServerConfig configures a Server: the inbound side of HBONE for one pod.
type ServerConfig struct {
	// Certificate is the pod's certificate. It is read at every handshake,
	// so rotation needs nothing else. While it has none yet, a handshake
	// waits up to CertificateWait for it.
	Certificate x509svid.Source
	// Bundle holds the roots client certificates must chain to. Any
	// workload identity whose certificate verifies is let in; Authorize
	// decides what it may reach.
	Bundle x509bundle.Source
	// Addrs are the pod's own IPs. A CONNECT must name one of them: a
	// Server never relays to another address.
	Addrs []netip.Addr
	// Authorize decides whether peer may connect to dst (L4 policy). A
	// non-nil error refuses with 403. Nil allows everything.
	Authorize func(ctx context.Context, peer Peer, dst netip.AddrPort) error
	// Dial connects to the application. Nil means a net.Dialer. Its
	// context carries the client (PeerFrom), so that it can connect from
	// the client's address.
	Dial func(ctx context.Context, network, address string) (net.Conn, error)
	// Logger receives one line per closed or refused connection. Nil
	// discards.
	Logger *slog.Logger
	// Observer, if not nil, is told about connections, for metrics.
	Observer Observer

	// CertificateWait bounds how long a handshake waits for Certificate to
	// have a certificate. Default DefaultCertificateWait.
	CertificateWait time.Duration
	// HandshakeTimeout bounds the TLS handshake, not counting the wait for
	// our own certificate: a client that sends nothing is dropped after it.
	// Default DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
	// DialTimeout bounds the connection to the application. Default
	// DefaultDialTimeout.
	DialTimeout time.Duration
	// MaxHeaderBytes limits the request header list: a longer one is
	// answered 431, and a single field longer than the whole limit is a
	// connection error (HPACK refuses to decode it). Default
	// DefaultMaxHeaderBytes.
	MaxHeaderBytes int

	// Limiter holds the node-wide limits (connections, handshakes,
	// streams, buffered bytes) that every pod's Server shares. Nil gives
	// the Server a Limiter of its own with DefaultLimits.
	Limiter *Limiter
	// WriteTimeout bounds a write to the client or to the application
	// that the other end does not take: one that stopped reading. Default
	// DefaultWriteTimeout.
	WriteTimeout time.Duration
	// IdleTimeout closes a connection (GOAWAY, then close) that has had no
	// stream for this long. Default DefaultServerIdleTimeout.
	IdleTimeout time.Duration
	// MaxStreamsPerConnection is the streams served at once on one
	// connection (SETTINGS_MAX_CONCURRENT_STREAMS). Default
	// DefaultMaxStreamsPerConnection.
	MaxStreamsPerConnection int
	// ConnectionWindow is a connection's receive window: the most it holds
	// for applications slower than the client. At least 64 KiB. Default
	// DefaultConnectionWindow.
	ConnectionWindow int
	// MaxControlFrames bounds the frames a connection owes a client that
	// does not read them (acknowledgements, resets, window updates).
	// Default DefaultMaxControlFrames.
	MaxControlFrames int
	// MaxIdleFrames bounds the frames in a row that carry nothing (window
	// updates, empty frames, settings, refused requests, ...). Default
	// DefaultMaxIdleFrames.
	MaxIdleFrames int
}

// connConfig is the per-connection part of cfg.
func (cfg *ServerConfig) connConfig(adm *admission) connConfig {
	return connConfig{
		maxHeaderBytes: cfg.MaxHeaderBytes,
		window:         int64(cfg.ConnectionWindow),
		maxStreams:     uint32(cfg.MaxStreamsPerConnection),
		maxControl:     cfg.MaxControlFrames,
		maxIdleFrames:  int32(cfg.MaxIdleFrames),
		writeTimeout:   cfg.WriteTimeout,
		idleTimeout:    cfg.IdleTimeout,
		adm:            adm,
	}
}

// Server accepts HBONE: mutual TLS 1.3, then HTTP/2 CONNECT requests to the
// pod's own addresses, each proxied to the application.
//
// Half-close: when the client ends its stream, the application reads EOF
// (CloseWrite) and may go on sending; when the application closes its side,
// the client reads EOF and may go on sending. The tunnel ends when both
// directions have.
type Server struct {
	cfg       ServerConfig
	log       *slog.Logger
	obs       Observer
	own       map[netip.Addr]bool
	tlsConfig *tls.Config

	// ctx is the parent of every connection's context; Close cancels it.
	ctx    context.Context
	cancel context.CancelFunc
	active tracker // connection and handler goroutines

	lastOverloadLog atomic.Int64 // UnixNano of the last warning about the limits

	mu        sync.Mutex
	closing   bool
	done      chan struct{} // closed when closing starts
	listeners map[net.Listener]struct{}
	conns     map[*tls.Conn]*conn // nil until HTTP/2 starts
}

// NewServer checks cfg, fills in defaults and returns a Server.
func NewServer(cfg ServerConfig) (*Server, error) {
	if cfg.Certificate == nil {
		return nil, errors.New("hbone: server needs a certificate source")
	}
	if cfg.Bundle == nil {
		return nil, errors.New("hbone: server needs a trust bundle")
	}
	if len(cfg.Addrs) == 0 {
		return nil, errors.New("hbone: server needs the pod's addresses")
	}
	own := make(map[netip.Addr]bool, len(cfg.Addrs))
	for _, a := range cfg.Addrs {
		if !a.IsValid() {
			return nil, fmt.Errorf("hbone: invalid pod address %v", a)
		}
		own[a.Unmap()] = true
	}
	if cfg.Dial == nil {
		cfg.Dial = (&net.Dialer{}).DialContext
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Observer == nil {
		cfg.Observer = nopObserver{}
	}
	setDefault(&cfg.CertificateWait, DefaultCertificateWait)
	setDefault(&cfg.HandshakeTimeout, DefaultHandshakeTimeout)
	setDefault(&cfg.DialTimeout, DefaultDialTimeout)
	setDefault(&cfg.MaxHeaderBytes, DefaultMaxHeaderBytes)
	setDefault(&cfg.WriteTimeout, DefaultWriteTimeout)
	setDefault(&cfg.IdleTimeout, DefaultServerIdleTimeout)
	setDefault(&cfg.MaxStreamsPerConnection, DefaultMaxStreamsPerConnection)
	setDefault(&cfg.ConnectionWindow, DefaultConnectionWindow)
	setDefault(&cfg.MaxControlFrames, DefaultMaxControlFrames)
	setDefault(&cfg.MaxIdleFrames, DefaultMaxIdleFrames)
	if cfg.ConnectionWindow < initialWindow || cfg.ConnectionWindow > maxWindow {
		return nil, fmt.Errorf("hbone: connection window %d outside %d-%d", cfg.ConnectionWindow, initialWindow, maxWindow)
	}
	if cfg.MaxStreamsPerConnection > 1<<31-1 || cfg.MaxIdleFrames > 1<<31-1 {
		return nil, errors.New("hbone: per-connection limits must fit 31 bits")
	}
	if cfg.Limiter == nil {
		var err error
		if cfg.Limiter, err = NewLimiter(DefaultLimits()); err != nil {
			return nil, err
		}
	}

	s := &Server{
		cfg:       cfg,
		log:       cfg.Logger,
		obs:       cfg.Observer,
		own:       own,
		tlsConfig: serverTLSConfig(cfg.Certificate, cfg.Bundle, cfg.CertificateWait, cfg.HandshakeTimeout),
		done:      make(chan struct{}),
		listeners: make(map[net.Listener]struct{}),
		conns:     make(map[*tls.Conn]*conn),
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s, nil
}

func setDefault[T time.Duration | int](v *T, def T) {
	if *v <= 0 {
		*v = def
	}
}

// Serve accepts connections on l until Shutdown or Close, which close l.
// It returns ErrServerClosed then, or the error that stopped accepting.
// Serve may be called for several listeners.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		l.Close()
		return ErrServerClosed
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
	}()

	var backoff time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			if s.isClosing() {
				return ErrServerClosed
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("hbone: accepting: %w", err)
			}
			// Out of file descriptors and the like: wait for it to pass
			// instead of giving up on the pod.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.log.Warn("accept failed; retrying", "error", err, "backoff", backoff)
			select {
			case <-time.After(backoff):
			case <-s.done:
			}
			continue
		}
		backoff = 0
		adm, ok := s.cfg.Limiter.admit(addrPort(c.RemoteAddr()).Addr())
		if !ok {
			// Over the node's connection limit, or the client's share
			// of it: closed before it costs anything more.
			s.overloaded(addrPort(c.RemoteAddr()), errTooManyConns)
			resetConn(c)
			continue
		}
		if !s.admit() {
			adm.release()
			c.Close()
			continue
		}
		go s.serveConn(c, adm)
	}
}

// errTooManyConns refuses a connection over the connection limits.
var errTooManyConns = errors.New("at the limit of HBONE connections for the node or for this client")

// overloadLogEvery spaces the warnings about refusals for the node's
// limits: a flood of connections must not become a flood of log lines.
const overloadLogEvery = 10 * time.Second

// overloaded reports a connection turned away by the node's limits: in the
// Limiter's counts (metrics), and in a warning at most every
// overloadLogEvery.
func (s *Server) overloaded(src netip.AddrPort, err error) {
	now := time.Now().UnixNano()
	last := s.lastOverloadLog.Load()
	if now-last < int64(overloadLogEvery) || !s.lastOverloadLog.CompareAndSwap(last, now) {
		s.log.Debug("connection refused", "reason", "overloaded", "src", src, "error", err)
		return
	}
	st := s.cfg.Limiter.Stats()
	s.log.Warn("HBONE connections refused at the node's limits", "src", src, "error", err,
		"in_use", st.InUse, "max", st.Max, "refused_so_far", st.Refused)
}

// resetConn closes c with a TCP reset: nothing lingers for a client that
// was refused.
func resetConn(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
}

func (s *Server) isClosing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

// admit counts a new connection's goroutine unless the server is closing.
func (s *Server) admit() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	s.active.add()
	return true
}

// serveConn runs the handshake and then HTTP/2 on one connection;
// it is the connection's reader. adm is its hold on the node's limits.
func (s *Server) serveConn(c net.Conn, adm *admission) {
	defer s.active.done()
	defer adm.release()
	peerAddr := addrPort(c.RemoteAddr())
	bc := newBatchConn(c)
	tc := tls.Server(bc, s.tlsConfig)
	if !s.trackConn(tc) {
		c.Close()
		return
	}
	defer s.untrackConn(tc)
	defer c.Close()

	// One deadline from accept covers the wait for a handshake slot, the
	// handshake and the client's preface: a connection that sends nothing,
	// or stops half way, is closed after HandshakeTimeout however it
	// stalls. It is a deadline on the connection (see serverTLSConfig);
	// s.ctx aborts it on Close.
	deadline := time.Now().Add(s.cfg.HandshakeTimeout)
	if err := c.SetDeadline(deadline); err != nil {
		return
	}
	wctx, cancel := context.WithDeadline(s.ctx, deadline)
	err := adm.startHandshake(wctx)
	cancel()
	if err != nil {
		s.overloaded(peerAddr, err)
		return
	}
	if err := tc.HandshakeContext(s.ctx); err != nil {
		s.refuseConn(Refusal{Peer: Peer{Addr: peerAddr}, Reason: ReasonHandshake, Err: err})
		return
	}
	st := tc.ConnectionState()
	if st.NegotiatedProtocol != alpnH2 {
		// Go's TLS server lets a client that offers only http/1.1 (or no
		// ALPN at all) through with no protocol, so this is checked here.
		s.refuseConn(Refusal{Peer: Peer{Addr: peerAddr}, Reason: ReasonALPN,
			Err: fmt.Errorf("client negotiated %q, not %q", st.NegotiatedProtocol, alpnH2)})
		return
	}
	id, err := pki.PeerIdentity(st)
	if err != nil { // the handshake's authorizer already checked this
		s.refuseConn(Refusal{Peer: Peer{Addr: peerAddr}, Reason: ReasonHandshake, Err: err})
		return
	}
	h := &inbound{s: s, peer: Peer{Identity: id, Addr: peerAddr}}
	hc := newConn(tc, bc, false, s.cfg.connConfig(adm), s.log)
	hc.onRequest = h.admit
	if err := hc.readPreface(); err != nil {
		s.refuseConn(Refusal{Peer: h.peer, Reason: ReasonPreface, Err: err})
		return
	}
	if err := c.SetDeadline(time.Time{}); err != nil {
		return
	}
	adm.endHandshake()
	if err := hc.start(); err != nil {
		hc.close()
		return
	}
	if !s.startConn(tc, hc) {
		// Shutdown began during the handshake: take no streams.
		hc.goAway()
	}
	var wg sync.WaitGroup
	wg.Go(hc.controlWriter)
	err = hc.readLoop()
	wg.Wait()
	switch {
	case errors.Is(err, errFlood):
		s.obs.Refused(Refusal{Peer: h.peer, Reason: ReasonFlood, Err: err})
		s.log.Warn("HBONE connection ended: its client flooded it", "src", peerAddr, "src_identity", id.String(), "error", err)
	case !errors.Is(err, errConnClosed):
		s.log.Debug("hbone connection ended", "src", peerAddr, "src_identity", id.String(), "error", err)
	}
}

func (s *Server) refuseConn(r Refusal) {
	s.obs.Refused(r)
	s.log.Info("connection refused", "reason", r.Reason, "src", r.Peer.Addr, "error", r.Err)
}

func (s *Server) trackConn(tc *tls.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	s.conns[tc] = nil
	return true
}

// startConn records tc's HTTP/2 connection, for Shutdown. It reports
// false if Shutdown has begun.
func (s *Server) startConn(tc *tls.Conn, hc *conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.conns[tc] = hc
	return !s.closing
}

func (s *Server) untrackConn(tc *tls.Conn) {
	s.mu.Lock()
	delete(s.conns, tc)
	s.mu.Unlock()
}

// stopAccepting marks the server closing and closes its listeners. It
// reports whether this call did it.
func (s *Server) stopAccepting() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	s.closing = true
	close(s.done)
	for l := range s.listeners {
		l.Close()
	}
	return true
}

// Shutdown stops accepting, sends GOAWAY on every connection so that
// clients open no new streams, and waits until the running streams have
// ended and the connections closed. If ctx ends first, it closes whatever
// is left (as Close does) and returns ctx's error.
func (s *Server) Shutdown(ctx context.Context) error {
	s.stopAccepting()
	s.mu.Lock()
	for _, hc := range s.conns {
		if hc != nil {
			hc.goAway()
		}
	}
	s.mu.Unlock()
	select {
	case <-s.active.idle():
		s.cancel()
		return nil
	case <-ctx.Done():
		s.Close()
		return ctx.Err()
	}
}

// Close closes the listeners and every connection at once, cancelling
// their streams, and waits for the connection goroutines to end.
func (s *Server) Close() error {
	s.stopAccepting()
	s.mu.Lock()
	for tc := range s.conns {
		// Closing the TCP connection under TLS ends reads and writes
		// without waiting to send close_notify to a peer that may not read.
		// It comes before cancelling the handlers so that none of them
		// can still end its stream as if all went well.
		tc.NetConn().Close()
	}
	s.mu.Unlock()
	s.cancel()
	<-s.active.idle()
	return nil
}

// addrPort converts a socket address, mapping IPv4-in-IPv6 to IPv4.
func addrPort(a net.Addr) netip.AddrPort {
	var ap netip.AddrPort
	switch a := a.(type) {
	case *net.TCPAddr:
		ap = a.AddrPort()
	case nil:
		return ap
	default:
		ap, _ = netip.ParseAddrPort(a.String())
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
