package capture

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/cairnmesh/cairn/internal/netns"
	"github.com/cairnmesh/cairn/internal/netns/netnstest"
)

// helperEnv makes the test binary a helper process (TestMain): the tests
// start it in a cgroup of their choosing, because the kernel gives a
// socket the cgroup of the process that makes it.
const helperEnv = "CAIRN_CAPTURE_TEST_HELPER"

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		os.Exit(helper(mode))
	}
	os.Exit(m.Run())
}

// helper runs one helper role:
//
//	listen <addr>   listens on addr (host:port), says "ready", waits for stdin to close
//	dial <dst>      connects, says "ok <local address>" or "err ...", and closes
//	apply-in-container <netns> <dir>
//	                in a mount namespace of its own (the caller's clone
//	                flags) where /proc/sys is read-only, as a container's,
//	                applies the default rules to the pod at <netns>
//	                writing sysctls through <dir> (a writable bind of
//	                /proc/sys/net it makes; "-" for the default), and says
//	                "ok" or "err ..."
//	probes-in-container <netns>
//	                in a cgroup namespace and a mount namespace of its own
//	                (unshare's) with only its own cgroup subtree mounted,
//	                as a container's, installs the node's probe rules in
//	                the node at <netns> and says "ok <kubelet cgroup>" or
//	                "err ..."
func helper(mode string) int {
	role, arg, _ := strings.Cut(mode, " ")
	switch role {
	case "listen":
		ln, err := net.Listen("tcp", arg)
		if err != nil {
			fmt.Println("err", err)
			return 1
		}
		defer ln.Close()
		fmt.Println("ready")
		_, _ = io.Copy(io.Discard, os.Stdin)
		return 0
	case "apply-in-container":
		return applyInContainer(arg)
	case "probes-in-container":
		return probesInContainer(arg)
	case "dial":
		c, err := net.DialTimeout("tcp", arg, 3*time.Second)
		if err != nil {
			fmt.Println("err", err)
			return 0
		}
		defer c.Close()
		fmt.Println("ok", c.LocalAddr())
		return 0
	}
	fmt.Println("err unknown helper role", role)
	return 2
}

// testCgroup makes a cgroup (v2) for the test with the given children,
// and returns its path from the cgroup root and its directory.
func testCgroup(t *testing.T, children ...string) (path, dir string) {
	t.Helper()
	mount, root, err := cgroup2Mount("/proc/self/mountinfo")
	if err != nil {
		t.Skip(err)
	}
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	path = filepath.Join(root, "cairn-cap-"+hex.EncodeToString(b))
	dir = filepath.Join(mount, strings.TrimPrefix(path, root))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Skipf("cannot make a cgroup: %v", err)
	}
	for _, c := range children {
		if err := os.Mkdir(filepath.Join(dir, c), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		for _, c := range slices.Backward(children) {
			removeCgroup(t, filepath.Join(dir, c))
		}
		removeCgroup(t, dir)
	})
	return path, dir
}

// removeCgroup removes an empty cgroup, waiting for its processes to go.
func removeCgroup(t *testing.T, dir string) {
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := unix.Rmdir(dir)
		if err == nil || !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
			if err != nil {
				t.Errorf("removing cgroup %s: %v", dir, err)
			}
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// startIn starts the test binary as a helper in cgroup dir and network
// namespace ns, and returns its standard output.
func startIn(t *testing.T, ns *netnstest.NS, dir, mode string) (*exec.Cmd, *bufio.Reader, io.WriteCloser) {
	t.Helper()
	cg, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer cg.Close()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), helperEnv+"="+mode)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	cmd.WaitDelay = time.Second
	// A child forked from a thread inside ns starts in ns.
	if err := ns.Handle.Do(cmd.Start); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		in.Close()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return cmd, bufio.NewReader(out), in
}

// dialIn connects from a helper in cgroup dir and ns, and returns the
// helper's report: "ok <local address>" or "err ...".
func dialIn(t *testing.T, ns *netnstest.NS, dir, dst string) string {
	t.Helper()
	cmd, out, _ := startIn(t, ns, dir, "dial "+dst)
	line, _ := out.ReadString('\n')
	_ = cmd.Wait()
	return strings.TrimSpace(line)
}

// listenIn starts a helper that listens on addr in cgroup dir and ns,
// until the test ends.
func listenIn(t *testing.T, ns *netnstest.NS, dir string, addr string) {
	t.Helper()
	_, out, _ := startIn(t, ns, dir, "listen "+addr)
	if line, err := out.ReadString('\n'); strings.TrimSpace(line) != "ready" {
		t.Fatalf("listening helper: %q, %v", line, err)
	}
}

