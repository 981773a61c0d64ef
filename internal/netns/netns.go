// Package netns runs code inside Linux network namespaces.
//
// A network namespace belongs to an OS thread, not to a goroutine or a
// process, so entering one from Go means holding a thread
// (runtime.LockOSThread) for the whole time and giving it back to the
// scheduler only once it is in its original namespace again. Do does that.
//
// What may run inside Do: anything that takes the namespace from the calling
// thread at the moment it creates something. Sockets keep the namespace they
// were created in for their whole life, whichever thread later uses them, so
// listeners and connections opened inside Do work from any goroutine after
// Do returns. Child processes started inside Do (os/exec) are in the
// namespace too: the kernel copies the forking thread's namespaces into the
// child. Goroutines started inside Do are not: they run on other threads.
//
// Socket is the cheap special case for connections: it only creates the
// socket inside, and the caller binds, connects and waits on it from its
// own goroutine.
//
// A cgroup namespace belongs to a thread too, and decides how cgroup
// paths read: in /proc/<pid>/cgroup, and the paths the kernel resolves
// for a process (iptables' cgroup match resolves --path from the root of
// the cgroup namespace of the process that installs the rule). OpenCgroup
// opens one, and Do runs code in a network and a cgroup namespace at
// once.
package netns

import (
	"errors"
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// threadSelf names the calling thread's own network namespace. It must be
// thread-self, not self: /proc/self is the thread group leader, which may be
// in another namespace than the thread that asks.
const threadSelf = "/proc/thread-self/ns/net"

// Handle is an open network namespace (or, from OpenCgroup, a cgroup
// namespace). Holding the file keeps the namespace alive and pins which
// namespace it is: if the path is unmounted and a new namespace is mounted
// there, the Handle still refers to the old one, so a pod's rules,
// listeners and connections all land in the same namespace.
type Handle struct {
	file *os.File
	kind int // unix.CLONE_NEWNET or unix.CLONE_NEWCGROUP
}

// OpenCgroup opens the cgroup namespace at path (/proc/<pid>/ns/cgroup;
// opening another process's needs ptrace access to it). Only Do may use
// the Handle: it has no sockets.
func OpenCgroup(path string) (*Handle, error) {
	h, err := Open(path)
	if err != nil {
		return nil, fmt.Errorf("opening cgroup namespace: %w", err)
	}
	h.kind = unix.CLONE_NEWCGROUP
	return h, nil
}

// threadSelfOf names the calling thread's own namespace of kind.
func threadSelfOf(kind int) string {
	if kind == unix.CLONE_NEWCGROUP {
		return "/proc/thread-self/ns/cgroup"
	}
	return threadSelf
}

// Open opens the network namespace at path (for example
// /var/run/netns/cni-1234 or /proc/<pid>/ns/net). If path does not exist
// the error wraps fs.ErrNotExist, which lets a caller treat a pod that is
// already gone as released.
func Open(path string) (*Handle, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("opening network namespace: %w", err)
	}
	// An ordinary file that happens to sit at the path would make every
	// setns fail later with EINVAL; say what is wrong now instead.
	var fs unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &fs); err != nil {
		f.Close()
		return nil, fmt.Errorf("inspecting network namespace %s: %w", path, err)
	}
	if fs.Type != unix.NSFS_MAGIC && fs.Type != unix.PROC_SUPER_MAGIC {
		f.Close()
		return nil, fmt.Errorf("%s is not a namespace file", path)
	}
	return &Handle{file: f, kind: unix.CLONE_NEWNET}, nil
}

// Close releases the namespace; it is destroyed once nothing else (a
// process, a mount, an open socket) holds it.
func (h *Handle) Close() error { return h.file.Close() }

// Path is the path the Handle was opened from.
func (h *Handle) Path() string { return h.file.Name() }

// String is the path, for logs and errors.
func (h *Handle) String() string { return h.file.Name() }

// Do runs fn on an OS thread that is inside the namespace and returns fn's
// error.
//
// fn runs on a goroutine of its own, locked to its thread. When fn returns,
// the thread goes back to the namespace it came from and only then is
// unlocked. If going back fails, the goroutine ends still locked, which makes
// the Go runtime terminate the thread instead of reusing it: no other
// goroutine ever runs in a namespace it did not ask for. A panic in fn is
// re-raised in the caller's goroutine after the same clean-up.
func (h *Handle) Do(fn func() error) error { return Do(fn, h) }

// Do runs fn as Handle.Do does, on a thread inside every namespace of hs
// at once (a network and a cgroup namespace, say; nil entries are
// skipped). The thread enters them in order and leaves them in reverse.
func Do(fn func() error, hs ...*Handle) error {
	type result struct {
		err      error
		panicked bool
		panicVal any
	}
	done := make(chan result, 1)
	// Owned by Do, which waits for it: the goroutine lives exactly as long
	// as this call.
	go func() {
		runtime.LockOSThread()
		var res result
		defer func() { done <- res }()

		// entered holds, for each namespace entered, the thread's own
		// namespace of that kind to go back to.
		type back struct {
			fd   int
			kind int
		}
		var entered []back
		// leave goes back, in reverse, and unlocks the thread only if
		// every step back worked.
		leave := func() error {
			var errs []error
			for i := len(entered) - 1; i >= 0; i-- {
				if err := unix.Setns(entered[i].fd, entered[i].kind); err != nil {
					errs = append(errs, fmt.Errorf("returning to the thread's own namespace (thread discarded): %w", err))
				}
				unix.Close(entered[i].fd)
			}
			entered = nil
			if len(errs) == 0 {
				runtime.UnlockOSThread()
			}
			return errors.Join(errs...)
		}
		for _, h := range hs {
			if h == nil {
				continue
			}
			orig, err := unix.Open(threadSelfOf(h.kind), unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				res.err = errors.Join(fmt.Errorf("opening this thread's namespace: %w", err), leave())
				return
			}
			entered = append(entered, back{orig, h.kind})
			if err := h.setns(); err != nil {
				// setns either switched or did not; it never leaves the
				// thread half-way. Go back anyway to be sure.
				res.err = errors.Join(err, leave())
				return
			}
		}
		defer func() {
			if err := leave(); err != nil {
				res.err = errors.Join(res.err, err)
			}
		}()
		defer func() {
			if v := recover(); v != nil {
				res.panicked, res.panicVal = true, v
			}
		}()
		res.err = fn()
	}()
	res := <-done
	if res.panicked {
		panic(res.panicVal)
	}
	return res.err
}

// setns moves the calling thread into h. It borrows the descriptor through
// SyscallConn so a concurrent Close cannot release (and the process reuse)
// the descriptor number while setns uses it.
func (h *Handle) setns() error {
	raw, err := h.file.SyscallConn()
	if err != nil {
		return fmt.Errorf("entering network namespace %s: %w", h, err)
	}
	var serr error
	if err := raw.Control(func(fd uintptr) { serr = unix.Setns(int(fd), h.kind) }); err != nil {
		return fmt.Errorf("entering network namespace %s: %w", h, err)
	}
	if serr != nil {
		return fmt.Errorf("entering network namespace %s: %w", h, serr)
	}
	return nil
}
