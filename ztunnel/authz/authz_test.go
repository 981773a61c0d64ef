package authz

import (
	"net/netip"
	"strings"
	"testing"

	workloadv1 "github.com/cairnmesh/cairn/apis/workload/v1"
	"github.com/cairnmesh/cairn/internal/spiffe"
)

// Builders for the shapes istiod-lite sends.

func allow(name string, rules ...*workloadv1.Rule) *workloadv1.Authorization {
	return &workloadv1.Authorization{Name: name, Namespace: "shop", Action: workloadv1.Action_ALLOW, Rules: rules}
}

func deny(name string, rules ...*workloadv1.Rule) *workloadv1.Authorization {
	return &workloadv1.Authorization{Name: name, Namespace: "shop", Action: workloadv1.Action_DENY, Rules: rules}
}

func rule(clauses ...*workloadv1.Clause) *workloadv1.Rule { return &workloadv1.Rule{Clauses: clauses} }

func anyOf(ms ...*workloadv1.Match) *workloadv1.Clause { return &workloadv1.Clause{Matches: ms} }

// when is a rule of one clause with one match.
func when(m *workloadv1.Match) *workloadv1.Rule { return rule(anyOf(m)) }

func exact(s string) *workloadv1.StringMatch {
	return &workloadv1.StringMatch{MatchType: &workloadv1.StringMatch_Exact{Exact: s}}
}
func prefix(s string) *workloadv1.StringMatch {
	return &workloadv1.StringMatch{MatchType: &workloadv1.StringMatch_Prefix{Prefix: s}}
}
func suffix(s string) *workloadv1.StringMatch {
	return &workloadv1.StringMatch{MatchType: &workloadv1.StringMatch_Suffix{Suffix: s}}
}
func presence() *workloadv1.StringMatch {
	return &workloadv1.StringMatch{MatchType: &workloadv1.StringMatch_Presence{Presence: &workloadv1.Presence{}}}
}
func strs(ms ...*workloadv1.StringMatch) []*workloadv1.StringMatch { return ms }

func cidr(s string) *workloadv1.CIDR {
	p := netip.MustParsePrefix(s)
	return &workloadv1.CIDR{Address: p.Addr().AsSlice(), Length: uint32(p.Bits())}
}

func sa(ns, name string) *workloadv1.ServiceAccountMatch {
	return &workloadv1.ServiceAccountMatch{Namespace: ns, ServiceAccount: name}
}

// strictPA is BuildPeerAuthentication's encoding: DENY plaintext, narrowed
// to ports or widened with exceptions.
func strictPA(ports, exceptPorts []uint32) *workloadv1.Authorization {
	return deny("converted_peer_authentication_default", when(&workloadv1.Match{
		NotPrincipals:       strs(presence()),
		DestinationPorts:    ports,
		NotDestinationPorts: exceptPorts,
	}))
}

func mtls(ns, sa string) Conn {
	return Conn{
		SourceIdentity:  spiffe.Identity{TrustDomain: "cluster.local", Namespace: ns, ServiceAccount: sa},
		SourceIP:        netip.MustParseAddr("10.0.1.5"),
		DestinationIP:   netip.MustParseAddr("10.0.2.7"),
		DestinationPort: 8080,
		Mesh:            true,
	}
}

func plaintext() Conn {
	c := mtls("", "")
	c.SourceIdentity = spiffe.Identity{}
	c.Mesh = false
	return c
}

func (c Conn) port(p uint16) Conn      { c.DestinationPort = p; return c }
func (c Conn) from(ip string) Conn     { c.SourceIP = netip.MustParseAddr(ip); return c }
func (c Conn) to(ip string) Conn       { c.DestinationIP = netip.MustParseAddr(ip); return c }
func (c Conn) withMesh(mesh bool) Conn { c.Mesh = mesh; return c }

