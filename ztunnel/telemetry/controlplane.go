package telemetry

import (
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// DefaultStaleAfter is how long ztunnel may be without istiod-lite before
// it says that its configuration may be stale.
const DefaultStaleAfter = time.Minute

// ControlPlane follows ztunnel's workload discovery stream to istiod-lite,
// so that an operator sees when ztunnel runs on configuration that may be
// stale (a policy applied meanwhile is not enforced) instead of finding
// out through a policy that does not apply. It implements the xdsclient
// Observer. ztunnel keeps serving with its last configuration meanwhile:
// the data plane does not depend on the control plane being up.
//
// Contact is a response from istiod-lite: istiod-lite answers every new
// stream's wildcard subscriptions at once, even when nothing changed, so
// a stream that istiod-lite refuses, or whose handshake fails, is never
// counted as contact. While a stream that had a response stays open,
// ztunnel is current (gRPC keepalive notices a dead connection within
// about 40 s); from the moment it ends, the time without contact counts.
type ControlPlane struct {
	staleAfter time.Duration
	now        func() time.Time
	log        *slog.Logger

	mu          sync.Mutex
	current     bool      // a stream is open and istiod-lite answered on it
	lastContact time.Time // of the last response, or the end of the last current stream
	lastErr     string    // why the last attempt failed
	reported    bool      // the stale state was logged
}

// NewControlPlane registers the staleness metrics on reg (nil keeps them
// private). staleAfter is DefaultStaleAfter if zero; log gets a line when
// ztunnel becomes stale and when it is current again.
func NewControlPlane(reg prometheus.Registerer, staleAfter time.Duration, log *slog.Logger) (*ControlPlane, error) {
	return newControlPlane(reg, staleAfter, log, time.Now)
}

func newControlPlane(reg prometheus.Registerer, staleAfter time.Duration, log *slog.Logger, now func() time.Time) (*ControlPlane, error) {
	if staleAfter < 0 {
		return nil, fmt.Errorf("negative staleness threshold %v", staleAfter)
	}
	if staleAfter == 0 {
		staleAfter = DefaultStaleAfter
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &ControlPlane{staleAfter: staleAfter, now: now, log: log, lastContact: now()}
	if reg == nil {
		return c, nil
	}
	for _, g := range []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "cairn_ztunnel_xds_disconnected_seconds",
			Help: "Seconds since ztunnel last heard from istiod-lite over workload discovery (xDS); 0 while its stream is up.",
		}, func() float64 { return c.status().without.Seconds() }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "cairn_ztunnel_xds_stale",
			Help: "1 when ztunnel has been without istiod-lite for longer than --xds-stale-after: the workloads and policies it enforces may be stale.",
		}, func() float64 {
			if c.status().stale {
				return 1
			}
			return 0
		}),
	} {
		if err := reg.Register(g); err != nil {
			return nil, fmt.Errorf("registering the xDS staleness metrics: %w", err)
		}
	}
	return c, nil
}

// Stale reports whether ztunnel has been without istiod-lite for longer
// than the threshold, and if so since when and the last error.
func (c *ControlPlane) Stale() (stale bool, since time.Time, lastErr string) {
	s := c.status()
	return s.stale, s.since, s.lastErr
}

type cpStatus struct {
	stale   bool
	since   time.Time
	without time.Duration
	lastErr string
}

func (c *ControlPlane) status() cpStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.current {
		return cpStatus{}
	}
	without := c.now().Sub(c.lastContact)
	s := cpStatus{stale: without >= c.staleAfter, since: c.lastContact, without: without, lastErr: c.lastErr}
	if s.stale && !c.reported {
		c.reported = true
		c.log.Warn("istiod-lite unreachable for longer than the threshold: the workloads and policies in use may be stale",
			"since", c.lastContact, "threshold", c.staleAfter, "last_error", c.lastErr)
	}
	return s
}

// contact records a response from istiod-lite.
func (c *ControlPlane) contact() {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	if c.reported {
		c.log.Info("istiod-lite reachable again", "after", now.Sub(c.lastContact).Round(time.Second))
		c.reported = false
	}
	c.current, c.lastContact, c.lastErr = true, now, ""
}

// Connected implements the xdsclient Observer: a stream is open; it
// counts as contact only once istiod-lite answers on it.
func (c *ControlPlane) Connected() {}

// Disconnected implements the xdsclient Observer.
func (c *ControlPlane) Disconnected(err error, _ time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.current {
		c.current, c.lastContact = false, c.now()
	}
	if err != nil {
		c.lastErr = err.Error()
	}
}

// Retrying implements the xdsclient Observer.
func (c *ControlPlane) Retrying(_ int, _ time.Duration, err error) {
	if err == nil {
		return
	}
	c.mu.Lock()
	c.lastErr = err.Error()
	c.mu.Unlock()
}

// ACK implements the xdsclient Observer.
func (c *ControlPlane) ACK(string, int, int) { c.contact() }

// NACK implements the xdsclient Observer: a rejected response is still
// an answer from istiod-lite.
func (c *ControlPlane) NACK(string, error) { c.contact() }
