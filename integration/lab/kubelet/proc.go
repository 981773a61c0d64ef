package kubelet

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// procStartTime returns the start time of process pid (field 22 of
// /proc/<pid>/stat, in clock ticks since boot). With the PID it names a
// process for good: a recycled PID has a different start time.
func procStartTime(pid int) (uint64, error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("parsing /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return 0, fmt.Errorf("parsing /proc/%d/stat: %d fields", pid, len(f))
	}
	return strconv.ParseUint(f[19], 10, 64)
}

// procState returns the state letter of process pid (R, S, Z, ...).
func procState(pid int) string {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return ""
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+3 > len(s) {
		return ""
	}
	return s[i+2 : i+3]
}

// alive reports whether pid still is the process that started at start
// (and has not exited: a zombie counts as gone).
func alive(pid int, start uint64) bool {
	if pid <= 0 {
		return false
	}
	got, err := procStartTime(pid)
	if err != nil || got != start {
		return false
	}
	st := procState(pid)
	return st != "Z" && st != "X" && st != ""
}

// procHandle is a process the kubelet watches: its child or an adopted
// one. It holds a pidfd, so signals never reach a recycled PID, and Wait
// needs no thread: the pidfd is in the runtime's poller.
type procHandle struct {
	pid   int
	child bool // ours to reap
	f     *os.File
}

// openProc opens a handle on pid if it is still the process that started
// at start.
func openProc(pid int, start uint64, child bool) (*procHandle, error) {
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("opening process %d: %w", pid, err)
	}
	// Checked after opening: the pidfd now pins the process we checked.
	if got, err := procStartTime(pid); err != nil || got != start {
		unix.Close(fd)
		return nil, fmt.Errorf("opening process %d: %w", pid, os.ErrProcessDone)
	}
	return &procHandle{pid: pid, child: child, f: os.NewFile(uintptr(fd), "pidfd:"+strconv.Itoa(pid))}, nil
}

// Wait blocks until the process exits or ctx is done. For a child it
// also reaps the zombie.
func (p *procHandle) Wait(ctx context.Context) error {
	rc, err := p.f.SyscallConn()
	if err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { _ = p.f.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	err = rc.Read(func(fd uintptr) bool {
		n, _ := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, 0)
		return n > 0
	})
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return err
	}
	if p.child {
		var ws unix.WaitStatus
		_, _ = unix.Wait4(p.pid, &ws, unix.WNOHANG, nil)
	}
	return nil
}

// Exited reports without blocking whether the process has exited.
func (p *procHandle) Exited() bool {
	rc, err := p.f.SyscallConn()
	if err != nil {
		return true
	}
	var n int
	if err := rc.Control(func(fd uintptr) {
		n, _ = unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, 0)
	}); err != nil {
		return true
	}
	return n > 0
}

// Signal sends sig to the process; a process that has exited is not an
// error.
func (p *procHandle) Signal(sig syscall.Signal) error {
	rc, err := p.f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.PidfdSendSignal(int(fd), sig, nil, 0) }); err != nil {
		return err
	}
	if errors.Is(serr, unix.ESRCH) {
		return nil
	}
	return serr
}

func (p *procHandle) Close() error { return p.f.Close() }

func bootID() string {
	data, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	return strings.TrimSpace(string(data))
}

func kernelVersion() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}
