package capture

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cairnmesh/cairn/internal/netns/netnstest"
	"github.com/cairnmesh/cairn/internal/rawtcp"
)

// TestBareACKDoesNotOpenAWayPastCapture: a client that can send raw
// packets (CAP_NET_RAW, which pods have by default) sends an ACK for a
// connection that never started, from a port it then connects from. The
// ACK must not leave conntrack an entry that the connection then takes
// past the redirect: the connection still lands on ztunnel.
func TestBareACKDoesNotOpenAWayPastCapture(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	l.apply(t, l.options())
	ls, err := ListenConfig{}.Listen(testContext(t), l.pod.Handle)
	if err != nil {
		t.Fatal(err)
	}
	sw := newSwitchboard()
	sw.watch(t, "ztunnel inbound", ls.Inbound)
	sw.watch(t, "ztunnel outbound", ls.Outbound)
	sw.watch(t, "app", listen(t, l.pod, ":"+itoa(appPort)))

	for i := range 3 {
		port := uint16(40000 + rand.IntN(20000))
		src := netip.AddrPortFrom(labClient, port)
		if err := l.node.Handle.Do(func() error {
			return rawtcp.Send(rawtcp.Segment{Src: src, Dst: netip.AddrPortFrom(labPod, appPort),
				Seq: rand.Uint32(), Ack: rand.Uint32(), Flags: rawtcp.ACK, Options: rawtcp.MD5Option()})
		}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond) // the app's kernel answers the ACK with a reset; not a timing target
		c := dialFromPort(t, l, src, hostPort(labPod, appPort))
		exchange(t, c, sw.expect(t, "ztunnel inbound"))
		c.Close()
		t.Logf("attempt %d from %v: captured", i, src)
	}
	sw.quiet(t)
}

