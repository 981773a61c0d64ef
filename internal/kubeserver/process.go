package kubeserver

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"time"
)

// launcher starts child processes from one goroutine that stays locked to
// its OS thread for the lifetime of the Server.
//
// Children get SysProcAttr.Pdeathsig = SIGKILL, so they die with the test
// binary even when it crashes or is killed and Stop never runs. The kernel
// ties that signal to the *thread* that forked the child, not to the
// process: it fires as soon as that thread exits. Go threads do exit while
// the process lives: the runtime terminates a thread whenever a goroutine
// locked to it returns without unlocking, which is exactly what
// network-namespace code (the lab) does to throw away a thread after
// setns. Locking only around cmd.Start is not enough either, since after
// the unlock the thread goes back to the pool and any later user may
// retire it. A dedicated goroutine that locks its thread and keeps it until
// Stop makes the thread's lifetime ours. When the launcher closes, the
// goroutine returns still locked, so the runtime ends the thread, and any
// child that somehow outlived Stop is SIGKILLed by the kernel as well.
type launcher struct {
	reqs chan launchRequest
}

type launchRequest struct {
	cmd  *exec.Cmd
	done chan error
}

func newLauncher() *launcher {
	l := &launcher{reqs: make(chan launchRequest)}
	go func() {
		runtime.LockOSThread()
		// Deliberately no UnlockOSThread: see the type's comment.
		for req := range l.reqs {
			req.done <- req.cmd.Start()
		}
	}()
	return l
}

// start runs cmd.Start on the launcher's thread.
func (l *launcher) start(cmd *exec.Cmd) error {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	done := make(chan error, 1)
	l.reqs <- launchRequest{cmd: cmd, done: done}
	return <-done
}

// close ends the launcher's goroutine and with it its thread. Call it only
// after every child has exited.
func (l *launcher) close() { close(l.reqs) }

// process is one running child with its log file.
type process struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	log     *slog.Logger

	exited  chan struct{} // closed once Wait has returned
	waitErr error         // valid after exited is closed
}

// startProcess starts binary with args, its stdout and stderr appended to
// logPath.
func startProcess(l *launcher, log *slog.Logger, name, binary string, args []string, logPath string) (*process, error) {
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	cmd := exec.Command(binary, args...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.Env = os.Environ()
	if err := l.start(cmd); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	// The child holds its own copy of the descriptor.
	logFile.Close()

	p := &process{
		name:    name,
		cmd:     cmd,
		logPath: logPath,
		log:     log.With("process", name, "pid", cmd.Process.Pid),
		exited:  make(chan struct{}),
	}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.exited)
	}()
	p.log.Debug("started", "args", strings.Join(args, " "), "log", logPath)
	return p, nil
}

// running reports whether the process has not exited yet.
func (p *process) running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// stop sends SIGTERM, and SIGKILL if the process is still there after
// grace. It returns once the process has been reaped.
func (p *process) stop(grace time.Duration) {
	if !p.running() {
		return
	}
	start := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		p.log.Warn("sending SIGTERM", "err", err)
	}
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.exited:
		p.log.Debug("stopped", "after", time.Since(start))
		return
	case <-t.C:
	}
	p.log.Warn("still running after SIGTERM, sending SIGKILL", "grace", grace)
	if err := p.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		p.log.Warn("sending SIGKILL", "err", err)
	}
	<-p.exited
}

// exitError describes how the process ended; call it after exited is closed.
func (p *process) exitError() error {
	if p.waitErr != nil {
		return fmt.Errorf("%s exited: %w\n%s", p.name, p.waitErr, p.tail())
	}
	return fmt.Errorf("%s exited with status 0\n%s", p.name, p.tail())
}

// tail returns the end of the process's log, prefixed with the log's path,
// for error messages.
func (p *process) tail() string {
	return logTail(p.logPath, 25, 8<<10)
}

// logTail returns the last lines of the file at path: at most maxLines
// lines and maxBytes bytes.
func logTail(path string, maxLines int, maxBytes int64) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(log %s unreadable: %v)", path, err)
	}
	defer f.Close()
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return fmt.Sprintf("(log %s unreadable: %v)", path, err)
	}
	off := max(size-maxBytes, 0)
	buf := make([]byte, size-off)
	if _, err := f.ReadAt(buf, off); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Sprintf("(log %s unreadable: %v)", path, err)
	}
	buf = bytes.TrimRight(buf, "\n")
	if len(buf) == 0 {
		return fmt.Sprintf("(log %s is empty)", path)
	}
	lines := bytes.Split(buf, []byte("\n"))
	if off > 0 && len(lines) > 1 {
		lines = lines[1:] // first line is probably cut
	}
	if len(lines) > maxLines {
		lines = lines[len(lines)-maxLines:]
	}
	var b strings.Builder
	fmt.Fprintf(&b, "--- last %d lines of %s ---\n", len(lines), path)
	for _, l := range lines {
		b.WriteString("    ")
		b.Write(l)
		b.WriteByte('\n')
	}
	return strings.TrimRight(b.String(), "\n")
}
