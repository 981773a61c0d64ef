package kubeletapi

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	gwebsocket "github.com/gorilla/websocket"
	clientportforward "k8s.io/client-go/tools/portforward"
	"k8s.io/cri-streaming/pkg/streaming/portforward"
	"k8s.io/streaming/pkg/httpstream"
	"k8s.io/streaming/pkg/httpstream/spdy"
	"k8s.io/streaming/pkg/httpstream/wsstream"
)

// portForwardProtocols are the SPDY port-forward protocols the kubelet's
// CRI streaming server offers.
var portForwardProtocols = portforward.SupportedProtocols

// servePortForward answers /portForward/{namespace}/{pod}[/{uid}]. SPDY
// (kubectl through the API server) and the legacy WebSocket protocol with
// ?port= go to cri-streaming's ServePortForward; SPDY tunnelled through a
// WebSocket (client-go's tunnelling dialer, "SPDY/3.1+portforward.k8s.io")
// is unwrapped first by servePortForwardTunnel.
func (s *Server) servePortForward(w http.ResponseWriter, r *http.Request) {
	ns, pod, uid := r.PathValue("namespace"), r.PathValue("pod"), r.PathValue("uid")
	tunnel := wsstream.IsWebSocketRequestWithTunnelingProtocol(r)
	opts := &portforward.V4Options{}
	if !tunnel {
		var err error
		if opts, err = portforward.NewV4Options(r); err != nil {
			s.httpError(w, r, http.StatusBadRequest, fmt.Errorf("port-forward options: %w", err))
			return
		}
	}
	if !s.find(w, r, ns, pod, "") {
		return
	}

	fwd := newForwarder(r.Context(), s.rt, s.log, ns)
	defer fwd.stop()
	if tunnel {
		s.servePortForwardTunnel(w, r, fwd, pod, uid)
		return
	}
	portforward.ServePortForward(w, r, fwd, pod, uid, opts,
		s.cfg.StreamIdleTimeout, s.cfg.StreamCreationTimeout, portForwardProtocols)
}

// servePortForwardTunnel upgrades to a WebSocket that carries SPDY frames
// and hands ServePortForward a SPDY upgrade request whose connection is
// that tunnel. The API server does the same in front of kubelets that do
// not declare ExtendWebSocketsToKubelet; this lets clients reach the lab
// kubelet directly, too.
func (s *Server) servePortForwardTunnel(w http.ResponseWriter, r *http.Request, fwd *forwarder, pod, uid string) {
	if !slices.Contains(gwebsocket.Subprotocols(r), portforward.WebsocketsSPDYTunnelingPortForwardV1) {
		s.httpError(w, r, http.StatusBadRequest, fmt.Errorf("port-forward: no supported tunnelling protocol in %q; supported: %q",
			gwebsocket.Subprotocols(r), portforward.WebsocketsSPDYTunnelingPortForwardV1))
		return
	}
	upgrader := gwebsocket.Upgrader{
		Subprotocols: []string{portforward.WebsocketsSPDYTunnelingPortForwardV1},
		// Clients authenticate with certificates, not ambient browser
		// credentials, so the Origin header carries no meaning here.
		CheckOrigin: func(*http.Request) bool { return true },
	}
	ws, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		// Upgrade has answered the client.
		s.log.Warn("port-forward: upgrading to WebSocket", "path", r.URL.Path, "err", err)
		return
	}
	conn := clientportforward.NewTunnelingConnection("kubeletapi", ws)
	defer conn.Close() //nolint:errcheck // also closed by ServePortForward

	tw := &tunnelWriter{conn: conn, header: http.Header{}}
	portforward.ServePortForward(tw, spdyRequest(r), fwd, pod, uid, &portforward.V4Options{},
		s.cfg.StreamIdleTimeout, s.cfg.StreamCreationTimeout, portForwardProtocols)
	if tw.code != 0 && tw.code != http.StatusSwitchingProtocols {
		s.log.Warn("port-forward: tunnelled SPDY upgrade failed", "path", r.URL.Path, "status", tw.code)
	}
}

