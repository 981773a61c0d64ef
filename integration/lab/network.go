package lab

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// The lab's network, all in 198.18.0.0/15:
//
//	root netns:  bridge <prefix>lab0 198.18.S.1/24
//	             routes 198.18.(S+i).0/24 via 198.18.S.(10+i)   (host -> pods)
//	node i:      netns <prefix>-node-i, eth0 198.18.S.(10+i)/24 (veth, host end
//	             <prefix>lab-n<i> on the bridge), lo up, ip_forward=1,
//	             bridge-nf-call-iptables=1, routes to the other nodes' pod
//	             CIDRs via their node IPs, 198.19.0.0/16 (Services) on-link;
//	             no default route, so nothing leaves the lab. Pods hang off
//	             the node's CNI bridge.
//
// Nothing else of the root namespace is touched: no sysctl, no iptables
// rule, no default route.

// nodeIface is the node's interface name inside its namespace.
const nodeIface = "eth0"

// setupNetwork creates the bridge, the nodes' namespaces and veths, and
// the routes. It expects a clean slate (run teardownNetwork first).
func setupNetwork(c Config) error {
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: c.BridgeName(), MTU: 1500}}
	if err := netlink.LinkAdd(br); err != nil {
		return fmt.Errorf("creating bridge %s: %w", c.BridgeName(), err)
	}
	if err := netlink.AddrAdd(br, &netlink.Addr{IPNet: ipNet(c.BridgeAddr())}); err != nil {
		return fmt.Errorf("addressing bridge %s: %w", c.BridgeName(), err)
	}
	if err := netlink.LinkSetUp(br); err != nil {
		return fmt.Errorf("bringing up bridge %s: %w", c.BridgeName(), err)
	}
	for i := 1; i <= c.Nodes; i++ {
		if err := setupNode(c, br, i); err != nil {
			return err
		}
	}
	// Host -> pods: each pod CIDR via its node.
	for i := 1; i <= c.Nodes; i++ {
		route := &netlink.Route{
			LinkIndex: br.Attrs().Index,
			Dst:       ipNet(c.PodCIDR(i)),
			Gw:        net.IP(c.NodeAddr(i).Addr().AsSlice()),
		}
		if err := netlink.RouteAdd(route); err != nil {
			return fmt.Errorf("adding route %s via %s: %w", c.PodCIDR(i), c.NodeAddr(i).Addr(), err)
		}
	}
	return nil
}

func setupNode(c Config, br *netlink.Bridge, i int) error {
	name := c.NetnsName(i)
	if err := createNetns(name); err != nil {
		return err
	}
	ns, err := netns.GetFromPath(c.NetnsPath(i))
	if err != nil {
		return fmt.Errorf("opening network namespace %s: %w", name, err)
	}
	defer ns.Close()

	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: c.HostVethName(i), MasterIndex: br.Attrs().Index, MTU: 1500},
		PeerName:      nodeIface,
		PeerNamespace: netlink.NsFd(int(ns)),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("creating veth %s for %s: %w", c.HostVethName(i), NodeName(i), err)
	}
	if err := netlink.LinkSetUp(veth); err != nil {
		return fmt.Errorf("bringing up %s: %w", c.HostVethName(i), err)
	}

	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("netlink in %s: %w", name, err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		return fmt.Errorf("%s: bringing up lo: %w", name, err)
	}
	eth, err := h.LinkByName(nodeIface)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	if err := h.AddrAdd(eth, &netlink.Addr{IPNet: ipNet(c.NodeAddr(i))}); err != nil {
		return fmt.Errorf("%s: addressing %s: %w", name, nodeIface, err)
	}
	if err := h.LinkSetUp(eth); err != nil {
		return fmt.Errorf("%s: bringing up %s: %w", name, nodeIface, err)
	}
	for j := 1; j <= c.Nodes; j++ {
		if j == i {
			continue
		}
		route := &netlink.Route{
			LinkIndex: eth.Attrs().Index,
			Dst:       ipNet(c.PodCIDR(j)),
			Gw:        net.IP(c.NodeAddr(j).Addr().AsSlice()),
		}
		if err := h.RouteAdd(route); err != nil {
			return fmt.Errorf("%s: adding route %s via %s: %w", name, c.PodCIDR(j), c.NodeAddr(j).Addr(), err)
		}
	}
	// ClusterIPs: the node's own processes (kube-proxy's OUTPUT rules,
	// hostNetwork pods) need a route before iptables can DNAT the packet.
	// On-link, not via the host: a packet that no rule rewrites finds no
	// neighbour and is dropped inside the lab.
	svcRoute := &netlink.Route{LinkIndex: eth.Attrs().Index, Dst: ipNet(ServiceCIDR), Scope: netlink.SCOPE_LINK}
	if err := h.RouteAdd(svcRoute); err != nil {
		return fmt.Errorf("%s: adding route %s: %w", name, ServiceCIDR, err)
	}
	return inNetns(c.NetnsPath(i), func() error {
		for _, s := range nodeSysctls {
			if err := writeSysctl(s.key, s.value); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
		}
		return nil
	})
}

