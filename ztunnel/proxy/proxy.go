package proxy

import (
	"context"
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

	workloadv1 "github.com/cairnmesh/cairn/apis/workload/v1"
	"github.com/cairnmesh/cairn/internal/spiffe"
	"github.com/cairnmesh/cairn/ztunnel/hbone"
	"github.com/cairnmesh/cairn/ztunnel/state"
	"github.com/cairnmesh/cairn/ztunnel/telemetry"
)

// DefaultConfigWait bounds how long a connection waits for its workload's
// configuration (a pod captured by cairn-cni starts before istiod-lite has
// pushed its workload).
const DefaultConfigWait = 5 * time.Second

// Certificates gives the certificate source of an identity; getting a
// certificate from it waits (bounded) for the first one to be issued.
type Certificates interface {
	Source(id spiffe.Identity) x509svid.Source
}

// Config is what every pod's proxy shares.
type Config struct {
	Store        *state.Store
	Certificates Certificates
	Bundle       x509bundle.Source
	Telemetry    *telemetry.Recorder
	Log          *slog.Logger
	// Network is the workloads' network name (empty by default).
	Network    string
	ConfigWait time.Duration
	// PoolIdle is how long an unused HBONE connection stays open.
	PoolIdle time.Duration
	// WriteTimeout bounds every write to a socket whose other end does not
	// take it (an HBONE peer, an app, a client, a passthrough
	// destination): one that stopped reading. Zero means
	// hbone.DefaultWriteTimeout.
	WriteTimeout time.Duration
	// Limiter holds the node-wide limits of inbound HBONE, shared by every
	// pod's server. Nil gives each pod a Limiter of its own.
	Limiter *hbone.Limiter
	// HBONE bounds each inbound HBONE connection.
	HBONE HBONELimits
}

// HBONELimits bound each inbound HBONE connection; zero fields take
// hbone's defaults (see hbone.ServerConfig).
type HBONELimits struct {
	HandshakeTimeout        time.Duration
	IdleTimeout             time.Duration
	MaxStreamsPerConnection int
	ConnectionWindow        int
	MaxControlFrames        int
	MaxIdleFrames           int
}

// Pod is what the proxy needs of one captured pod.
type Pod struct {
	Namespace, Name string
	IPs             []netip.Addr
	Identity        spiffe.Identity
	// Dial makes a marked socket inside the pod.
	Dial func(ctx context.Context, network, address string) (net.Conn, error)
	// DialFrom is Dial from another address (capture.Dialer.DialFrom):
	// connections that arrive over HBONE reach the app from their
	// client's address. Nil if the pod cannot route the app's replies back
	// to ztunnel; the app then sees them come from its own address.
	DialFrom func(ctx context.Context, src netip.Addr, network, address string) (net.Conn, error)
	// OriginalDst is the destination a redirected connection was sent to
	// (capture.OriginalDst).
	OriginalDst func(net.Conn) (netip.AddrPort, error)
}

// Listeners are the pod's listening sockets.
type Listeners struct {
	Outbound, Inbound, HBONE net.Listener
}

// Proxy serves one pod until Close.
type Proxy struct {
	cfg    Config
	pod    Pod
	log    *slog.Logger
	pool   *hbone.Pool
	server *hbone.Server
	ls     Listeners
	conns  *Tracker
	guard  guard

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	closed atomic.Bool
}

