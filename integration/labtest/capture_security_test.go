package labtest

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/cairnmesh/cairn/integration/lab"
	"github.com/cairnmesh/cairn/internal/netns"
	"github.com/cairnmesh/cairn/internal/rawtcp"
)

// The capture tests play the attacks of issue 11 (§3 and §5) against an
// enrolled pod and check that each one is refused, while what must keep
// working (the kubelet's probes, plaintext clients the policy allows)
// does.

// lockedDown is a namespace's PeerAuthentication STRICT and an
// AuthorizationPolicy that allows nothing: no connection may reach its
// pods' apps, except the kubelet's probes.
const lockedDown = `
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict}
spec:
  mtls: {mode: STRICT}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-nothing}
spec: {}
`

// probedPods are two echo pods on node 1 whose readiness and liveness
// probes cover HTTP and TCP (each pod has one of each), probing every
// second: a failed readiness probe unreadies the pod, three failed
// liveness probes in a row restart the container (one would restart it
// before the server listens). And a NodePort Service in front of the
// first (externalTrafficPolicy Cluster: kube-proxy masquerades to the
// node's address).
func probedPods(node string) string {
	pod := func(name, readiness, liveness string) string {
		return fmt.Sprintf(`
apiVersion: v1
kind: Pod
metadata: {name: %s, labels: {app: %s}}
spec:
  nodeName: %s
  terminationGracePeriodSeconds: 1
  containers:
  - name: echo
    image: cairn/echoserver:latest
    ports: [{name: http, containerPort: 8080}]
    readinessProbe: {%s, periodSeconds: 1, failureThreshold: 1}
    livenessProbe: {%s, periodSeconds: 1, failureThreshold: 3}
---`, name, name, node, readiness, liveness)
	}
	return pod("probed-http", "httpGet: {path: /, port: 8080}", "tcpSocket: {port: 8080}") +
		pod("probed-tcp", "tcpSocket: {port: http}", "httpGet: {path: /healthz, port: http}") + `
apiVersion: v1
kind: Service
metadata: {name: probed}
spec:
  type: NodePort
  externalTrafficPolicy: Cluster
  selector: {app: probed-http}
  ports: [{port: 80, targetPort: 8080}]
`
}

