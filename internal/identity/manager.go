package identity

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	cav1 "github.com/cairnmesh/cairn/apis/ca/v1"
	"github.com/cairnmesh/cairn/internal/cpconn"
	"github.com/cairnmesh/cairn/internal/spiffe"
)

// Manager holds the certificates of the identities whose pods run on this
// node, one per identity, and keeps each valid: it obtains it from the CA,
// renews it at half its life, and retries failures with back-off while it
// keeps serving the certificate it has. Pods tell it what they need with
// Want and Release; connections take certificates through Source.
//
// Create it with New and start it with Run. Want, Release, Source and
// Dump are safe for concurrent use, before, during and after Run.
type Manager struct {
	cfg      Config
	log      *slog.Logger
	obs      Observer
	clock    clock
	jitter   func() float64 // in [0, 1)
	inFlight chan struct{}  // semaphore of concurrent requests

	mu      sync.RWMutex
	entries map[spiffe.Identity]*entry
	// changed is closed and replaced whenever a certificate is installed
	// or an identity is added or dropped: what a Source waits on.
	changed chan struct{}
	phase   runPhase
	runCtx  context.Context
	client  cav1.CertificateServiceClient
	workers sync.WaitGroup
}

type runPhase int

const (
	beforeRun runPhase = iota
	running
	afterRun
)

// entry is the manager's state for one identity. Its worker goroutine is
// the only writer of cert and progress.
type entry struct {
	id spiffe.Identity

	// Guarded by Manager.mu.
	refs       int
	releasedAt time.Time // when refs last fell to zero
	started    bool      // a worker runs for it

	// wake tells the worker that refs changed. Capacity 1: a worker that
	// is busy finds one pending wake-up, however many changes there were.
	wake chan struct{}

	cert atomic.Pointer[issued]

	mu       sync.Mutex // guards progress
	progress progress
}

// issued is one installed certificate, replaced as a whole on rotation:
// handshakes that already took the previous one keep it, and a connection
// established with it is not affected at all.
type issued struct {
	svid    *x509svid.SVID
	renewAt time.Time
}

// progress is what Dump shows of an identity beyond its certificate.
type progress struct {
	fetching    bool
	failures    int // consecutive
	lastErr     error
	nextAttempt time.Time
}

// New checks cfg and returns a Manager. It does not connect: Run does.
func New(cfg Config) (*Manager, error) {
	return newManager(cfg, wallClock{}, rand.Float64)
}

func newManager(cfg Config, clk clock, jitter func() float64) (*Manager, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("certs: %w", err)
	}
	return &Manager{
		cfg:      cfg,
		log:      cfg.Logger,
		obs:      cfg.Observer,
		clock:    clk,
		jitter:   jitter,
		inFlight: make(chan struct{}, cfg.MaxInFlight),
		entries:  make(map[spiffe.Identity]*entry),
		changed:  make(chan struct{}),
	}, nil
}

// Run connects to the CA and keeps every wanted identity's certificate
// current until ctx ends. It starts one goroutine per identity and returns
// nil once ctx ended and all of them did. Certificates already issued stay
// available through Source after Run returns, until they expire. Run may
// be called once.
func (m *Manager) Run(ctx context.Context) error {
	m.mu.Lock()
	if m.phase != beforeRun {
		m.mu.Unlock()
		return errors.New("certs: Run called twice")
	}
	// istiod's certificate must chain to the trust bundle as it is at each
	// handshake: a root rotation needs no restart.
	conn, own := m.cfg.Conn, false
	if conn == nil {
		var err error
		conn, err = cpconn.Dial(cpconn.Config{
			Address: m.cfg.Address, ServerName: m.cfg.ServerName, Roots: m.cfg.Bundle, TokenFile: m.cfg.TokenFile,
			DialOptions: m.cfg.DialOptions, Logger: m.log,
		})
		if err != nil {
			m.mu.Unlock()
			return fmt.Errorf("certs: %w", err)
		}
		own = true
		defer conn.Close()
	}
	m.phase, m.runCtx, m.client = running, ctx, cav1.NewCertificateServiceClient(conn.ClientConn())
	for _, e := range m.entries {
		m.startLocked(e)
	}
	m.mu.Unlock()

	if own {
		// After a change of the roots, a connection that failed for want
		// of the new one is tried again at once, not after gRPC's back-off.
		// (A shared connection's owner runs it.)
		_ = conn.Run(ctx)
	} else {
		<-ctx.Done()
	}
	m.mu.Lock()
	m.phase = afterRun // no worker starts from now on
	m.mu.Unlock()
	m.workers.Wait()
	return nil
}

// startLocked starts e's worker if Run runs and none does yet. m.mu must
// be held.
func (m *Manager) startLocked(e *entry) {
	if m.phase != running || e.started {
		return
	}
	e.started = true
	m.workers.Add(1)
	go func() {
		defer m.workers.Done()
		m.maintain(m.runCtx, m.client, e)
	}()
}

// Want records one more pod of this node with identity id, and starts
// obtaining its certificate if it is the first. Every Want must be paired
// with one Release when the pod leaves.
func (m *Manager) Want(id spiffe.Identity) error {
	if _, err := id.ID(); err != nil {
		return fmt.Errorf("certs: %w", err)
	}
	if td := m.cfg.Bundle.TrustDomain().Name(); id.TrustDomain != td {
		return fmt.Errorf("certs: identity %s is not in trust domain %q", id, td)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.entries[id]
	if e == nil {
		e = &entry{id: id, wake: make(chan struct{}, 1)}
		m.entries[id] = e
		m.broadcastLocked()
	}
	e.refs++
	if e.refs == 1 {
		e.releasedAt = time.Time{}
		poke(e.wake)
	}
	m.startLocked(e)
	return nil
}

// Release records that one pod with identity id left. When none is left,
// the certificate is kept for Config.Linger and then dropped, unless
// another pod wants it meanwhile. Releasing an identity that no pod holds
// is a caller's bug; it is logged and ignored.
func (m *Manager) Release(id spiffe.Identity) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.entries[id]
	if e == nil || e.refs == 0 {
		m.log.Warn("release of an identity that no pod holds", "identity", id.String())
		return
	}
	e.refs--
	if e.refs == 0 {
		e.releasedAt = m.clock.Now()
		poke(e.wake)
	}
}

// poke wakes a worker without blocking.
func poke(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// broadcastLocked wakes everyone waiting for a certificate. m.mu must be
// held for writing.
func (m *Manager) broadcastLocked() {
	close(m.changed)
	m.changed = make(chan struct{})
}

// install makes svid the certificate of e, for every handshake from now on.
func (m *Manager) install(e *entry, svid *x509svid.SVID, renewAt time.Time) {
	e.cert.Store(&issued{svid: svid, renewAt: renewAt})
	m.mu.Lock()
	m.broadcastLocked()
	m.mu.Unlock()
}

// releasedSince returns when e's last pod left, if none is left.
func (m *Manager) releasedSince(e *entry) (time.Time, bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return e.releasedAt, e.refs == 0
}

// drop forgets e if still no pod wants it, and reports whether it did.
func (m *Manager) drop(e *entry) bool {
	m.mu.Lock()
	if e.refs > 0 {
		m.mu.Unlock()
		return false
	}
	delete(m.entries, e.id)
	m.broadcastLocked()
	m.mu.Unlock()
	m.obs.Dropped(e.id)
	m.log.Info("certificate dropped: no pod of the identity left on the node", "identity", e.id.String())
	return true
}
