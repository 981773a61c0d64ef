package netns_test

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cairnmesh/cairn/internal/netns"
	"github.com/cairnmesh/cairn/internal/netns/netnstest"
)

// nsID names the namespace at path (a bind mount or a /proc/.../ns/net
// link) the way /proc/<pid>/ns/net links do, "net:[inode]": equal IDs are
// the same namespace.
func nsID(t *testing.T, path string) string {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("net:[%d]", st.Ino)
}

func TestOpenRefusesWhatIsNotANamespace(t *testing.T) {
	if _, err := netns.Open(filepath.Join(t.TempDir(), "gone")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Open(missing) = %v, want an error wrapping fs.ErrNotExist", err)
	}
	plain := filepath.Join(t.TempDir(), "plain")
	if err := os.WriteFile(plain, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if h, err := netns.Open(plain); err == nil {
		h.Close()
		t.Error("Open(regular file) succeeded, want an error")
	}
}

// TestDoRunsInsideAndComesBack: fn sees the target namespace, the caller's
// goroutine never leaves its own, and afterwards no thread of the process
// is left in the target, even with many Do calls at once and fn failing.
func TestDoRunsInsideAndComesBack(t *testing.T) {
	ns := netnstest.New(t, "cairn-netns")
	want := nsID(t, ns.Path)
	host := nsID(t, "/proc/thread-self/ns/net")
	if want == host {
		t.Fatal("the test namespace is the host's")
	}

	var wg sync.WaitGroup
	for i := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			failure := errors.New("fn failed")
			err := ns.Handle.Do(func() error {
				if got := nsID(t, "/proc/thread-self/ns/net"); got != want {
					t.Errorf("inside Do: namespace %s, want %s", got, want)
				}
				if i%2 == 0 {
					return failure
				}
				return nil
			})
			if i%2 == 0 && !errors.Is(err, failure) {
				t.Errorf("Do = %v, want fn's error", err)
			} else if i%2 == 1 && err != nil {
				t.Errorf("Do = %v", err)
			}
		}()
	}
	wg.Wait()

	tasks, err := filepath.Glob("/proc/self/task/*/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		var st unix.Stat_t
		if err := unix.Stat(task, &st); err != nil {
			continue // the thread just ended
		}
		if fmt.Sprintf("net:[%d]", st.Ino) == want {
			t.Errorf("%s is still in the test namespace after Do", task)
		}
	}
}

