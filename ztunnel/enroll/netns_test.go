package enroll

import (
	"net/netip"
	"path/filepath"
	"testing"

	"github.com/cairnmesh/cairn/internal/netns/netnstest"
)

// TestFindNetns: a pod's namespace is found by its address among the
// node's namespaces.
func TestFindNetns(t *testing.T) {
	netnstest.Require(t, "ip")
	pod := netnstest.New(t, "enroll")
	other := netnstest.New(t, "enroll")
	for _, ns := range []struct {
		name, addr string
	}{{pod.Name, "198.18.251.2/24"}, {other.Name, "198.18.251.3/24"}} {
		netnstest.Run(t, "ip", "-n", ns.name, "link", "add", "d0", "type", "veth", "peer", "name", "d1")
		netnstest.Run(t, "ip", "-n", ns.name, "link", "set", "d1", "up")
		netnstest.Run(t, "ip", "-n", ns.name, "addr", "add", ns.addr, "dev", "d0")
		netnstest.Run(t, "ip", "-n", ns.name, "link", "set", "d0", "up")
	}

	got, err := FindNetns(filepath.Dir(pod.Path), netip.MustParseAddr("198.18.251.2"))
	if err != nil || got != pod.Path {
		t.Fatalf("FindNetns = %q, %v; want %q", got, err, pod.Path)
	}
	if _, err := FindNetns(filepath.Dir(pod.Path), netip.MustParseAddr("198.18.251.9")); err == nil {
		t.Error("FindNetns found an address no namespace has")
	}
	if err := migrateRequests(pod.Handle); err != nil {
		t.Logf("tcp_migrate_req not available on this kernel: %v", err)
	}
}
