package capture

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cairnmesh/cairn/internal/netns"
)

// applyInContainer is the helper role apply-in-container (see helper):
// ztunnel as a container that is not privileged sees the node, with
// /proc/sys read-only and the node's /proc/sys/net mounted writable
// elsewhere (a hostPath volume).
func applyInContainer(arg string) int {
	nsPath, dir, _ := strings.Cut(arg, " ")
	fail := func(err error) int {
		fmt.Println("err", err)
		return 0
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_SLAVE, ""); err != nil {
		return fail(err)
	}
	if dir != "-" {
		if err := unix.Mount("/proc/sys/net", dir, "", unix.MS_BIND, ""); err != nil {
			return fail(err)
		}
	}
	// As runc makes a readonlyPath: a bind on itself, remounted
	// read-only.
	if err := unix.Mount("/proc/sys", "/proc/sys", "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fail(err)
	}
	if err := unix.Mount("", "/proc/sys", "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fail(err)
	}
	h, err := netns.Open(nsPath)
	if err != nil {
		return fail(err)
	}
	defer h.Close()
	ipt := IPTables{}
	if dir != "-" {
		ipt.Sysctls.Dir = dir
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := ipt.Apply(ctx, h, DefaultOptions(labPod)); err != nil {
		return fail(err)
	}
	fmt.Println("ok")
	return 0
}

// runInContainer runs the apply-in-container helper in a mount namespace
// of its own and returns its report.
func runInContainer(t *testing.T, nsPath, dir string) string {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), helperEnv+"=apply-in-container "+nsPath+" "+dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNS}
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("helper: %v", err)
	}
	return strings.TrimSpace(string(out))
}

// TestApplyWithReadOnlyProcSys: in a container that is not privileged,
// /proc/sys is read-only. Apply writes the pod's conntrack sysctl through
// the node's /proc/sys/net mounted elsewhere, from inside the pod's
// namespace, so that the pod's value changes and nobody else's; without
// such a mount it refuses, and leaves the pod without rules (a pod with
// the rules and loose pickup on could be reached past them).
func TestApplyWithReadOnlyProcSys(t *testing.T) {
	l := newLab(t)
	var s Sysctls
	host, err := s.Get(loosePickup)
	if err != nil {
		t.Skipf("no conntrack: %v", err)
	}
	loose := func() string {
		t.Helper()
		var v string
		if err := l.pod.Handle.Do(func() (err error) { v, err = s.Get(loosePickup); return err }); err != nil {
			t.Fatal(err)
		}
		return v
	}

	got := runInContainer(t, l.pod.Path, "-")
	if !strings.HasPrefix(got, "err") || !strings.Contains(got, ErrLoosePickup.Error()) || !strings.Contains(got, "read-only file system") {
		t.Fatalf("Apply with /proc/sys read-only and nothing else: %q, want the loose pickup error", got)
	}
	if saved := l.saved(t, IPv4); len(saved.Chains()) > 0 || len(saved.Jumps()) > 0 {
		t.Fatalf("a refused pod kept capture rules: %v %v", saved.Chains(), saved.Jumps())
	}
	if v := loose(); v != "1" {
		t.Fatalf("loose pickup in the pod: %s, want the default 1", v)
	}

	dir := filepath.Join(t.TempDir(), "net")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if got := runInContainer(t, l.pod.Path, dir); got != "ok" {
		t.Fatalf("Apply through the node's /proc/sys/net: %q", got)
	}
	if v := loose(); v != "0" {
		t.Errorf("loose pickup in the pod: %s, want 0", v)
	}
	if len(l.saved(t, IPv4).Chains()) == 0 {
		t.Error("no capture rules in the pod")
	}
	if v, _ := s.Get(loosePickup); v != host {
		t.Errorf("the test's own namespace's loose pickup went from %s to %s", host, v)
	}
}
