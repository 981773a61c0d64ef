package route

import (
	"fmt"
	"math/rand/v2"
	"net/netip"

	workloadv1 "github.com/cairnmesh/cairn/apis/workload/v1"
	"github.com/cairnmesh/cairn/internal/spiffe"
	"github.com/cairnmesh/cairn/ztunnel/state"
)

// Decide returns what ztunnel does with a connection that the pod of src
// opened to dst (its original destination), following design section 5:
//
//   - dst is a Service VIP: a Service port it lacks fails; a Service with a
//     waypoint goes to the waypoint over HBONE with :authority dst; else a
//     HEALTHY endpoint that serves the port is picked (Fail if there is
//     none: the VIP is not a real address, so passing it through would only
//     hide the problem), and the connection goes to it as below, with the
//     Service port mapped to the endpoint's target port.
//   - dst is a workload's IP: with a waypoint, to the waypoint over HBONE
//     with :authority dst; in the mesh (tunnel HBONE), over HBONE to its
//     port 15008 with :authority dst; else Direct, plain TCP to dst. A
//     workload addressed directly is reached even when UNHEALTHY.
//   - anything else is outside the mesh: Passthrough to dst.
//
// Addresses are looked up in src's network. Only endpoints of that network
// are picked: reaching another network needs an east-west gateway, which
// Cairn does not have yet. A waypoint that cannot be resolved fails the
// connection rather than bypassing the waypoint, which may enforce policy.
//
// pick chooses among the candidate endpoints; nil means uniformly at
// random. An index out of range is taken modulo the number of candidates.
func Decide(src *workloadv1.Workload, dst netip.AddrPort, snap *state.Snapshot, pick Picker) Decision {
	if src == nil || snap == nil {
		return failf("the source pod's workload is not known (yet)")
	}
	if !dst.IsValid() || dst.Port() == 0 {
		return failf("original destination %v is not an address and port", dst)
	}
	if pick == nil {
		pick = rand.IntN
	}
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	d := decider{snap: snap, pick: pick, network: src.GetNetwork(), want4: dst.Addr().Is4()}

	if svc := snap.ServiceByAddress(d.network, dst.Addr()); svc != nil {
		dec := d.toService(svc, dst)
		dec.Service = svc
		return dec
	}
	if w := snap.WorkloadByAddress(d.network, dst.Addr()); w != nil {
		return d.toWorkload(w, dst)
	}
	return Decision{
		Kind:   Passthrough,
		Dial:   dst,
		Reason: fmt.Sprintf("%v is no Service or workload of the mesh: passthrough", dst),
	}
}

// decider carries what every step of one decision needs.
type decider struct {
	snap    *state.Snapshot
	pick    Picker
	network string
	// want4 prefers IPv4 addresses of a dual-stack workload, because the
	// client addressed an IPv4 destination.
	want4 bool
}

func failf(format string, args ...any) Decision {
	return Decision{Kind: Fail, Reason: fmt.Sprintf(format, args...)}
}

func serviceName(s *workloadv1.Service) string { return s.GetNamespace() + "/" + s.GetHostname() }

func (d decider) toService(svc *workloadv1.Service, dst netip.AddrPort) Decision {
	name := serviceName(svc)
	var port *workloadv1.Port
	for _, p := range svc.GetPorts() {
		if p.GetServicePort() == uint32(dst.Port()) {
			port = p
			break
		}
	}
	if port == nil {
		return failf("Service %s has no TCP port %d", name, dst.Port())
	}

	if gw := svc.GetWaypoint(); gw != nil {
		return d.viaWaypoint(gw, dst, "Service "+name)
	}

	type candidate struct {
		w      *workloadv1.Workload
		ip     netip.Addr
		target uint16
	}
	var candidates []candidate
	for _, w := range d.snap.Endpoints(name) {
		if w.GetStatus() != workloadv1.WorkloadStatus_HEALTHY || w.GetNetwork() != d.network {
			continue
		}
		target, ok := targetPort(w.GetServices()[name], port)
		if !ok {
			continue
		}
		ip, ok := d.address(w.GetAddresses())
		if !ok {
			continue
		}
		candidates = append(candidates, candidate{w, ip, target})
	}
	if len(candidates) == 0 {
		return failf("Service %s port %d has no healthy endpoint", name, dst.Port())
	}
	c := candidates[d.choose(len(candidates))]
	return d.toEndpoint(c.w, netip.AddrPortFrom(c.ip, c.target), fmt.Sprintf("Service %s port %d", name, dst.Port()))
}

func (d decider) toWorkload(w *workloadv1.Workload, dst netip.AddrPort) Decision {
	if gw := w.GetWaypoint(); gw != nil {
		return d.viaWaypoint(gw, dst, "workload "+w.GetUid())
	}
	return d.toEndpoint(w, dst, "workload "+w.GetUid())
}

// toEndpoint sends the connection to w at addr (its IP and target port).
// what names how the client addressed it, for the reason.
func (d decider) toEndpoint(w *workloadv1.Workload, addr netip.AddrPort, what string) Decision {
	if w.GetTunnelProtocol() != workloadv1.TunnelProtocol_HBONE {
		return Decision{
			Kind:     Direct,
			Dial:     addr,
			Workload: w,
			Reason:   fmt.Sprintf("%s: %s at %v is not in the mesh: plain TCP", what, w.GetUid(), addr),
		}
	}
	id, err := identity(w)
	if err != nil {
		return failf("%s: %v", what, err)
	}
	return Decision{
		Kind:      HBONE,
		Dial:      netip.AddrPortFrom(addr.Addr(), DefaultHBONEPort),
		Authority: addr,
		Identity:  id,
		Workload:  w,
		Reason:    fmt.Sprintf("%s: HBONE to %s (%s) for %v", what, w.GetUid(), id, addr),
	}
}

