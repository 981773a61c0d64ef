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
	"testing"

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
