package hbone

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/cairnmesh/cairn/internal/spiffe"
)

// Defaults for PoolConfig.
const (
	DefaultMaxStreamsPerConn = 100
	DefaultIdleTimeout       = 5 * time.Minute
)

// ErrPoolClosed is returned by Dial after Close.
var ErrPoolClosed = errors.New("hbone: pool closed")

// Key identifies the connections a tunnel may share: the same source
// identity (our certificate), the same expected destination identity, the
// same HBONE address (podIP:15008). Tunnels of different keys never share a
// connection, so a connection never carries two workloads' traffic.
type Key struct {
	Source      spiffe.Identity
	Destination spiffe.Identity
	Address     netip.AddrPort
}

func (k Key) validate() error {
	if _, err := k.Source.ID(); err != nil {
		return fmt.Errorf("hbone: source identity: %w", err)
	}
	if _, err := k.Destination.ID(); err != nil {
		return fmt.Errorf("hbone: destination identity: %w", err)
	}
	if !k.Address.IsValid() || k.Address.Port() == 0 {
		return fmt.Errorf("hbone: invalid HBONE address %v", k.Address)
	}
	return nil
}

// PoolConfig configures a Pool.
type PoolConfig struct {
	// Certificate returns the certificate source of a source identity. It
	// is called for every new connection; a source without a certificate
	// yet is waited for up to CertificateWait.
	Certificate func(source spiffe.Identity) (x509svid.Source, error)
	// Bundle holds the roots a server's certificate must chain to.
	Bundle x509bundle.Source
	// Dialer opens the TCP connection to Key.Address. ztunnel sets one that
	// marks its sockets so that its own traffic escapes capture. Nil means
	// a net.Dialer.
	Dialer func(ctx context.Context, network, address string) (net.Conn, error)
	// Logger receives connection-level events at debug level. Nil discards.
	Logger *slog.Logger

	// MaxStreamsPerConn caps the tunnels on one connection; when all of a
	// key's connections are full, another is opened. Default
	// DefaultMaxStreamsPerConn.
	MaxStreamsPerConn int
	// IdleTimeout closes a connection that has carried no tunnel for this
	// long. Default DefaultIdleTimeout.
	IdleTimeout time.Duration
	// CertificateWait bounds the wait for a source certificate. Default
	// DefaultCertificateWait.
	CertificateWait time.Duration
	// HandshakeTimeout bounds the TLS handshake; CertificateWait is added
	// to it for the wait for our own certificate. The server may wait for
	// its certificate too, which a HandshakeTimeout at least as long as
	// the server's CertificateWait allows for. Default
	// DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
	// WriteTimeout bounds a write to the server or to the client of a
	// tunnel that the other end does not take: one that stopped reading.
	// Default DefaultWriteTimeout.
	WriteTimeout time.Duration
	// ConnectionWindow is a connection's receive window: the most it holds
	// for clients slower than the server. At least 64 KiB. Default
	// DefaultConnectionWindow.
	ConnectionWindow int
}

// Pool opens tunnels over pooled HBONE connections.
//
// Goroutines: the pool owns a janitor (idle and dead connections) and each
// connection's reader and control writer, which end when the connection
// does, and waits for them all in Close.
type Pool struct {
	cfg        PoolConfig
	connConfig connConfig
	log        *slog.Logger

	ctx    context.Context // cancelled by Close; aborts dials in progress
	cancel context.CancelFunc
	wake   chan struct{} // asks the janitor to sweep now
	wg     sync.WaitGroup

	mu     sync.Mutex
	closed bool
	keys   map[Key]*keyConns
	all    map[*poolConn]struct{} // every open connection, pooled or evicted
}

// keyConns are the connections of one key.
type keyConns struct {
	conns   []*poolConn
	dialing *pendingDial // the one dial in progress, if any
}

// pendingDial lets callers wait for another caller's dial of their key.
type pendingDial struct {
	done chan struct{}
	err  error // set before done closes
	// retry: the dial failed because its caller gave up, which says
	// nothing about the destination; waiters dial themselves.
	retry bool
}

// poolConn is one HBONE connection.
type poolConn struct {
	key   Key
	c     *conn
	local net.Addr
	// dead: GOAWAY received or the connection broke; no new tunnels.
	dead atomic.Bool

	// Guarded by Pool.mu.
	streams   int       // open tunnels
	idleSince time.Time // when streams last dropped to zero
	evicted   bool      // out of keyConns; closed when streams reach zero
	closing   bool
}