// Start serves the pod's listeners. It returns at once; the proxy runs
// until Close (or Shutdown).
func Start(cfg Config, pod Pod, ls Listeners, conns *Tracker) (*Proxy, error) {
	if cfg.Store == nil || cfg.Certificates == nil || cfg.Bundle == nil || cfg.Telemetry == nil {
		return nil, errors.New("proxy: Store, Certificates, Bundle and Telemetry are required")
	}
	if pod.Dial == nil || pod.OriginalDst == nil || len(pod.IPs) == 0 || pod.Identity.IsZero() {
		return nil, fmt.Errorf("proxy: pod %s/%s lacks a dialer, original-destination lookup, addresses or identity", pod.Namespace, pod.Name)
	}
	if cfg.ConfigWait == 0 {
		cfg.ConfigWait = DefaultConfigWait
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = hbone.DefaultWriteTimeout
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if conns == nil {
		conns = NewTracker()
	}
	log := cfg.Log.With("pod", pod.Namespace+"/"+pod.Name)
	p := &Proxy{cfg: cfg, pod: pod, log: log, ls: ls, conns: conns}
	p.ctx, p.cancel = context.WithCancel(context.Background())

	var err error
	p.pool, err = hbone.NewPool(hbone.PoolConfig{
		Certificate:  func(id spiffe.Identity) (x509svid.Source, error) { return cfg.Certificates.Source(id), nil },
		Bundle:       cfg.Bundle,
		Dialer:       pod.Dial,
		Logger:       log.With("component", "hbone-client"),
		IdleTimeout:  cfg.PoolIdle,
		WriteTimeout: cfg.WriteTimeout,
	})
	if err != nil {
		return nil, fmt.Errorf("proxy: HBONE pool for %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	p.server, err = hbone.NewServer(hbone.ServerConfig{
		Certificate: cfg.Certificates.Source(pod.Identity),
		Bundle:      cfg.Bundle,
		Addrs:       pod.IPs,
		Authorize:   p.authorizeHBONE,
		Dial:        p.dialForTunnel,
		Logger:      slog.New(atLeast{log.Handler(), slog.LevelWarn}).With("component", "hbone-server"),
		Observer:    &inboundObserver{p: p},

		Limiter:                 cfg.Limiter,
		WriteTimeout:            cfg.WriteTimeout,
		HandshakeTimeout:        cfg.HBONE.HandshakeTimeout,
		IdleTimeout:             cfg.HBONE.IdleTimeout,
		MaxStreamsPerConnection: cfg.HBONE.MaxStreamsPerConnection,
		ConnectionWindow:        cfg.HBONE.ConnectionWindow,
		MaxControlFrames:        cfg.HBONE.MaxControlFrames,
		MaxIdleFrames:           cfg.HBONE.MaxIdleFrames,
	})
	if err != nil {
		_ = p.pool.Close()
		return nil, fmt.Errorf("proxy: HBONE server for %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	p.wg.Go(func() {
		if err := p.server.Serve(ls.HBONE); err != nil && !errors.Is(err, hbone.ErrServerClosed) {
			log.Error("HBONE listener failed", "err", err)
		}
	})
	p.wg.Go(p.recheck)
	p.wg.Go(func() { p.acceptLoop(ls.Outbound, p.outbound) })
	p.wg.Go(func() { p.acceptLoop(ls.Inbound, p.inboundPlain) })
	return p, nil
}

// acceptLoop accepts until the listener closes; each connection gets its
// own goroutine, owned by the proxy's WaitGroup.
func (p *Proxy) acceptLoop(ln net.Listener, handle func(net.Conn)) {
	var delay time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			if p.closed.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			// A temporary failure (out of file descriptors): back off.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			p.log.Warn("accept failed", "listener", ln.Addr().String(), "err", err, "retry_in", delay)
			select {
			case <-p.ctx.Done():
				return
			case <-time.After(delay):
			}
			continue
		}
		delay = 0
		p.wg.Go(func() { handle(conn) })
	}
}

// Shutdown stops accepting, lets HBONE streams and in-flight connections
// finish until ctx ends, then closes everything.
func (p *Proxy) Shutdown(ctx context.Context) error {
	p.closed.Store(true)
	_ = p.ls.Outbound.Close()
	_ = p.ls.Inbound.Close()
	err := p.server.Shutdown(ctx)
	done := make(chan struct{})
	go func() { p.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		p.cancel() // ends the connections still open
		<-done
	}
	p.cancel()
	return errors.Join(err, p.pool.Close())
}

// Close closes everything now, open connections included.
func (p *Proxy) Close() error {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := p.Shutdown(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// workload finds the workload with ip, waiting (bounded) for a snapshot
// that has it and is Synced: until workload discovery has delivered the
// initial state of both types (after a ztunnel restart, say), a workload
// may be known without the namespace-wide and mesh-wide policies that
// apply to it, and nothing may be decided. The snapshot returned is the
// last one seen; on a timeout the workload is nil and the snapshot may not
// be Synced.
func (p *Proxy) workload(ctx context.Context, ip netip.Addr) (*workloadv1.Workload, *state.Snapshot) {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.ConfigWait)
	defer cancel()
	for {
		snap := p.cfg.Store.Snapshot()
		if w := snap.WorkloadByAddress(p.cfg.Network, ip); w != nil && snap.Synced() {
			return w, snap
		}
		select {
		case <-snap.Replaced():
		case <-ctx.Done():
			return nil, snap
		}
	}
}

// atLeast passes on only records of level min and above: the HBONE server
// logs every connection at Info, and telemetry's access log already has a
// line per connection.
type atLeast struct {
	slog.Handler
	min slog.Level
}

func (h atLeast) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.min && h.Handler.Enabled(ctx, l)
}
func (h atLeast) WithAttrs(a []slog.Attr) slog.Handler { return atLeast{h.Handler.WithAttrs(a), h.min} }
func (h atLeast) WithGroup(n string) slog.Handler      { return atLeast{h.Handler.WithGroup(n), h.min} }
