package hbone

import (
	"io"
	"net"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// rawSocket reads and writes a non-blocking socket with raw system calls,
// through the runtime's poller like net.Conn (it waits for readiness the
// same way, and deadlines apply), but without telling the scheduler that
// the thread is in a system call. On a non-blocking socket read and write
// never block, and the bookkeeping they skip is what a proxy carrying
// small requests paid most for: every entry into a system call wakes the
// runtime's sysmon thread when it sleeps, and a write that spends tens of
// microseconds in the kernel (delivering the packet across the veth
// inline) lets sysmon hand the processor to another thread. A raw call
// holds its thread for those microseconds instead, which is what the
// kernel work costs anyway.
type rawSocket struct {
	raw syscall.RawConn
}

// newRawSocket returns a rawSocket for c, or nil if c is not a socket the
// runtime polls.
func newRawSocket(c net.Conn) *rawSocket {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return &rawSocket{raw: raw}
}

func (s *rawSocket) Read(p []byte) (int, error) {
	return s.read(p, true)
}

// readNow reads what the socket holds without waiting: 0 bytes and no
// error when it holds nothing yet, io.EOF when the peer has ended its side.
// A later Read still sees data that arrives afterwards: Read tries the
// system call before it waits for readiness.
func (s *rawSocket) readNow(p []byte) (int, error) {
	return s.read(p, false)
}

func (s *rawSocket) read(p []byte, wait bool) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	var n int
	var errno unix.Errno
	empty := false
	err := s.raw.Read(func(fd uintptr) bool {
		for {
			r, _, e := unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
			switch e {
			case unix.EINTR:
				continue
			case unix.EAGAIN:
				// Wait for readiness, then call again; or report nothing.
				empty = !wait
				return !wait
			}
			n, errno = int(r), e
			return true
		}
	})
	switch {
	case err != nil:
		return 0, err
	case empty:
		return 0, nil
	case errno != 0:
		return 0, &net.OpError{Op: "read", Net: "tcp", Err: errno}
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// Write writes all of p, waiting for room when the socket is full.
func (s *rawSocket) Write(p []byte) (int, error) {
	n, err := s.write(p, true)
	if err == nil && n < len(p) {
		err = io.ErrShortWrite
	}
	return n, err
}

// writeNow writes as much of p as the socket takes without waiting.
func (s *rawSocket) writeNow(p []byte) (int, error) {
	return s.write(p, false)
}

func (s *rawSocket) write(p []byte, wait bool) (int, error) {
	var n int
	var errno unix.Errno
	err := s.raw.Write(func(fd uintptr) bool {
		for n < len(p) {
			r, _, e := unix.RawSyscall(unix.SYS_WRITE, fd, uintptr(unsafe.Pointer(&p[n])), uintptr(len(p)-n))
			switch e {
			case 0:
				n += int(r)
			case unix.EINTR:
			case unix.EAGAIN:
				return !wait
			default:
				errno = e
				return true
			}
		}
		return true
	})
	switch {
	case err != nil:
		return n, err
	case errno != 0:
		return n, &net.OpError{Op: "write", Net: "tcp", Err: errno}
	}
	return n, nil
}