const kubeletPort = 10250

var probeSource = DefaultProbeSources[0]

// probesLab is the capture lab with the node's probe rules: a kubelet (a
// helper listening on the kubelet's port) and a host-network process (a
// helper) in two sibling cgroups, and a third sibling for a ztunnel in a
// container (TestKubeletProbesFromAContainer).
type probesLab struct {
	*lab
	probes                    *Probes
	kubelet, hostPod, ztunnel string // cgroup directories
	kubeletPath               string // the kubelet's cgroup path
	sw                        *switchboard
}

// newProbesLab sets the lab up with the node's rules in place: installed
// by install if it is given, else by the test's own Probes.Reconcile.
func newProbesLab(t *testing.T, install ...func(pl *probesLab)) *probesLab {
	t.Helper()
	l := newLab(t)
	path, dir := testCgroup(t, "kubelet", "hostpod", "ztunnel")
	pl := &probesLab{lab: l, kubelet: filepath.Join(dir, "kubelet"), hostPod: filepath.Join(dir, "hostpod"),
		ztunnel: filepath.Join(dir, "ztunnel"), kubeletPath: path + "/kubelet"}
	listenIn(t, l.node, pl.kubelet, ":"+itoa(kubeletPort))
	pl.probes = &Probes{Netns: l.node.Handle, IPTables: l.ipt, Sources: DefaultProbeSources, Log: testLogger(t),
		KubeletCgroup: (&Kubelet{Port: kubeletPort}).Cgroup}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := pl.probes.Remove(ctx); err != nil {
			t.Errorf("removing the node's probe rules: %v", err)
		}
	})
	ctx := testContext(t)
	if len(install) > 0 {
		install[0](pl)
	} else if err := pl.probes.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if err := pl.probes.Add(labPod); err != nil {
		t.Fatal(err)
	}
	o := DefaultOptions(labPod)
	o.ProbeSources = DefaultProbeSources
	l.apply(t, o)
	ls, err := ListenConfig{}.Listen(ctx, l.pod.Handle)
	if err != nil {
		t.Fatal(err)
	}
	pl.sw = newSwitchboard()
	pl.sw.watch(t, "ztunnel inbound", ls.Inbound)
	pl.sw.watch(t, "ztunnel outbound", ls.Outbound)
	pl.sw.watch(t, "app", listen(t, l.pod, ":"+itoa(appPort)))
	return pl
}

