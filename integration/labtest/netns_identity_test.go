package labtest

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"

	"github.com/cairnmesh/cairn/integration/lab"
)

// podNetnsName returns the name, in node i's netns directory, of the
// network namespace a pod's container runs in (matched by inode, as the
// pod sees it from inside).
func podNetnsName(t *testing.T, ns, pod string, i int) string {
	t.Helper()
	out, err := execIn(t, ns, pod, "readlink", "/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	var ino uint64
	if _, err := fmt.Sscanf(strings.TrimSpace(out), "net:[%d]", &ino); err != nil {
		t.Fatalf("%s/%s: namespace %q: %v", ns, pod, out, err)
	}
	dir := filepath.Join(cfg.NodeRoot(i), "var", "run", "netns")
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		var st unix.Stat_t
		if unix.Stat(filepath.Join(dir, e.Name()), &st) == nil && st.Ino == ino {
			return e.Name()
		}
	}
	t.Fatalf("%s/%s: no namespace of %s has inode %d", ns, pod, dir, ino)
	return ""
}

// TestRestartedZtunnelServesThePodsOwnNetns: an impostor pod on the
// victim's node (with NET_ADMIN, which it asks for), in a network namespace
// whose name sorts before the victim's, puts the victim's IP on its
// loopback. After a ztunnel restart, when the running pods are found
// without cairn-cni, the victim's listeners and identity are in the
// victim's own namespace, and a client on the other node reaches the
// victim, not the impostor.
func TestRestartedZtunnelServesThePodsOwnNetns(t *testing.T) {
	setup(t)
	installMesh(t)
	ns := namespace(t)
	enroll(t, ns)
	pod := func(name string, node int) string {
		return fmt.Sprintf(`
apiVersion: v1
kind: Pod
metadata: {name: %[1]s, labels: {app: %[1]s}}
spec:
  nodeName: %[2]s
  terminationGracePeriodSeconds: 1
  containers:
  - name: echo
    image: cairn/echoserver:latest
    ports: [{name: http, containerPort: 8080}]
    securityContext: {capabilities: {add: [NET_ADMIN]}}
`, name, lab.NodeName(node))
	}
	apply(t, ns, pod("pod-0", 1)+"---"+pod("pod-1", 1)+"---"+pod("client", 2))
	running := waitPods(t, ns, "app in (pod-0,pod-1,client)", 3)
	// The victim is the pod whose namespace sorts last: the lookup by
	// address, which took the first namespace holding the address, took
	// the impostor's.
	victimName, impostorName := "pod-1", "pod-0"
	victimNetns, impostor := podNetnsName(t, ns, "pod-1", 1), podNetnsName(t, ns, "pod-0", 1)
	if victimNetns < impostor {
		victimName, impostorName = impostorName, victimName
		victimNetns, impostor = impostor, victimNetns
	}
	var victim corev1.Pod
	for _, p := range running {
		if p.Name == victimName {
			victim = p
		}
	}
	// Quietly: with arp_ignore the impostor does not answer the bridge's
	// ARP for the victim's address (which would only break the victim's
	// traffic, not give the impostor its identity). Its /proc/sys is
	// read-only, as in any container; with NET_ADMIN it could set the
	// same through netlink (IFLA_INET_CONF), which no tool in the lab
	// does, so the test sets it from the node.
	var impostorPod corev1.Pod
	for _, p := range running {
		if p.Name == impostorName {
			impostorPod = p
		}
	}
	if err := podNetns(t, impostorPod).Do(func() error {
		return os.WriteFile("/proc/sys/net/ipv4/conf/all/arp_ignore", []byte("1"), 0o644)
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := execIn(t, ns, impostorName, "ip", "addr", "add", victim.Status.PodIP+"/32", "dev", "lo"); err != nil {
		t.Fatal(err)
	}
	t.Logf("victim %s in %s, the impostor %s holding %s on its loopback in %s", victimName, victimNetns, impostorName, victim.Status.PodIP, impostor)

	ctx := testContext(t)
	if _, err := kubectl(ctx, "-n", "cairn-system", "rollout", "restart", "daemonset/ztunnel"); err != nil {
		t.Fatal(err)
	}
	if out, err := kubectl(ctx, "-n", "cairn-system", "rollout", "status", "daemonset/ztunnel", "--timeout=150s"); err != nil {
		t.Fatalf("rollout: %v\n%s", err, out)
	}
	zt := ztunnelOn(t, lab.NodeName(1))
	eventually(t, 60*time.Second, "the restarted ztunnel serves the victim from its own namespace", func() error {
		var pods []struct{ Pod, Netns, Identity string }
		if err := ztunnelDump(t, zt, "pods", &pods); err != nil {
			return err
		}
		for _, p := range pods {
			if p.Pod == ns+"/"+victimName {
				if got := filepath.Base(p.Netns); got != victimNetns {
					t.Fatalf("ztunnel serves %s from %s, the victim's is %s (the impostor's %s)", p.Pod, got, victimNetns, impostor)
				}
				return nil
			}
		}
		return fmt.Errorf("%s has not captured the victim yet", zt.Name)
	})
	eventually(t, 30*time.Second, "the client reaches the victim", func() error {
		r, err := curlEcho(t, ns, "client", "http://"+victim.Status.PodIP+":8080/")
		if err != nil {
			return err
		}
		if r.Pod != victimName {
			t.Fatalf("the victim's address was answered by %s", r.Pod)
		}
		return nil
	})
}
