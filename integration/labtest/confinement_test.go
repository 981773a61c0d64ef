package labtest

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/cairnmesh/cairn/integration/lab"
	"github.com/cairnmesh/cairn/integration/lab/hostos"
)

// TestMeshRunsConfinedAsOnANode: ztunnel and istiod-lite run as their
// manifests ask and a real runtime enforces (the lab kubelet does): only
// the capabilities the manifests add, no_new_privs, their users, a
// read-only /proc/sys and a cgroup namespace of their own. So the rest of
// the suite shows that this is enough for them: ztunnel still writes an
// enrolled pod's sysctls (through the node's /proc/sys/net) and finds the
// kubelet's cgroup (from the kubelet's cgroup namespace).
func TestMeshRunsConfinedAsOnANode(t *testing.T) {
	setup(t)
	installMesh(t)
	hostCgroupNS := nsLink(t, "/proc/self/ns/cgroup")

	check := func(pod corev1.Pod, comm string, caps []string, uid string) {
		t.Helper()
		pid := podProcess(t, pod, comm)
		st := procStatus(t, pid)
		want := capMask(t, caps)
		for _, f := range []string{"CapEff", "CapPrm", "CapBnd"} {
			if got, err := strconv.ParseUint(st[f], 16, 64); err != nil || got != want {
				t.Errorf("%s (%s): %s %s, want %016x (%v)", pod.Name, comm, f, st[f], want, caps)
			}
		}
		if st["NoNewPrivs"] != "1" {
			t.Errorf("%s (%s): NoNewPrivs %s, want 1", pod.Name, comm, st["NoNewPrivs"])
		}
		if f := strings.Fields(st["Uid"]); len(f) < 2 || f[1] != uid {
			t.Errorf("%s (%s): Uid %q, want %s", pod.Name, comm, st["Uid"], uid)
		}
		if nsLink(t, fmt.Sprintf("/proc/%d/ns/cgroup", pid)) == hostCgroupNS {
			t.Errorf("%s (%s) is in the node's cgroup namespace", pod.Name, comm)
		}
		out, err := execIn(t, pod.Namespace, pod.Name, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/tcp_migrate_req && echo writable")
		if err == nil || strings.Contains(out, "writable") {
			t.Errorf("%s: /proc/sys is writable (%q, %v)", pod.Name, out, err)
		}
	}
	for _, z := range waitPods(t, "cairn-system", "app=ztunnel", cfg.Nodes) {
		check(z, "ztunnel", []string{"CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_SYS_ADMIN", "CAP_SYS_PTRACE"}, "0")
	}
	check(waitPods(t, "cairn-system", "app=istiod-lite", 1)[0], "istiod-lite", nil, "1337")

	// What ztunnel does with that: an enrolled pod's sysctls are set, and
	// the node's probe rule names the kubelet's cgroup.
	ns := namespace(t)
	enroll(t, ns)
	pod := echoPod(t, ns, "confined", lab.NodeName(1))
	if !captured(t, ns, pod.Name) {
		t.Fatal("the pod is not captured")
	}
	h := podNetns(t, pod)
	for key, want := range map[string]string{"netfilter/nf_conntrack_tcp_loose": "0", "ipv4/tcp_migrate_req": "1"} {
		var got []byte
		if err := h.Do(func() (err error) { got, err = os.ReadFile("/proc/sys/net/" + key); return err }); err != nil {
			t.Fatal(err)
		}
		if strings.TrimSpace(string(got)) != want {
			t.Errorf("net.%s in the enrolled pod: %s, want %s", strings.ReplaceAll(key, "/", "."), got, want)
		}
	}
	eventually(t, 30*time.Second, "the node's probe rule names the kubelet's cgroup", func() error {
		out, err := exec.CommandContext(testContext(t), "ip", "netns", "exec", cfg.NetnsName(1), "iptables-save", "-t", "nat").Output()
		if err != nil {
			return err
		}
		// The lab's cgroups are below the one the lab started in.
		for _, line := range strings.Split(string(out), "\n") {
			_, path, ok := strings.Cut(line, "-m cgroup --path ")
			if f := strings.Fields(path); ok && len(f) > 0 && strings.HasSuffix(strings.Trim(f[0], `"`), "/"+cfg.KubeletCgroup(1)) {
				return nil
			}
		}
		return fmt.Errorf("no rule matches the kubelet's cgroup %s:\n%s", cfg.KubeletCgroup(1), out)
	})
}

// podProcess returns the pid of the process named comm among a pod's.
func podProcess(t *testing.T, pod corev1.Pod, comm string) int {
	t.Helper()
	for _, pid := range hostos.CgroupPIDs(cfg.PodCgroups(string(pod.UID))...) {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if err == nil && strings.TrimSpace(string(data)) == comm {
			return pid
		}
	}
	t.Fatalf("no process %s in pod %s/%s", comm, pod.Namespace, pod.Name)
	return 0
}

func procStatus(t *testing.T, pid int) map[string]string {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, line := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			out[k] = strings.TrimSpace(v)
		}
	}
	return out
}

// capMask is the bit mask of capabilities by name.
func capMask(t *testing.T, caps []string) uint64 {
	t.Helper()
	numbers := map[string]uint{"CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13, "CAP_SYS_PTRACE": 19, "CAP_SYS_ADMIN": 21}
	var m uint64
	for _, c := range caps {
		n, ok := numbers[c]
		if !ok {
			t.Fatalf("capability %s: number unknown to the test", c)
		}
		m |= 1 << n
	}
	return m
}

func nsLink(t *testing.T, path string) string {
	t.Helper()
	l, err := os.Readlink(path)
	if err != nil {
		t.Fatal(err)
	}
	return l
}
