//lint:file-ignore SA1019 HBONE is built on golang.org/x/net/http2 (a required library), whose types v0.62 marks deprecated in favour of net/http

package hbone

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"golang.org/x/net/http2"

	"github.com/cairnmesh/cairn/internal/pki"
)

// Defaults for ServerConfig and PoolConfig.
const (
	DefaultCertificateWait  = 10 * time.Second
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultDialTimeout      = 10 * time.Second
	DefaultMaxHeaderBytes   = 16 << 10
)

// HTTP/2 sizing, from measurements on loopback (2 cores): frames up to
// 1 MiB instead of the 16 KiB default are what matters most for throughput
// (+60% on a download, -30% CPU per byte). A 4 MiB stream window keeps a
// single stream at full speed; more gained nothing. The connection window
// is both the memory bound per connection and the point where streams whose
// reader stalls start to block their neighbours (the window is only
// returned as the application reads), so it holds eight full stream
// windows.
const (
	maxFrameSize     = 1 << 20
	streamWindow     = 4 << 20
	connectionWindow = 8 * streamWindow
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
	// Dial connects to the application. Nil means a net.Dialer.
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
	// MaxHeaderBytes limits the request header block. The HTTP/2 layer
	// enforces it before any handler runs (431, or a connection error when
	// one field alone is too large), so these refusals reach neither the
	// Observer nor the log. Default DefaultMaxHeaderBytes.
	MaxHeaderBytes int
}

// Server accepts HBONE: mutual TLS 1.3, then HTTP/2 CONNECT requests to the
// pod's own addresses, each proxied to the application.
//
// Half-close: when the client ends its stream, the application reads EOF
// (CloseWrite) and may go on sending; when the application closes its side,
// the client reads EOF. Go's HTTP/2 server ends a response only when its
// handler returns, after which the request body cannot be read, so from
// then on whatever the client still sends is discarded and its writes
// fail: an application that half-closes and keeps reading is not served.
type Server struct {
	cfg       ServerConfig
	log       *slog.Logger
	obs       Observer
	own       map[netip.Addr]bool
	tlsConfig *tls.Config
	h1        *http.Server // carries settings and the graceful shutdown hook for h2
	h2        *http2.Server

	// ctx is the parent of every connection's context; Close cancels it.
	ctx    context.Context
	cancel context.CancelFunc
	active tracker // connection and handler goroutines

	mu        sync.Mutex
	closing   bool
	done      chan struct{} // closed when closing starts
	listeners map[net.Listener]struct{}
	conns     map[*tls.Conn]struct{}
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

	s := &Server{
		cfg:       cfg,
		log:       cfg.Logger,
		obs:       cfg.Observer,
		own:       own,
		tlsConfig: serverTLSConfig(cfg.Certificate, cfg.Bundle, cfg.CertificateWait, cfg.HandshakeTimeout),
		h1: &http.Server{
			MaxHeaderBytes: cfg.MaxHeaderBytes,
			// x/net/http2 logs protocol trouble here; keep it off the
			// global logger.
			ErrorLog: slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelDebug),
		},
		h2: &http2.Server{
			MaxReadFrameSize:             maxFrameSize,
			MaxUploadBufferPerStream:     streamWindow,
			MaxUploadBufferPerConnection: connectionWindow,
		},
		done:      make(chan struct{}),
		listeners: make(map[net.Listener]struct{}),
		conns:     make(map[*tls.Conn]struct{}),
	}
	// ConfigureServer registers the h2 connections' graceful shutdown
	// (GOAWAY) as an OnShutdown hook of h1; it is the only public trigger.
	if err := http2.ConfigureServer(s.h1, s.h2); err != nil {
		return nil, fmt.Errorf("hbone: configuring HTTP/2: %w", err)
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
		if !s.admit() {
			c.Close()
			continue
		}
		go s.serveConn(c)
	}
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

// serveConn runs the handshake and then HTTP/2 on one connection.
func (s *Server) serveConn(c net.Conn) {
	defer s.active.done()
	peerAddr := addrPort(c.RemoteAddr())
	tc := tls.Server(c, s.tlsConfig)
	if !s.trackConn(tc) {
		tc.Close()
		return
	}
	defer s.untrackConn(tc)
	defer tc.Close()

	// ServeConn needs a completed handshake: it reads the negotiated
	// version and protocol from the connection state and rejects a zero
	// version as inadequate security. The timeout is a deadline on the
	// connection (see serverTLSConfig); s.ctx aborts it on Close.
	err := c.SetDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	if err == nil {
		err = tc.HandshakeContext(s.ctx)
	}
	if err == nil {
		err = c.SetDeadline(time.Time{})
	}
	if err != nil {
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
	if s.isClosing() {
		// Shutdown began during the handshake: take no new streams.
		return
	}
	id, err := pki.PeerIdentity(st)
	if err != nil { // the handshake's authorizer already checked this
		s.refuseConn(Refusal{Peer: Peer{Addr: peerAddr}, Reason: ReasonHandshake, Err: err})
		return
	}
	h := &inbound{s: s, peer: Peer{Identity: id, Addr: peerAddr}}
	s.h2.ServeConn(tc, &http2.ServeConnOpts{Context: s.ctx, BaseConfig: s.h1, Handler: h})
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
	s.conns[tc] = struct{}{}
	return true
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

// goAwayInterval is how often Shutdown repeats its GOAWAY trigger. HTTP/2
// registers a connection for graceful shutdown only once ServeConn runs, a
// moment after we admitted it; a connection that registers just after a
// trigger would miss it, so the trigger repeats (it is idempotent per
// connection).
const goAwayInterval = 100 * time.Millisecond

// Shutdown stops accepting, sends GOAWAY on every connection so that
// clients open no new streams, and waits until the running streams have
// ended and the connections closed. If ctx ends first, it closes whatever
// is left (as Close does) and returns ctx's error.
func (s *Server) Shutdown(ctx context.Context) error {
	s.stopAccepting()
	tick := time.NewTicker(goAwayInterval)
	defer tick.Stop()
	for {
		// h1 has no connections or listeners of its own: Shutdown only
		// runs the OnShutdown hooks (GOAWAY) and returns.
		_ = s.h1.Shutdown(ctx)
		select {
		case <-s.active.idle():
			s.cancel()
			return nil
		case <-ctx.Done():
			s.Close()
			return ctx.Err()
		case <-tick.C:
		}
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
