package telemetry

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

type stepClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *stepClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *stepClock) add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// TestControlPlaneStaleness: ztunnel is stale once it has been without a
// response from istiod-lite for longer than the threshold: before the
// first response, and from the end of its last answered stream, however
// many streams open and fail meanwhile (istiod-lite refusing them, a
// handshake failing). A response, even a rejected one, makes it current.
func TestControlPlaneStaleness(t *testing.T) {
	clk := &stepClock{now: time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)}
	reg := prometheus.NewRegistry()
	c, err := newControlPlane(reg, time.Minute, nil, clk.Now)
	if err != nil {
		t.Fatal(err)
	}
	metrics := func() string {
		t.Helper()
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		var parts []string
		for _, mf := range mfs {
			if len(mf.GetMetric()) != 1 {
				t.Fatalf("metric %s has %d series", mf.GetName(), len(mf.GetMetric()))
			}
			parts = append(parts, fmt.Sprintf("%s=%g", mf.GetName(), mf.GetMetric()[0].GetGauge().GetValue()))
		}
		return strings.Join(parts, " ")
	}
	check := func(what string, wantStale bool, wantSince time.Time, wantMetrics string) {
		t.Helper()
		stale, since, _ := c.Stale()
		if stale != wantStale || (wantStale && !since.Equal(wantSince)) {
			t.Errorf("%s: Stale() = %v since %v; want %v since %v", what, stale, since, wantStale, wantSince)
		}
		if got := metrics(); got != wantMetrics {
			t.Errorf("%s: metrics %q, want %q", what, got, wantMetrics)
		}
	}
	start := clk.Now()
	check("at start", false, time.Time{}, "cairn_ztunnel_xds_disconnected_seconds=0 cairn_ztunnel_xds_stale=0")
	clk.add(59 * time.Second)
	check("before the threshold", false, time.Time{}, "cairn_ztunnel_xds_disconnected_seconds=59 cairn_ztunnel_xds_stale=0")
	clk.add(time.Second)
	check("never answered", true, start, "cairn_ztunnel_xds_disconnected_seconds=60 cairn_ztunnel_xds_stale=1")

	c.Connected()
	c.ACK("type.googleapis.com/cairn.workload.v1.Address", 3, 0)
	clk.add(time.Hour)
	check("answered and open", false, time.Time{}, "cairn_ztunnel_xds_disconnected_seconds=0 cairn_ztunnel_xds_stale=0")

	c.Disconnected(errors.New("receiving: EOF"), time.Hour)
	lost := clk.Now()
	for range 10 { // istiod-lite refuses every stream, or the handshake fails
		clk.add(10 * time.Second)
		c.Connected()
		c.Disconnected(errors.New("rpc error: code = PermissionDenied"), time.Millisecond)
		c.Retrying(1, time.Second, errors.New("rpc error: code = PermissionDenied"))
	}
	stale, since, lastErr := c.Stale()
	if !stale || !since.Equal(lost) || !strings.Contains(lastErr, "PermissionDenied") {
		t.Errorf("after refused streams: Stale() = %v since %v (%q); want stale since %v with the refusal", stale, since, lastErr, lost)
	}

	c.Connected()
	c.NACK("type.googleapis.com/cairn.workload.v1.Address", errors.New("bad"))
	check("answered again (NACKed)", false, time.Time{}, "cairn_ztunnel_xds_disconnected_seconds=0 cairn_ztunnel_xds_stale=0")
}