// TestCaptureOnlyTheKubeletsProbesPass: in a namespace under STRICT and a
// policy that allows nothing, the readiness and liveness probes (HTTP and
// TCP) of enrolled pods keep passing, while a NodePort request (which
// kube-proxy masquerades to the node's address) and a host-network pod on
// the same node are refused. Before the fix the pods let through all of
// their gateway's traffic, and both got the app's 200.
func TestCaptureOnlyTheKubeletsProbesPass(t *testing.T) {
	setup(t)
	installMesh(t)
	ns := namespace(t)
	enroll(t, ns)
	node := lab.NodeName(1)
	apply(t, ns, probedPods(node)+fmt.Sprintf(`
---
apiVersion: v1
kind: Pod
metadata: {name: hostnet, labels: {app: hostnet}}
spec:
  nodeName: %s
  hostNetwork: true
  terminationGracePeriodSeconds: 1
  containers:
  - name: echo
    image: cairn/echoserver:latest
    args: [--http-port=18181, --grpc-port=0, --tcp-port=0]
`, node))
	probed := map[string]corev1.Pod{}
	for _, name := range []string{"probed-http", "probed-tcp"} {
		probed[name] = waitPods(t, ns, "app="+name, 1)[0]
		if !captured(t, ns, name) {
			t.Fatalf("%s is not captured", name)
		}
	}
	waitPods(t, ns, "app=hostnet", 1)

	svc, err := client.CoreV1().Services(ns).Get(testContext(t), "probed", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	nodePort := fmt.Sprintf("http://%s:%d/", cfg.NodeAddr(1).Addr(), svc.Spec.Ports[0].NodePort)
	target := "http://" + probed["probed-http"].Status.PodIP + ":8080/"
	hostnet := func() error {
		_, err := execIn(t, ns, "hostnet", "curl", "-sS", "--fail", "--max-time", "3", target)
		return err
	}

	// Without a policy, both reach the app: the paths are there.
	eventually(t, 30*time.Second, "a NodePort request reaches the app", func() error {
		_, err := httpGetEcho(nodePort)
		return err
	})
	eventually(t, 30*time.Second, "the host-network pod reaches the app", hostnet)

	apply(t, ns, lockedDown)
	eventually(t, 30*time.Second, "STRICT refuses plaintext by pod IP", func() error {
		if _, err := httpGetEcho(target); err == nil {
			return errors.New("still answered")
		}
		return nil
	})
	for i := range 3 {
		if r, err := httpGetEcho(nodePort); err == nil {
			t.Errorf("NodePort request %d under STRICT: answered by %s, from %s", i, r.Pod, r.RemoteAddr)
		}
		if err := hostnet(); err == nil {
			t.Errorf("host-network pod, request %d under allow-nothing: answered", i)
		}
	}

	// The probes run every second: three failed liveness probes restart
	// a container, one failed readiness probe unreadies a pod. Watch them
	// for a while, through a rolling restart of every ztunnel (the new
	// one writes the node's rules again and the old one leaves them), and
	// for a while after.
	watch := func(until func() bool) {
		t.Helper()
		for !until() {
			for name := range probed {
				p, err := client.CoreV1().Pods(ns).Get(testContext(t), name, metav1.GetOptions{})
				if err != nil {
					t.Fatal(err)
				}
				if !podReady(p) || p.Status.ContainerStatuses[0].RestartCount > 0 {
					t.Fatalf("%s: a probe failed: %s", name, podSummary(p))
				}
			}
			time.Sleep(time.Second)
		}
	}
	after := func(d time.Duration) func() bool {
		end := time.Now().Add(d)
		return func() bool { return time.Now().After(end) }
	}
	watch(after(10 * time.Second))
	ctx := testContext(t)
	if _, err := kubectl(ctx, "-n", "cairn-system", "rollout", "restart", "daemonset/ztunnel"); err != nil {
		t.Fatal(err)
	}
	rolled := make(chan error, 1)
	go func() {
		rctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		out, err := kubectl(rctx, "-n", "cairn-system", "rollout", "status", "daemonset/ztunnel", "--timeout=2m")
		if err != nil {
			err = fmt.Errorf("%w\n%s", err, out)
		}
		rolled <- err
	}()
	var rollErr error
	watch(func() bool {
		select {
		case rollErr = <-rolled:
			return true
		default:
			return false
		}
	})
	if rollErr != nil {
		t.Fatalf("rolling restart: %v", rollErr)
	}
	watch(after(15 * time.Second))
	if _, err := httpGetEcho(nodePort); err == nil {
		t.Error("NodePort request after the rolling restart: answered")
	}
	if err := hostnet(); err == nil {
		t.Error("host-network pod after the rolling restart: answered")
	}
}

// TestCaptureBareACKDoesNotBypass: a pod with CAP_NET_RAW (here the test,
// in the pod's network namespace) sends an ACK for a connection that never
// started, with a TCP MD5 option so that the app's kernel drops it without
// a reset, then connects from the same port. The enrolled pod's conntrack
// must not have taken the ACK as the middle of a connection (loose
// pickup), whose entry the SYN would then reuse past the redirect: under
// allow-nothing the connection is refused.
func TestCaptureBareACKDoesNotBypass(t *testing.T) {
	setup(t)
	installMesh(t)
	ns := namespace(t)
	enroll(t, ns)
	apply(t, ns, lockedDown)
	victim := echoPod(t, ns, "victim", lab.NodeName(1))
	outside := namespace(t)
	attacker := echoPod(t, outside, "attacker", lab.NodeName(2))

	control := echoPod(t, outside, "control", lab.NodeName(1))

	h := podNetns(t, attacker)
	src := netip.MustParseAddr(attacker.Status.PodIP)
	attack := func(dst netip.AddrPort) (string, error) {
		from := netip.AddrPortFrom(src, uint16(40000+rand.IntN(20000)))
		if err := h.Do(func() error {
			return rawtcp.Send(rawtcp.Segment{Src: from, Dst: dst, Seq: rand.Uint32(), Ack: rand.Uint32(),
				Flags: rawtcp.ACK, Options: rawtcp.MD5Option()})
		}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond) // the ACK crosses to the other node first; not a timing target
		return getFrom(h, from, dst)
	}
	// The same steps reach a pod outside the mesh: they are sound.
	if status, err := attack(netip.AddrPortFrom(netip.MustParseAddr(control.Status.PodIP), 8080)); err != nil || !strings.Contains(status, " 200 ") {
		t.Fatalf("the attack's steps against a pod outside the mesh: %q, %v", status, err)
	}
	dst := netip.AddrPortFrom(netip.MustParseAddr(victim.Status.PodIP), 8080)
	for i := range 3 {
		if status, err := attack(dst); err == nil {
			t.Errorf("attempt %d: the app answered %q under allow-nothing", i, status)
		}
	}
}

// TestCaptureForgedProbeSourceIsDropped: a pod with CAP_NET_RAW on the
// same node (on the same bridge) forges the probe source, which enrolled
// pods let through uncaptured. The node drops such frames as it bridges
// them (bridge-nf-call-iptables): the enrolled pod never sees them, while
// the same SYN from the attacker's own address arrives.
func TestCaptureForgedProbeSourceIsDropped(t *testing.T) {
	setup(t)
	installMesh(t)
	ns := namespace(t)
	enroll(t, ns)
	node := lab.NodeName(1)
	victim := echoPod(t, ns, "victim", node)
	eventually(t, 30*time.Second, "victim captured", func() error {
		if !captured(t, ns, "victim") {
			return errors.New("not yet")
		}
		return nil
	})
	outside := namespace(t)
	attacker := echoPod(t, outside, "attacker", node)
	dst := netip.AddrPortFrom(netip.MustParseAddr(victim.Status.PodIP), 8080)
	ah, vh := podNetns(t, attacker), podNetns(t, victim)

	syns := func(src netip.Addr) int {
		t.Helper()
		port := uint16(40000 + rand.IntN(20000))
		return countSYNs(t, vh, netip.AddrPortFrom(src, port), dst, func() {
			for range 3 {
				if err := ah.Do(func() error {
					return rawtcp.Send(rawtcp.Segment{Src: netip.AddrPortFrom(src, port), Dst: dst, Seq: rand.Uint32(), Flags: rawtcp.SYN})
				}); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
	if n := syns(netip.MustParseAddr(attacker.Status.PodIP)); n == 0 {
		t.Fatal("the attacker's SYNs from its own address did not reach the victim either: the test proves nothing")
	}
	if n := syns(netip.MustParseAddr("169.254.7.127")); n > 0 {
		t.Errorf("%d SYNs forged from the probe source reached the enrolled pod", n)
	}
}

// countSYNs counts the TCP SYNs from src to dst that reach eth0 in h
// while send runs (and for half a second after).
func countSYNs(t *testing.T, h *netns.Handle, src, dst netip.AddrPort, send func()) int {
	t.Helper()
	var fd int
	if err := h.Do(func() error {
		var err error
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM, int(htons(unix.ETH_P_IP)))
		if err != nil {
			return err
		}
		ifi, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_IP), Ifindex: ifi.Index})
	}); err != nil {
		t.Fatalf("packet socket in the pod: %v", err)
	}
	defer unix.Close(fd)
	tv := unix.NsecToTimeval((100 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	send()
	n := 0
	buf := make([]byte, 2048)
	for end := time.Now().Add(500 * time.Millisecond); time.Now().Before(end); {
		m, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			continue // the timeout
		}
		ip := buf[:m]
		if m < 40 || ip[0]>>4 != 4 || ip[9] != unix.IPPROTO_TCP {
			continue
		}
		ihl := int(ip[0]&0x0f) * 4
		tcp := ip[ihl:]
		if netip.AddrFrom4([4]byte(ip[12:16])) == src.Addr() && netip.AddrFrom4([4]byte(ip[16:20])) == dst.Addr() &&
			binary.BigEndian.Uint16(tcp[0:2]) == src.Port() && binary.BigEndian.Uint16(tcp[2:4]) == dst.Port() &&
			tcp[13]&(rawtcp.SYN|rawtcp.ACK) == rawtcp.SYN {
			n++
		}
	}
	return n
}

// TestCaptureIPv6LinkLocalIsRefused: the lab's pods have only IPv4
// addresses, but every interface has an IPv6 link-local address, and the
// echo server listens on the dual-stack wildcard. A neighbour on the same
// node connects to the enrolled pod by that address: refused, as over IPv4.
func TestCaptureIPv6LinkLocalIsRefused(t *testing.T) {
	setup(t)
	installMesh(t)
	ns := namespace(t)
	enroll(t, ns)
	apply(t, ns, lockedDown)
	node := lab.NodeName(1)
	victim := echoPod(t, ns, "victim", node)
	outside := namespace(t)
	neighbour := echoPod(t, outside, "neighbour", node)

	ll := linkLocal(t, podNetns(t, victim))
	h := podNetns(t, neighbour)
	dst := netip.AddrPortFrom(ll.WithZone("eth0"), 8080)
	// Refused with a reset: the path is there, and the pod says no.
	for range 3 {
		if status, err := getFrom(h, netip.AddrPort{}, dst); !errors.Is(err, errRefused) {
			t.Errorf("the neighbour to the enrolled pod's app on %v: %q, %v; want connection refused", dst, status, err)
		}
	}
	if _, err := getFrom(h, netip.AddrPort{}, netip.AddrPortFrom(netip.MustParseAddr(victim.Status.PodIP), 8080)); err == nil {
		t.Error("over IPv4 the neighbour reached the app under allow-nothing")
	}
}

// TestCapturePlaintextSeesTheClient: a plaintext client outside the mesh
// (the test, from the lab bridge's address) reaches an enrolled pod; the
// app sees the client's address, not the pod's own. The pod's port range
// then leaves ztunnel only the port of the client's first connection,
// still open, for its next connection to the app: conntrack must keep the
// two apart, and both keep working.
func TestCapturePlaintextSeesTheClient(t *testing.T) {
	setup(t)
	installMesh(t)
	ns := namespace(t)
	enroll(t, ns)
	echo := echoPod(t, ns, "echo", lab.NodeName(1))
	app := netip.AddrPortFrom(netip.MustParseAddr(echo.Status.PodIP), 8080)
	bridge := cfg.BridgeAddr().Addr()

	// ztunnel refuses connections to a pod whose configuration it does
	// not have yet: wait for it.
	var first *keepAlive
	var r echoReply
	eventually(t, 30*time.Second, "a plaintext request reaches the app", func() error {
		k, err := newKeepAlive(netip.AddrPortFrom(bridge, 0), app)
		if err != nil {
			return err
		}
		if r, err = k.get(); err != nil {
			k.Close()
			return err
		}
		first = k
		return nil
	})
	defer first.Close()
	if host, _, _ := net.SplitHostPort(r.RemoteAddr); host != bridge.String() {
		t.Fatalf("the app saw the plaintext client as %s, want the client's %s", r.RemoteAddr, bridge)
	}

	port := first.local.Port()
	h := podNetns(t, echo)
	rangeFile := "/proc/sys/net/ipv4/ip_local_port_range"
	var saved []byte
	if err := h.Do(func() error {
		var err error
		if saved, err = os.ReadFile(rangeFile); err != nil {
			return err
		}
		return os.WriteFile(rangeFile, []byte(fmt.Sprintf("%d %d", port, port)), 0o644)
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Do(func() error { return os.WriteFile(rangeFile, saved, 0o644) }) })

	second, err := newKeepAlive(netip.AddrPortFrom(bridge, 0), app)
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	r, err = second.get()
	if err != nil {
		t.Fatalf("plaintext request while ztunnel can only use port %d: %v", port, err)
	}
	if want := netip.AddrPortFrom(bridge, port).String(); r.RemoteAddr != want {
		t.Errorf("the app saw the second connection from %s, want %s (ztunnel forced onto the first client's port)", r.RemoteAddr, want)
	}
	if _, err := first.get(); err != nil {
		t.Errorf("the first connection after the second: %v", err)
	}
}

// echoPod runs an echo server pod on a node and waits until it is Ready.
func echoPod(t *testing.T, ns, name, node string) corev1.Pod {
	t.Helper()
	apply(t, ns, fmt.Sprintf(`
apiVersion: v1
kind: Pod
metadata: {name: %s, labels: {app: %s}}
spec:
  nodeName: %s
  terminationGracePeriodSeconds: 1
  containers:
  - {name: echo, image: "cairn/echoserver:latest", ports: [{name: http, containerPort: 8080}]}
`, name, name, node))
	return waitPods(t, ns, "app="+name, 1)[0]
}

// podNetns opens a pod's network namespace: the one among its node's
// that holds the pod's address.
func podNetns(t *testing.T, pod corev1.Pod) *netns.Handle {
	t.Helper()
	ip := netip.MustParseAddr(pod.Status.PodIP)
	dir := filepath.Join(cfg.NodeRoot(nodeIndex(t, pod.Spec.NodeName)), "var/run/netns")
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		h, err := netns.Open(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		found := false
		_ = h.Do(func() error {
			addrs, err := net.InterfaceAddrs()
			for _, a := range addrs {
				if n, ok := a.(*net.IPNet); ok && n.IP.Equal(ip.AsSlice()) {
					found = true
				}
			}
			return err
		})
		if found {
			t.Cleanup(func() { h.Close() })
			return h
		}
		h.Close()
	}
	t.Fatalf("no network namespace in %s has %s (pod %s)", dir, ip, pod.Name)
	return nil
}

// linkLocal returns the IPv6 link-local address of eth0 in a namespace.
func linkLocal(t *testing.T, h *netns.Handle) netip.Addr {
	t.Helper()
	var ll netip.Addr
	deadline := time.Now().Add(30 * time.Second)
	for !ll.IsValid() {
		_ = h.Do(func() error {
			ifi, err := net.InterfaceByName("eth0")
			if err != nil {
				return err
			}
			addrs, err := ifi.Addrs()
			for _, a := range addrs {
				if n, ok := a.(*net.IPNet); ok {
					if ip, ok := netip.AddrFromSlice(n.IP); ok && ip.Is6() && ip.IsLinkLocalUnicast() {
						ll = ip
					}
				}
			}
			return err
		})
		if !ll.IsValid() {
			if time.Now().After(deadline) {
				t.Fatal("the pod's eth0 has no IPv6 link-local address: the test would prove nothing")
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	return ll
}

var errRefused = errors.New("refused")

// getFrom sends GET / from inside h (from src if it is valid) to dst and
// returns the status line.
func getFrom(h *netns.Handle, src, dst netip.AddrPort) (string, error) {
	d := net.Dialer{Timeout: 3 * time.Second}
	if src.IsValid() {
		d.LocalAddr = net.TCPAddrFromAddrPort(src)
	}
	var c net.Conn
	if err := h.Do(func() error {
		var err error
		c, err = d.Dial("tcp", dst.String())
		return err
	}); err != nil {
		if strings.Contains(err.Error(), "connection refused") {
			return "", fmt.Errorf("%w: %w", errRefused, err)
		}
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", dst); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(line), nil
}

// keepAlive is one HTTP/1.1 connection from the test, reused.
type keepAlive struct {
	conn  net.Conn
	local netip.AddrPort
	http  *http.Client
}

func newKeepAlive(src, dst netip.AddrPort) (*keepAlive, error) {
	d := net.Dialer{Timeout: 3 * time.Second, LocalAddr: net.TCPAddrFromAddrPort(src)}
	c, err := d.Dial("tcp", dst.String())
	if err != nil {
		return nil, err
	}
	k := &keepAlive{conn: c, local: c.LocalAddr().(*net.TCPAddr).AddrPort()}
	used := false
	k.http = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			if used {
				return nil, errors.New("the connection is gone: no second dial")
			}
			used = true
			return c, nil
		},
		MaxIdleConnsPerHost: 1,
	}}
	return k, nil
}

func (k *keepAlive) get() (echoReply, error) {
	resp, err := k.http.Get("http://" + k.conn.RemoteAddr().String() + "/")
	if err != nil {
		return echoReply{}, err
	}
	defer resp.Body.Close()
	var r echoReply
	dec := json.NewDecoder(resp.Body)
	if err := dec.Decode(&r); err != nil {
		return r, err
	}
	if resp.StatusCode != http.StatusOK {
		return r, errors.New("status " + strconv.Itoa(resp.StatusCode))
	}
	return r, nil
}

func (k *keepAlive) Close() { k.http.CloseIdleConnections(); k.conn.Close() }
