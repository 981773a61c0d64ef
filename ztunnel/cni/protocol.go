package cni

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"
)

// DefaultSocket is where ztunnel listens for the plugin, on the node.
const DefaultSocket = "/var/run/cairn/cni.sock"

// Pod is what the plugin tells ztunnel about a pod's sandbox.
type Pod struct {
	Namespace   string   `json:"namespace"`
	Name        string   `json:"name"`
	UID         string   `json:"uid"`
	ContainerID string   `json:"containerID"`
	Netns       string   `json:"netns"` // path, e.g. /var/run/netns/cni-...
	IPs         []string `json:"ips"`   // from the previous plugins' result
}

// Reply is ztunnel's answer to an ADD.
type Reply struct {
	// Captured says whether the pod is in the mesh (false: not enrolled,
	// left untouched).
	Captured bool   `json:"captured"`
	Message  string `json:"message,omitempty"`
}

// Handler is ztunnel's side: Add returns once capture is in place (or the
// pod is found not enrolled), Del releases the pod.
type Handler interface {
	Add(ctx context.Context, pod Pod) (Reply, error)
	Del(ctx context.Context, pod Pod) error
}

// Server serves a Handler on a unix socket.
type Server struct {
	Handler Handler
	Log     *slog.Logger
}

const maxRequest = 64 << 10

// ServeHTTP answers POST /v1/add and POST /v1/del.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.Error(w, "POST only", http.StatusMethodNotAllowed)
		return
	}
	var pod Pod
	dec := json.NewDecoder(io.LimitReader(r.Body, maxRequest))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&pod); err != nil {
		http.Error(w, "malformed pod: "+err.Error(), http.StatusBadRequest)
		return
	}
	if pod.Namespace == "" || pod.Name == "" || pod.Netns == "" {
		http.Error(w, "pod namespace, name and netns are required", http.StatusBadRequest)
		return
	}
	log := s.Log.With("pod", pod.Namespace+"/"+pod.Name, "container", pod.ContainerID)
	switch r.URL.Path {
	case "/v1/add":
		reply, err := s.Handler.Add(r.Context(), pod)
		if err != nil {
			log.Warn("CNI ADD failed", "err", err)
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		log.Info("CNI ADD", "captured", reply.Captured)
		w.Header().Set("Content-Type", "application/json")
		if err := json.NewEncoder(w).Encode(reply); err != nil {
			log.Warn("writing the CNI ADD reply", "err", err)
		}
	case "/v1/del":
		if err := s.Handler.Del(r.Context(), pod); err != nil {
			log.Warn("CNI DEL failed", "err", err)
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		log.Info("CNI DEL")
		w.WriteHeader(http.StatusNoContent)
	default:
		http.NotFound(w, r)
	}
}

// Listen opens the unix socket at path, replacing the file of an earlier
// ztunnel, readable and writable by root only. Closing the listener leaves
// the file (it may be a newer ztunnel's by then).
func Listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("creating the CNI socket's directory: %w", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("removing a stale CNI socket: %w", err)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listening on the CNI socket: %w", err)
	}
	// During a rolling update the new ztunnel has replaced the file by the
	// time the old one closes its listener: the old one must not remove
	// the new one's socket.
	ln.SetUnlinkOnClose(false)
	if err := os.Chmod(path, 0o600); err != nil {
		_ = ln.Close()
		return nil, fmt.Errorf("restricting the CNI socket: %w", err)
	}
	return ln, nil
}

// client calls ztunnel from the plugin.
type client struct {
	socket  string
	timeout time.Duration
}

func (c client) post(ctx context.Context, op string, pod Pod) ([]byte, error) {
	body, err := json.Marshal(pod)
	if err != nil {
		return nil, fmt.Errorf("encoding the pod: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	hc := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", c.socket)
		},
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://ztunnel/v1/"+op, bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("building the request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("reaching ztunnel at %s (is the ztunnel DaemonSet running on this node?): %w", c.socket, err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(io.LimitReader(resp.Body, maxRequest))
	if err != nil {
		return nil, fmt.Errorf("reading ztunnel's reply: %w", err)
	}
	if resp.StatusCode/100 != 2 {
		return nil, fmt.Errorf("ztunnel refused %s (%s): %s", op, resp.Status, bytes.TrimSpace(out))
	}
	return out, nil
}
