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

// Handle is an open network namespace. Holding the file keeps the namespace
// alive and pins which namespace it is: if the path is unmounted and a new
// namespace is mounted there, the Handle still refers to the old one, so a
// pod's rules, listeners and connections all land in the same namespace.
type Handle struct {
	file *os.File
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
	return &Handle{file: f}, nil
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
func (h *Handle) Do(fn func() error) error {
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

		orig, err := unix.Open(threadSelf, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			res.err = fmt.Errorf("opening this thread's network namespace: %w", err)
			return
		}
		defer unix.Close(orig)
		if err := h.setns(); err != nil {
			// setns either switched or did not; it never leaves the thread
			// half-way. Put it back anyway to be sure before unlocking.
			if unix.Setns(orig, unix.CLONE_NEWNET) == nil {
				runtime.UnlockOSThread()
			}
			res.err = err
			return
		}
		defer func() {
			if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
				// Stay locked: the runtime discards the thread when this
				// goroutine ends.
				res.err = errors.Join(res.err,
					fmt.Errorf("returning from network namespace %s (thread discarded): %w", h, err))
				return
			}
			runtime.UnlockOSThread()
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
	if err := raw.Control(func(fd uintptr) { serr = unix.Setns(int(fd), unix.CLONE_NEWNET) }); err != nil {
		return fmt.Errorf("entering network namespace %s: %w", h, err)
	}
	if serr != nil {
		return fmt.Errorf("entering network namespace %s: %w", h, serr)
	}
	return nil
}
