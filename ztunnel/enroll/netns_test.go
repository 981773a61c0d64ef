package enroll

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/cairnmesh/cairn/internal/netns/netnstest"
	"github.com/cairnmesh/cairn/ztunnel/capture"
	"github.com/cairnmesh/cairn/ztunnel/nodeagent"
)

const (
	victimUID   = "6f1c2a3b-4d5e-4f60-8a9b-0c1d2e3f4a5b"
	impostorUID = "0a0b0c0d-1111-4222-8333-944445555666"
)

// withAddr gives a namespace an address: on a veth (where a CNI puts a
// pod's) or on its loopback (where an impostor can add anyone's).
func withAddr(t *testing.T, ns *netnstest.NS, cidr string, onLoopback bool) {
	t.Helper()
	if onLoopback {
		netnstest.Run(t, "ip", "-n", ns.Name, "addr", "add", cidr, "dev", "lo")
		return
	}
	netnstest.Run(t, "ip", "-n", ns.Name, "link", "add", "d0", "type", "veth", "peer", "name", "d1")
	netnstest.Run(t, "ip", "-n", ns.Name, "link", "set", "d1", "up")
	netnstest.Run(t, "ip", "-n", ns.Name, "addr", "add", cidr, "dev", "d0")
	netnstest.Run(t, "ip", "-n", ns.Name, "link", "set", "d0", "up")
}

// fakeProc is a /proc with the two files Find reads per process: cgroup,
// and ns/net (here a symbolic link to a real namespace, which stat follows
// as it follows the kernel's magic link).
type fakeProc struct {
	t   *testing.T
	dir string
}

func newFakeProc(t *testing.T) *fakeProc { return &fakeProc{t: t, dir: t.TempDir()} }

func (p *fakeProc) add(pid int, cgroup, netnsPath string) {
	p.t.Helper()
	d := filepath.Join(p.dir, strconv.Itoa(pid))
	if err := os.MkdirAll(filepath.Join(d, "ns"), 0o755); err != nil {
		p.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(d, "cgroup"), []byte(cgroup), 0o644); err != nil {
		p.t.Fatal(err)
	}
	if err := os.Symlink(netnsPath, filepath.Join(d, "ns", "net")); err != nil {
		p.t.Fatal(err)
	}
}

// cgroupV1 is a /proc/<pid>/cgroup of a container of pod uid, as the lab
// kubelet (and a kubelet with the cgroupfs driver) makes it on cgroup v1.
func cgroupV1(uid, container string) string {
	p := "/kubepods/besteffort/pod" + uid + "/" + container
	return "12:memory:" + p + "\n11:pids:" + p + "\n3:cpuset:/\n1:name=systemd:" + p + "\n0::/\n"
}

// TestNetnsFinderPicksThePodsOwnNamespace: an impostor holds the victim's
// IP on its loopback, in a namespace whose name sorts first, and makes a
// cgroup named after the victim below its own. Find still names the
// victim's own namespace (found through its processes' cgroup), passes
// over a victim process that is in the node's namespace (an exec joining
// the pod), and refuses the impostor the victim's address.
func TestNetnsFinderPicksThePodsOwnNamespace(t *testing.T) {
	netnstest.Require(t, "ip")
	impostor := netnstest.New(t, "aaa-enroll") // first in the directory
	victim := netnstest.New(t, "zzz-enroll")
	withAddr(t, victim, "198.18.251.77/24", false)
	withAddr(t, impostor, "198.18.251.78/24", false)
	withAddr(t, impostor, "198.18.251.77/32", true)

	proc := newFakeProc(t)
	proc.add(100, cgroupV1(victimUID, "c1"), victim.Path)
	proc.add(101, cgroupV1(victimUID, "c2"), victim.Path)
	proc.add(102, cgroupV1(victimUID, "c1"), "/proc/self/ns/net")           // joining the pod
	proc.add(200, cgroupV1(impostorUID, "c3/pod"+victimUID), impostor.Path) // a forged name below its own
	proc.add(300, "0::/system.slice/containerd.service\n", "/proc/self/ns/net")

	f := NetnsFinder{ProcDir: proc.dir, NetnsDir: filepath.Dir(victim.Path)}
	pod := func(uid, ip string) nodeagent.Pod {
		return nodeagent.Pod{Namespace: "shop", Name: "p-" + uid[:4], UID: uid, IPs: []netip.Addr{netip.MustParseAddr(ip)}}
	}
	got, err := f.Find(pod(victimUID, "198.18.251.77"))
	if err != nil || got != victim.Path {
		t.Fatalf("Find(victim) = %q, %v; want the victim's own %s (the impostor is %s)", got, err, victim.Path, impostor.Path)
	}
	// The impostor's own identity is found as its own...
	if got, err := f.Find(pod(impostorUID, "198.18.251.78")); err != nil || got != impostor.Path {
		t.Errorf("Find(impostor) = %q, %v; want %s", got, err, impostor.Path)
	}
	// ...but a pod whose status claimed the victim's address (which the
	// impostor holds on loopback only) is refused.
	_, err = f.Find(pod(impostorUID, "198.18.251.77"))
	var refused *nodeagent.RefusedError
	if !errors.As(err, &refused) || refused.Reason != "NetnsMismatch" || !strings.Contains(err.Error(), "198.18.251.77") {
		t.Errorf("Find(impostor with the victim's IP) = %v; want a NetnsMismatch refusal", err)
	}
	// A pod with no process on the node is not found, and not refused.
	_, err = f.Find(pod("11111111-2222-4333-8444-555555555555", "198.18.251.77"))
	if err == nil || errors.As(err, &refused) {
		t.Errorf("Find(pod without processes) = %v; want a plain error", err)
	}
}

