package state

import (
	"fmt"
	"net/netip"

	workloadv1 "github.com/cairnmesh/cairn/apis/workload/v1"
)

// The checks below reject what would corrupt the indexes (a resource whose
// content does not match its name, an address that is no IP) or what the
// data path could only guess at (an enum value this build does not know, a
// policy pattern with no type). Rejecting keeps the previous value, which
// is what delta xDS expects of a NACK. They do not second-guess values that
// are merely odd, such as a workload without a node.

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, args...)...)
}

// addressName is the xDS name of an Address, as istiod-lite names it.
func addressName(a *workloadv1.Address) string {
	switch {
	case a.GetWorkload() != nil:
		return a.GetWorkload().GetUid()
	case a.GetService() != nil:
		s := a.GetService()
		return s.GetNamespace() + "/" + s.GetHostname()
	}
	return ""
}

func authorizationName(a *workloadv1.Authorization) string {
	return a.GetNamespace() + "/" + a.GetName()
}

func validateAddress(name string, a *workloadv1.Address) error {
	switch {
	case a.GetWorkload() != nil:
		if err := validateWorkload(a.GetWorkload()); err != nil {
			return err
		}
	case a.GetService() != nil:
		if err := validateService(a.GetService()); err != nil {
			return err
		}
	default:
		return invalid("the Address is neither a workload nor a service")
	}
	if got := addressName(a); got != name {
		return invalid("the resource is named %q but its content names %q", name, got)
	}
	return nil
}

func validateWorkload(w *workloadv1.Workload) error {
	if w.GetUid() == "" {
		return invalid("workload has no uid")
	}
	if w.GetNamespace() == "" {
		return invalid("workload has no namespace")
	}
	for i, b := range w.GetAddresses() {
		if _, err := ipFromBytes(b); err != nil {
			return invalid("address %d: %w", i, err)
		}
	}
	if _, ok := workloadv1.TunnelProtocol_name[int32(w.GetTunnelProtocol())]; !ok {
		return invalid("unknown tunnel_protocol %d", w.GetTunnelProtocol())
	}
	if _, ok := workloadv1.WorkloadStatus_name[int32(w.GetStatus())]; !ok {
		return invalid("unknown status %d", w.GetStatus())
	}
	if err := validateGateway(w.GetWaypoint()); err != nil {
		return invalid("waypoint: %w", err)
	}
	for svc, pl := range w.GetServices() {
		for _, p := range pl.GetPorts() {
			if err := validatePort(p); err != nil {
				return invalid("services[%q]: %w", svc, err)
			}
		}
	}
	return nil
}

func validateService(s *workloadv1.Service) error {
	if s.GetNamespace() == "" || s.GetHostname() == "" {
		return invalid("service needs a namespace and a hostname")
	}
	for i, a := range s.GetAddresses() {
		if _, err := ipFromBytes(a.GetAddress()); err != nil {
			return invalid("address %d: %w", i, err)
		}
	}
	for _, p := range s.GetPorts() {
		if err := validatePort(p); err != nil {
			return invalid("%w", err)
		}
	}
	if err := validateGateway(s.GetWaypoint()); err != nil {
		return invalid("waypoint: %w", err)
	}
	return nil
}

func validatePort(p *workloadv1.Port) error {
	if p.GetServicePort() == 0 || p.GetServicePort() > 65535 || p.GetTargetPort() > 65535 {
		return fmt.Errorf("port %d -> %d is out of range", p.GetServicePort(), p.GetTargetPort())
	}
	return nil
}

// validateGateway accepts nil: no waypoint.
func validateGateway(g *workloadv1.GatewayAddress) error {
	if g == nil {
		return nil
	}
	switch {
	case g.GetHostname() != nil:
		if g.GetHostname().GetNamespace() == "" || g.GetHostname().GetHostname() == "" {
			return fmt.Errorf("hostname needs a namespace and a hostname")
		}
	case g.GetAddress() != nil:
		if _, err := ipFromBytes(g.GetAddress().GetAddress()); err != nil {
			return err
		}
	default:
		return fmt.Errorf("neither a hostname nor an address")
	}
	if g.GetHboneMtlsPort() > 65535 {
		return fmt.Errorf("hbone_mtls_port %d is out of range", g.GetHboneMtlsPort())
	}
	return nil
}

func validateAuthorization(name string, a *workloadv1.Authorization) error {
	if a.GetName() == "" || a.GetNamespace() == "" {
		return invalid("authorization needs a name and a namespace")
	}
	if got := authorizationName(a); got != name {
		return invalid("the resource is named %q but its content names %q", name, got)
	}
	if _, ok := workloadv1.Scope_name[int32(a.GetScope())]; !ok {
		return invalid("unknown scope %d", a.GetScope())
	}
	if _, ok := workloadv1.Action_name[int32(a.GetAction())]; !ok {
		return invalid("unknown action %d", a.GetAction())
	}
	for i, r := range a.GetRules() {
		for j, c := range r.GetClauses() {
			if len(c.GetMatches()) == 0 {
				// Its meaning is unclear (Istio's ztunnel takes it as
				// matching everything, the API's "any of" as nothing), and
				// the control plane never sends one.
				return invalid("rule %d clause %d has no matches", i, j)
			}
			for k, m := range c.GetMatches() {
				if err := validateMatch(m); err != nil {
					return invalid("rule %d clause %d match %d: %w", i, j, k, err)
				}
			}
		}
	}
	return nil
}

func validateMatch(m *workloadv1.Match) error {
	for _, list := range [][]*workloadv1.StringMatch{m.GetNamespaces(), m.GetNotNamespaces(), m.GetPrincipals(), m.GetNotPrincipals()} {
		for _, s := range list {
			if s.GetMatchType() == nil {
				return fmt.Errorf("string match without a pattern")
			}
		}
	}
	for _, list := range [][]*workloadv1.CIDR{m.GetSourceIps(), m.GetNotSourceIps(), m.GetDestinationIps(), m.GetNotDestinationIps()} {
		for _, c := range list {
			if _, err := prefixFromCIDR(c); err != nil {
				return err
			}
		}
	}
	for _, list := range [][]uint32{m.GetDestinationPorts(), m.GetNotDestinationPorts()} {
		for _, p := range list {
			if p == 0 || p > 65535 {
				return fmt.Errorf("port %d is out of range", p)
			}
		}
	}
	return nil
}

// ipFromBytes reads a 4- or 16-byte address. IPv4-mapped IPv6 addresses
// become IPv4, so that a lookup finds them whichever way they were written.
func ipFromBytes(b []byte) (netip.Addr, error) {
	if len(b) != 4 && len(b) != 16 {
		return netip.Addr{}, fmt.Errorf("address is %d bytes, want 4 or 16", len(b))
	}
	ip, _ := netip.AddrFromSlice(b)
	return ip.Unmap(), nil
}

// prefixFromCIDR reads a CIDR of apis/workload/v1. The address must be 4 or
// 16 bytes and the length fit it; bits beyond the length are cleared.
func prefixFromCIDR(c *workloadv1.CIDR) (netip.Prefix, error) {
	b := c.GetAddress()
	if len(b) != 4 && len(b) != 16 {
		return netip.Prefix{}, fmt.Errorf("CIDR address is %d bytes, want 4 or 16", len(b))
	}
	ip, _ := netip.AddrFromSlice(b)
	if c.GetLength() > uint32(ip.BitLen()) {
		return netip.Prefix{}, fmt.Errorf("CIDR length %d exceeds %d bits", c.GetLength(), ip.BitLen())
	}
	return netip.PrefixFrom(ip, int(c.GetLength())).Masked(), nil
}
