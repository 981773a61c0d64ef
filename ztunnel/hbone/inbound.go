package hbone

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"time"
)

// inbound serves the CONNECT requests of one HBONE connection from peer.
type inbound struct {
	s    *Server
	peer Peer
}

var _ http.Handler = (*inbound)(nil)

// ServeHTTP checks a CONNECT, in order: method, :authority, that the
// authority is this pod, authorization, then dials the application and
// proxies. Every check comes before the dial, so bad input never causes an
// onward connection.
func (h *inbound) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.s.active.add()
	defer h.s.active.done()

	if r.Method != http.MethodConnect {
		w.Header().Set("Allow", http.MethodConnect)
		h.refuse(w, Refusal{Status: http.StatusMethodNotAllowed, Reason: ReasonMethod,
			Err: fmt.Errorf("method %s, want CONNECT", r.Method)})
		return
	}
	dst, err := parseAuthority(r.Host)
	if err != nil {
		h.refuse(w, Refusal{Status: http.StatusBadRequest, Reason: ReasonAuthority, Err: err})
		return
	}
	if !h.s.own[dst.Addr()] {
		h.refuse(w, Refusal{Destination: dst, Status: http.StatusForbidden, Reason: ReasonMisdirected,
			Err: fmt.Errorf("%v is not an address of this pod", dst.Addr())})
		return
	}
	// The tunnel's own context: Authorize may keep it, and end the tunnel
	// later through Revoke (a policy that no longer allows it).
	ctx, revoke := context.WithCancelCause(r.Context())
	defer revoke(nil)
	ctx = context.WithValue(ctx, revokeKey{}, revoke)
	if authorize := h.s.cfg.Authorize; authorize != nil {
		if err := authorize(ctx, h.peer, dst); err != nil {
			h.refuse(w, Refusal{Destination: dst, Status: http.StatusForbidden, Reason: ReasonDenied, Err: err})
			return
		}
	}
	dctx, cancel := context.WithTimeout(ctx, h.s.cfg.DialTimeout)
	app, err := h.s.cfg.Dial(dctx, "tcp", dst.String())
	cancel()
	if err != nil {
		h.refuse(w, Refusal{Destination: dst, Status: http.StatusServiceUnavailable, Reason: ReasonDial,
			Err: fmt.Errorf("dialing application: %w", err)})
		return
	}
	defer app.Close()

	conn := Connection{Peer: h.peer, Destination: dst}
	start := time.Now()
	h.s.obs.Opened(conn)
	tr, err := h.proxy(ctx, w, r, app)
	if cause := context.Cause(ctx); errors.Is(cause, ErrRevoked) {
		err = cause
	}
	tr.Duration = time.Since(start)
	h.s.obs.Closed(conn, tr)
	h.s.log.Info("connection closed",
		"src_identity", h.peer.Identity.String(), "src", h.peer.Addr, "dst", dst,
		"received", tr.Received, "sent", tr.Sent, "duration", tr.Duration, "error", err)
}

// refuse answers a CONNECT with an error status and reports it. The body
// names only the reason: details stay in our log.
func (h *inbound) refuse(w http.ResponseWriter, r Refusal) {
	r.Peer = h.peer
	h.s.obs.Refused(r)
	h.s.log.Info("connect refused", "reason", r.Reason, "status", r.Status,
		"src_identity", r.Peer.Identity.String(), "src", r.Peer.Addr, "dst", r.Destination, "error", r.Err)
	http.Error(w, "hbone: "+string(r.Reason), r.Status)
}

// proxy sends 200 and copies both ways until both directions have ended.
//
// Half-close: the client's END_STREAM reaches the application as
// CloseWrite, and the application's EOF ends the response (END_STREAM).
// Go's HTTP/2 server can end a response only by returning from the
// handler, after which the request body can no longer be read; so once the
// application has finished sending, whatever the client still sends is
// discarded (the server resets the stream with NO_ERROR, as RFC 9113
// section 8.1 allows after a complete response).
func (h *inbound) proxy(ctx context.Context, w http.ResponseWriter, r *http.Request, app net.Conn) (Traffic, error) {
	rc := http.NewResponseController(w)
	w.WriteHeader(http.StatusOK)
	if err := rc.Flush(); err != nil {
		return Traffic{}, fmt.Errorf("sending 200: %w", err)
	}
	// The tunnel's context ends when the client resets the stream, the
	// connection goes away or the tunnel is revoked; the application
	// connection must not outlive it.
	stop := context.AfterFunc(ctx, func() { app.Close() })
	defer stop()

	var up struct {
		n   int64
		err error
	}
	upDone := make(chan struct{})
	go func() {
		defer close(upDone)
		up.n, up.err = copyStream(app, r.Body)
		if up.err != nil {
			app.Close() // ends the other direction too
			return
		}
		if cw, ok := app.(closeWriter); ok {
			up.err = cw.CloseWrite()
		}
	}()
	sent, downErr := copyStream(flushWriter{w: w, rc: rc}, app)

	cut := false
	select {
	case <-upDone:
	default:
		// The application is done (or broken) while the client still
		// sends: stop reading the body before the handler returns.
		cut = true
		r.Body.Close()
		app.Close()
		<-upDone
	}
	var err error
	switch {
	case !cut && up.err != nil:
		err = fmt.Errorf("peer to application: %w", up.err)
	case downErr != nil && !errors.Is(downErr, net.ErrClosed):
		err = fmt.Errorf("application to peer: %w", downErr)
	}
	return Traffic{Received: up.n, Sent: sent}, err
}

// flushWriter sends every write at once: an HTTP/2 response buffers
// otherwise, and a tunnel must not hold bytes back.
type flushWriter struct {
	w  io.Writer
	rc *http.ResponseController
}

func (f flushWriter) Write(p []byte) (int, error) {
	n, err := f.w.Write(p)
	if err != nil {
		return n, err
	}
	return n, f.rc.Flush()
}

// parseAuthority parses a CONNECT's :authority, which HBONE defines as the
// destination's IP:port. Names, zones and port 0 are refused.
func parseAuthority(s string) (netip.AddrPort, error) {
	if s == "" {
		return netip.AddrPort{}, errors.New("missing :authority")
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf(":authority %q is not IP:port: %w", s, err)
	}
	if ap.Addr().Zone() != "" {
		return netip.AddrPort{}, fmt.Errorf(":authority %q has an IPv6 zone", s)
	}
	if ap.Port() == 0 {
		return netip.AddrPort{}, fmt.Errorf(":authority %q has port 0", s)
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}

// ErrRevoked is why a tunnel ended when Revoke ended it.
var ErrRevoked = errors.New("hbone: tunnel revoked")

type revokeKey struct{}

// Revoke ends the tunnel whose context (the one ServerConfig.Authorize
// received) is ctx: the application connection is closed and the stream
// ends. It reports whether ctx belonged to a tunnel. ztunnel uses it to
// close connections that a changed policy no longer allows.
func Revoke(ctx context.Context) bool {
	f, ok := ctx.Value(revokeKey{}).(context.CancelCauseFunc)
	if ok {
		f(ErrRevoked)
	}
	return ok
}
