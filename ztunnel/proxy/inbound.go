package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

	workloadv1 "github.com/cairnmesh/cairn/apis/workload/v1"
	"github.com/cairnmesh/cairn/internal/spiffe"
	"github.com/cairnmesh/cairn/ztunnel/authz"
	"github.com/cairnmesh/cairn/ztunnel/hbone"
	"github.com/cairnmesh/cairn/ztunnel/state"
	"github.com/cairnmesh/cairn/ztunnel/telemetry"
)

// errDenied is an authorization refusal.
var errDenied = errors.New("denied by authorization policy")

// errRevoked ends a connection that a changed policy no longer allows.
var errRevoked = errors.New("closed: the destination's policy no longer allows it")

// authorize applies the destination workload's L4 policies to a
// connection. A workload that lists policies this ztunnel has not
// received yet waits for them (bounded), then fails closed.
func (p *Proxy) authorize(ctx context.Context, c authz.Conn) error {
	dst, snap := p.workload(ctx, c.DestinationIP)
	switch {
	case !snap.Synced():
		return fmt.Errorf("%w: workload discovery has not delivered every policy yet", errDenied)
	case dst == nil:
		return fmt.Errorf("%w: no configuration for destination %s yet", errDenied, c.DestinationIP)
	}
	policies, missing := snap.Policies(dst)
	if len(missing) > 0 {
		policies, missing = p.waitPolicies(ctx, dst, snap)
		if len(missing) > 0 {
			return fmt.Errorf("%w: policies %v of %s not received yet", errDenied, missing, dst.GetName())
		}
	}
	if ok, reason := authz.Evaluate(policies, c); !ok {
		return fmt.Errorf("%w: %s", errDenied, reason)
	}
	return nil
}

func (p *Proxy) waitPolicies(ctx context.Context, w *workloadv1.Workload, snap *state.Snapshot) ([]*workloadv1.Authorization, []string) {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.ConfigWait)
	defer cancel()
	for {
		select {
		case <-snap.Replaced():
		case <-ctx.Done():
			return snap.Policies(w)
		}
		snap = p.cfg.Store.Snapshot()
		if cur := snap.Workload(w.GetUid()); cur != nil {
			w = cur
		}
		if policies, missing := snap.Policies(w); len(missing) == 0 {
			return policies, nil
		}
	}
}

// authorizeHBONE is the HBONE server's authorization hook.
// An allowed tunnel stays under guard (re-checked on every configuration
// change) for as long as its context lives.
func (p *Proxy) authorizeHBONE(ctx context.Context, peer hbone.Peer, dst netip.AddrPort) error {
	c := authz.Conn{
		SourceIdentity: peer.Identity, SourceIP: peer.Addr.Addr(),
		DestinationIP: dst.Addr(), DestinationPort: dst.Port(), Mesh: true,
	}
	if err := p.authorize(ctx, c); err != nil {
		return err
	}
	remove := p.guard.add(c, func() { hbone.Revoke(ctx) })
	context.AfterFunc(ctx, remove)
	return nil
}

// inboundPlain carries a plaintext connection from outside the mesh to the
// app, unless a policy denies it.
func (p *Proxy) inboundPlain(conn net.Conn) {
	ctx := p.ctx
	dst, err := p.pod.OriginalDst(conn)
	if err != nil {
		p.log.Warn("inbound connection without an original destination", "err", err)
		reset(conn)
		return
	}
	src := addrPortOf(conn.RemoteAddr())
	rec := p.inboundRecord(src, spiffe.Identity{}, dst)
	rec.Security = telemetry.None
	ac := authz.Conn{SourceIP: src.Addr(), DestinationIP: dst.Addr(), DestinationPort: dst.Port()}
	if err := p.authorize(ctx, ac); err != nil {
		rec.Err, rec.Flags = err, "DENY"
		p.cfg.Telemetry.Close(rec)
		reset(conn)
		return
	}
	// From the client's address, as for a tunnel. The client's own
	// connection, redirected to 15006, left conntrack holding its tuple to
	// this app port; ztunnel's side of its connections is in a conntrack
	// zone of its own (capture.Options.ConntrackZone), so a dial that picks
	// the port of one of the client's connections still gets its own entry.
	upstream, err := p.dialApp(ctx, src.Addr(), dst.String())
	if err != nil {
		rec.Err, rec.Flags = err, "UF"
		p.cfg.Telemetry.Close(rec)
		reset(conn)
		return
	}
	p.cfg.Telemetry.Open(rec)
	done := p.conns.add(ConnInfo{Pod: p.pod.Namespace + "/" + p.pod.Name, Direction: "inbound-plaintext",
		Source: src.String(), Destination: dst.String(), Via: "plaintext"})
	defer done()
	ctx, revoke := context.WithCancelCause(ctx)
	defer revoke(nil)
	defer p.guard.add(ac, func() { revoke(errRevoked) })()
	sent, received, err := splice(ctx, conn, upstream, p.cfg.WriteTimeout)
	if errors.Is(context.Cause(ctx), errRevoked) {
		err, rec.Flags = errRevoked, "DENY"
	}
	rec.Sent, rec.Received, rec.Err = uint64(sent), uint64(received), err
	p.cfg.Telemetry.Close(rec)
}

