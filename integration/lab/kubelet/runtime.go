package kubelet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"slices"
	"strconv"
	"syscall"
	"time"

	"github.com/creack/pty"

	"github.com/cairnmesh/cairn/integration/lab/kubeletapi"
)

// runtimeAPI is the kubelet's kubeletapi.Runtime: logs, exec and
// port-forward for the pods of this node.
type runtimeAPI struct{ k *Kubelet }

var (
	_ kubeletapi.Runtime = (*runtimeAPI)(nil)
	_ kubeletapi.Finder  = (*runtimeAPI)(nil)
)

// lookup finds a pod's worker and, unless container is "", the
// container's instances (oldest first) and live state.
func (r *runtimeAPI) lookup(namespace, pod, container string) (*podWorker, string, []*instanceRecord, *ctrRuntime, error) {
	w := r.k.worker(namespace, pod)
	if w == nil {
		return nil, "", nil, nil, fmt.Errorf("pod %s/%s: %w", namespace, pod, kubeletapi.ErrNotFound)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.rec == nil || w.pod == nil {
		return nil, "", nil, nil, fmt.Errorf("pod %s/%s: %w", namespace, pod, kubeletapi.ErrNotFound)
	}
	if container == "" {
		if len(w.pod.Spec.Containers) != 1 {
			return w, "", nil, nil, nil
		}
		container = w.pod.Spec.Containers[0].Name
	}
	if findContainer(w.pod, container) == nil {
		return nil, "", nil, nil, fmt.Errorf("container %q in pod %s/%s: %w", container, namespace, pod, kubeletapi.ErrNotFound)
	}
	return w, container, slices.Clone(w.rec.Containers[container]), w.ctrs[container], nil
}

// Find implements kubeletapi.Finder.
func (r *runtimeAPI) Find(_ context.Context, namespace, pod, container string) error {
	_, _, _, _, err := r.lookup(namespace, pod, container)
	return err
}

// ContainerLogs implements kubeletapi.Runtime.
func (r *runtimeAPI) ContainerLogs(ctx context.Context, namespace, pod, container string, opts kubeletapi.LogOptions, w io.Writer) error {
	pw, name, insts, _, err := r.lookup(namespace, pod, container)
	if err != nil {
		return err
	}
	if name == "" {
		return fmt.Errorf("pod %s/%s has several containers: name one: %w", namespace, pod, kubeletapi.ErrNotFound)
	}
	var inst *instanceRecord
	switch n := len(insts); {
	case opts.Previous && n >= 2:
		inst = insts[n-2]
	case opts.Previous:
		return fmt.Errorf("previous terminated container %q in pod %q: %w", name, pod, kubeletapi.ErrNotFound)
	case n >= 1:
		inst = insts[n-1]
	default:
		return fmt.Errorf("container %q in pod %q is waiting to start: %w", name, pod, kubeletapi.ErrNotFound)
	}
	done := func() bool {
		pw.mu.Lock()
		defer pw.mu.Unlock()
		if inst.Exit != nil {
			return true
		}
		c := pw.ctrs[name]
		return c == nil || c.inst != inst || c.exited
	}
	return readLog(ctx, inst.LogPath, opts, w, done)
}

// Exec implements kubeletapi.Runtime.
func (r *runtimeAPI) Exec(ctx context.Context, namespace, pod, container string, cmd []string,
	stdin io.Reader, stdout, stderr io.WriteCloser, tty bool, resize <-chan kubeletapi.TerminalSize) error {
	pw, name, _, rt, err := r.lookup(namespace, pod, container)
	if err != nil {
		return err
	}
	if name == "" {
		return fmt.Errorf("pod %s/%s has several containers: name one: %w", namespace, pod, kubeletapi.ErrNotFound)
	}
	if rt == nil {
		return fmt.Errorf("container %q: %w", name, errNotRunning)
	}
	t, err := pw.execTarget(rt)
	if err != nil {
		return fmt.Errorf("container %q: %w", name, err)
	}
	code, err := r.k.execIn(ctx, t, cmd, stdin, stdout, stderr, tty, resize)
	if err != nil {
		return err
	}
	if code != 0 {
		return &kubeletapi.ExitError{Code: code}
	}
	return nil
}

// PortForward implements kubeletapi.Runtime.
func (r *runtimeAPI) PortForward(ctx context.Context, namespace, pod string, port int32, stream io.ReadWriteCloser) error {
	w, _, _, _, err := r.lookup(namespace, pod, "")
	if err != nil {
		return err
	}
	w.mu.Lock()
	netns, ready := w.rec.NetNS, w.rec.SandboxReady
	w.mu.Unlock()
	if !ready {
		return fmt.Errorf("pod %s/%s has no network yet", namespace, pod)
	}
	conn, err := dialInNetns(ctx, netns, net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port))))
	if err != nil {
		return fmt.Errorf("port-forward to %s/%s:%d: %w", namespace, pod, port, err)
	}
	defer conn.Close()
	up := make(chan struct{})
	down := make(chan error, 1)
	go func() { // ends when the stream is closed or ends
		defer close(up)
		_, _ = io.Copy(conn, stream)
		if tc, ok := conn.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
	}()
	go func() {
		_, err := io.Copy(stream, conn)
		down <- err
	}()
	select {
	case <-ctx.Done():
	case <-down:
	}
	conn.Close()
	stream.Close()
	<-up
	return nil
}