// TestKubeletProbesAndNothingElse: the node rewrites the kubelet's
// connections to enrolled pods to the probe source, which the pod lets
// through to the app; a host-network process, and anything else on the
// node, is captured like any other client; and the probe source cannot
// be borrowed, from the node or from a pod.
func TestKubeletProbesAndNothingElse(t *testing.T) {
	t.Parallel()
	pl := newProbesLab(t)
	app := hostPort(labPod, appPort)

	t.Run("the kubelet reaches the app from the probe source", func(t *testing.T) {
		if got := dialIn(t, pl.node, pl.kubelet, app); !strings.HasPrefix(got, "ok ") {
			t.Fatalf("kubelet's probe: %s", got)
		}
		c := pl.sw.expect(t, "app")
		if from := c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap(); from != probeSource {
			t.Errorf("the app sees the probe from %v, want %v", from, probeSource)
		}
	})
	t.Run("a host-network process is captured", func(t *testing.T) {
		dialIn(t, pl.node, pl.hostPod, app)
		c := pl.sw.expect(t, "ztunnel inbound")
		if from := c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap(); from != labNode {
			t.Errorf("ztunnel sees the connection from %v, want the node's %v", from, labNode)
		}
	})
	t.Run("so is any other process on the node", func(t *testing.T) {
		exchange(t, dial(t, pl.node, netip.Addr{}, app), pl.sw.expect(t, "ztunnel inbound"))
	})
	t.Run("a local socket bound to the probe source gets nowhere", func(t *testing.T) {
		netnstest.Run(t, "ip", "-n", pl.node.Name, "addr", "add", probeSource.String()+"/32", "dev", "lo")
		defer netnstest.Run(t, "ip", "-n", pl.node.Name, "addr", "del", probeSource.String()+"/32", "dev", "lo")
		d := net.Dialer{Timeout: time.Second, LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(probeSource, 0))}
		err := pl.node.Handle.Do(func() error {
			c, err := d.Dial("tcp", app)
			if err == nil {
				c.Close()
			}
			return err
		})
		if err == nil {
			t.Error("a connection from the probe source, bound on the node, was set up")
		}
	})
	t.Run("a pod not in the probe set is not rewritten", func(t *testing.T) {
		if m, err := pl.probes.Members(); err != nil || !slices.Equal(m, []netip.Addr{labPod}) {
			t.Fatalf("probe set members %v, %v; want %v", m, err, labPod)
		}
		if err := pl.probes.Del(labPod); err != nil {
			t.Fatal(err)
		}
		if m, err := pl.probes.Members(); err != nil || len(m) != 0 {
			t.Fatalf("probe set members after Del: %v, %v", m, err)
		}
		if err := pl.probes.Del(labPod); err != nil {
			t.Errorf("deleting an address not in the set: %v", err)
		}
		defer func() {
			if err := pl.probes.Add(labPod); err != nil {
				t.Fatal(err)
			}
		}()
		dialIn(t, pl.node, pl.kubelet, app)
		pl.sw.expect(t, "ztunnel inbound")
	})
	pl.sw.quiet(t)

	t.Run("reconciling again changes nothing, and repairs a flushed chain", func(t *testing.T) {
		before := saveNode(t, pl)
		if err := pl.probes.Reconcile(testContext(t)); err != nil {
			t.Fatal(err)
		}
		if after := saveNode(t, pl); after != before {
			t.Errorf("the node's rules changed:\n%s\nthen:\n%s", before, after)
		}
		netnstest.Run(t, "ip", "netns", "exec", pl.node.Name, "iptables", "-t", "nat", "-F", "CAIRN_POSTROUTING")
		if err := pl.probes.Reconcile(testContext(t)); err != nil {
			t.Fatal(err)
		}
		if after := saveNode(t, pl); after != before {
			t.Errorf("the flushed chain was not repaired:\n%s\nwant:\n%s", after, before)
		}
	})

	t.Run("Remove takes the rules and the sets out", func(t *testing.T) {
		if err := pl.probes.Remove(testContext(t)); err != nil {
			t.Fatal(err)
		}
		for _, f := range AllFamilies {
			if s := savedIn(t, pl.ipt, pl.node, f); len(s.Chains()) != 0 || len(s.Jumps()) != 0 {
				t.Errorf("%v after Remove: chains %v, jumps %v", f, s.Chains(), s.Jumps())
			}
		}
		if err := pl.node.Handle.Do(func() error {
			for _, f := range AllFamilies {
				if _, err := netlink.IpsetList(ProbeSetName(f)); !errors.Is(err, unix.ENOENT) {
					return fmt.Errorf("ipset %s after Remove: %v", ProbeSetName(f), err)
				}
			}
			return nil
		}); err != nil {
			t.Error(err)
		}
		if err := pl.probes.Remove(testContext(t)); err != nil {
			t.Errorf("second Remove: %v", err)
		}
	})
}

func savedIn(t *testing.T, ipt *IPTables, ns *netnstest.NS, f Family) Saved {
	t.Helper()
	s, err := ipt.Saved(testContext(t), ns.Handle, f)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestProbeSourceForgedByAPodIsDropped: a pod with CAP_NET_RAW forges the
// probe source toward a neighbour, and even gets the answers (it poisoned
// the neighbour cache, say: here a route on the node). The node drops the
// forged packets before they reach the neighbour.
func TestProbeSourceForgedByAPodIsDropped(t *testing.T) {
	t.Parallel()
	pl := newProbesLab(t)
	attacker := netnstest.New(t, "cairn-cap-evil")
	attackerIP := netip.MustParseAddr("198.18.250.9")
	netnstest.Run(t, "ip", "-n", pl.node.Name, "link", "add", "veth1", "type", "veth", "peer", "name", "eth0", "netns", attacker.Name)
	netnstest.Run(t, "ip", "-n", pl.node.Name, "addr", "add", "198.18.250.8/31", "dev", "veth1")
	netnstest.Run(t, "ip", "-n", attacker.Name, "addr", "add", attackerIP.String()+"/31", "dev", "eth0")
	netnstest.Run(t, "ip", "-n", attacker.Name, "addr", "add", probeSource.String()+"/32", "dev", "lo")
	netnstest.Run(t, "ip", "-n", pl.node.Name, "link", "set", "veth1", "up")
	netnstest.Run(t, "ip", "-n", attacker.Name, "link", "set", "eth0", "up")
	netnstest.Run(t, "ip", "-n", attacker.Name, "route", "add", "default", "via", "198.18.250.8")
	netnstest.Run(t, "ip", "-n", pl.node.Name, "route", "add", probeSource.String()+"/32", "via", attackerIP.String())
	netnstest.Run(t, "ip", "netns", "exec", pl.node.Name, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")

	app := hostPort(labPod, appPort)
	dialFrom := func(src netip.Addr) error {
		d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0))}
		return attacker.Handle.Do(func() error {
			c, err := d.Dial("tcp", app)
			if err == nil {
				c.Close()
			}
			return err
		})
	}
	// The path works: from its own address the attacker is captured.
	if err := dialFrom(attackerIP); err != nil {
		t.Fatalf("from the attacker's own address: %v", err)
	}
	pl.sw.expect(t, "ztunnel inbound")
	if err := dialFrom(probeSource); err == nil {
		t.Error("a pod forging the probe source connected")
	}
	pl.sw.quiet(t)
}