func TestEvaluate(t *testing.T) {
	frontend := mtls("shop", "frontend")
	tests := []struct {
		name     string
		policies []*workloadv1.Authorization
		conn     Conn
		allowed  bool
		reason   string // substring
	}{
		// The decision procedure.
		{"no policy: allow", nil, frontend, true, "no ALLOW policy applies"},
		{"nil entries are ignored", []*workloadv1.Authorization{nil}, frontend, true, "no ALLOW policy applies"},
		{"ALLOW without rules allows nothing", []*workloadv1.Authorization{allow("allow-nothing")}, frontend, false, "no ALLOW policy matched (shop/allow-nothing)"},
		{"DENY without rules denies nothing", []*workloadv1.Authorization{deny("deny-nothing")}, frontend, true, "no DENY policy matched"},
		{"DENY with an empty rule denies all", []*workloadv1.Authorization{deny("deny-all", rule())}, frontend, false, "denied by DENY policy shop/deny-all"},
		{"ALLOW with an empty rule allows all", []*workloadv1.Authorization{allow("allow-all", rule())}, plaintext(), true, "allowed by ALLOW policy shop/allow-all"},
		{"DENY wins over a matching ALLOW", []*workloadv1.Authorization{allow("allow-all", rule()), deny("deny-all", rule())}, frontend, false, "shop/deny-all"},
		{"a non-matching DENY leaves the ALLOWs to decide",
			[]*workloadv1.Authorization{deny("no-legacy", when(&workloadv1.Match{Namespaces: strs(exact("legacy"))})), allow("allow-all", rule())},
			frontend, true, "shop/allow-all"},
		{"one of several ALLOWs suffices, and is named",
			[]*workloadv1.Authorization{
				allow("from-admin", when(&workloadv1.Match{Namespaces: strs(exact("admin"))})),
				allow("from-shop", when(&workloadv1.Match{Namespaces: strs(exact("shop"))})),
			}, frontend, true, "allowed by ALLOW policy shop/from-shop"},
		{"no ALLOW matches: all are named",
			[]*workloadv1.Authorization{
				allow("from-admin", when(&workloadv1.Match{Namespaces: strs(exact("admin"))})),
				allow("from-ops", when(&workloadv1.Match{Namespaces: strs(exact("ops"))})),
			}, frontend, false, "no ALLOW policy matched (shop/from-admin, shop/from-ops)"},
		{"unknown action fails closed", []*workloadv1.Authorization{{Name: "future", Namespace: "shop", Action: 7}}, frontend, false, "does not know"},

		// Principals: compared without spiffe://.
		{"principal exact", []*workloadv1.Authorization{allow("p", when(&workloadv1.Match{Principals: strs(exact("cluster.local/ns/shop/sa/frontend"))}))}, frontend, true, "shop/p"},
		{"principal exact, other SA", []*workloadv1.Authorization{allow("p", when(&workloadv1.Match{Principals: strs(exact("cluster.local/ns/shop/sa/backend"))}))}, frontend, false, "no ALLOW"},
		{"principal with scheme never matches (istiod-lite strips it)", []*workloadv1.Authorization{allow("p", when(&workloadv1.Match{Principals: strs(exact("spiffe://cluster.local/ns/shop/sa/frontend"))}))}, frontend, false, "no ALLOW"},
		{"principal prefix", []*workloadv1.Authorization{allow("p", when(&workloadv1.Match{Principals: strs(prefix("cluster.local/ns/shop/"))}))}, frontend, true, ""},
		{"principal suffix", []*workloadv1.Authorization{allow("p", when(&workloadv1.Match{Principals: strs(suffix("/sa/frontend"))}))}, frontend, true, ""},
		{"principal suffix, other SA", []*workloadv1.Authorization{allow("p", when(&workloadv1.Match{Principals: strs(suffix("/sa/admin"))}))}, frontend, false, ""},
		{"principal presence holds for mTLS", []*workloadv1.Authorization{allow("p", when(&workloadv1.Match{Principals: strs(presence())}))}, frontend, true, ""},
		{"principal list: any entry", []*workloadv1.Authorization{allow("p", when(&workloadv1.Match{Principals: strs(exact("x"), suffix("/frontend"))}))}, frontend, true, ""},
		{"not_principals excludes", []*workloadv1.Authorization{deny("d", when(&workloadv1.Match{NotPrincipals: strs(exact("cluster.local/ns/shop/sa/frontend"))}))}, frontend, true, ""},
		{"not_principals denies the others", []*workloadv1.Authorization{deny("d", when(&workloadv1.Match{NotPrincipals: strs(exact("cluster.local/ns/shop/sa/frontend"))}))}, mtls("shop", "backend"), false, "shop/d"},
		{"pattern without type matches nothing", []*workloadv1.Authorization{allow("p", when(&workloadv1.Match{Principals: strs(&workloadv1.StringMatch{})}))}, frontend, false, ""},

		// Namespaces and service accounts come from the identity.
		{"namespace exact", []*workloadv1.Authorization{allow("p", when(&workloadv1.Match{Namespaces: strs(exact("shop"))}))}, frontend, true, ""},
		{"namespace prefix", []*workloadv1.Authorization{allow("p", when(&workloadv1.Match{Namespaces: strs(prefix("sh"))}))}, frontend, true, ""},
		{"namespace other", []*workloadv1.Authorization{allow("p", when(&workloadv1.Match{Namespaces: strs(exact("ops"))}))}, frontend, false, ""},
		{"not_namespaces", []*workloadv1.Authorization{deny("d", when(&workloadv1.Match{NotNamespaces: strs(exact("shop"))}))}, mtls("ops", "x"), false, "shop/d"},
		{"service account", []*workloadv1.Authorization{allow("p", when(&workloadv1.Match{ServiceAccounts: []*workloadv1.ServiceAccountMatch{sa("shop", "frontend")}}))}, frontend, true, ""},
		{"service account of another namespace", []*workloadv1.Authorization{allow("p", when(&workloadv1.Match{ServiceAccounts: []*workloadv1.ServiceAccountMatch{sa("ops", "frontend")}}))}, frontend, false, ""},
		{"not_service_accounts", []*workloadv1.Authorization{deny("d", when(&workloadv1.Match{NotServiceAccounts: []*workloadv1.ServiceAccountMatch{sa("shop", "frontend")}}))}, frontend, true, ""},

		// Plaintext: identity matches never hold, their negations always do.
		{"plaintext: principal presence fails", []*workloadv1.Authorization{allow("p", when(&workloadv1.Match{Principals: strs(presence())}))}, plaintext(), false, ""},
		{"plaintext: empty-namespace exact still fails", []*workloadv1.Authorization{allow("p", when(&workloadv1.Match{Namespaces: strs(exact(""))}))}, plaintext(), false, ""},
		{"plaintext: service account fails", []*workloadv1.Authorization{allow("p", when(&workloadv1.Match{ServiceAccounts: []*workloadv1.ServiceAccountMatch{sa("", "")}}))}, plaintext(), false, ""},
		{"plaintext: not_namespaces holds (ISTIO-SECURITY-2021-004)", []*workloadv1.Authorization{allow("p", when(&workloadv1.Match{NotNamespaces: strs(exact("foo"))}))}, plaintext(), true, ""},
		{"plaintext: not_service_accounts holds", []*workloadv1.Authorization{deny("d", when(&workloadv1.Match{NotServiceAccounts: []*workloadv1.ServiceAccountMatch{sa("shop", "frontend")}}))}, plaintext(), false, "shop/d"},
		{"identity without mTLS does not count", []*workloadv1.Authorization{allow("p", when(&workloadv1.Match{Principals: strs(presence())}))}, frontend.withMesh(false), false, ""},
		{"mTLS without identity is unauthenticated", []*workloadv1.Authorization{allow("p", when(&workloadv1.Match{Principals: strs(presence())}))}, plaintext().withMesh(true), false, ""},

		// Addresses and ports.
		{"source CIDR", []*workloadv1.Authorization{allow("p", when(&workloadv1.Match{SourceIps: []*workloadv1.CIDR{cidr("10.0.1.0/24")}}))}, frontend, true, ""},
		{"source CIDR, outside", []*workloadv1.Authorization{allow("p", when(&workloadv1.Match{SourceIps: []*workloadv1.CIDR{cidr("10.0.1.0/24")}}))}, frontend.from("10.0.9.5"), false, ""},
		{"source single IP", []*workloadv1.Authorization{allow("p", when(&workloadv1.Match{SourceIps: []*workloadv1.CIDR{cidr("10.0.1.5/32")}}))}, frontend, true, ""},
		{"source IPv6 CIDR", []*workloadv1.Authorization{allow("p", when(&workloadv1.Match{SourceIps: []*workloadv1.CIDR{cidr("fd00::/64")}}))}, frontend.from("fd00::5"), true, ""},
		{"IPv6 CIDR never holds an IPv4 source", []*workloadv1.Authorization{allow("p", when(&workloadv1.Match{SourceIps: []*workloadv1.CIDR{cidr("::/0")}}))}, frontend, false, ""},
		{"IPv4-mapped source compares as IPv4", []*workloadv1.Authorization{allow("p", when(&workloadv1.Match{SourceIps: []*workloadv1.CIDR{cidr("10.0.1.0/24")}}))}, frontend.from("::ffff:10.0.1.5"), true, ""},
		{"IPv4 range in IPv6 form", []*workloadv1.Authorization{allow("p", when(&workloadv1.Match{SourceIps: []*workloadv1.CIDR{cidr("::ffff:10.0.1.0/120")}}))}, frontend, true, ""},
		{"not_source_ips", []*workloadv1.Authorization{deny("d", when(&workloadv1.Match{NotSourceIps: []*workloadv1.CIDR{cidr("10.0.0.0/8")}}))}, frontend.from("192.168.1.1"), false, "shop/d"},
		{"malformed CIDR contains nothing", []*workloadv1.Authorization{allow("p", when(&workloadv1.Match{SourceIps: []*workloadv1.CIDR{{Address: []byte{10, 0, 1}, Length: 8}}}))}, frontend, false, ""},
		{"destination CIDR", []*workloadv1.Authorization{allow("p", when(&workloadv1.Match{DestinationIps: []*workloadv1.CIDR{cidr("10.0.2.7/32")}}))}, frontend, true, ""},
		{"not_destination_ips", []*workloadv1.Authorization{allow("p", when(&workloadv1.Match{NotDestinationIps: []*workloadv1.CIDR{cidr("10.0.2.0/24")}}))}, frontend, false, ""},
		{"destination port", []*workloadv1.Authorization{allow("p", when(&workloadv1.Match{DestinationPorts: []uint32{80, 8080}}))}, frontend, true, ""},
		{"destination port, other", []*workloadv1.Authorization{allow("p", when(&workloadv1.Match{DestinationPorts: []uint32{80}}))}, frontend, false, ""},
		{"not_destination_ports", []*workloadv1.Authorization{deny("d", when(&workloadv1.Match{NotDestinationPorts: []uint32{15020}}))}, frontend.port(15020), true, ""},

		// Combination.
		{"a match needs all its fields", []*workloadv1.Authorization{allow("p", when(&workloadv1.Match{
			Namespaces: strs(exact("shop")), DestinationPorts: []uint32{9090},
		}))}, frontend, false, ""},
		{"a match needs all its fields, all hold", []*workloadv1.Authorization{allow("p", when(&workloadv1.Match{
			Namespaces: strs(exact("shop")), DestinationPorts: []uint32{8080}, NotSourceIps: []*workloadv1.CIDR{cidr("10.9.0.0/16")},
		}))}, frontend, true, ""},
		{"positive and negative of one field", []*workloadv1.Authorization{allow("p", when(&workloadv1.Match{
			Namespaces: strs(prefix("sh")), NotNamespaces: strs(exact("shop")),
		}))}, frontend, false, ""},
		{"an empty match holds", []*workloadv1.Authorization{allow("p", when(&workloadv1.Match{}))}, plaintext(), true, ""},
		{"a clause needs any match", []*workloadv1.Authorization{allow("p", rule(anyOf(
			&workloadv1.Match{Namespaces: strs(exact("ops"))},
			&workloadv1.Match{Principals: strs(suffix("/sa/frontend"))},
		)))}, frontend, true, ""},
		{"a clause without matches matches nothing", []*workloadv1.Authorization{deny("d", rule(anyOf()))}, frontend, true, ""},
		{"a rule needs all clauses (from and to)", []*workloadv1.Authorization{allow("p", rule(
			anyOf(&workloadv1.Match{Namespaces: strs(exact("shop"))}),
			anyOf(&workloadv1.Match{DestinationPorts: []uint32{9090}}),
		))}, frontend, false, ""},
		{"a policy needs any rule", []*workloadv1.Authorization{allow("p",
			when(&workloadv1.Match{DestinationPorts: []uint32{9090}}),
			when(&workloadv1.Match{Namespaces: strs(exact("shop"))}),
		)}, frontend, true, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			allowed, reason := Evaluate(tc.policies, tc.conn)
			if allowed != tc.allowed {
				t.Errorf("allowed = %v (%s), want %v", allowed, reason, tc.allowed)
			}
			if reason == "" || !strings.Contains(reason, tc.reason) {
				t.Errorf("reason = %q, want it to contain %q", reason, tc.reason)
			}
		})
	}
}

