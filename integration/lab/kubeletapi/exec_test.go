package kubeletapi

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/tools/remotecommand"
	"k8s.io/client-go/util/exec"
	"k8s.io/streaming/pkg/httpstream"
)

// execClient makes a client-go executor for a URL of the test server.
type execClient struct {
	name string
	new  func(env *testEnv, u *url.URL) (remotecommand.Executor, error)
	// halfClose: the protocol can tell the server that stdin ended
	// (not so the WebSocket protocols before v5).
	halfClose bool
}

func spdyExecutor(env *testEnv, u *url.URL) (remotecommand.Executor, error) {
	return remotecommand.NewSPDYExecutor(env.restConfig(), "POST", u)
}

func webSocketExecutor(protocols ...string) func(env *testEnv, u *url.URL) (remotecommand.Executor, error) {
	return func(env *testEnv, u *url.URL) (remotecommand.Executor, error) {
		if len(protocols) == 0 {
			return remotecommand.NewWebSocketExecutor(env.restConfig(), "GET", u.String())
		}
		return remotecommand.NewWebSocketExecutorForProtocols(env.restConfig(), "GET", u.String(), protocols...)
	}
}

// kubectlExecutor is what kubectl exec builds: WebSocket, falling back to
// SPDY when the upgrade fails.
func kubectlExecutor(protocols ...string) func(env *testEnv, u *url.URL) (remotecommand.Executor, error) {
	return func(env *testEnv, u *url.URL) (remotecommand.Executor, error) {
		ws, err := webSocketExecutor(protocols...)(env, u)
		if err != nil {
			return nil, err
		}
		spdy, err := spdyExecutor(env, u)
		if err != nil {
			return nil, err
		}
		return remotecommand.NewFallbackExecutor(ws, spdy, func(err error) bool {
			return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
		})
	}
}

var execClients = []execClient{
	{name: "SPDY", new: spdyExecutor, halfClose: true},
	{name: "WebSocket v5", new: webSocketExecutor(), halfClose: true},
	{name: "kubectl fallback executor", new: kubectlExecutor(), halfClose: true},
	// An unknown WebSocket protocol is refused in the handshake, which
	// the fallback executor takes as its cue to use SPDY.
	{name: "fallback from unknown WebSocket protocol", new: kubectlExecutor("v9.channel.k8s.io"), halfClose: true},
	{name: "legacy WebSocket v4", new: webSocketExecutor("v4.channel.k8s.io")},
}

type streamOpts struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	tty            bool
	sizes          remotecommand.TerminalSizeQueue
}

// execPath builds /exec/{target}?command=...&input=1... for the streams of o.
func execPath(target string, o streamOpts, cmd ...string) string {
	q := url.Values{"command": cmd}
	if o.stdin != nil {
		q.Set("input", "1")
	}
	if o.stdout != nil {
		q.Set("output", "1")
	}
	if o.stderr != nil {
		q.Set("error", "1")
	}
	if o.tty {
		q.Set("tty", "1")
	}
	return "/exec/" + target + "?" + q.Encode()
}

func runExec(t *testing.T, env *testEnv, c execClient, path string, o streamOpts) error {
	t.Helper()
	u, err := url.Parse(env.base + path)
	if err != nil {
		t.Fatal(err)
	}
	ex, err := c.new(env, u)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return ex.StreamWithContext(ctx, remotecommand.StreamOptions{
		Stdin: o.stdin, Stdout: o.stdout, Stderr: o.stderr, Tty: o.tty, TerminalSizeQueue: o.sizes,
	})
}

func spdyExec(t *testing.T, env *testEnv, path string, o streamOpts) error {
	t.Helper()
	if o.stdout == nil {
		o.stdout = io.Discard
	}
	return runExec(t, env, execClients[0], path, o)
}