// spdyRequest is r turned into the SPDY upgrade request the tunnelled
// client would have sent.
func spdyRequest(r *http.Request) *http.Request {
	req := r.Clone(r.Context())
	req.Method = http.MethodPost
	req.Body = http.NoBody
	for _, h := range []string{"Sec-Websocket-Key", "Sec-Websocket-Version", "Sec-Websocket-Extensions", wsstream.WebSocketProtocolHeader} {
		req.Header.Del(h)
	}
	req.Header.Set(httpstream.HeaderConnection, httpstream.HeaderUpgrade)
	req.Header.Set(httpstream.HeaderUpgrade, spdy.HeaderSpdy31)
	req.Header.Set(httpstream.HeaderProtocolVersion, portforward.ProtocolV1Name)
	return req
}

// tunnelWriter is the http.ResponseWriter of a SPDY connection tunnelled
// through an upgraded WebSocket. The WebSocket handshake already answered
// 101, and the client now expects SPDY frames only, so WriteHeader and
// Write send nothing (the status is kept for the log) and Hijack returns
// the tunnel.
type tunnelWriter struct {
	conn   net.Conn
	header http.Header
	code   int
}

func (t *tunnelWriter) Header() http.Header { return t.header }

func (t *tunnelWriter) WriteHeader(code int) {
	if t.code == 0 {
		t.code = code
	}
}

func (t *tunnelWriter) Write(p []byte) (int, error) {
	t.WriteHeader(http.StatusOK)
	return len(p), nil
}

func (t *tunnelWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return t.conn, bufio.NewReadWriter(bufio.NewReader(t.conn), bufio.NewWriter(t.conn)), nil
}

// forwarder is the portforward.PortForwarder of one request. cri-streaming
// calls PortForward on goroutines of its own with context.Background and
// does not wait for them; forwarder gives the Runtime the request's
// context instead, and stop cancels it and waits for every call to return.
type forwarder struct {
	rt        Runtime
	log       *slog.Logger
	namespace string
	ctx       context.Context
	cancel    context.CancelFunc

	mu      sync.Mutex
	stopped bool
	calls   sync.WaitGroup
}

var _ portforward.PortForwarder = (*forwarder)(nil)

func newForwarder(ctx context.Context, rt Runtime, log *slog.Logger, namespace string) *forwarder {
	ctx, cancel := context.WithCancel(ctx)
	return &forwarder{rt: rt, log: log, namespace: namespace, ctx: ctx, cancel: cancel}
}

// PortForward connects stream to port in the pod through the Runtime.
func (f *forwarder) PortForward(_ context.Context, pod, _ string, port int32, stream io.ReadWriteCloser) error {
	f.mu.Lock()
	if f.stopped {
		f.mu.Unlock()
		return errors.New("port-forward session is closing")
	}
	f.calls.Add(1)
	f.mu.Unlock()
	defer f.calls.Done()

	err := f.rt.PortForward(f.ctx, f.namespace, pod, port, stream)
	if err == nil || f.ctx.Err() != nil {
		return nil
	}
	f.log.Warn("port-forward failed", "namespace", f.namespace, "pod", pod, "port", port, "err", err)
	awaitReply(stream)
	return fmt.Errorf("forwarding to port %d: %w", port, err)
}

// awaitReply waits, for up to a second, until spdystream has answered the
// client's SYN_STREAM of a SPDY data stream. On an error, cri-streaming
// resets the streams and then closes them; a reset that overtakes the
// reply means the reply is never sent, and the Close, which waits for
// it, blocks forever: a leaked goroutine per failed connection (seen
// when the Runtime refuses a port at once). A zero-length write waits for
// the reply the same way and sends an empty data frame, which clients
// ignore. If the reply never comes (the connection broke), the writing
// goroutine stays blocked like cri-streaming's own Close would.
func awaitReply(stream io.Writer) {
	written := make(chan struct{})
	go func() {
		stream.Write(nil) //nolint:errcheck // only the wait matters
		close(written)
	}()
	select {
	case <-written:
	case <-time.After(time.Second):
	}
}

// stop cancels the Runtime calls and waits for them to return.
func (f *forwarder) stop() {
	f.mu.Lock()
	f.stopped = true
	f.mu.Unlock()
	f.cancel()
	f.calls.Wait()
}
