package capture

import (
	"bufio"
	"context"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cairnmesh/cairn/internal/netns/netnstest"
)

// The test network, inside its own pair of namespaces (so every test can
// use the same addresses): the node end of the veth has the node's address
// (the probe source) and a second address that plays a client elsewhere
// in the cluster; the pod has one address and a default route via the
// node. remote is off-link: nothing answers there, so only a capture
// can complete a connection to it.
var (
	labNode   = netip.MustParseAddr("198.18.250.1")
	labPod    = netip.MustParseAddr("198.18.250.2")
	labClient = netip.MustParseAddr("198.18.250.3")
	labRemote = netip.MustParseAddrPort("198.18.251.9:80")
)

const (
	appPort  = 8080 // the app's port in the pod
	nodePort = 9999 // a server on the node
)

// lab is a pod namespace and a node namespace joined by a veth.
type lab struct {
	node, pod *netnstest.NS
	ipt       *IPTables
}

func newLab(t *testing.T) *lab {
	t.Helper()
	netnstest.Require(t, "ip", "iptables-save", "iptables-restore")
	l := &lab{
		node: netnstest.New(t, "cairn-cap-node"),
		pod:  netnstest.New(t, "cairn-cap-pod"),
		ipt:  &IPTables{Log: testLogger(t)},
	}
	node, pod := l.node.Name, l.pod.Name
	netnstest.Run(t, "ip", "-n", node, "link", "add", "veth0", "type", "veth", "peer", "name", "eth0", "netns", pod)
	netnstest.Run(t, "ip", "-n", node, "addr", "add", labNode.String()+"/29", "dev", "veth0")
	netnstest.Run(t, "ip", "-n", node, "addr", "add", labClient.String()+"/29", "dev", "veth0")
	netnstest.Run(t, "ip", "-n", pod, "addr", "add", labPod.String()+"/29", "dev", "eth0")
	netnstest.Run(t, "ip", "-n", node, "link", "set", "veth0", "up")
	netnstest.Run(t, "ip", "-n", pod, "link", "set", "eth0", "up")
	netnstest.Run(t, "ip", "-n", pod, "route", "add", "default", "via", labNode.String())
	return l
}

func (l *lab) options() Options {
	o := DefaultOptions(labPod)
	o.ProbeSources = []netip.Addr{labNode}
	return o
}

func (l *lab) apply(t *testing.T, o Options) {
	t.Helper()
	if err := l.ipt.Apply(testContext(t), l.pod.Handle, o); err != nil {
		t.Fatalf("Apply: %v", err)
	}
}

func (l *lab) saved(t *testing.T, f Family) Saved {
	t.Helper()
	s, err := l.ipt.Saved(testContext(t), l.pod.Handle, f)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// listen opens a TCP listener inside ns.
func listen(t *testing.T, ns *netnstest.NS, addr string) net.Listener {
	t.Helper()
	var ln net.Listener
	if err := ns.Handle.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return ln
}

// dial connects from inside ns, from src if it is valid, as a process
// there would: no mark.
func dial(t *testing.T, ns *netnstest.NS, src netip.Addr, dst string) net.Conn {
	t.Helper()
	d := net.Dialer{Timeout: 3 * time.Second}
	if src.IsValid() {
		d.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0))
	}
	var c net.Conn
	if err := ns.Handle.Do(func() error {
		var err error
		c, err = d.Dial("tcp", dst)
		return err
	}); err != nil {
		t.Fatalf("dialling %s from %s: %v", dst, ns.Name, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// accepted is one connection taken by a watched listener.
type accepted struct {
	by   string
	conn net.Conn
}

// switchboard accepts on several listeners and reports, in one channel,
// which of them took each connection. That is how the tests see where a
// connection went.
type switchboard struct {
	events chan accepted
}

func newSwitchboard() *switchboard { return &switchboard{events: make(chan accepted, 64)} }

// watch accepts on ln until the test ends. The goroutine is owned by the
// test: Cleanup closes ln and waits for it.
func (s *switchboard) watch(t *testing.T, name string, ln net.Listener) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.events <- accepted{by: name, conn: c}
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
	})
}

// expect waits for the next accepted connection and fails unless the
// listener called want took it.
func (s *switchboard) expect(t *testing.T, want string) net.Conn {
	t.Helper()
	select {
	case a := <-s.events:
		t.Cleanup(func() { a.conn.Close() })
		if a.by != want {
			t.Fatalf("connection from %v accepted by %s, want %s", a.conn.RemoteAddr(), a.by, want)
		}
		return a.conn
	case <-time.After(5 * time.Second):
		t.Fatalf("no connection reached %s", want)
		return nil
	}
}

// quiet fails if any listener accepted a connection nobody expected.
func (s *switchboard) quiet(t *testing.T) {
	t.Helper()
	select {
	case a := <-s.events:
		a.conn.Close()
		t.Errorf("unexpected connection from %v to %s", a.conn.RemoteAddr(), a.by)
	case <-time.After(100 * time.Millisecond):
	}
}

// exchange sends a line each way and fails if either does not arrive.
func exchange(t *testing.T, client, server net.Conn) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	client.SetDeadline(deadline)
	server.SetDeadline(deadline)
	for _, dir := range []struct{ from, to net.Conn }{{client, server}, {server, client}} {
		if _, err := dir.from.Write([]byte("hello\n")); err != nil {
			t.Fatalf("write %v -> %v: %v", dir.from.LocalAddr(), dir.from.RemoteAddr(), err)
		}
		line, err := bufio.NewReader(dir.to).ReadString('\n')
		if err != nil || line != "hello\n" {
			t.Fatalf("read at %v: %q, %v", dir.to.LocalAddr(), line, err)
		}
	}
}

func hostPort(a netip.Addr, port int) string {
	return netip.AddrPortFrom(a, uint16(port)).String()
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// markedPackets reads the packet counter of the first rule of the pod's
// mangle POSTROUTING chain, which the test puts there to count.
func markedPackets(t *testing.T, l *lab) int {
	t.Helper()
	out := netnstest.Run(t, "ip", "netns", "exec", l.pod.Name, "iptables", "-t", "mangle", "-L", "POSTROUTING", "-v", "-x", "-n")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) < 3 {
		t.Fatalf("no counting rule in mangle POSTROUTING:\n%s", out)
	}
	n, err := strconv.Atoi(strings.Fields(lines[2])[0])
	if err != nil {
		t.Fatalf("reading packet count: %v\n%s", err, out)
	}
	return n
}

// dialFromPort connects from the node's side from src, port included.
func dialFromPort(t *testing.T, l *lab, src netip.AddrPort, dst string) net.Conn {
	t.Helper()
	d := net.Dialer{Timeout: 3 * time.Second, LocalAddr: net.TCPAddrFromAddrPort(src)}
	var c net.Conn
	if err := l.node.Handle.Do(func() error {
		var err error
		c, err = d.Dial("tcp", dst)
		return err
	}); err != nil {
		t.Fatalf("dialling %s from %s: %v", dst, src, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}