// execIn runs cmd in a running container: the enter stage joins the
// container's cgroups and execs nsenter, which joins its mount, UTS,
// network (and cgroup) namespaces and its root and working directory,
// and the exec stage takes on the container's user and capabilities
// (see runEnter). The command gets the container's environment. It
// returns the exit code.
func (k *Kubelet) execIn(ctx context.Context, t execTarget, cmd []string, stdin io.Reader, stdout, stderr io.WriteCloser,
	tty bool, resize <-chan kubeletapi.TerminalSize) (int, error) {
	if len(cmd) == 0 {
		return 0, errors.New("exec: no command")
	}
	spec, err := json.Marshal(enterSpec{PID: t.pid, Cgroups: t.cgroups, Nsenter: k.nsenter, InitArgs: k.cfg.InitArgs, Security: t.security})
	if err != nil {
		return 0, err
	}
	args := slices.Clone(k.cfg.InitArgs)
	args = append(args, "enter", "--spec", string(spec), "--")
	args = append(args, cmd...)
	c := exec.CommandContext(ctx, "/proc/self/exe", args...)
	c.Env = t.env
	c.WaitDelay = time.Second

	if tty {
		ptmx, err := pty.StartWithAttrs(c, nil, &syscall.SysProcAttr{Setsid: true, Setctty: true})
		if err != nil {
			return 0, fmt.Errorf("exec: %w", err)
		}
		defer ptmx.Close()
		if stdin != nil {
			go func() { _, _ = io.Copy(ptmx, stdin) }() // ends when stdin or the pty closes
		}
		stop := make(chan struct{})
		defer close(stop)
		go func() {
			for {
				select {
				case <-stop:
					return
				case sz, ok := <-resize:
					if !ok {
						return
					}
					_ = pty.Setsize(ptmx, &pty.Winsize{Cols: sz.Width, Rows: sz.Height})
				}
			}
		}()
		out := make(chan struct{})
		go func() {
			defer close(out)
			_, _ = io.Copy(stdout, ptmx) // EIO once the last holder of the terminal exits
		}()
		err = c.Wait()
		select {
		case <-out:
		case <-time.After(time.Second):
		}
		return exitCode(err)
	}

	c.Stdout, c.Stderr = stdout, stderr
	var inPipe io.WriteCloser
	if stdin != nil {
		p, err := c.StdinPipe()
		if err != nil {
			return 0, err
		}
		inPipe = p
	}
	if err := c.Start(); err != nil {
		return 0, fmt.Errorf("exec: %w", err)
	}
	if inPipe != nil {
		go func() { // ends when stdin ends or the command is gone
			_, _ = io.Copy(inPipe, stdin)
			inPipe.Close()
		}()
	}
	return exitCode(c.Wait())
}

func exitCode(err error) (int, error) {
	if err == nil || errors.Is(err, exec.ErrWaitDelay) {
		return 0, nil
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal()), nil
		}
		return ee.ExitCode(), nil
	}
	return 0, fmt.Errorf("exec: %w", err)
}

// execTarget is what exec needs of a running container.
type execTarget struct {
	pid      int
	cgroups  []string
	env      []string
	security securitySpec
}

func (w *podWorker) execTarget(rt *ctrRuntime) (execTarget, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	inst, spec := rt.inst, rt.spec
	if inst == nil || inst.Exit != nil || inst.Started == nil || spec == nil || rt.exited {
		return execTarget{}, errNotRunning
	}
	return execTarget{pid: inst.Started.PID, cgroups: inst.Cgroups, env: spec.Env, security: spec.Security}, nil
}
