package enroll

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/cairnmesh/cairn/internal/netns"
)

// FindNetns returns the path of the network namespace in dir whose
// interfaces hold ip: how ztunnel finds a pod that was running before it
// (or before its namespace was enrolled), without the CNI's help.
func FindNetns(dir string, ip netip.Addr) (string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return "", fmt.Errorf("listing network namespaces: %w", err)
	}
	for _, e := range entries {
		path := filepath.Join(dir, e.Name())
		h, err := netns.Open(path)
		if err != nil {
			continue // not a namespace, or gone meanwhile
		}
		found := false
		err = h.Do(func() error {
			addrs, err := net.InterfaceAddrs()
			if err != nil {
				return err
			}
			for _, a := range addrs {
				if n, ok := a.(*net.IPNet); ok {
					if got, ok := netip.AddrFromSlice(n.IP); ok && got.Unmap() == ip.Unmap() {
						found = true
					}
				}
			}
			return nil
		})
		_ = h.Close()
		if err == nil && found {
			return path, nil
		}
	}
	return "", fmt.Errorf("no network namespace in %s has %s", dir, ip)
}

// migrateRequests sets net.ipv4.tcp_migrate_req in the pod: when an old
// ztunnel closes its listeners, connections still in its accept queue
// move to the new ztunnel's socket of the same SO_REUSEPORT group instead
// of being reset. (Linux 5.14 and later.)
func migrateRequests(h *netns.Handle) error {
	return h.Do(func() error {
		return os.WriteFile("/proc/sys/net/ipv4/tcp_migrate_req", []byte("1"), 0o644)
	})
}
