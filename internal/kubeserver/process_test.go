package kubeserver

import (
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestLogTail(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.log")
	var b strings.Builder
	for i := range 100 {
		fmt.Fprintf(&b, "line %d\n", i)
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	got := logTail(path, 3, 1<<20)
	if !strings.Contains(got, "line 97\n    line 98\n    line 99") || strings.Contains(got, "line 96") {
		t.Errorf("tail by lines:\n%s", got)
	}
	// A byte limit that cuts a line drops the partial line.
	got = logTail(path, 100, 12)
	if strings.Contains(got, "ine 98") || !strings.Contains(got, "line 99") {
		t.Errorf("tail by bytes:\n%s", got)
	}
	if got := logTail(filepath.Join(t.TempDir(), "missing"), 3, 100); !strings.Contains(got, "unreadable") {
		t.Errorf("missing file: %s", got)
	}
}

// TestProcessStop checks the escalation from SIGTERM to SIGKILL with a
// child that ignores SIGTERM, and that children carry Pdeathsig.
func TestProcessStop(t *testing.T) {
	l := newLauncher()
	defer l.close()
	log := slog.New(slog.DiscardHandler)
	dir := t.TempDir()

	polite, err := startProcess(l, log, "polite", "/bin/sh", []string{"-c", "echo hello; exec sleep 60"}, filepath.Join(dir, "polite.log"))
	if err != nil {
		t.Fatal(err)
	}
	if polite.cmd.SysProcAttr.Pdeathsig != syscall.SIGKILL {
		t.Error("Pdeathsig not set")
	}
	waitForLog(t, polite.logPath, "hello")
	start := time.Now()
	polite.stop(5 * time.Second)
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("SIGTERM-able process took %v to stop", d)
	}
	if polite.running() {
		t.Fatal("still running after stop")
	}
	if !strings.Contains(polite.exitError().Error(), "hello") {
		t.Errorf("exit error lacks the log tail: %v", polite.exitError())
	}

	stubborn, err := startProcess(l, log, "stubborn", "/bin/sh",
		[]string{"-c", "trap '' TERM; echo ready; while :; do sleep 0.05; done"}, filepath.Join(dir, "stubborn.log"))
	if err != nil {
		t.Fatal(err)
	}
	// Let the shell install its trap before signalling it.
	waitForLog(t, stubborn.logPath, "ready")
	start = time.Now()
	stubborn.stop(300 * time.Millisecond)
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Errorf("process ignoring SIGTERM stopped after %v, before the grace period", d)
	}
	if stubborn.running() {
		t.Fatal("still running after SIGKILL")
	}
	if err := syscall.Kill(stubborn.cmd.Process.Pid, 0); err == nil {
		t.Error("PID still exists")
	}
}

func waitForLog(t *testing.T, path, want string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if b, _ := os.ReadFile(path); strings.Contains(string(b), want) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%q did not appear in %s", want, path)
}

// TestChildDiesWithParent re-runs this test binary as a helper that starts
// a long sleep through a launcher and is then SIGKILLed, as a crashed or
// timed-out test binary would be. Pdeathsig must take the sleep with it.
func TestChildDiesWithParent(t *testing.T) {
	// The helper is killed, so it cannot clean up a t.TempDir of its own:
	// it writes into the parent's.
	if dir := os.Getenv("KUBESERVER_PDEATHSIG_HELPER_DIR"); dir != "" {
		l := newLauncher()
		p, err := startProcess(l, slog.New(slog.DiscardHandler), "sleep", "/bin/sleep", []string{"60"},
			filepath.Join(dir, "sleep.log"))
		if err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		fmt.Printf("pid=%d\n", p.cmd.Process.Pid)
		// Start a few goroutines that lock and exit their threads, as
		// netns code does; they must not take the child with them.
		for range 4 {
			done := make(chan struct{})
			go func() { runtime.LockOSThread(); close(done) }()
			<-done
		}
		time.Sleep(time.Minute)
		return
	}

	cmd := exec.Command(os.Args[0], "-test.run=^TestChildDiesWithParent$")
	cmd.Env = append(os.Environ(), "KUBESERVER_PDEATHSIG_HELPER_DIR="+t.TempDir())
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	var pid int
	if _, err := fmt.Fscanf(out, "pid=%d\n", &pid); err != nil {
		t.Fatalf("reading helper output: %v", err)
	}
	time.Sleep(200 * time.Millisecond) // let the locked goroutines exit
	if !alive(pid) {
		t.Fatal("child died while its parent was alive (thread exit took it?)")
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	deadline := time.Now().Add(5 * time.Second)
	for alive(pid) {
		if time.Now().After(deadline) {
			syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("child %d outlived its SIGKILLed parent", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the parenthesised command name.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}
