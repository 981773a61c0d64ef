package kubelet

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/cairnmesh/cairn/internal/kubeserver"
	"github.com/cairnmesh/cairn/internal/nodepath"
	"github.com/cairnmesh/cairn/internal/testenv"
)

// The test node: a network namespace joined to a bridge of its own, all in
// 198.18.200.0/24 and named cairnkt*, so that it never meets the lab's.
const (
	testBridge    = "cairnkt0"
	testBridgeIP  = "198.18.200.1"
	testNetns     = "cairnkt-node"
	testHostVeth  = "cairnkt-n0"
	testNodeIP    = "198.18.200.10"
	testNodeName  = "cairnkt-node"
	testPodCIDR   = "198.18.200.128/25"
	testSubnetLen = "25"
	testCgroup    = "cairnkt-kubepods"
)

// kubeletPKI is the CA of the kubelet API in these tests: it signs the
// API server's client certificate and the kubelet's serving certificate.
var kubeletPKI struct {
	ca  *kubeserver.CA
	dir string
	err error
}

// apiServerKubeletArgs makes the API server reach kubelets like a real
// one: by InternalIP, with a client certificate, verifying theirs.
func apiServerKubeletArgs() []string {
	ca, err := kubeserver.NewCA("cairnkt-kubelet-ca", kubeserver.ECDSA)
	if err != nil {
		kubeletPKI.err = err
		return nil
	}
	// The API server reads these files for as long as it runs, and
	// TestMain has no "after" to remove them in: each test binary uses
	// cairnkt-pki-<pid> and removes those of binaries that are gone.
	removeStalePKI()
	dir := filepath.Join(os.TempDir(), fmt.Sprintf("cairnkt-pki-%d", os.Getpid()))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		kubeletPKI.err = err
		return nil
	}
	client, err := ca.IssueClient("kube-apiserver-kubelet-client", []string{"system:masters"})
	if err != nil {
		kubeletPKI.err = err
		return nil
	}
	for name, data := range map[string][]byte{"ca.crt": ca.CertPEM, "client.crt": client.CertPEM, "client.key": client.KeyPEM} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			kubeletPKI.err = err
			return nil
		}
	}
	kubeletPKI.ca, kubeletPKI.dir = ca, dir
	return []string{
		"--kubelet-client-certificate=" + filepath.Join(dir, "client.crt"),
		"--kubelet-client-key=" + filepath.Join(dir, "client.key"),
		"--kubelet-certificate-authority=" + filepath.Join(dir, "ca.crt"),
		"--kubelet-preferred-address-types=InternalIP",
	}
}

func removeStalePKI() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "cairnkt-pki-*"))
	for _, d := range dirs {
		var pid int
		if _, err := fmt.Sscanf(filepath.Base(d), "cairnkt-pki-%d", &pid); err == nil && pid != os.Getpid() && !procRunning(pid) {
			os.RemoveAll(d)
		}
	}
}

// requireRoot fails (under CI) or skips a test that needs root and the CNI
// plugins.
func requireRoot(t testing.TB) {
	t.Helper()
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	for _, p := range []string{"bridge", "host-local"} {
		if _, err := os.Stat(filepath.Join(DebianCNIBinDir, p)); err != nil {
			missing = append(missing, DebianCNIBinDir+"/"+p+" (run `make deps`)")
		}
	}
	for _, c := range []string{"ip", "nsenter"} {
		if _, err := exec.LookPath(c); err != nil {
			missing = append(missing, c)
		}
	}
	if len(missing) == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("this test needs %s", strings.Join(missing, ", "))
	}
	t.Skipf("this test needs %s", strings.Join(missing, ", "))
}

// testNode is a node of the test: its network and a kubelet process.
type testNode struct {
	t       testing.TB
	env     *testenv.Env
	root    string // NodeRoot
	binDir  string
	dir     string // kubeconfig, certs, logs
	netns   string
	kubecfg string

	mu      sync.Mutex
	kubelet *exec.Cmd
	exited  chan struct{}
	logPath string
	starts  int
}