// NewPool checks cfg, fills in defaults and starts the pool's janitor.
func NewPool(cfg PoolConfig) (*Pool, error) {
	if cfg.Certificate == nil {
		return nil, errors.New("hbone: pool needs a certificate provider")
	}
	if cfg.Bundle == nil {
		return nil, errors.New("hbone: pool needs a trust bundle")
	}
	if cfg.Dialer == nil {
		cfg.Dialer = (&net.Dialer{}).DialContext
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	setDefault(&cfg.MaxStreamsPerConn, DefaultMaxStreamsPerConn)
	setDefault(&cfg.IdleTimeout, DefaultIdleTimeout)
	setDefault(&cfg.CertificateWait, DefaultCertificateWait)
	setDefault(&cfg.HandshakeTimeout, DefaultHandshakeTimeout)
	setDefault(&cfg.WriteTimeout, DefaultWriteTimeout)
	setDefault(&cfg.ConnectionWindow, DefaultConnectionWindow)
	if cfg.ConnectionWindow < initialWindow || cfg.ConnectionWindow > maxWindow {
		return nil, fmt.Errorf("hbone: connection window %d outside %d-%d", cfg.ConnectionWindow, initialWindow, maxWindow)
	}

	p := &Pool{
		cfg: cfg,
		// A server's frames are bounded as a client's are; the stream
		// limit is the server's to set.
		connConfig: connConfig{
			maxHeaderBytes: DefaultMaxHeaderBytes,
			window:         int64(cfg.ConnectionWindow),
			maxControl:     DefaultMaxControlFrames,
			maxIdleFrames:  DefaultMaxIdleFrames,
			writeTimeout:   cfg.WriteTimeout,
		},
		log:  cfg.Logger,
		wake: make(chan struct{}, 1),
		keys: make(map[Key]*keyConns),
		all:  make(map[*poolConn]struct{}),
	}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	p.wg.Add(1)
	go p.janitor()
	return p, nil
}

// Dial opens a tunnel to authority (the destination pod's IP and the
// application's port) over a connection of key, reusing one with a free
// stream or opening one. The tunnel is up only once the server answered
// 200: with TLS 1.3 our handshake completes before the server has checked
// our certificate, so only its answer proves the connection was accepted.
// Any other status is a *StatusError. A CONNECT the server refuses
// unprocessed (RST_STREAM REFUSED_STREAM, or beyond the last stream of its
// GOAWAY) is sent again, up to three times in all. ctx bounds the dial and
// the CONNECT but not the tunnel, which lives until it is closed.
func (p *Pool) Dial(ctx context.Context, key Key, authority netip.AddrPort) (*Tunnel, error) {
	return p.dial(ctx, key, authority, nil)
}

// DialFor is Dial for a tunnel that will carry client, through
// Tunnel.Pipe. What client has already sent is read without waiting and
// goes out right behind the CONNECT, saving the connection a round trip
// when the client speaks first. The server holds those bytes until it has
// accepted the CONNECT and drops them if it refuses; if the windows have no
// room for them, they are sent once the tunnel is up.
func (p *Pool) DialFor(ctx context.Context, key Key, authority netip.AddrPort, client net.Conn) (*Tunnel, error) {
	first := readFirst(client)
	t, err := p.dial(ctx, key, authority, first)
	if err != nil {
		first.release()
	}
	return t, err
}

func (p *Pool) dial(ctx context.Context, key Key, authority netip.AddrPort, first *firstBytes) (*Tunnel, error) {
	if err := key.validate(); err != nil {
		return nil, err
	}
	if !authority.IsValid() || authority.Port() == 0 {
		return nil, fmt.Errorf("hbone: invalid authority %v", authority)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(p.ctx, cancel)
	defer stop()

	for attempt := 1; ; attempt++ {
		pc, fresh, err := p.acquire(ctx, key)
		if err == nil {
			var t *Tunnel
			if t, err = p.open(ctx, pc, authority, first); err == nil {
				return t, nil
			}
			p.release(pc)
		}
		if p.ctx.Err() != nil {
			return nil, ErrPoolClosed
		}
		// A CONNECT the server refused unprocessed, or that found its
		// connection closing, goes again on another connection: during a
		// rolling restart of the destination's ztunnel a CONNECT can cross
		// its GOAWAY. The server never saw the first bytes either. A
		// connection dialed for this CONNECT that broke before it without
		// a GOAWAY is no such race: a server that refused our certificate
		// closes right after our handshake returned, and would refuse the
		// next one too.
		retry := errors.Is(err, errUnprocessed) ||
			errors.Is(err, errNoStreams) && !(fresh && pc.c.brokeWithoutGoAway())
		if attempt == maxAttempts || ctx.Err() != nil || !retry {
			return nil, err
		}
		p.log.Debug("hbone CONNECT refused unprocessed: trying again", "dst", key.Address, "authority", authority, "err", err)
	}
}

// maxAttempts bounds how often Dial sends a CONNECT that servers refuse
// unprocessed.
const maxAttempts = 3

// acquire returns a connection of key with a stream reserved for the
// caller, dialing one if none has room; fresh says it dialed it. Only one
// dial per key runs at a time; concurrent callers wait for it and then
// share the connection.
func (p *Pool) acquire(ctx context.Context, key Key) (pc *poolConn, fresh bool, err error) {
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, false, ErrPoolClosed
		}
		kc := p.keys[key]
		if kc == nil {
			kc = &keyConns{}
			p.keys[key] = kc
		}
		if pc := p.reserveLocked(kc); pc != nil {
			p.mu.Unlock()
			return pc, false, nil
		}
		if d := kc.dialing; d != nil {
			p.mu.Unlock()
			select {
			case <-d.done:
				if d.err != nil && !d.retry {
					return nil, false, d.err
				}
				continue
			case <-ctx.Done():
				return nil, false, ctx.Err()
			}
		}
		d := &pendingDial{done: make(chan struct{})}
		kc.dialing = d
		p.mu.Unlock()

		pc, err = p.connect(ctx, key)

		p.mu.Lock()
		kc.dialing = nil
		d.err, d.retry = err, ctx.Err() != nil
		close(d.done)
		if err != nil {
			p.mu.Unlock()
			return nil, false, err
		}
		if p.closed {
			p.mu.Unlock()
			pc.c.close()
			return nil, false, ErrPoolClosed
		}
		pc.idleSince = time.Now()
		kc.conns = append(kc.conns, pc)
		p.all[pc] = struct{}{}
		// The dialer uses its connection even if it already looks dead:
		// the CONNECT then fails with the reason (a server that refused
		// our certificate closes right after our handshake returned).
		// Going round instead would dial again and again.
		ok := pc.c.canOpen()
		if ok {
			pc.streams++
		}
		p.mu.Unlock()
		p.log.Debug("hbone connection opened", "dst", key.Address, "dst_identity", key.Destination.String(), "src_identity", key.Source.String())
		if !ok {
			return nil, false, fmt.Errorf("hbone: new connection to %s takes no streams", key.Address)
		}
		return pc, true, nil
	}
}

