package netns

import (
	"fmt"
	"runtime"
	"sync"

	"golang.org/x/sys/unix"
)

// Socket creates a socket inside the namespace, with socket(2)'s
// arguments (pass SOCK_CLOEXEC), and returns its descriptor, which the
// caller owns. Only the creation needs the namespace: bind, connect and
// everything after work from any thread. That is why dialling with Socket
// is cheaper than dialling inside Do, which holds a locked thread in the
// namespace for the whole TCP handshake and then has the runtime wake that
// particular thread when it ends.
//
// Socket runs on a goroutine of its own, locked to its thread, which
// enters the namespace, calls socket(2) and goes back to the process's
// namespace before it unlocks; if going back fails it ends still locked,
// so the runtime discards the thread, as Do does. Unlike Do it does not
// open /proc/thread-self/ns/net on every call: a fresh goroutine's thread
// is always in the process's namespace (this package unlocks no thread
// that is not), so one descriptor of it, kept open, serves every call.
//
// Measured (CPU time per socket made and closed, on a noisy 2-core VM,
// one caller and 16 at once): Do 15-22 µs; Socket as it is 9-13 µs;
// socket(2) alone in the process's namespace 3-4 µs. The alternatives:
//   - The same steps on the caller's goroutine: about 7 µs. But it cannot
//     discard the thread if going back fails (the caller's goroutine would
//     go on locked in the pod), and called from inside Do it would leave
//     Do's thread in the process's namespace instead of Do's.
//   - A long-lived worker per Handle, a locked thread that stays in the
//     namespace and hands out sockets: about 27 µs on request, because
//     each hand-off to a locked thread wakes and parks OS threads. Keeping
//     a few sockets made in advance gave 8 µs for one caller and 4 µs for
//     many, but for one kind of socket only, with a thread and idle
//     sockets per pod, and a life cycle tied to Close.
//
// In a whole dial these differences were lost in the noise of the TCP
// handshake itself (see capture's BenchmarkDialerInNamespace), so the
// design that is correct in every case won.
func (h *Handle) Socket(domain, typ, proto int) (int, error) {
	if h.kind != unix.CLONE_NEWNET {
		return -1, fmt.Errorf("%s is not a network namespace", h)
	}
	type result struct {
		fd  int
		err error
	}
	done := make(chan result, 1)
	// Owned by Socket, which waits for it: it lives as long as this call.
	go func() {
		runtime.LockOSThread()
		fd, home, err := h.socket(domain, typ, proto)
		if home {
			runtime.UnlockOSThread()
		}
		done <- result{fd, err}
	}()
	r := <-done
	return r.fd, r.err
}

// socket enters h, creates the socket and goes back to the process's
// namespace. home reports whether the thread is back there; if not it must
// stay locked to a goroutine that ends. The caller holds the thread
// (runtime.LockOSThread) and is an unlocked goroutine's thread, so in the
// process's namespace, when it calls.
func (h *Handle) socket(domain, typ, proto int) (fd int, home bool, err error) {
	process, err := processNetns()
	if err != nil {
		return -1, true, err
	}
	if err := h.setns(); err != nil {
		// setns switches or it does not; go back anyway to be sure.
		return -1, unix.Setns(process, unix.CLONE_NEWNET) == nil, err
	}
	fd, serr := unix.Socket(domain, typ, proto)
	if err := unix.Setns(process, unix.CLONE_NEWNET); err != nil {
		if serr == nil {
			unix.Close(fd)
		}
		return -1, false, fmt.Errorf("returning from network namespace %s (thread discarded): %w", h, err)
	}
	if serr != nil {
		return -1, true, fmt.Errorf("creating a socket in network namespace %s: %w", h, serr)
	}
	return fd, true, nil
}

// processNS is the process's own network namespace, the one every thread
// not locked inside Do or Socket is in. It is opened on first use and
// never closed: Socket goes back to it on every call, and opening it each
// time, as Do does, is a walk through /proc on every call.
var processNS struct {
	mu     sync.Mutex
	fd     int
	opened bool
}

// processNetns returns the descriptor of the process's namespace, opening
// it if no call has yet. A failure is not remembered, so a passing
// shortage of descriptors does not break every later call. It must run on
// a thread that is in the process's namespace: any thread not locked to a
// goroutine, or one just locked by a fresh goroutine.
func processNetns() (int, error) {
	processNS.mu.Lock()
	defer processNS.mu.Unlock()
	if processNS.opened {
		return processNS.fd, nil
	}
	fd, err := unix.Open(threadSelf, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("opening the process's network namespace: %w", err)
	}
	processNS.fd, processNS.opened = fd, true
	return fd, nil
}
