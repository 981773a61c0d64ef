package kubelet

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"

	"github.com/cairnmesh/cairn/internal/testenv"
)

// testSecurityContext (a subtest of TestKubelet): what a container that
// is not privileged may do is what containerd and runc would let it do,
// for its own process and for exec; a privileged one keeps the node's.
func testSecurityContext(t *testing.T, env *testenv.Env, node *testNode) {
	client := env.Client()
	ns := env.Namespace(t, nil)
	waitForServiceAccount(t, client, ns)
	sleeper := func(name string, sc *corev1.SecurityContext) corev1.Container {
		return corev1.Container{Name: name, Image: "cairn/echoserver:test", Command: []string{"sleep", "3600"}, SecurityContext: sc}
	}
	p := echoPod(ns, "confined")
	p.Spec.TerminationGracePeriodSeconds = ptr.To(int64(1))
	p.Spec.SecurityContext = &corev1.PodSecurityContext{SupplementalGroups: []int64{4000}}
	p.Spec.Containers = []corev1.Container{
		// ztunnel's shape: root, drop ALL, a few added back.
		sleeper("agent", &corev1.SecurityContext{
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}, Add: []corev1.Capability{"NET_ADMIN", "SYS_PTRACE"}},
			AllowPrivilegeEscalation: ptr.To(false), ReadOnlyRootFilesystem: ptr.To(true),
		}),
		// An ordinary app: the default set, as another user.
		sleeper("app", &corev1.SecurityContext{RunAsUser: ptr.To[int64](1000), RunAsGroup: ptr.To[int64](3000)}),
		sleeper("priv", &corev1.SecurityContext{Privileged: ptr.To(true)}),
	}
	pod := createPod(t, client, p)
	pod = waitPod(t, client, pod, 30*time.Second, "Running", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodRunning })
	defer deletePodAndWait(t, client, pod)

	mask := func(caps ...int) string {
		var m uint64
		for _, c := range caps {
			m |= 1 << c
		}
		return fmt.Sprintf("%016x", m)
	}
	none := mask()
	agentCaps := mask(capNumbers["CAP_NET_ADMIN"], capNumbers["CAP_SYS_PTRACE"])
	var defaults []int
	for _, c := range defaultCaps {
		defaults = append(defaults, capNumbers[c])
	}
	appCaps := mask(defaults...)
	hostStatus := procStatus(t, "/proc/self/status")

	hostCgroupNS := nsInode(t, "/proc/self/ns/cgroup")
	for _, tc := range []struct {
		container                    string
		bnd, prm, eff, inh, amb, nnp string
		uid, gid, groups             string
		privateCgroupNS              bool
	}{
		{container: "agent", bnd: agentCaps, prm: agentCaps, eff: agentCaps, inh: none, amb: none, nnp: "1",
			uid: "0", gid: "0", groups: "4000", privateCgroupNS: true},
		// Not root: the capabilities stay in the bounding set only; execve
		// gave the program none.
		{container: "app", bnd: appCaps, prm: none, eff: none, inh: none, amb: none, nnp: "0",
			uid: "1000", gid: "3000", groups: "4000", privateCgroupNS: true},
		{container: "priv", bnd: hostStatus["CapBnd"], prm: hostStatus["CapPrm"], eff: hostStatus["CapEff"],
			inh: hostStatus["CapInh"], amb: hostStatus["CapAmb"], nnp: "0", uid: "0", gid: "0"},
	} {
		pid := containerPID(t, node, pod, tc.container)
		for what, st := range map[string]map[string]string{
			"the container's process": procStatus(t, fmt.Sprintf("/proc/%d/status", pid)),
			"exec":                    parseStatus(execOK(t, env, ns, pod.Name, tc.container, "cat", "/proc/self/status")),
		} {
			for field, want := range map[string]string{
				"CapBnd": tc.bnd, "CapPrm": tc.prm, "CapEff": tc.eff, "CapInh": tc.inh, "CapAmb": tc.amb, "NoNewPrivs": tc.nnp,
			} {
				if got := st[field]; got != want {
					t.Errorf("%s, %s: %s %s, want %s", tc.container, what, field, got, want)
				}
			}
			if f := strings.Fields(st["Uid"]); len(f) != 4 || f[0] != tc.uid || f[1] != tc.uid {
				t.Errorf("%s, %s: Uid %q, want %s", tc.container, what, st["Uid"], tc.uid)
			}
			if f := strings.Fields(st["Gid"]); len(f) != 4 || f[0] != tc.gid {
				t.Errorf("%s, %s: Gid %q, want %s", tc.container, what, st["Gid"], tc.gid)
			}
			if tc.groups != "" && strings.TrimSpace(st["Groups"]) != tc.groups {
				t.Errorf("%s, %s: Groups %q, want %s", tc.container, what, st["Groups"], tc.groups)
			}
		}
		private := nsInode(t, fmt.Sprintf("/proc/%d/ns/cgroup", pid)) != hostCgroupNS
		if private != tc.privateCgroupNS {
			t.Errorf("%s: a cgroup namespace of its own: %v, want %v", tc.container, private, tc.privateCgroupNS)
		}
		// exec joins the same cgroup namespace: the container's cgroup is
		// its root.
		cg := execOK(t, env, ns, pod.Name, tc.container, "cat", "/proc/self/cgroup")
		if root := strings.Contains(cg, "0::/\n"); root != tc.privateCgroupNS {
			t.Errorf("%s: exec sees its cgroup as the root: %v, want %v:\n%s", tc.container, root, tc.privateCgroupNS, cg)
		}
	}

	// What the runtime makes read-only or hides, and what it does not.
	sh := func(container, script string) (string, int) {
		return execPod(t, env, ns, pod.Name, container, []string{"sh", "-c", script})
	}
	for _, c := range []struct {
		container, script string
		ok                bool
	}{
		{"agent", "echo 0 > /proc/sys/net/ipv4/tcp_migrate_req", false},                // /proc/sys read-only
		{"app", "echo 0 > /proc/sys/net/ipv4/tcp_migrate_req", false},                  // for everyone
		{"priv", "echo 1 > /proc/sys/net/ipv4/tcp_migrate_req", true},                  // but the privileged
		{"agent", "test -z \"$(head -c1 /proc/kcore)\"", true},                         // masked: /dev/null
		{"agent", "test -z \"$(ls /sys/firmware)\"", true},                             // masked: empty
		{"agent", "mkdir /sys/fs/cgroup/x", false},                                     // its own cgroup, read-only
		{"agent", `test "$(wc -l < /sys/fs/cgroup/cgroup.procs)" -lt 10`, true},        // and only its own
		{"agent", "touch /x", false},                                                   // read-only root
		{"agent", "touch /tmp/x", false},                                               // /tmp is the root's
		{"agent", "touch /etc/x", false},                                               // so is /etc
		{"app", "touch /tmp/x", true},                                                  // not read-only
		{"agent", "ip addr add 192.0.2.7/32 dev lo", true},                             // NET_ADMIN
		{"app", "ip addr add 192.0.2.8/32 dev lo", false},                              // not NET_ADMIN
		{"agent", "test -r /var/run/secrets/kubernetes.io/serviceaccount/token", true}, // volumes as mounted
	} {
		out, code := sh(c.container, c.script)
		if (code == 0) != c.ok {
			t.Errorf("%s: %q: exit %d, want success %v:\n%s", c.container, c.script, code, c.ok, out)
		}
	}
}

// execOK runs cmd in a container and fails the test if it fails.
func execOK(t *testing.T, env *testenv.Env, ns, pod, container string, cmd ...string) string {
	t.Helper()
	out, code := execPod(t, env, ns, pod, container, cmd)
	if code != 0 {
		t.Fatalf("exec %v in %s: exit %d: %s", cmd, container, code, out)
	}
	return out
}

// procStatus reads a /proc/<pid>/status file into its fields.
func procStatus(t *testing.T, path string) map[string]string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return parseStatus(string(data))
}

func parseStatus(s string) map[string]string {
	out := map[string]string{}
	for _, line := range strings.Split(s, "\n") {
		k, v, ok := strings.Cut(line, ":")
		if ok {
			out[k] = strings.TrimSpace(v)
		}
	}
	// Capability masks are printed as 16 hex digits; keep them so.
	for _, k := range []string{"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"} {
		if v, err := strconv.ParseUint(out[k], 16, 64); err == nil {
			out[k] = fmt.Sprintf("%016x", v)
		}
	}
	return out
}