// TestKubeletCgroup finds the cgroup of the socket on the kubelet's port,
// and refuses what would cover more than the kubelet.
func TestKubeletCgroup(t *testing.T) {
	t.Parallel()
	netnstest.Require(t)
	ns := netnstest.New(t, "cairn-cap-kubelet")
	path, dir := testCgroup(t, "kubelet", "impostor", "parent", "parent/child")
	cgroupIn := func(ns *netnstest.NS, k *Kubelet) (string, error) {
		var p string
		err := ns.Handle.Do(func() error {
			var err error
			var cgns *netns.Handle
			p, cgns, err = k.Cgroup()
			if cgns != nil {
				cgns.Close()
			}
			return err
		})
		return p, err
	}
	k := &Kubelet{Port: kubeletPort}
	if _, err := cgroupIn(ns, k); err == nil || !strings.Contains(err.Error(), "no socket listens") {
		t.Errorf("with no kubelet: %v, want no socket listens", err)
	}
	listenIn(t, ns, filepath.Join(dir, "kubelet"), ":"+itoa(kubeletPort))
	if got, err := cgroupIn(ns, k); err != nil || got != path+"/kubelet" {
		t.Errorf("Kubelet.Cgroup = %q, %v; want %q", got, err, path+"/kubelet")
	}
	// Again, from what it found the first time.
	if got, err := cgroupIn(ns, k); err != nil || got != path+"/kubelet" {
		t.Errorf("Kubelet.Cgroup again = %q, %v; want %q", got, err, path+"/kubelet")
	}

	// A kubelet in a cgroup with children is refused: the match would
	// cover them too.
	parent := netnstest.New(t, "cairn-cap-kubelet")
	listenIn(t, parent, filepath.Join(dir, "parent"), ":"+itoa(kubeletPort))
	if _, err := cgroupIn(parent, &Kubelet{Port: kubeletPort}); err == nil || !strings.Contains(err.Error(), "child cgroups") {
		t.Errorf("a kubelet in a cgroup with children: %v, want an error about child cgroups", err)
	}

	// A kubelet bound to the node's address only, and a host-network
	// process on the same port on another address: ambiguous, unless the
	// node's addresses are known.
	node := netnstest.New(t, "cairn-cap-kubelet")
	nodeIP := netip.MustParseAddr("198.18.252.1")
	netnstest.Run(t, "ip", "-n", node.Name, "link", "add", "d0", "type", "veth", "peer", "name", "d1")
	netnstest.Run(t, "ip", "-n", node.Name, "addr", "add", nodeIP.String()+"/32", "dev", "d0")
	netnstest.Run(t, "ip", "-n", node.Name, "link", "set", "d0", "up")
	listenIn(t, node, filepath.Join(dir, "kubelet"), hostPort(nodeIP, kubeletPort))
	listenIn(t, node, filepath.Join(dir, "impostor"), hostPort(netip.MustParseAddr("127.0.0.1"), kubeletPort))
	if _, err := cgroupIn(node, &Kubelet{Port: kubeletPort}); err == nil || !strings.Contains(err.Error(), "different cgroups") {
		t.Errorf("two listeners of different cgroups: %v, want an error", err)
	}
	if got, err := cgroupIn(node, &Kubelet{Port: kubeletPort, Addrs: []netip.Addr{nodeIP}}); err != nil || got != path+"/kubelet" {
		t.Errorf("Kubelet.Cgroup with the node's address = %q, %v; want %q", got, err, path+"/kubelet")
	}
}

func saveNode(t *testing.T, pl *probesLab) string {
	t.Helper()
	out := netnstest.Run(t, "ip", "netns", "exec", pl.node.Name, "iptables-save")
	var keep []string
	for _, line := range strings.Split(out, "\n") {
		if !strings.HasPrefix(line, "#") && !strings.HasPrefix(line, ":") {
			keep = append(keep, line)
		}
	}
	return strings.Join(keep, "\n")
}
