package netns_test

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cairnmesh/cairn/internal/netns"
	"github.com/cairnmesh/cairn/internal/netns/netnstest"
)

const streamType = unix.SOCK_STREAM | unix.SOCK_NONBLOCK | unix.SOCK_CLOEXEC

// socketNS names the namespace a socket was created in, as nsID does for
// a path (SIOCGSKNS hands out a descriptor of the socket's namespace).
func socketNS(t *testing.T, fd int) string {
	t.Helper()
	nsfd, err := unix.IoctlRetInt(fd, unix.SIOCGSKNS)
	if err != nil {
		t.Fatalf("SIOCGSKNS: %v", err)
	}
	defer unix.Close(nsfd)
	var st unix.Stat_t
	if err := unix.Fstat(nsfd, &st); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("net:[%d]", st.Ino)
}

// threadsIn fails the test if a thread of the process is in the namespace
// called want.
func threadsIn(t *testing.T, want string) {
	t.Helper()
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
			t.Errorf("%s is still in the test namespace", task)
		}
	}
}

// TestSocketIsMadeInside: sockets from Socket belong to the namespace,
// many calls at once and failing ones leave no thread there, and errors
// name the namespace.
func TestSocketIsMadeInside(t *testing.T) {
	ns := netnstest.New(t, "cairn-netns")
	want := nsID(t, ns.Path)
	var wg sync.WaitGroup
	for i := range 32 {
		wg.Go(func() {
			if i%4 == 0 {
				_, err := ns.Handle.Socket(-1, streamType, 0)
				if !errors.Is(err, unix.EAFNOSUPPORT) {
					t.Errorf("Socket(domain -1) = %v, want EAFNOSUPPORT", err)
				}
				return
			}
			fd, err := ns.Handle.Socket(unix.AF_INET6, streamType, 0)
			if err != nil {
				t.Error(err)
				return
			}
			defer unix.Close(fd)
			if got := socketNS(t, fd); got != want {
				t.Errorf("socket in %s, want %s", got, want)
			}
		})
	}
	wg.Wait()
	threadsIn(t, want)

	_, err := ns.Handle.Socket(-1, streamType, 0)
	if err == nil || !strings.Contains(err.Error(), ns.Path) {
		t.Errorf("error %v does not name %s", err, ns.Path)
	}
}

// TestSocketInsideDo: Socket called from inside Do, where the calling
// thread is in another namespace, makes its socket in its own namespace
// and leaves Do's thread where it was. (Socket on the caller's goroutine
// would fail this.)
func TestSocketInsideDo(t *testing.T) {
	outer := netnstest.New(t, "cairn-netns")
	inner := netnstest.New(t, "cairn-netns")
	// Outside Do first, so that which namespace is the process's is
	// settled whatever ran before.
	fd, err := inner.Handle.Socket(unix.AF_INET, streamType, 0)
	if err != nil {
		t.Fatal(err)
	}
	unix.Close(fd)
	err = outer.Handle.Do(func() error {
		fd, err := inner.Handle.Socket(unix.AF_INET, streamType, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if got, want := socketNS(t, fd), nsID(t, inner.Path); got != want {
			t.Errorf("socket in %s, want %s", got, want)
		}
		if got, want := nsID(t, "/proc/thread-self/ns/net"), nsID(t, outer.Path); got != want {
			t.Errorf("after Socket, Do's thread is in %s, want %s", got, want)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestSocketAfterClose fails cleanly instead of entering whatever the
// descriptor number now is.
func TestSocketAfterClose(t *testing.T) {
	netnstest.Require(t)
	h, err := netns.Open("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	h.Close()
	if fd, err := h.Socket(unix.AF_INET, streamType, 0); err == nil {
		unix.Close(fd)
		t.Error("Socket on a closed Handle succeeded")
	}
}

// BenchmarkSocket makes a TCP socket inside a namespace: "do" with socket()
// inside Do, "socket" with Handle.Socket. cpu-ns/op is the process's CPU
// time per socket on all its threads.
func BenchmarkSocket(b *testing.B) {
	ns := netnstest.New(b, "cairn-netns-bench")
	for _, impl := range []struct {
		name   string
		socket func() (int, error)
	}{
		{"do", func() (int, error) {
			fd := -1
			err := ns.Handle.Do(func() error {
				var err error
				fd, err = unix.Socket(unix.AF_INET, streamType, 0)
				return err
			})
			return fd, err
		}},
		{"socket", func() (int, error) { return ns.Handle.Socket(unix.AF_INET, streamType, 0) }},
	} {
		b.Run(impl.name+"/serial", func(b *testing.B) {
			defer measure(b)()
			for b.Loop() {
				fd, err := impl.socket()
				if err != nil {
					b.Fatal(err)
				}
				unix.Close(fd)
			}
		})
		b.Run(impl.name+"/parallel", func(b *testing.B) {
			defer measure(b)()
			b.SetParallelism(8)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					fd, err := impl.socket()
					if err != nil {
						b.Error(err)
						return
					}
					unix.Close(fd)
				}
			})
		})
	}
}

// measure reports allocations and the process's CPU time per operation
// from now until the returned function is called.
func measure(b *testing.B) func() {
	b.ReportAllocs()
	cpu := cpuTime(b)
	return func() { b.ReportMetric(float64(cpuTime(b)-cpu)/float64(b.N), "cpu-ns/op") }
}

func cpuTime(b *testing.B) time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