// nodeSysctls are set inside each node's namespace (they are per network
// namespace; the root namespace keeps its own values).
var nodeSysctls = []struct{ key, value string }{
	// Nodes route between their pods' CNI bridge and eth0.
	{"net/ipv4/ip_forward", "1"},
	// Frames bridged by the node's CNI bridge go through iptables, so a pod
	// that reaches a ClusterIP whose endpoint sits on the same bridge gets
	// its reply un-DNATed by conntrack (else the reply comes from the pod
	// IP and the client drops it). br_netfilter is built into the kernel.
	{"net/bridge/bridge-nf-call-iptables", "1"},
	{"net/bridge/bridge-nf-call-ip6tables", "1"},
}

func writeSysctl(key, value string) error {
	path := filepath.Join("/proc/sys", key)
	if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
		return fmt.Errorf("setting %s=%s: %w", strings.ReplaceAll(key, "/", "."), value, err)
	}
	return nil
}

// teardownNetwork removes what setupNetwork made, and what a lab with the
// same prefix may have left: every <prefix>-node-* namespace (which takes
// the nodes' eth0, CNI bridges, pod veth ends and iptables rules with it),
// the host ends of the veths and the bridge (which takes the routes).
// Missing pieces are not errors. Processes still in the namespaces must
// have been killed before, or the namespaces outlive their mounts.
func teardownNetwork(c Config) error {
	var errs []error
	names, _ := leftoverNetns(c)
	for _, n := range names {
		if err := deleteNetns(filepath.Join(netnsDir, n)); err != nil {
			errs = append(errs, err)
		}
	}
	links, err := labLinks(c)
	if err != nil {
		return err
	}
	for _, name := range links {
		l, err := netlink.LinkByName(name)
		if err != nil {
			continue // gone with its peer
		}
		if err := netlink.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
			errs = append(errs, fmt.Errorf("deleting link %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// isLabLink reports whether a root-namespace link name is the lab's bridge
// or a node veth's host end.
func isLabLink(c Config, name string) bool {
	return name == c.BridgeName() || strings.HasPrefix(name, c.Prefix+"lab-n")
}

// leftoverNetns lists the named network namespaces of labs with c's prefix
// (mounted ones: see deleteNetns).
func leftoverNetns(c Config) ([]string, error) {
	entries, err := os.ReadDir(netnsDir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return nil, err
	}
	var names []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), c.Prefix+"-node-") && isNsfs(filepath.Join(netnsDir, e.Name())) {
			names = append(names, e.Name())
		}
	}
	return names, nil
}

// labLinks lists the lab's links in the root namespace.
func labLinks(c Config) ([]string, error) {
	links, err := linkList()
	if err != nil {
		return nil, err
	}
	var names []string
	for _, l := range links {
		if isLabLink(c, l.Attrs().Name) {
			names = append(names, l.Attrs().Name)
		}
	}
	return names, nil
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// linkList lists the root namespace's links. A dump that other programs'
// changes interrupted is retried.
func linkList() ([]netlink.Link, error) {
	for try := 0; ; try++ {
		links, err := netlink.LinkList()
		if errors.Is(err, netlink.ErrDumpInterrupted) && try < 10 {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("listing links: %w", err)
		}
		return links, nil
	}
}