// reserveLocked reserves a stream on a live connection of kc that is below
// the cap, if there is one. The HTTP/2 connection may refuse (GOAWAY, or
// the server's own stream limit): then the next one is tried. A stream
// reserved here can still be refused when it opens, if a GOAWAY arrives in
// between; Dial then fails like any CONNECT the server did not take.
func (p *Pool) reserveLocked(kc *keyConns) *poolConn {
	for _, pc := range kc.conns {
		if pc.dead.Load() || pc.streams >= p.cfg.MaxStreamsPerConn {
			continue
		}
		if pc.c.canOpen() {
			pc.streams++
			return pc
		}
	}
	return nil
}

// release gives back a stream reserved by acquire.
func (p *Pool) release(pc *poolConn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	pc.streams--
	if pc.streams > 0 {
		return
	}
	pc.idleSince = time.Now()
	if pc.evicted {
		p.closeLocked(pc)
	}
}

// markDead takes pc out of service (GOAWAY or broken) and has the janitor
// clear it. It runs on the connection's goroutines, so it must not block or
// take Pool.mu.
func (p *Pool) markDead(pc *poolConn) {
	pc.dead.Store(true)
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// janitor closes idle connections and clears dead ones.
func (p *Pool) janitor() {
	defer p.wg.Done()
	tick := time.NewTicker(max(p.cfg.IdleTimeout/2, time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-p.ctx.Done():
			return
		case <-tick.C:
		case <-p.wake:
		}
		p.sweep(time.Now())
	}
}

// sweep evicts dead connections and those idle for IdleTimeout.
func (p *Pool) sweep(now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for key, kc := range p.keys {
		kc.conns = slices.DeleteFunc(kc.conns, func(pc *poolConn) bool {
			dead := pc.dead.Load()
			idle := pc.streams == 0 && now.Sub(pc.idleSince) >= p.cfg.IdleTimeout
			if !dead && !idle {
				return false
			}
			p.log.Debug("hbone connection evicted", "dst", key.Address, "dst_identity", key.Destination.String(),
				"src_identity", key.Source.String(), "dead", dead, "streams", pc.streams)
			pc.evicted = true
			if pc.streams == 0 {
				p.closeLocked(pc)
			}
			return true
		})
		if len(kc.conns) == 0 && kc.dialing == nil {
			delete(p.keys, key)
		}
	}
}

// closeLocked closes pc in the background: closing may wait briefly on a
// peer that does not read, and callers hold the lock or a user's Close.
func (p *Pool) closeLocked(pc *poolConn) {
	if pc.closing {
		return
	}
	pc.closing = true
	delete(p.all, pc)
	if p.closed {
		return // Close closes every connection itself
	}
	p.wg.Go(pc.c.close)
}

// Close closes every connection, failing their tunnels, aborts dials in
// progress and waits for the pool's goroutines. Dial fails afterwards.
func (p *Pool) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	conns := make([]*poolConn, 0, len(p.all))
	for pc := range p.all {
		conns = append(conns, pc)
	}
	p.all, p.keys = nil, nil
	p.mu.Unlock()

	p.cancel()
	for _, pc := range conns {
		pc.c.close()
	}
	p.wg.Wait()
	return nil
}