// TestPeerAuthentication runs the DENY policies that istiod-lite's
// BuildPeerAuthentication produces.
func TestPeerAuthentication(t *testing.T) {
	frontend := mtls("shop", "frontend")
	strict := strictPA(nil, nil)
	strictExcept := strictPA(nil, []uint32{9000, 15020})   // STRICT, ports 9000 and 15020 PERMISSIVE
	strictPortsOnly := strictPA([]uint32{8080, 8443}, nil) // PERMISSIVE, ports 8080 and 8443 STRICT
	allowShop := allow("from-shop", when(&workloadv1.Match{Namespaces: strs(exact("shop"))}))
	tests := []struct {
		name     string
		policies []*workloadv1.Authorization
		conn     Conn
		allowed  bool
		reason   string
	}{
		{"STRICT refuses plaintext", []*workloadv1.Authorization{strict}, plaintext(), false,
			"denied by DENY policy shop/converted_peer_authentication_default: PeerAuthentication shop/default requires mTLS"},
		{"STRICT admits mTLS", []*workloadv1.Authorization{strict}, frontend, true, "no DENY policy matched"},
		{"STRICT refuses plaintext before an ALLOW would admit it", []*workloadv1.Authorization{allow("allow-all", rule()), strict}, plaintext(), false, "requires mTLS"},
		{"STRICT and an ALLOW: mTLS from the namespace", []*workloadv1.Authorization{strict, allowShop}, frontend, true, "shop/from-shop"},
		{"STRICT and an ALLOW: mTLS from elsewhere", []*workloadv1.Authorization{strict, allowShop}, mtls("ops", "x"), false, "no ALLOW policy matched (shop/from-shop)"},
		{"STRICT with exceptions: plaintext to a PERMISSIVE port", []*workloadv1.Authorization{strictExcept}, plaintext().port(15020), true, ""},
		{"STRICT with exceptions: plaintext to another port", []*workloadv1.Authorization{strictExcept}, plaintext().port(8080), false, "requires mTLS"},
		{"STRICT with exceptions: mTLS anywhere", []*workloadv1.Authorization{strictExcept}, frontend.port(8080), true, ""},
		{"STRICT ports only: plaintext to a STRICT port", []*workloadv1.Authorization{strictPortsOnly}, plaintext().port(8443), false, "requires mTLS"},
		{"STRICT ports only: plaintext to another port", []*workloadv1.Authorization{strictPortsOnly}, plaintext().port(9090), true, ""},
		{"STRICT ports only: mTLS to a STRICT port", []*workloadv1.Authorization{strictPortsOnly}, frontend.port(8443), true, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			allowed, reason := Evaluate(tc.policies, tc.conn)
			if allowed != tc.allowed || !strings.Contains(reason, tc.reason) {
				t.Errorf("Evaluate = %v, %q; want %v, containing %q", allowed, reason, tc.allowed, tc.reason)
			}
		})
	}
}

func TestMatches(t *testing.T) {
	p := deny("d", when(&workloadv1.Match{DestinationIps: []*workloadv1.CIDR{cidr("10.0.2.0/24")}}))
	if !Matches(p, mtls("shop", "a")) {
		t.Error("Matches = false for a destination in range")
	}
	if Matches(p, mtls("shop", "a").to("10.0.3.1")) {
		t.Error("Matches = true for a destination out of range")
	}
	if Matches(allow("none"), plaintext()) {
		t.Error("a policy without rules matched")
	}
}