func TestExec(t *testing.T) {
	env := startServer(t, newFakeRuntime("ns/pod/app"), nil)
	for _, c := range execClients {
		t.Run(c.name, func(t *testing.T) {
			t.Run("stdout and stderr", func(t *testing.T) {
				var stdout, stderr bytes.Buffer
				o := streamOpts{stdout: &stdout, stderr: &stderr}
				if err := runExec(t, env, c, execPath("ns/pod/app", o, "echo", "hello", "world"), o); err != nil {
					t.Fatal(err)
				}
				if stdout.String() != "hello world\n" || stderr.Len() != 0 {
					t.Fatalf("stdout %q stderr %q", stdout.String(), stderr.String())
				}
				stdout.Reset()
				if err := runExec(t, env, c, execPath("ns/pod/app", o, "warn", "oops"), o); err != nil {
					t.Fatal(err)
				}
				if stderr.String() != "oops\n" || stdout.Len() != 0 {
					t.Fatalf("stdout %q stderr %q", stdout.String(), stderr.String())
				}
			})
			t.Run("unrequested streams are nil", func(t *testing.T) {
				var stdout bytes.Buffer
				o := streamOpts{stdout: &stdout}
				if err := runExec(t, env, c, execPath("ns/pod/app", o, "streams"), o); err != nil {
					t.Fatal(err)
				}
				if want := "stdin=false stdout=true stderr=false tty=false\n"; stdout.String() != want {
					t.Fatalf("runtime saw %q, want %q", stdout.String(), want)
				}
			})
			t.Run("stdin", func(t *testing.T) {
				if !c.halfClose {
					t.Skip("the protocol cannot signal the end of stdin")
				}
				var stdout bytes.Buffer
				o := streamOpts{stdin: strings.NewReader("ping\npong\n"), stdout: &stdout}
				if err := runExec(t, env, c, execPath("ns/pod/app", o, "cat"), o); err != nil {
					t.Fatal(err)
				}
				if stdout.String() != "ping\npong\n" {
					t.Fatalf("stdout %q", stdout.String())
				}
			})
			t.Run("exit code", func(t *testing.T) {
				for _, code := range []int{1, 3, 255} {
					o := streamOpts{stdout: io.Discard}
					err := runExec(t, env, c, execPath("ns/pod/app", o, "exit", strconv.Itoa(code)), o)
					// client-go reports exit codes with its own copy of
					// CodeExitError, in k8s.io/client-go/util/exec.
					var exitErr exec.CodeExitError
					if !errors.As(err, &exitErr) || exitErr.Code != code {
						t.Fatalf("exit %d: client got %T %v, want exec.CodeExitError with code %d", code, err, err, code)
					}
				}
			})
			t.Run("exit code out of range", func(t *testing.T) {
				o := streamOpts{stdout: io.Discard}
				err := runExec(t, env, c, execPath("ns/pod/app", o, "exit", "-1"), o)
				var exitErr exec.CodeExitError
				if err == nil || errors.As(err, &exitErr) {
					t.Fatalf("client got %T %v, want a plain error", err, err)
				}
			})
			t.Run("unknown container", func(t *testing.T) {
				// Without a Finder the error arrives inside the stream.
				o := streamOpts{stdout: io.Discard}
				err := runExec(t, env, c, execPath("ns/pod/nope", o, "echo"), o)
				if err == nil || !strings.Contains(err.Error(), "not found") {
					t.Fatalf("client got %v, want a not found error", err)
				}
			})
		})
	}
}

// sizeQueue feeds terminal sizes to client-go; closing it ends the queue.
type sizeQueue chan remotecommand.TerminalSize

func (q sizeQueue) Next() *remotecommand.TerminalSize {
	s, ok := <-q
	if !ok {
		return nil
	}
	return &s
}

func TestExecTTY(t *testing.T) {
	env := startServer(t, newFakeRuntime("ns/pod/app"), nil)
	for _, c := range execClients {
		if !c.halfClose {
			continue
		}
		t.Run(c.name, func(t *testing.T) {
			t.Run("stderr is folded into the terminal", func(t *testing.T) {
				var stdout bytes.Buffer
				o := streamOpts{stdout: &stdout, stderr: io.Discard, tty: true}
				if err := runExec(t, env, c, execPath("ns/pod/app", o, "streams"), o); err != nil {
					t.Fatal(err)
				}
				if want := "stdin=false stdout=true stderr=false tty=true\n"; stdout.String() != want {
					t.Fatalf("runtime saw %q, want %q", stdout.String(), want)
				}
			})
			t.Run("resize", func(t *testing.T) {
				stdinR, stdinW := io.Pipe()
				stdoutR, stdoutW := io.Pipe()
				sizes := make(sizeQueue)
				o := streamOpts{stdin: stdinR, stdout: stdoutW, tty: true, sizes: sizes}
				done := make(chan error, 1)
				go func() {
					err := runExec(t, env, c, execPath("ns/pod/app", o, "resize"), o)
					stdoutW.Close()
					done <- err
				}()
				lines := bufio.NewScanner(stdoutR)
				for _, size := range []remotecommand.TerminalSize{{Width: 80, Height: 24}, {Width: 132, Height: 43}} {
					sizes <- size
					if !lines.Scan() {
						t.Fatalf("stdout ended before size %v arrived: %v", size, lines.Err())
					}
					if want := strconv.Itoa(int(size.Width)) + "x" + strconv.Itoa(int(size.Height)); lines.Text() != want {
						t.Fatalf("runtime saw size %q, want %q", lines.Text(), want)
					}
				}
				close(sizes)
				stdinW.Close()
				go io.Copy(io.Discard, stdoutR) //nolint:errcheck
				select {
				case err := <-done:
					if err != nil {
						t.Fatal(err)
					}
				case <-time.After(10 * time.Second):
					t.Fatal("exec did not end after stdin closed")
				}
			})
		})
	}
}

// With a Finder, unknown pods and containers are refused before the
// upgrade, and the client sees the 404.
func TestExecNotFoundBeforeUpgrade(t *testing.T) {
	env := startServer(t, finderRuntime{newFakeRuntime("ns/pod/app")}, nil)
	for _, c := range execClients {
		t.Run(c.name, func(t *testing.T) {
			o := streamOpts{stdout: io.Discard}
			err := runExec(t, env, c, execPath("ns/gone/app", o, "echo"), o)
			if err == nil || !strings.Contains(err.Error(), "pod ns/gone") {
				t.Fatalf("client got %v, want the 404 message naming pod ns/gone", err)
			}
		})
	}
}
