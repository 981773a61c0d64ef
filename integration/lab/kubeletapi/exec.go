package kubeletapi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"k8s.io/cri-streaming/pkg/streaming/remotecommand"
	"k8s.io/streaming/pkg/httpstream/wsstream"
	utilexec "k8s.io/utils/exec"
)

// execSPDYProtocols are the SPDY exec protocols, newest first: the list the
// kubelet's CRI streaming server offers. v5 exists only over WebSocket.
var execSPDYProtocols = remotecommand.SupportedStreamingProtocols

// serveExec answers /exec/{namespace}/{pod}[/{uid}]/{container}?command=...
// WebSocket clients that offer v5.channel.k8s.io (client-go's WebSocket
// executor, kubectl through an API server that proxies WebSockets to
// nodes) are served by serveExecV5; everything else (SPDY v1-v4 and the
// legacy WebSocket protocols up to v4) by cri-streaming's ServeExec.
func (s *Server) serveExec(w http.ResponseWriter, r *http.Request) {
	ns, pod, ctr := r.PathValue("namespace"), r.PathValue("pod"), r.PathValue("container")
	cmd := r.URL.Query()["command"]
	if len(cmd) == 0 || cmd[0] == "" {
		s.httpError(w, r, http.StatusBadRequest, errors.New("query parameter command is required"))
		return
	}
	opts, err := remotecommand.NewOptions(r)
	if err != nil {
		s.httpError(w, r, http.StatusBadRequest, fmt.Errorf("exec options: %w", err))
		return
	}
	if !s.find(w, r, ns, pod, ctr) {
		return
	}
	ex := &executor{rt: s.rt, log: s.log, namespace: ns, opts: *opts}
	if wsstream.IsWebSocketRequestWithStreamCloseProtocol(r) {
		s.serveExecV5(w, r, ex, pod, r.PathValue("uid"), ctr, cmd)
		return
	}
	remotecommand.ServeExec(w, r, ex, pod, r.PathValue("uid"), ctr, cmd, opts,
		s.cfg.StreamIdleTimeout, s.cfg.StreamCreationTimeout, execSPDYProtocols)
}

// serveAttach answers /attach: the lab runs containers without a console
// to attach to.
func (s *Server) serveAttach(w http.ResponseWriter, r *http.Request) {
	s.httpError(w, r, http.StatusNotImplemented,
		errors.New("attach is not supported by the lab kubelet; use kubectl exec or kubectl logs -f"))
}

// executor is the remotecommand.Executor of one exec request: it adapts
// the streams, the resize channel and the exit error between cri-streaming
// and the Runtime.
type executor struct {
	rt        Runtime
	log       *slog.Logger
	namespace string
	opts      remotecommand.Options
}

var _ remotecommand.Executor = (*executor)(nil)

// ExecInContainer runs cmd through the Runtime. The uid and timeout are
// ignored: the Runtime names pods by namespace and name, and exec has no
// timeout (the API server sends none).
func (e *executor) ExecInContainer(ctx context.Context, pod, _, container string, cmd []string,
	in io.Reader, out, errOut io.WriteCloser, tty bool, resize <-chan remotecommand.TerminalSize, _ time.Duration,
) error {
	// The WebSocket paths pass placeholder streams for the ones the client
	// did not ask for; the Runtime sees nil for those, as documented.
	// (NewOptions already dropped stderr for a tty.)
	if !e.opts.Stdin {
		in = nil
	}
	if !e.opts.Stdout {
		out = nil
	}
	if !e.opts.Stderr {
		errOut = nil
	}

	var sizes chan TerminalSize
	if tty && resize != nil {
		sizes = make(chan TerminalSize)
		done := make(chan struct{})
		var wg sync.WaitGroup
		wg.Go(func() { relayResize(resize, sizes, done) })
		defer func() {
			close(done)
			wg.Wait()
		}()
	}

	start := time.Now()
	err := e.rt.Exec(ctx, e.namespace, pod, container, cmd, in, out, errOut, tty, sizes)
	attrs := []any{"namespace", e.namespace, "pod", pod, "container", container,
		"command", cmd[0], "tty", tty, "duration", time.Since(start)}
	var exit *ExitError
	switch {
	case err == nil:
		e.log.Debug("exec finished", attrs...)
	case errors.As(err, &exit):
		e.log.Debug("exec finished", append(attrs, "exit_code", exit.Code)...)
	default:
		e.log.Warn("exec failed", append(attrs, "err", err)...)
	}
	if err != nil && errors.Is(context.Cause(ctx), errShuttingDown) {
		err = fmt.Errorf("%w: %w", errShuttingDown, err)
	}
	return exitCodeError(err)
}

// exitCodeError turns the Runtime's *ExitError into the error ServeExec
// reports as an exit code. ServeExec checks err.(utilexec.ExitError) with a
// plain type assertion, not errors.As, so the result must not be wrapped;
// and clients parse the code as a uint8, so codes outside 1..255 (such as
// -1 for a signal) are reported as plain errors.
func exitCodeError(err error) error {
	var exit *ExitError
	if !errors.As(err, &exit) {
		return err
	}
	if exit.Code < 1 || exit.Code > 255 {
		return fmt.Errorf("command did not exit normally: %w", err)
	}
	return utilexec.CodeExitError{Err: err, Code: exit.Code}
}

// relayResize copies resize events from cri-streaming's channel to the
// Runtime's until from is closed (and its last event delivered) or done is,
// then closes to. It never blocks the sender: while the Runtime is not
// reading, newer sizes replace the pending one, so a Runtime that ignores
// resizes cannot stall the connection (whose reader feeds from).
func relayResize(from <-chan remotecommand.TerminalSize, to chan<- TerminalSize, done <-chan struct{}) {
	defer close(to)
	var pending TerminalSize
	var havePending bool
	for {
		var out chan<- TerminalSize
		if havePending {
			out = to
		}
		select {
		case size, ok := <-from:
			if !ok {
				if !havePending {
					return
				}
				from = nil
				continue
			}
			pending, havePending = TerminalSize{Width: size.Width, Height: size.Height}, true
		case out <- pending:
			havePending = false
			if from == nil {
				return
			}
		case <-done:
			return
		}
	}
}