// inboundRecord describes an inbound connection for telemetry, from what
// the snapshot knows of both ends.
func (p *Proxy) inboundRecord(src netip.AddrPort, peer spiffe.Identity, dst netip.AddrPort) *telemetry.Conn {
	snap := p.cfg.Store.Snapshot()
	principal := ""
	if !peer.IsZero() {
		principal = peer.String()
	}
	return &telemetry.Conn{
		Reporter: telemetry.Destination,
		Source:   peerOf(snap.WorkloadByAddress(p.cfg.Network, src.Addr()), principal, src.String()),
		Dest:     peerOf(snap.WorkloadByAddress(p.cfg.Network, dst.Addr()), p.pod.Identity.String(), dst.String()),
		Start:    time.Now(),
	}
}

// inboundObserver turns the HBONE server's events into telemetry.
type inboundObserver struct{ p *Proxy }

func (o *inboundObserver) record(c hbone.Connection) *telemetry.Conn {
	rec := o.p.inboundRecord(c.Peer.Addr, c.Peer.Identity, c.Destination)
	rec.Security = telemetry.MutualTLS
	return rec
}

func (o *inboundObserver) Opened(c hbone.Connection) {
	o.p.cfg.Telemetry.Open(o.record(c))
}

func (o *inboundObserver) Closed(c hbone.Connection, t hbone.Traffic) {
	rec := o.record(c)
	rec.Start = time.Now().Add(-t.Duration)
	// Sent is towards the destination (the app): what the server received.
	rec.Sent, rec.Received = uint64(max(t.Received, 0)), uint64(max(t.Sent, 0))
	o.p.cfg.Telemetry.Close(rec)
}

func (o *inboundObserver) Refused(r hbone.Refusal) {
	rec := o.record(hbone.Connection{Peer: r.Peer, Destination: r.Destination})
	rec.Err = r.Err
	if rec.Err == nil {
		rec.Err = fmt.Errorf("refused: %s (%d)", r.Reason, r.Status)
	}
	rec.Flags = "UF"
	if r.Reason == hbone.ReasonDenied {
		rec.Flags = "DENY"
	}
	o.p.cfg.Telemetry.Close(rec)
}

// dialApp connects to the app at address for a connection from src (a
// tunnel's peer or a plaintext client): from src itself when the pod can
// route the app's replies back to ztunnel, so that the app sees who
// called, and from the pod's own address otherwise (or when src is the
// pod's own, or of the other family). The client's own connection cannot
// be taken for this one in the pod's conntrack, even on the same port:
// ztunnel's packets are in a zone of their own in the original direction
// (capture.Options.ConntrackZone).
func (p *Proxy) dialApp(ctx context.Context, src netip.Addr, address string) (net.Conn, error) {
	src = src.Unmap()
	if p.pod.DialFrom != nil && src.IsValid() && !slices.Contains(p.pod.IPs, src) {
		if dst, err := netip.ParseAddrPort(address); err == nil && dst.Addr().Unmap().Is4() == src.Is4() {
			return p.pod.DialFrom(ctx, src, "tcp", address)
		}
	}
	return p.pod.Dial(ctx, "tcp", address)
}

// dialForTunnel is the HBONE server's dial to the app, from the tunnel's
// client.
func (p *Proxy) dialForTunnel(ctx context.Context, _, address string) (net.Conn, error) {
	peer, _ := hbone.PeerFrom(ctx)
	return p.dialApp(ctx, peer.Addr.Addr(), address)
}