func run(t testing.TB, name string, args ...string) {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// cleanupNetwork removes the test network (also leftovers of a crashed
// run). Missing pieces are fine.
func cleanupNetwork() {
	_ = exec.Command("ip", "link", "del", testHostVeth).Run()
	_ = exec.Command("ip", "link", "del", testBridge).Run()
	_ = exec.Command("ip", "netns", "del", testNetns).Run()
}

// newTestNode builds the node's network and files and starts its kubelet.
// Everything is removed again by t.Cleanup, in reverse order.
func newTestNode(t testing.TB, env *testenv.Env, binDir string) *testNode {
	requireRoot(t)
	if kubeletPKI.err != nil {
		t.Fatalf("kubelet PKI: %v", kubeletPKI.err)
	}
	t.Cleanup(func() { os.RemoveAll(kubeletPKI.dir) })
	dir := t.TempDir()
	n := &testNode{t: t, env: env, dir: dir, root: filepath.Join(dir, "root"), binDir: binDir, netns: "/run/netns/" + testNetns}

	cleanupNetwork()
	t.Cleanup(cleanupNetwork)
	run(t, "ip", "link", "add", testBridge, "type", "bridge")
	run(t, "ip", "addr", "add", testBridgeIP+"/"+testSubnetLen, "dev", testBridge)
	run(t, "ip", "link", "set", testBridge, "up")
	run(t, "ip", "netns", "add", testNetns)
	run(t, "ip", "link", "add", testHostVeth, "type", "veth", "peer", "name", "eth0", "netns", testNetns)
	run(t, "ip", "link", "set", testHostVeth, "master", testBridge, "up")
	run(t, "ip", "-n", testNetns, "addr", "add", testNodeIP+"/"+testSubnetLen, "dev", "eth0")
	run(t, "ip", "-n", testNetns, "link", "set", "eth0", "up")
	run(t, "ip", "-n", testNetns, "link", "set", "lo", "up")

	// The API server listens on loopback; a forwarder on the bridge
	// carries the node's connections to it.
	apiHost := strings.TrimPrefix(env.Config().Host, "https://")
	fwd := forward(t, testBridgeIP+":0", apiHost)

	// The kubelet's identity: a node user, bound to the system:node role
	// (the test API server has RBAC only, no Node authorizer).
	nodeUser := "system:node:" + testNodeName
	ctx := context.Background()
	crb := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "cairnkt-node"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "system:node"},
		Subjects:   []rbacv1.Subject{{APIGroup: "rbac.authorization.k8s.io", Kind: "User", Name: nodeUser}},
	}
	_ = env.Client().RbacV1().ClusterRoleBindings().Delete(ctx, crb.Name, metav1.DeleteOptions{})
	if _, err := env.Client().RbacV1().ClusterRoleBindings().Create(ctx, crb, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = env.Client().RbacV1().ClusterRoleBindings().Delete(context.Background(), crb.Name, metav1.DeleteOptions{})
		_ = env.Client().CoreV1().Nodes().Delete(context.Background(), testNodeName, metav1.DeleteOptions{})
	})
	cfg, err := env.Server().ClientConfig(nodeUser, "system:nodes")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Host = "https://" + fwd
	n.kubecfg = filepath.Join(dir, "kubeconfig")
	if err := kubeserver.WriteKubeconfig(n.kubecfg, cfg, nodeUser); err != nil {
		t.Fatal(err)
	}
	serving, err := kubeletPKI.ca.IssueServing([]net.IP{net.ParseIP(testNodeIP)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{"kubelet.crt": serving.CertPEM, "kubelet.key": serving.KeyPEM, "ca.crt": kubeletPKI.ca.CertPEM} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}

	// The node's CNI configuration, as the lab writes it.
	conf := fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": "cairnkt",
  "plugins": [{
    "type": "bridge",
    "bridge": "cni0",
    "isGateway": true,
    "ipMasq": false,
    "hairpinMode": true,
    "ipam": {
      "type": "host-local",
      "ranges": [[{"subnet": %q}]],
      "routes": [{"dst": "0.0.0.0/0"}],
      "dataDir": %q
    }
  }]
}`, testPodCIDR, filepath.Join(n.root, "var/lib/cni/networks"))
	confDir := filepath.Join(n.root, "etc/cni/net.d")
	if err := os.MkdirAll(confDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(confDir, "10-cairnkt.conflist"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}

	// Last registered, first run: whatever the kubelet left goes before
	// the network and the directories.
	t.Cleanup(func() {
		n.stop(syscall.SIGKILL)
		if err := Cleanup(n.root); err != nil {
			t.Errorf("kubelet.Cleanup: %v", err)
		}
		removeTestCgroups(t)
		if t.Failed() || os.Getenv("KUBELET_TEST_LOG") != "" {
			n.dumpLog()
		}
	})
	n.start()
	n.waitNodeReady()
	return n
}

// removeTestCgroups removes the tests' cgroup parent from every hierarchy.
func removeTestCgroups(t testing.TB) {
	cg, err := discoverCgroups(testCgroup, "")
	if err != nil {
		t.Errorf("cgroups: %v", err)
		return
	}
	if err := removeCgroups(cg.bases, 5*time.Second); err != nil {
		t.Errorf("removing test cgroups: %v", err)
	}
}

// start starts the kubelet (again), inside the node's network namespace
// but in the host's mount namespace.
func (n *testNode) start() {
	n.t.Helper()
	exe, err := os.Executable()
	if err != nil {
		n.t.Fatal(err)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.starts++
	n.logPath = filepath.Join(n.dir, fmt.Sprintf("kubelet-%d.log", n.starts))
	logf, err := os.Create(n.logPath)
	if err != nil {
		n.t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command("nsenter", "--net="+n.netns, "--", exe, "kubelet",
		"--node-name="+testNodeName,
		"--node-ip="+testNodeIP,
		"--pod-cidr="+testPodCIDR,
		"--node-root="+n.root,
		"--kubeconfig="+n.kubecfg,
		"--bin-dir="+n.binDir,
		"--cluster-dns=198.19.0.10",
		"--cgroup-parent="+testCgroup+"/kubepods",
		"--backoff-base=300ms",
		"--backoff-max=2s",
		"--tls-cert-file="+filepath.Join(n.dir, "kubelet.crt"),
		"--tls-private-key-file="+filepath.Join(n.dir, "kubelet.key"),
		"--client-ca-file="+filepath.Join(n.dir, "ca.crt"),
		"--log-level=debug",
	)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		n.t.Fatal(err)
	}
	n.kubelet = cmd
	n.exited = make(chan struct{})
	exited := n.exited
	go func() { _ = cmd.Wait(); close(exited) }()
}

// stop stops the kubelet with sig (SIGKILL after 10s).
func (n *testNode) stop(sig syscall.Signal) {
	n.mu.Lock()
	cmd, exited := n.kubelet, n.exited
	n.kubelet = nil
	n.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-exited
	}
}

func (n *testNode) dumpLog() {
	for i := 1; i <= n.starts; i++ {
		data, _ := os.ReadFile(filepath.Join(n.dir, fmt.Sprintf("kubelet-%d.log", i)))
		if len(data) > 64<<10 {
			data = data[len(data)-64<<10:]
		}
		n.t.Logf("kubelet log %d:\n%s", i, data)
	}
}

func (n *testNode) waitNodeReady() {
	n.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		node, err := n.env.Client().CoreV1().Nodes().Get(context.Background(), testNodeName, metav1.GetOptions{})
		if err == nil {
			for _, c := range node.Status.Conditions {
				if c.Type == "Ready" && c.Status == "True" {
					// Node agents find hostPath volumes on the node by it.
					if got := node.Annotations[nodepath.RootAnnotation]; got != n.root {
						n.t.Fatalf("node annotation %s = %q, want the node root %q", nodepath.RootAnnotation, got, n.root)
					}
					return
				}
			}
		}
		select {
		case <-n.exited:
			n.dumpLog()
			n.t.Fatal("the kubelet exited")
		case <-time.After(100 * time.Millisecond):
		}
	}
	n.dumpLog()
	n.t.Fatal("node did not become Ready in 30s")
}

// inNode runs fn on a thread inside the node's network namespace.
func (n *testNode) inNode(fn func() error) error { return inNetns(n.netns, fn) }

// httpGet fetches url from inside the node's network namespace.
func (n *testNode) httpGet(url string) (string, error) {
	var body string
	err := n.inNode(func() error {
		c, err := net.DialTimeout("tcp", strings.TrimPrefix(url, "http://"), 2*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(c, "GET / HTTP/1.0\r\nHost: test\r\n\r\n")
		data, err := io.ReadAll(c)
		body = string(data)
		return err
	})
	return body, err
}

// forward accepts on listen and copies each connection to target, until
// the test ends. It returns the address it listens on.
func forward(t testing.TB, listen, target string) string {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		t.Fatalf("forwarder: %v", err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	track := func(c net.Conn, add bool) bool {
		mu.Lock()
		defer mu.Unlock()
		if add {
			if conns == nil {
				return false
			}
			conns[c] = true
		} else if conns != nil {
			delete(conns, c)
		}
		return true
	}
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				u, err := net.Dial("tcp", target)
				if err != nil {
					return
				}
				defer u.Close()
				if !track(c, true) {
					return
				}
				defer track(c, false)
				done := make(chan struct{}, 2)
				go func() { _, _ = io.Copy(u, c); done <- struct{}{} }()
				go func() { _, _ = io.Copy(c, u); done <- struct{}{} }()
				<-done
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		conns = nil
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// buildEcho builds the echo server into a fresh bin directory.
func buildEcho(t testing.TB) string {
	t.Helper()
	root, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	bin := t.TempDir()
	// The flags of `make build`, so that the packages compiled for bin/ serve.
	cmd := exec.Command("go", "build", "-trimpath", "-tags", "grpcnotrace", "-o", bin+"/", "./integration/apps/echo/cmd/echoserver")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("building echoserver: %v\n%s", err, out.String())
	}
	return bin
}

func (n *testNode) httpGetRetry(url string, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	for {
		body, err := n.httpGet(url)
		if err == nil || time.Now().After(deadline) {
			return body, err
		}
		time.Sleep(50 * time.Millisecond)
	}
}
