package capture

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cairnmesh/cairn/internal/netns"
)

// probesInContainer is the helper role probes-in-container (see helper).
// unshare started it in a cgroup namespace rooted at its own cgroup and a
// mount namespace of its own; it mounts the cgroup v2 hierarchy again
// where it was, which now shows only its own subtree, as runc mounts
// /sys/fs/cgroup in a container that is not privileged.
func probesInContainer(nsPath string) int {
	fail := func(err error) int {
		fmt.Println("err", err)
		return 0
	}
	mount, _, err := cgroup2Mount("/proc/self/mountinfo")
	if err != nil {
		return fail(err)
	}
	if err := unix.Unmount(mount, unix.MNT_DETACH); err != nil {
		return fail(fmt.Errorf("unmounting the node's cgroup2: %w", err))
	}
	if err := unix.Mount("cgroup2", mount, "cgroup2", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC|unix.MS_RDONLY, ""); err != nil {
		return fail(fmt.Errorf("mounting the container's cgroup2: %w", err))
	}
	h, err := netns.Open(nsPath)
	if err != nil {
		return fail(err)
	}
	defer h.Close()
	var found string
	p := &Probes{Netns: h, IPTables: &IPTables{}, Sources: DefaultProbeSources,
		KubeletCgroup: func() (string, *netns.Handle, error) {
			path, cgns, err := (&Kubelet{Port: kubeletPort}).Cgroup()
			found = path
			return path, cgns, err
		}}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.Reconcile(ctx); err != nil {
		return fail(err)
	}
	if found == "" {
		return fail(fmt.Errorf("no kubelet cgroup"))
	}
	fmt.Println("ok", found)
	return 0
}

// TestKubeletProbesFromAContainer: ztunnel as a container that is not
// privileged runs on a cgroup v2 node, in a cgroup namespace of its own
// rooted at its own cgroup, with only that subtree mounted. It still
// names the kubelet's cgroup as the node does and installs the rule from
// the kubelet's cgroup namespace, where the kernel resolves it: the
// kubelet's probes get the probe source, a host-network process does not.
func TestKubeletProbesFromAContainer(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip(err)
	}
	var report string
	pl := newProbesLab(t, func(pl *probesLab) {
		cg, err := os.Open(pl.ztunnel)
		if err != nil {
			t.Fatal(err)
		}
		defer cg.Close()
		cmd := exec.Command("unshare", "--cgroup", "--mount", "--propagation", "slave", os.Args[0])
		cmd.Env = append(os.Environ(), helperEnv+"=probes-in-container "+pl.node.Path)
		cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
		cmd.Stderr = os.Stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("ztunnel in a container: %v", err)
		}
		report = strings.TrimSpace(string(out))
	})
	if want := "ok " + pl.kubeletPath; report != want {
		t.Fatalf("ztunnel in a container: %q, want %q", report, want)
	}
	app := hostPort(labPod, appPort)
	if got := dialIn(t, pl.node, pl.kubelet, app); !strings.HasPrefix(got, "ok ") {
		t.Fatalf("kubelet's probe: %s", got)
	}
	c := pl.sw.expect(t, "app")
	if from := c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap(); from != probeSource {
		t.Errorf("the app sees the probe from %v, want %v", from, probeSource)
	}
	dialIn(t, pl.node, pl.hostPod, app)
	pl.sw.expect(t, "ztunnel inbound")
	pl.sw.quiet(t)
}
