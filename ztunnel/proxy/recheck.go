package proxy

import (
	"sync"

	"github.com/cairnmesh/cairn/ztunnel/authz"
	"github.com/cairnmesh/cairn/ztunnel/state"
)

// guard holds the open inbound connections with what their authorization
// was decided on, so that a configuration change that denies them closes
// them (a policy applies to connections, not only to their first packet).
type guard struct {
	mu    sync.Mutex
	next  uint64
	conns map[uint64]guarded
}

type guarded struct {
	conn   authz.Conn
	revoke func()
}

func (g *guard) add(c authz.Conn, revoke func()) (remove func()) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.conns == nil {
		g.conns = make(map[uint64]guarded)
	}
	g.next++
	id := g.next
	g.conns[id] = guarded{conn: c, revoke: revoke}
	return func() {
		g.mu.Lock()
		delete(g.conns, id)
		g.mu.Unlock()
	}
}

func (g *guard) all() []guarded {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make([]guarded, 0, len(g.conns))
	for _, c := range g.conns {
		out = append(out, c)
	}
	return out
}

// recheck re-authorizes the open inbound connections on every new
// snapshot until the proxy closes.
func (p *Proxy) recheck() {
	snap := p.cfg.Store.Snapshot()
	for {
		select {
		case <-p.ctx.Done():
			return
		case <-snap.Replaced():
		}
		snap = p.cfg.Store.Snapshot()
		for _, g := range p.guard.all() {
			if allowed, reason := p.allowedNow(snap, g.conn); !allowed {
				p.log.Info("closing a connection its destination's policy no longer allows",
					"src", g.conn.SourceIP, "src_identity", g.conn.SourceIdentity.String(),
					"dst", g.conn.DestinationIP, "port", g.conn.DestinationPort, "reason", reason)
				g.revoke()
			}
		}
	}
}

// allowedNow decides from one snapshot, without waiting. Policies not
// received yet do not close a connection that was allowed: they may be on
// their way.
func (p *Proxy) allowedNow(snap *state.Snapshot, c authz.Conn) (bool, string) {
	dst := snap.WorkloadByAddress(p.cfg.Network, c.DestinationIP)
	if dst == nil {
		return true, ""
	}
	policies, missing := snap.Policies(dst)
	if len(missing) > 0 {
		return true, ""
	}
	return authz.Evaluate(policies, c)
}
