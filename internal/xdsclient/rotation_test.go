package xdsclient

import (
	"strings"
	"testing"
	"time"

	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"
)

// TestReconnectTrustsTheCurrentRoots: istiod-lite restarts with a
// certificate from a new root (its CA switched signers). While ztunnel's
// trust bundle lacks that root the client refuses the server; once the
// bundle has it, the client reconnects without a restart and resumes with
// the versions it holds.
func TestReconnectTrustsTheCurrentRoots(t *testing.T) {
	h := newHarness(t)
	handler, obs := newMemHandler(), &recObserver{}
	cfg := h.config(handler, obs)
	roots := cfg.Roots.(*testRoots)
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	run(t, c)
	w1, w2 := workload("web-1", "198.18.1.1"), workload("web-2", "198.18.1.2")
	r1 := resource(t, "w1", w1)
	syncStream(t, h.ads.next(t), cfg.NodeID, []*discoverygrpc.Resource{r1}, nil)

	old, next := h.rotate()
	h.stop()
	h.start()
	eventually(t, "the new server's certificate refused", func() bool {
		obs.mu.Lock()
		defer obs.mu.Unlock()
		return obs.lastRetryErr != nil && strings.Contains(obs.lastRetryErr.Error(), "unknown authority")
	})
	select {
	case <-h.ads.streams:
		t.Fatal("a stream reached a server whose root the client does not trust")
	default:
	}

	roots.set(old, next) // the kubelet updated the bundle
	fs := h.ads.next(t)
	if known := subscribe(t, fs, cfg.NodeID); !sameVersions(known[AddressTypeURL], versionsOf(r1)) {
		t.Errorf("reconnected with versions %v, want those it holds %v", known[AddressTypeURL], versionsOf(r1))
	}
	n := fs.send(t, &discoverygrpc.DeltaDiscoveryResponse{TypeUrl: AddressTypeURL, SystemVersionInfo: "2",
		Resources: []*discoverygrpc.Resource{resource(t, "w2", w2)}})
	fs.expectACK(t, AddressTypeURL, n)
	handler.check(t, AddressTypeURL, map[string]proto.Message{"w1": w1, "w2": w2})
}

// TestRootsChangeCutsTheBackoffShort: a client that waits a long back-off
// after a failure tries again as soon as the roots change.
func TestRootsChangeCutsTheBackoffShort(t *testing.T) {
	h := newHarness(t)
	obs := &recObserver{}
	cfg := h.config(newMemHandler(), obs)
	cfg.BackoffBase, cfg.BackoffMax = time.Hour, time.Hour
	roots := cfg.Roots.(*testRoots)
	old, next := h.rotate()
	h.stop()
	h.start()
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	run(t, c)
	eventually(t, "the first attempt refused", func() bool { return obs.get(func(o *recObserver) int { return len(o.retries) }) > 0 })
	roots.set(old, next)
	syncStream(t, h.ads.next(t), cfg.NodeID, nil, nil)
}