// viaWaypoint sends the connection to the waypoint gw, asking it for
// authority, the address the client used.
func (d decider) viaWaypoint(gw *workloadv1.GatewayAddress, authority netip.AddrPort, what string) Decision {
	wp, ip, err := d.resolveWaypoint(gw)
	if err != nil {
		return failf("%s has a waypoint, but %v", what, err)
	}
	id, err := identity(wp)
	if err != nil {
		return failf("%s: waypoint: %v", what, err)
	}
	port := uint16(gw.GetHboneMtlsPort())
	if port == 0 {
		port = DefaultHBONEPort
	}
	return Decision{
		Kind:      HBONE,
		Dial:      netip.AddrPortFrom(ip, port),
		Authority: authority,
		Identity:  id,
		Workload:  wp,
		Waypoint:  true,
		Reason:    fmt.Sprintf("%s: through waypoint %s (%s) for %v", what, wp.GetUid(), id, authority),
	}
}

// resolveWaypoint finds the waypoint workload to dial and its IP. A
// hostname names the waypoint's Service; an address is the Service's VIP
// (how Istio announces waypoints) or a waypoint pod's own IP.
func (d decider) resolveWaypoint(gw *workloadv1.GatewayAddress) (*workloadv1.Workload, netip.Addr, error) {
	switch {
	case gw.GetHostname() != nil:
		name := gw.GetHostname().GetNamespace() + "/" + gw.GetHostname().GetHostname()
		svc := d.snap.Service(name)
		if svc == nil {
			return nil, netip.Addr{}, fmt.Errorf("its Service %s is not known", name)
		}
		return d.pickWaypoint(svc, d.network)
	case gw.GetAddress() != nil:
		network := gw.GetAddress().GetNetwork()
		ip, ok := netip.AddrFromSlice(gw.GetAddress().GetAddress())
		if !ok {
			return nil, netip.Addr{}, fmt.Errorf("its address is not an IP")
		}
		ip = ip.Unmap()
		if svc := d.snap.ServiceByAddress(network, ip); svc != nil {
			return d.pickWaypoint(svc, network)
		}
		if w := d.snap.WorkloadByAddress(network, ip); w != nil {
			return w, ip, nil
		}
		return nil, netip.Addr{}, fmt.Errorf("its address %v is no known Service or workload", ip)
	}
	return nil, netip.Addr{}, fmt.Errorf("it names neither a hostname nor an address")
}

// pickWaypoint picks a healthy pod of the waypoint Service svc in network.
// Any of its ports will do: the connection goes to the HBONE port.
func (d decider) pickWaypoint(svc *workloadv1.Service, network string) (*workloadv1.Workload, netip.Addr, error) {
	type candidate struct {
		w  *workloadv1.Workload
		ip netip.Addr
	}
	var candidates []candidate
	for _, w := range d.snap.Endpoints(serviceName(svc)) {
		if w.GetStatus() != workloadv1.WorkloadStatus_HEALTHY || w.GetNetwork() != network {
			continue
		}
		if ip, ok := d.address(w.GetAddresses()); ok {
			candidates = append(candidates, candidate{w, ip})
		}
	}
	if len(candidates) == 0 {
		return nil, netip.Addr{}, fmt.Errorf("its Service %s has no healthy pod", serviceName(svc))
	}
	c := candidates[d.choose(len(candidates))]
	return c.w, c.ip, nil
}

func (d decider) choose(n int) int {
	i := d.pick(n) % n
	if i < 0 {
		i += n
	}
	return i
}

// address returns the first address of the family the client used, else
// the first address at all (a single-stack pod behind a dual-stack
// Service).
func (d decider) address(addrs [][]byte) (netip.Addr, bool) {
	var first netip.Addr
	for _, b := range addrs {
		ip, ok := netip.AddrFromSlice(b)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		if ip.Is4() == d.want4 {
			return ip, true
		}
		if !first.IsValid() {
			first = ip
		}
	}
	return first, first.IsValid()
}

// targetPort maps the Service port to the port on the endpoint, from the
// endpoint's own PortList (which resolved any named targetPort for it). An
// endpoint whose list lacks the port does not serve it. A target of 0
// falls back to the Service's number, then to the Service port, as an
// unset targetPort does in Kubernetes.
func targetPort(pl *workloadv1.PortList, port *workloadv1.Port) (uint16, bool) {
	for _, p := range pl.GetPorts() {
		if p.GetServicePort() != port.GetServicePort() {
			continue
		}
		switch {
		case p.GetTargetPort() != 0:
			return uint16(p.GetTargetPort()), true
		case port.GetTargetPort() != 0:
			return uint16(port.GetTargetPort()), true
		}
		return uint16(port.GetServicePort()), true
	}
	return 0, false
}

// identity is the SPIFFE identity that w's certificate carries. A workload
// in the mesh without one cannot be verified, so the caller fails.
func identity(w *workloadv1.Workload) (spiffe.Identity, error) {
	id, err := spiffe.New(w.GetTrustDomain(), w.GetNamespace(), w.GetServiceAccount())
	if err != nil {
		return spiffe.Identity{}, fmt.Errorf("workload %s has no valid identity: %w", w.GetUid(), err)
	}
	return id, nil
}
