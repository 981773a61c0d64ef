package lab

import (
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// requireRoot skips without root, or fails under CI, where the lab's tests
// must run.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("the lab's tests need root")
	}
	t.Skip("the lab's tests need root")
}

func testNetConfig(t *testing.T) Config {
	t.Helper()
	c, err := Config{Dir: t.TempDir(), Nodes: 2, Prefix: "cnettest", Subnet: 240}.WithDefaults()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func ipNetnsExec(t *testing.T, ns string, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// listenIn listens on addr in the network namespace at nsPath ("" for the
// root one) and accepts connections until the test ends.
func listenIn(t *testing.T, nsPath, addr string) string {
	t.Helper()
	var ln net.Listener
	listen := func() (err error) {
		ln, err = net.Listen("tcp", addr)
		return err
	}
	var err error
	if nsPath == "" {
		err = listen()
	} else {
		err = inNetns(nsPath, listen)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			conn.Close()
		}
	}()
	return ln.Addr().String()
}

func dialFrom(nsPath, addr string) error {
	dial := func() error {
		conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			return err
		}
		return conn.Close()
	}
	if nsPath == "" {
		return dial()
	}
	return inNetns(nsPath, dial)
}

func TestNetworkSetupAndTeardown(t *testing.T) {
	requireRoot(t)
	c := testNetConfig(t)
	t.Cleanup(func() { _ = teardownNetwork(c) })
	if err := teardownNetwork(c); err != nil {
		t.Fatal(err)
	}
	if err := setupNetwork(c); err != nil {
		t.Fatal(err)
	}

	// Host -> node 2, node 1 -> node 2, node 2 -> host.
	node2 := listenIn(t, c.NetnsPath(2), c.NodeAddr(2).Addr().String()+":0")
	if err := dialFrom("", node2); err != nil {
		t.Errorf("host cannot reach node 2: %v", err)
	}
	if err := dialFrom(c.NetnsPath(1), node2); err != nil {
		t.Errorf("node 1 cannot reach node 2: %v", err)
	}
	host := listenIn(t, "", c.BridgeAddr().Addr().String()+":0")
	if err := dialFrom(c.NetnsPath(2), host); err != nil {
		t.Errorf("node 2 cannot reach the host: %v", err)
	}
	for _, s := range nodeSysctls {
		out, err := ipNetnsExec(t, c.NetnsName(1), "cat", "/proc/sys/"+s.key)
		if err != nil || out != s.value {
			t.Errorf("%s in node 1 = %q (%v), want %s", s.key, out, err, s.value)
		}
	}
	// Node 1 routes node 2's pods via node 2 and has no default route.
	routes, err := ipNetnsExec(t, c.NetnsName(1), "ip", "route")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(routes, c.PodCIDR(2).String()+" via "+c.NodeAddr(2).Addr().String()) || strings.Contains(routes, "default") {
		t.Errorf("node 1 routes:\n%s", routes)
	}

	if err := teardownNetwork(c); err != nil {
		t.Fatal(err)
	}
	if links, _ := labLinks(c); len(links) > 0 {
		t.Errorf("links left after teardown: %v", links)
	}
	if ns, _ := leftoverNetns(c); len(ns) > 0 {
		t.Errorf("network namespaces left after teardown: %v", ns)
	}
	if err := teardownNetwork(c); err != nil {
		t.Errorf("second teardown: %v", err)
	}
}
