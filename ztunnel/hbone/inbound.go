package hbone

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"time"

	"golang.org/x/net/http2/hpack"
)

// inbound serves the CONNECT requests of one HBONE connection from peer.
type inbound struct {
	s    *Server
	peer Peer
}

// admit starts serving a new stream. It runs on the connection's reader,
// so the checks, the dial and the proxying get a goroutine of their own.
func (h *inbound) admit(st *stream, req request) {
	h.s.active.add()
	go h.serve(st, req)
}

// serve checks a CONNECT, in order: header size, method, :authority, that
// the authority is this pod, authorization; then it dials the application
// and proxies. Every check comes before the dial, so bad input never
// causes an onward connection.
func (h *inbound) serve(st *stream, req request) {
	defer h.s.active.done()
	defer st.c.served()
	// A refused or abandoned request may have had data queued behind it
	// (a client that sends its first bytes with the CONNECT).
	defer st.discard()

	if req.truncated {
		h.refuse(st, Refusal{Status: http.StatusRequestHeaderFieldsTooLarge, Reason: ReasonHeaders,
			Err: fmt.Errorf("request headers over %d bytes", h.s.cfg.MaxHeaderBytes)})
		return
	}
	if req.method != http.MethodConnect {
		h.refuse(st, Refusal{Status: http.StatusMethodNotAllowed, Reason: ReasonMethod,
			Err: fmt.Errorf("method %s, want CONNECT", req.method)},
			hpack.HeaderField{Name: "allow", Value: http.MethodConnect})
		return
	}
	dst, err := parseAuthority(req.authority)
	if err != nil {
		h.refuse(st, Refusal{Status: http.StatusBadRequest, Reason: ReasonAuthority, Err: err})
		return
	}
	if !h.s.own[dst.Addr()] {
		h.refuse(st, Refusal{Destination: dst, Status: http.StatusForbidden, Reason: ReasonMisdirected,
			Err: fmt.Errorf("%v is not an address of this pod", dst.Addr())})
		return
	}
	// The tunnel's own context: Authorize may keep it, and end the tunnel
	// later through Revoke (a policy that no longer allows it).
	ctx, revoke := context.WithCancelCause(h.s.ctx)
	defer revoke(nil)
	ctx = context.WithValue(ctx, revokeKey{}, revoke)
	ctx = context.WithValue(ctx, peerKey{}, h.peer)
	if authorize := h.s.cfg.Authorize; authorize != nil {
		if err := authorize(ctx, h.peer, dst); err != nil {
			h.refuse(st, Refusal{Destination: dst, Status: http.StatusForbidden, Reason: ReasonDenied, Err: err})
			return
		}
	}
	if st.isReset() {
		return // the client gave up: no onward connection
	}
	dctx, cancel := context.WithTimeout(ctx, h.s.cfg.DialTimeout)
	app, err := h.s.cfg.Dial(dctx, "tcp", dst.String())
	cancel()
	if err != nil {
		h.refuse(st, Refusal{Destination: dst, Status: http.StatusServiceUnavailable, Reason: ReasonDial,
			Err: fmt.Errorf("dialing application: %w", err)})
		return
	}
	defer app.Close()

	conn := Connection{Peer: h.peer, Destination: dst}
	start := time.Now()
	h.s.obs.Opened(conn)
	var tr Traffic
	if err = st.respond(http.StatusOK, ""); err == nil {
		tr.Sent, tr.Received, err = st.pipe(ctx, app, nil)
	}
	if cause := context.Cause(ctx); errors.Is(cause, ErrRevoked) {
		err = cause
	}
	tr.Duration = time.Since(start)
	h.s.obs.Closed(conn, tr)
	if h.s.log.Enabled(context.Background(), slog.LevelInfo) { // ztunnel keeps it off: its access log says it
		h.s.log.Info("connection closed",
			"src_identity", h.peer.Identity.String(), "src", h.peer.Addr, "dst", dst,
			"received", tr.Received, "sent", tr.Sent, "duration", tr.Duration, "error", err)
	}
}

// refuse answers a CONNECT with an error status and reports it. The body
// names only the reason: details stay in our log.
func (h *inbound) refuse(st *stream, r Refusal, extra ...hpack.HeaderField) {
	r.Peer = h.peer
	h.s.obs.Refused(r)
	h.s.log.Info("connect refused", "reason", r.Reason, "status", r.Status,
		"src_identity", r.Peer.Identity.String(), "src", r.Peer.Addr, "dst", r.Destination, "error", r.Err)
	_ = st.respond(r.Status, "hbone: "+string(r.Reason)+"\n", extra...)
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

type peerKey struct{}

// PeerFrom returns the client of the tunnel whose context (the one
// ServerConfig.Authorize and ServerConfig.Dial receive) is ctx.
func PeerFrom(ctx context.Context) (Peer, bool) {
	p, ok := ctx.Value(peerKey{}).(Peer)
	return p, ok
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