// TestExecInsideDoInheritsTheNamespace backs the claim the capture package
// relies on for iptables-restore: a process started from inside Do runs in
// the namespace, because the kernel copies the forking thread's namespaces.
func TestExecInsideDoInheritsTheNamespace(t *testing.T) {
	netnstest.Require(t, "readlink")
	ns := netnstest.New(t, "cairn-netns")
	var out []byte
	err := ns.Handle.Do(func() error {
		var err error
		out, err = exec.Command("readlink", "/proc/self/ns/net").Output()
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.TrimSpace(string(out)), nsID(t, ns.Path); got != want {
		t.Errorf("child process in %s, want %s", got, want)
	}
}

// TestSocketsKeepTheirNamespace: a listener made inside Do accepts after Do
// returns, from an ordinary goroutine, and is not reachable from the host.
func TestSocketsKeepTheirNamespace(t *testing.T) {
	ns := netnstest.New(t, "cairn-netns")
	var ln net.Listener
	if err := ns.Handle.Do(func() error {
		var err error
		ln, err = net.Listen("tcp4", "127.0.0.1:0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	addr := ln.Addr().String()

	accepted := make(chan error, 1)
	go func() { // owned by the test: it waits on accepted
		c, err := ln.Accept()
		if err == nil {
			c.Close()
		}
		accepted <- err
	}()
	if c, err := net.Dial("tcp4", addr); err == nil {
		c.Close()
		t.Errorf("dialled %s from the host namespace; it should only exist inside", addr)
	}
	if err := ns.Handle.Do(func() error {
		c, err := net.Dial("tcp4", addr)
		if err == nil {
			c.Close()
		}
		return err
	}); err != nil {
		t.Fatalf("dialling %s inside the namespace: %v", addr, err)
	}
	if err := <-accepted; err != nil {
		t.Fatalf("accept: %v", err)
	}
}

func TestDoReraisesPanics(t *testing.T) {
	ns := netnstest.New(t, "cairn-netns")
	defer func() {
		if v := recover(); v != "boom" {
			t.Errorf("recovered %v, want boom", v)
		}
	}()
	_ = ns.Handle.Do(func() error { panic("boom") })
	t.Error("Do returned after a panic in fn")
}

// TestDoInNetworkAndCgroupNamespace: Do enters a network and a cgroup
// namespace at once. In the cgroup namespace of a process rooted at a
// cgroup of its own, that process's cgroup reads as the root, and the
// thread sees it so only inside; afterwards no thread of the process is
// left in either namespace.
func TestDoInNetworkAndCgroupNamespace(t *testing.T) {
	netnstest.Require(t, "unshare", "sleep")
	mount := cgroup2Mount(t)
	dir, err := os.MkdirTemp(mount, "cairn-netns-")
	if err != nil {
		t.Skipf("cannot make a cgroup: %v", err)
	}
	cg, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer cg.Close()
	// A process that moved into dir and then made a cgroup namespace
	// there, whose root is dir.
	cmd := exec.Command("unshare", "--cgroup", "sleep", "60")
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		_ = unix.Rmdir(dir)
	})
	procCgroup := fmt.Sprintf("/proc/%d/cgroup", cmd.Process.Pid)
	var cgns *netns.Handle
	deadline := time.Now().Add(5 * time.Second)
	for {
		// Wait for unshare to have made the namespace (its own differs
		// from ours).
		own, _ := os.Readlink("/proc/self/ns/cgroup")
		if other, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/cgroup", cmd.Process.Pid)); other != "" && other != own {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("unshare made no cgroup namespace")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if cgns, err = netns.OpenCgroup(fmt.Sprintf("/proc/%d/ns/cgroup", cmd.Process.Pid)); err != nil {
		t.Fatal(err)
	}
	defer cgns.Close()
	ns := netnstest.New(t, "cairn-netns")

	outside := readLine0(t, procCgroup)
	if outside == "0::/" {
		t.Fatalf("the helper's cgroup reads as the root outside its namespace: %q", outside)
	}
	var inside, netInside string
	if err := netns.Do(func() error {
		inside = readLine0(t, procCgroup)
		netInside = nsID(t, "/proc/thread-self/ns/net")
		return nil
	}, ns.Handle, cgns); err != nil {
		t.Fatal(err)
	}
	if inside != "0::/" {
		t.Errorf("inside the helper's cgroup namespace its cgroup reads %q, want 0::/", inside)
	}
	if netInside != nsID(t, ns.Path) {
		t.Errorf("inside Do the thread is in %s, want the test namespace %s", netInside, nsID(t, ns.Path))
	}
	// Every thread is back: many calls later, none reads the helper's
	// cgroup as the root.
	for range 20 {
		if got := readLine0(t, procCgroup); got != outside {
			t.Fatalf("after Do a thread reads %q, want %q", got, outside)
		}
	}
	if _, err := cgns.Socket(unix.AF_INET, unix.SOCK_STREAM, 0); err == nil {
		t.Error("a socket in a cgroup namespace")
	}
}

// readLine0 returns the cgroup v2 line ("0::...") of a /proc/<pid>/cgroup
// file, as the calling thread reads it.
func readLine0(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, "0::") {
			return line
		}
	}
	t.Fatalf("%s has no cgroup v2 line:\n%s", path, data)
	return ""
}

// cgroup2Mount returns where the cgroup v2 hierarchy is mounted.
func cgroup2Mount(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		if f := strings.Fields(pre); ok && len(f) >= 5 && strings.HasPrefix(post, "cgroup2 ") {
			return f[4]
		}
	}
	t.Skip("no cgroup v2 hierarchy")
	return ""
}
