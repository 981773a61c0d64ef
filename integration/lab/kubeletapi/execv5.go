package kubeletapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cri-streaming/pkg/streaming/remotecommand"
	"k8s.io/streaming/pkg/httpstream/wsstream"
	utilexec "k8s.io/utils/exec"
)

// cri-streaming's ServeExec speaks WebSocket only up to v4, without the
// CLOSE signal that lets a client end stdin; client-go's WebSocket executor
// (and so kubectl) asks for v5 only. serveExecV5 serves v5 on wsstream.Conn,
// which implements the channel framing and the CLOSE signal. Channels, as
// in v4: 0 stdin, 1 stdout, 2 stderr, 3 error (a JSON metav1.Status),
// 4 resize (JSON TerminalSize values); 255 carries CLOSE.
func (s *Server) serveExecV5(w http.ResponseWriter, r *http.Request, ex *executor, pod, uid, container string, cmd []string) {
	opts := ex.opts
	channels := []wsstream.ChannelType{
		channelIf(opts.Stdin, wsstream.ReadChannel),
		channelIf(opts.Stdout, wsstream.WriteChannel),
		channelIf(opts.Stderr, wsstream.WriteChannel),
		wsstream.WriteChannel,
		channelIf(opts.TTY, wsstream.ReadChannel),
	}
	conn := wsstream.NewConn(map[string]wsstream.ChannelProtocolConfig{
		remotecommand.StreamProtocolV5Name: {Binary: true, Channels: channels},
	})
	conn.SetIdleTimeout(s.cfg.StreamIdleTimeout)
	_, streams, err := conn.Open(w, r)
	if err != nil {
		// The WebSocket handshake failed and has answered the client.
		s.log.Warn("exec: upgrading to WebSocket", "path", r.URL.Path, "err", err)
		return
	}

	// An empty frame on the first writable channel tells the client the
	// streams are open, as the kubelet's WebSocket servers do.
	switch {
	case opts.Stdout:
		streams[1].Write(nil) //nolint:errcheck // a dead connection fails below
	case opts.Stderr:
		streams[2].Write(nil) //nolint:errcheck
	default:
		streams[3].Write(nil) //nolint:errcheck
	}

	var resize chan remotecommand.TerminalSize
	var wg sync.WaitGroup
	stop := make(chan struct{})
	if opts.TTY {
		resize = make(chan remotecommand.TerminalSize)
		wg.Go(func() { decodeResize(streams[4], resize, stop) })
	}

	execErr := ex.ExecInContainer(r.Context(), pod, uid, container, cmd,
		streams[0], streams[1], streams[2], opts.TTY, resize, 0)
	if err := writeStatusV5(streams[3], execErr); err != nil {
		s.log.Debug("exec: writing status", "path", r.URL.Path, "err", err)
	}
	// Closing the connection ends the reads of decodeResize.
	conn.Close() //nolint:errcheck // closing anyway
	close(stop)
	wg.Wait()
}

func channelIf(wanted bool, t wsstream.ChannelType) wsstream.ChannelType {
	if wanted {
		return t
	}
	return wsstream.IgnoreChannel
}

// decodeResize reads JSON terminal sizes from stream until it ends or stop
// is closed, sending each on to. It closes to.
func decodeResize(stream io.Reader, to chan<- remotecommand.TerminalSize, stop <-chan struct{}) {
	defer close(to)
	dec := json.NewDecoder(stream)
	for {
		var size remotecommand.TerminalSize
		if err := dec.Decode(&size); err != nil {
			return
		}
		select {
		case to <- size:
		case <-stop:
			return
		}
	}
}

// writeStatusV5 writes the outcome of an exec as the v4/v5 protocols
// carry it on the error channel: a metav1.Status, with the exit code as
// the cause of a NonZeroExitCode failure.
func writeStatusV5(w io.Writer, execErr error) error {
	status := metav1.Status{Status: metav1.StatusSuccess}
	var exit utilexec.ExitError
	switch {
	case execErr == nil:
	case errors.As(execErr, &exit) && exit.Exited():
		status = metav1.Status{
			Status:  metav1.StatusFailure,
			Reason:  remotecommand.NonZeroExitCodeReason,
			Message: fmt.Sprintf("command terminated with non-zero exit code: %v", execErr),
			Details: &metav1.StatusDetails{Causes: []metav1.StatusCause{{
				Type:    remotecommand.ExitCodeCauseType,
				Message: strconv.Itoa(exit.ExitStatus()),
			}}},
		}
	default:
		status = metav1.Status{
			Status:  metav1.StatusFailure,
			Reason:  metav1.StatusReasonInternalError,
			Code:    http.StatusInternalServerError,
			Message: fmt.Sprintf("Internal error occurred: error executing command in container: %v", execErr),
		}
	}
	b, err := json.Marshal(status)
	if err != nil {
		return fmt.Errorf("encoding exec status: %w", err)
	}
	if _, err := w.Write(b); err != nil {
		return fmt.Errorf("writing exec status: %w", err)
	}
	return nil
}
