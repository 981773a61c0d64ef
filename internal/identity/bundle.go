package identity

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/cairnmesh/cairn/internal/pki"
	"github.com/cairnmesh/cairn/internal/spiffe"
)

// DefaultBundlePoll is how often a Bundle looks at its file. The kubelet
// refreshes ConfigMap volumes only every minute or so, so polling faster
// buys little; a stat every few seconds costs nothing.
const DefaultBundlePoll = 5 * time.Second

// BundleConfig configures a Bundle.
type BundleConfig struct {
	// Path is the PEM file of the roots, such as root-cert.pem of the
	// cairn-root-cert ConfigMap mounted as a volume. Required.
	Path string
	// TrustDomain is the trust domain the roots vouch for;
	// spiffe.DefaultTrustDomain if empty.
	TrustDomain string
	// PollInterval is how often the file is checked for changes;
	// DefaultBundlePoll if zero.
	PollInterval time.Duration
	// Logger gets reloads and unreadable files; slog.Default() if nil.
	Logger *slog.Logger
}

// Bundle is the mesh's trust bundle as a file holds it, kept current while
// Run runs. It is the x509bundle.Source of every TLS handshake ztunnel does
// (HBONE servers and clients) and of the CA connection, so a root that the
// CA adds is trusted everywhere once the kubelet has updated the volume,
// without a restart.
//
// A change is detected by polling the file's modification time, size and
// identity (os.SameFile): the kubelet updates ConfigMap volumes by
// swapping a symbolic link to a new directory, which gives the file a new
// identity even when the content has the same size. A file that cannot be
// read or parsed leaves the previous roots in place: a half-written file
// must not make every handshake fail.
type Bundle struct {
	path     string
	td       spiffeid.TrustDomain
	interval time.Duration
	log      *slog.Logger

	current atomic.Pointer[bundleState]

	mu      sync.Mutex
	changed chan struct{} // closed and replaced on every change of the roots
	lastErr error         // of the last look at the file; nil if it was fine
	stamp   fileStamp     // of the last file read, good or bad
	started bool
}

// bundleState is one version of the roots, replaced as a whole.
type bundleState struct {
	bundle   *x509bundle.Bundle
	pool     *x509.CertPool
	loadedAt time.Time
}

// fileStamp is what a poll compares to tell whether the file changed.
type fileStamp struct {
	info    os.FileInfo
	modTime time.Time
	size    int64
}

func stampOf(info os.FileInfo) fileStamp {
	return fileStamp{info: info, modTime: info.ModTime(), size: info.Size()}
}

func (s fileStamp) same(o fileStamp) bool {
	return s.info != nil && o.info != nil && os.SameFile(s.info, o.info) &&
		s.modTime.Equal(o.modTime) && s.size == o.size
}

var _ x509bundle.Source = (*Bundle)(nil)

// NewBundle reads the roots from cfg.Path and fails if the file cannot be
// read or holds no certificate: ztunnel cannot verify anyone without them,
// and the kubelet does not start a pod before its ConfigMap volume is
// there, so a failure here is a configuration error.
func NewBundle(cfg BundleConfig) (*Bundle, error) {
	if cfg.Path == "" {
		return nil, errors.New("certs: bundle path is required")
	}
	if cfg.TrustDomain == "" {
		cfg.TrustDomain = spiffe.DefaultTrustDomain
	}
	td, err := spiffeid.TrustDomainFromString(cfg.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("certs: trust domain %q: %w", cfg.TrustDomain, err)
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = DefaultBundlePoll
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	b := &Bundle{path: cfg.Path, td: td, interval: cfg.PollInterval, log: cfg.Logger, changed: make(chan struct{})}
	if err := b.reload(); err != nil {
		return nil, err
	}
	return b, nil
}

// Run checks the file every PollInterval until ctx ends, and returns nil
// then. Run may be called once.
func (b *Bundle) Run(ctx context.Context) error {
	b.mu.Lock()
	started := b.started
	b.started = true
	b.mu.Unlock()
	if started {
		return errors.New("certs: Bundle.Run called twice")
	}
	ticker := time.NewTicker(b.interval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
		}
		if err := b.reload(); err != nil {
			b.log.Warn("keeping the previous trust bundle", "path", b.path, "error", err)
		}
	}
}

// reload reads the file if it changed since the last read. It returns an
// error only for a changed file that it could not use; an unchanged file
// that failed before is not read (or reported) again.
func (b *Bundle) reload() error {
	info, err := os.Stat(b.path)
	if err != nil {
		return b.fail(fileStamp{}, fmt.Errorf("certs: trust bundle: %w", err))
	}
	st := stampOf(info)
	b.mu.Lock()
	unchanged := st.same(b.stamp)
	b.mu.Unlock()
	if unchanged {
		return nil
	}
	data, err := os.ReadFile(b.path)
	if err != nil {
		return b.fail(st, fmt.Errorf("certs: trust bundle: %w", err))
	}
	roots, err := pki.ParseCertsPEM(data)
	if err != nil {
		return b.fail(st, fmt.Errorf("certs: trust bundle %s: %w", b.path, err))
	}
	next := x509bundle.FromX509Authorities(b.td, roots)

	b.mu.Lock()
	defer b.mu.Unlock()
	b.stamp, b.lastErr = st, nil
	if prev := b.current.Load(); prev != nil && prev.bundle.Equal(next) {
		return nil // the kubelet rewrote the same roots
	}
	pool := x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	first := b.current.Load() == nil
	b.current.Store(&bundleState{bundle: next, pool: pool, loadedAt: time.Now()})
	close(b.changed)
	b.changed = make(chan struct{})
	if !first {
		b.log.Info("trust bundle reloaded", "path", b.path, "roots", len(roots))
	}
	return nil
}

// fail records err for the file as st describes it (zero when the file
// could not even be looked at), and returns it unless it was already
// reported for the same file, so that a broken file is logged once, not
// on every poll.
func (b *Bundle) fail(st fileStamp, err error) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	gone := st.info == nil && b.stamp.info == nil && b.lastErr != nil
	if gone || st.same(b.stamp) {
		return nil
	}
	b.stamp, b.lastErr = st, err
	return err
}

// GetX509BundleForTrustDomain implements x509bundle.Source: the current
// roots for the bundle's own trust domain; other trust domains are not
// trusted.
func (b *Bundle) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if td != b.td {
		return nil, fmt.Errorf("certs: no trust bundle for trust domain %q (only %q)", td, b.td)
	}
	return b.current.Load().bundle, nil
}

// Roots returns the current root certificates. The slice is the caller's.
func (b *Bundle) Roots() []*x509.Certificate { return b.current.Load().bundle.X509Authorities() }

// TrustDomain returns the trust domain the roots vouch for.
func (b *Bundle) TrustDomain() spiffeid.TrustDomain { return b.td }

// Changed returns a channel that is closed at the next change of the
// roots. Call it again after it fires to wait for the one after.
func (b *Bundle) Changed() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.changed
}

// Pool returns the current roots as a pool, shared: callers must not add
// to it. It is what every TLS connection to istiod-lite verifies against
// (pki.ServerClientConfig), read at each handshake.
func (b *Bundle) Pool() *x509.CertPool { return b.current.Load().pool }