// TestIPv4OnlyPodRefusesIPv6: a pod with only an IPv4 address still has
// IPv6 link-local addresses, and an app that listens on the dual-stack
// wildcard answers on them. A neighbour's connection to the app by its
// link-local address, and the app's own to the neighbour's, are refused;
// IPv6 within the pod (::1) still works.
func TestIPv4OnlyPodRefusesIPv6(t *testing.T) {
	t.Parallel()
	netnstest.Require(t, "ip6tables-save", "ip6tables-restore")
	l := newLab(t)
	// Link-local addresses of our own, without duplicate address detection,
	// so that they are usable at once.
	netnstest.Run(t, "ip", "-n", l.node.Name, "addr", "add", "fe80::1/64", "dev", "veth0", "nodad")
	netnstest.Run(t, "ip", "-n", l.pod.Name, "addr", "add", "fe80::2/64", "dev", "eth0", "nodad")
	// The kernel's own link-local addresses are tentative until duplicate
	// address detection ends; until then neighbour discovery may fail.
	for _, ns := range []*netnstest.NS{l.node, l.pod} {
		deadline := time.Now().Add(10 * time.Second)
		for netnstest.Run(t, "ip", "-n", ns.Name, "-6", "addr", "show", "tentative") != "" {
			if time.Now().After(deadline) {
				t.Fatalf("IPv6 addresses in %s still tentative", ns.Name)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	l.apply(t, l.options())
	ls, err := ListenConfig{}.Listen(testContext(t), l.pod.Handle)
	if err != nil {
		t.Fatal(err)
	}
	sw := newSwitchboard()
	sw.watch(t, "ztunnel inbound", ls.Inbound)
	sw.watch(t, "ztunnel outbound", ls.Outbound)
	sw.watch(t, "app", listen(t, l.pod, ":"+itoa(appPort)))
	sw.watch(t, "node server", listen(t, l.node, ":"+itoa(nodePort)))

	refused := func(ns *netnstest.NS, dst string) {
		t.Helper()
		d := net.Dialer{Timeout: 3 * time.Second}
		err := ns.Handle.Do(func() error {
			c, err := d.Dial("tcp", dst)
			if err == nil {
				c.Close()
			}
			return err
		})
		if !errors.Is(err, unix.ECONNREFUSED) {
			t.Errorf("connecting from %s to %s: %v, want connection refused", ns.Name, dst, err)
		}
	}
	refused(l.node, "[fe80::2%veth0]:"+itoa(appPort))
	refused(l.pod, "[fe80::1%eth0]:"+itoa(nodePort))
	exchange(t, dial(t, l.pod, netip.Addr{}, "[::1]:"+itoa(appPort)), sw.expect(t, "app"))
	// IPv4 is captured as before.
	exchange(t, dial(t, l.node, labClient, hostPort(labPod, appPort)), sw.expect(t, "ztunnel inbound"))
	sw.quiet(t)

	if err := l.ipt.Remove(testContext(t), l.pod.Handle); err != nil {
		t.Fatal(err)
	}
	if s := l.saved(t, IPv6); len(s.Chains()) != 0 || len(s.Jumps()) != 0 {
		t.Errorf("IPv6 after Remove: chains %v, jumps %v", s.Chains(), s.Jumps())
	}
	exchange(t, dial(t, l.node, netip.Addr{}, "[fe80::2%veth0]:"+itoa(appPort)), sw.expect(t, "app"))
}

// TestDialFromTheClientsOwnPort: ztunnel connects to the app from the
// address and port of a client whose own connection, redirected to 15006,
// is still open. The kernel may pick that port (nothing local uses it;
// here the pod's port range forces it), and both connections then have
// the same tuple to the app: conntrack must keep them apart, so that
// ztunnel's reaches the app (not ztunnel again) and both keep working.
func TestDialFromTheClientsOwnPort(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	o := l.options()
	l.apply(t, o)
	if err := ApplyRoutes(l.pod.Handle, o); err != nil {
		t.Fatal(err)
	}
	ls, err := ListenConfig{}.Listen(testContext(t), l.pod.Handle)
	if err != nil {
		t.Fatal(err)
	}
	sw := newSwitchboard()
	sw.watch(t, "ztunnel inbound", ls.Inbound)
	sw.watch(t, "ztunnel outbound", ls.Outbound)
	sw.watch(t, "app", listen(t, l.pod, ":"+itoa(appPort)))

	port := uint16(40000 + rand.IntN(20000))
	client := dialFromPort(t, l, netip.AddrPortFrom(labClient, port), hostPort(labPod, appPort))
	accepted := sw.expect(t, "ztunnel inbound")

	// Only the client's port is left for the kernel to choose.
	if err := l.pod.Handle.Do(func() error {
		return os.WriteFile("/proc/sys/net/ipv4/ip_local_port_range", []byte(fmt.Sprintf("%d %d", port, port)), 0o644)
	}); err != nil {
		t.Fatal(err)
	}
	ztunnel := &Dialer{Netns: l.pod.Handle, Mark: o.Mark}
	dctx, cancel := context.WithTimeout(testContext(t), 5*time.Second)
	defer cancel()
	upstream, err := ztunnel.DialFrom(dctx, labClient, "tcp", hostPort(labPod, appPort))
	if err != nil {
		t.Fatalf("ztunnel's dial from the client's address: %v", err)
	}
	defer upstream.Close()
	if got := upstream.LocalAddr().(*net.TCPAddr).AddrPort(); got != netip.AddrPortFrom(labClient, port) {
		t.Fatalf("ztunnel's dial left from %v, want the client's own %v", got, netip.AddrPortFrom(labClient, port))
	}
	app := sw.expect(t, "app")
	if from := unmap(app.RemoteAddr().(*net.TCPAddr).AddrPort()); from != netip.AddrPortFrom(labClient, port) {
		t.Errorf("the app sees the connection from %v, want %v", from, netip.AddrPortFrom(labClient, port))
	}
	exchange(t, upstream, app)
	exchange(t, client, accepted) // the client's own connection is unharmed
	exchange(t, upstream, app)
	sw.quiet(t)
}

func unmap(a netip.AddrPort) netip.AddrPort { return netip.AddrPortFrom(a.Addr().Unmap(), a.Port()) }