// TestNetnsFinderRefusesAmbiguity: when the pod's own processes are in two
// namespaces of the directory that both hold its address, Find names
// neither: it refuses, and says where the processes are.
func TestNetnsFinderRefusesAmbiguity(t *testing.T) {
	netnstest.Require(t, "ip")
	a := netnstest.New(t, "enroll")
	b := netnstest.New(t, "enroll")
	withAddr(t, a, "198.18.251.77/24", false)
	withAddr(t, b, "198.18.251.77/24", false)
	proc := newFakeProc(t)
	proc.add(100, cgroupV1(victimUID, "c1"), a.Path)
	proc.add(101, "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"+
		strings.ReplaceAll(victimUID, "-", "_")+".slice/cri-containerd-1.scope\n", b.Path)

	f := NetnsFinder{ProcDir: proc.dir, NetnsDir: filepath.Dir(a.Path)}
	got, err := f.Find(nodeagent.Pod{Namespace: "shop", Name: "web", UID: victimUID, IPs: []netip.Addr{netip.MustParseAddr("198.18.251.77")}})
	var refused *nodeagent.RefusedError
	if !errors.As(err, &refused) || refused.Reason != "NetnsAmbiguous" {
		t.Fatalf("Find = %q, %v; want a NetnsAmbiguous refusal", got, err)
	}
	for _, want := range []string{a.Path, b.Path, "100", "101"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the refusal %q does not name %s", err, want)
		}
	}
}

// TestPodUIDs: which pod a cgroup file says a process belongs to, for the
// kubelet's cgroupfs and systemd layouts on cgroup v1 and v2; only the
// kubelet's level counts.
func TestPodUIDs(t *testing.T) {
	u := victimUID
	us := strings.ReplaceAll(u, "-", "_")
	for _, tc := range []struct {
		name, file string
		want       []string
	}{
		{"cgroupfs v1", cgroupV1(u, "abc"), []string{u}},
		{"cgroupfs v2", "0::/kubepods/burstable/pod" + u + "/abc\n", []string{u}},
		{"systemd v2", "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + us + ".slice/cri-containerd-abc.scope\n", []string{u}},
		{"systemd guaranteed", "0::/kubepods.slice/kubepods-pod" + us + ".slice/crio-abc.scope\n", []string{u}},
		{"in a cgroup namespace", "0::/../../pod" + u + "/abc\n", []string{u}},
		{"upper case", "0::/kubepods/pod" + strings.ToUpper(u) + "/abc\n", []string{u}},
		{"forged below its own", "0::/kubepods/besteffort/pod" + impostorUID + "/c/pod" + u + "\n", []string{impostorUID}},
		{"forged slice below its own", "0::/kubepods/pod" + impostorUID + "/kubepods-pod" + us + ".slice\n", []string{impostorUID}},
		{"two hierarchies disagree", "1:memory:/kubepods/pod" + u + "/a\n2:pids:/kubepods/pod" + impostorUID + "/b\n", []string{u, impostorUID}},
		{"not a pod", "0::/system.slice/kubelet.service\n", nil},
		{"not a UID", "0::/kubepods/podfoo/abc\n0::/kubepods/pod" + u[:35] + "x\n", nil},
		{"a slice that is not the kubelet's", "0::/user.slice/user-pod" + us + ".slice\n", nil},
		{"garbage", "no colons here\n::\n", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := podUIDs(tc.file); !slices.Equal(got, tc.want) {
				t.Errorf("podUIDs(%q) = %v, want %v", tc.file, got, tc.want)
			}
		})
	}
}

// TestMigrateRequests: tcp_migrate_req is set inside the pod, and only
// there.
func TestMigrateRequests(t *testing.T) {
	netnstest.Require(t, "ip")
	pod := netnstest.New(t, "enroll")
	var s capture.Sysctls
	before, err := s.Get("ipv4/tcp_migrate_req")
	if err != nil {
		t.Fatal(err)
	}
	if err := migrateRequests(pod.Handle, s); err != nil {
		t.Fatalf("setting tcp_migrate_req: %v", err)
	}
	var got string
	if err := pod.Handle.Do(func() (err error) { got, err = s.Get("ipv4/tcp_migrate_req"); return err }); err != nil {
		t.Fatal(err)
	}
	if got != "1" {
		t.Errorf("tcp_migrate_req in the pod: %s, want 1", got)
	}
	if after, _ := s.Get("ipv4/tcp_migrate_req"); after != before {
		t.Errorf("tcp_migrate_req of the test's own namespace went from %s to %s", before, after)
	}
}
