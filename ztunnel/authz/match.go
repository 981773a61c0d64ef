package authz

import (
	"net/netip"
	"slices"
	"strings"

	workloadv1 "github.com/cairnmesh/cairn/apis/workload/v1"
)

func matches(pol *workloadv1.Authorization, c Conn, p peer) bool {
	for _, r := range pol.GetRules() {
		if ruleMatches(r, c, p) {
			return true
		}
	}
	return false
}

func ruleMatches(r *workloadv1.Rule, c Conn, p peer) bool {
	for _, cl := range r.GetClauses() {
		if !slices.ContainsFunc(cl.GetMatches(), func(m *workloadv1.Match) bool { return matchHolds(m, c, p) }) {
			return false
		}
	}
	return true
}

// matchHolds checks every field of m that is set. A positive list holds if
// any entry matches; a not_ list holds if none does.
func matchHolds(m *workloadv1.Match, c Conn, p peer) bool {
	return field(m.GetPrincipals(), m.GetNotPrincipals(), func(s *workloadv1.StringMatch) bool {
		return p.authenticated && stringMatches(s, p.principal)
	}) && field(m.GetNamespaces(), m.GetNotNamespaces(), func(s *workloadv1.StringMatch) bool {
		return p.authenticated && stringMatches(s, p.namespace)
	}) && field(m.GetServiceAccounts(), m.GetNotServiceAccounts(), func(sa *workloadv1.ServiceAccountMatch) bool {
		return p.authenticated && sa.GetNamespace() == p.namespace && sa.GetServiceAccount() == p.serviceAccount
	}) && field(m.GetSourceIps(), m.GetNotSourceIps(), func(cidr *workloadv1.CIDR) bool {
		return cidrContains(cidr, c.SourceIP)
	}) && field(m.GetDestinationIps(), m.GetNotDestinationIps(), func(cidr *workloadv1.CIDR) bool {
		return cidrContains(cidr, c.DestinationIP)
	}) && field(m.GetDestinationPorts(), m.GetNotDestinationPorts(), func(port uint32) bool {
		return port == uint32(c.DestinationPort)
	})
}

// field is one attribute of a Match: an unset list holds.
func field[T any](positive, negative []T, match func(T) bool) bool {
	if len(positive) > 0 && !slices.ContainsFunc(positive, match) {
		return false
	}
	return !slices.ContainsFunc(negative, match)
}

// stringMatches applies an Istio pattern. Principals come without the
// spiffe:// scheme on both sides: istiod-lite strips it from the policy,
// Conn.peer from the identity.
func stringMatches(s *workloadv1.StringMatch, v string) bool {
	switch t := s.GetMatchType().(type) {
	case *workloadv1.StringMatch_Exact:
		return v == t.Exact
	case *workloadv1.StringMatch_Prefix:
		return strings.HasPrefix(v, t.Prefix)
	case *workloadv1.StringMatch_Suffix:
		return strings.HasSuffix(v, t.Suffix)
	case *workloadv1.StringMatch_Presence:
		return v != ""
	}
	return false // no pattern: matches nothing (state.Store rejects it)
}

// cidrContains reports whether ip is in cidr. A malformed CIDR (which
// state.Store rejects) contains nothing.
func cidrContains(cidr *workloadv1.CIDR, ip netip.Addr) bool {
	base, ok := netip.AddrFromSlice(cidr.GetAddress())
	if !ok || cidr.GetLength() > uint32(base.BitLen()) {
		return false
	}
	if base.Is4In6() && cidr.GetLength() >= 96 {
		// An IPv4 range written in IPv6 form compares as IPv4.
		base = base.Unmap()
		prefix := netip.PrefixFrom(base, int(cidr.GetLength())-96)
		return prefix.Contains(ip.Unmap())
	}
	return netip.PrefixFrom(base, int(cidr.GetLength())).Masked().Contains(ip.Unmap())
}
