// Package kubeletapi serves the part of the kubelet's HTTPS API that the
// kube-apiserver calls on a node: container logs, exec, attach-free
// port-forward and health. It is what makes `kubectl logs -f`, `kubectl exec
// -it` and `kubectl port-forward` work against the lab's nodes. The pods
// themselves are run by a Runtime (the lab kubelet).
package kubeletapi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"
)

// ErrNotFound is returned (wrapped) by a Runtime for a pod or container that
// does not run on this node.
var ErrNotFound = errors.New("not found")

// ExitError is returned by Runtime.Exec when the command ran and exited with
// a non-zero code.
type ExitError struct{ Code int }

func (e *ExitError) Error() string {
	return fmt.Sprintf("command terminated with exit code %d", e.Code)
}

// TerminalSize is a resize event of an interactive exec session.
type TerminalSize struct{ Width, Height uint16 }

// LogOptions are the query parameters of GET /containerLogs.
type LogOptions struct {
	Follow     bool
	Previous   bool       // the previous instance of a restarted container
	Timestamps bool       // prefix each line with its RFC3339Nano time
	TailLines  *int64     // only the last N lines
	LimitBytes *int64     // stop after N bytes
	SinceTime  *time.Time // only lines at or after this time
}

// Runtime is what the kubelet API needs from the component that runs pods.
// Pods are named by namespace and name; every method returns an error
// wrapping ErrNotFound when the pod or container is unknown.
type Runtime interface {
	// ContainerLogs writes the container's output (stdout and stderr,
	// interleaved as written) to w. With Follow it keeps writing until ctx
	// is done or the container exits.
	ContainerLogs(ctx context.Context, namespace, pod, container string, opts LogOptions, w io.Writer) error

	// Exec runs cmd inside the container: in its network and mount
	// namespaces, with its environment and working directory. With tty the
	// command gets a pseudo-terminal (stdout carries both streams, stderr
	// is nil) and resize delivers window size changes. It returns
	// *ExitError for a non-zero exit and stops the command when ctx is done.
	Exec(ctx context.Context, namespace, pod, container string, cmd []string,
		stdin io.Reader, stdout, stderr io.WriteCloser, tty bool, resize <-chan TerminalSize) error

	// PortForward connects stream to the TCP port inside the pod's
	// network namespace (localhost:port as the pod sees it) and copies
	// both ways until either side closes or ctx is done.
	PortForward(ctx context.Context, namespace, pod string, port int32, stream io.ReadWriteCloser) error
}
