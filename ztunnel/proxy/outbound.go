package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	workloadv1 "github.com/cairnmesh/cairn/apis/workload/v1"
	"github.com/cairnmesh/cairn/ztunnel/hbone"
	"github.com/cairnmesh/cairn/ztunnel/route"
	"github.com/cairnmesh/cairn/ztunnel/telemetry"
)

// outbound carries one connection the pod's app opened.
func (p *Proxy) outbound(conn net.Conn) {
	ctx := p.ctx
	dst, err := p.pod.OriginalDst(conn)
	if err != nil {
		p.log.Warn("outbound connection without an original destination", "err", err)
		reset(conn)
		return
	}
	rec := &telemetry.Conn{
		Reporter: telemetry.Source,
		Source:   peerOf(nil, p.pod.Identity.String(), conn.RemoteAddr().String()),
		Dest:     telemetry.Peer{Address: dst.String()},
		Security: telemetry.Unknown,
		Start:    time.Now(),
	}
	src, snap := p.workload(ctx, p.pod.IPs[0])
	if src == nil {
		rec.Err, rec.Flags = fmt.Errorf("no configuration for this pod's workload after %v", p.cfg.ConfigWait), "NC"
		if !snap.Synced() {
			rec.Err = fmt.Errorf("workload discovery not synced after %v", p.cfg.ConfigWait)
		}
		p.cfg.Telemetry.Close(rec)
		reset(conn)
		return
	}
	rec.Source = peerOf(src, p.pod.Identity.String(), conn.RemoteAddr().String())
	d := route.Decide(src, dst, snap, nil)
	if d.Service != nil {
		rec.Service, rec.ServiceNamespace, rec.ServiceName = d.Service.GetHostname(), d.Service.GetNamespace(), d.Service.GetName()
	}
	if d.Workload != nil {
		rec.Dest = peerOf(d.Workload, d.Identity.String(), d.Dial.String())
		if d.Identity.IsZero() {
			rec.Dest.Principal = ""
		}
	}

	var upstream net.Conn
	via := ""
	switch d.Kind {
	case route.HBONE:
		via, rec.Security = "hbone", telemetry.MutualTLS
		upstream, err = p.pool.DialFor(ctx, hbone.Key{Source: p.pod.Identity, Destination: d.Identity, Address: d.Dial}, d.Authority, conn)
	case route.Passthrough, route.Direct:
		via, rec.Security = "passthrough", telemetry.None
		if d.Kind == route.Direct {
			via = "direct"
		}
		upstream, err = p.pod.Dial(ctx, "tcp", d.Dial.String())
	default:
		err = errors.New(d.Reason)
		rec.Flags = "NR"
	}
	if err != nil {
		if rec.Flags == "" {
			rec.Flags = flagsOf(err)
		}
		rec.Err = err
		p.cfg.Telemetry.Close(rec)
		p.log.Debug("outbound connection refused", "dst", dst, "decision", d.Kind.String(), "reason", d.Reason, "err", err)
		reset(conn)
		return
	}
	p.cfg.Telemetry.Open(rec)
	done := p.conns.add(ConnInfo{Pod: p.pod.Namespace + "/" + p.pod.Name, Direction: "outbound",
		Source: conn.RemoteAddr().String(), Destination: dst.String(), Identity: rec.Dest.Principal, Via: via})
	defer done()
	var sent, received int64
	if t, ok := upstream.(*hbone.Tunnel); ok {
		sent, received, err = t.Pipe(ctx, conn)
		_ = t.Close()
		err = quiet(err)
	} else {
		sent, received, err = splice(ctx, conn, upstream, p.cfg.WriteTimeout)
	}
	rec.Sent, rec.Received, rec.Err = uint64(sent), uint64(received), err
	p.cfg.Telemetry.Close(rec)
}

// flagsOf names a failure the way Envoy's response flags do.
func flagsOf(err error) string {
	var se *hbone.StatusError
	switch {
	case errors.As(err, &se) && se.Code == 403:
		return "DENY"
	case errors.As(err, &se):
		return "UF"
	case errors.Is(err, context.DeadlineExceeded):
		return "UT"
	default:
		return "UF"
	}
}

// peerOf describes a workload for telemetry.
func peerOf(w *workloadv1.Workload, principal, addr string) telemetry.Peer {
	if w == nil {
		return telemetry.Peer{Principal: principal, Address: addr}
	}
	return telemetry.Peer{
		Workload:  w.GetWorkloadName(),
		Namespace: w.GetNamespace(),
		Principal: principal,
		App:       w.GetCanonicalName(),
		Version:   w.GetCanonicalRevision(),
		Cluster:   w.GetClusterId(),
		Address:   addr,
	}
}

// reset closes a connection with a TCP reset, so the client sees a
// refusal rather than an empty answer.
func reset(conn net.Conn) {
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = conn.Close()
}

func addrPortOf(a net.Addr) netip.AddrPort {
	if tcp, ok := a.(*net.TCPAddr); ok {
		return tcp.AddrPort()
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}
