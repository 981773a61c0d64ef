// Package policyfuzz fuzzes the path of an AuthorizationPolicy from the
// Kubernetes object a user writes to the decision ztunnel makes:
// istiod-lite's translation (istiod-lite/model.BuildAuthorization), then
// ztunnel's validation of what it receives (ztunnel/state) and its
// evaluation (ztunnel/authz). The components may not import each other, so
// the target that joins them lives here, as integration/xdsinterop joins
// their xDS.
//
// The oracle is a reference reading of the policy's own text
// (security.istio.io/v1, as docs/ztunnel.md and the API's comments state
// it) for an L4 connection, in three values: an attribute ztunnel cannot
// see (HTTP fields, JWT principals, remoteIpBlocks, `when` keys it does not
// know) or a value that does not parse is unknown. ztunnel must then
// enforce an ALLOW policy only through rules with nothing unknown in them
// (fail closed), and a DENY policy as if every unknown part matched (it
// keeps every L4 part and denies more, never less).
package policyfuzz

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	securityv1 "github.com/cairnmesh/cairn/apis/security/v1"
	workloadv1 "github.com/cairnmesh/cairn/apis/workload/v1"
	"github.com/cairnmesh/cairn/internal/spiffe"
	"github.com/cairnmesh/cairn/istiod-lite/model"
	"github.com/cairnmesh/cairn/ztunnel/authz"
	"github.com/cairnmesh/cairn/ztunnel/state"
)

// rootNamespace is the mesh's root namespace in the target.
const rootNamespace = "istio-system"

// FuzzAuthorizationPolicy decodes an AuthorizationPolicy from JSON (as the
// API server would store it; the CRD's schema is not applied, so the
// translation also meets what an older CRD or a bug could let through),
// translates it, and checks:
//   - no panic;
//   - policies for waypoints (targetRef/targetRefs) and actions other than
//     ALLOW and DENY give no Authorization; others give one with the
//     policy's name, namespace, action, scope and selector;
//   - ztunnel's store accepts the Authorization: istiod-lite never sends
//     what ztunnel would reject (and so not enforce);
//   - the ZtunnelAccepted condition is True exactly when nothing in the
//     policy is unknown to ztunnel;
//   - for connections built from the policy's own values and from the
//     fuzzed ones, the Authorization matches exactly as the reference
//     says: ALLOW matches iff a rule with nothing unknown matches; DENY
//     matches iff some rule matches or may match.
func FuzzAuthorizationPolicy(f *testing.F) {
	for _, s := range policySeeds {
		f.Add([]byte(s), "shop", "web", []byte{10, 0, 0, 1}, []byte{10, 0, 0, 2}, uint16(8080))
	}
	f.Add([]byte(`{"metadata":{"name":"p","namespace":"shop"},"spec":{"action":"DENY","rules":[{"from":[{"source":{"ipBlocks":["fd00::/8"]}}]}]}}`),
		"ops", "admin", netip.MustParseAddr("fd00::7").AsSlice(), netip.MustParseAddr("::ffff:10.0.0.2").AsSlice(), uint16(22))

	f.Fuzz(func(t *testing.T, policyJSON []byte, ns, sa string, src, dst []byte, port uint16) {
		var p securityv1.AuthorizationPolicy
		if json.Unmarshal(policyJSON, &p) != nil {
			return
		}
		// The API server always sets both.
		if p.Name == "" {
			p.Name = "p"
		}
		if p.Namespace == "" {
			p.Namespace = "shop"
		}
		for _, v := range variants(&p) {
			checkPolicy(t, v, connections(v, ns, sa, src, dst, port))
		}
	})
}

// maxVariants bounds the policies made from one input.
const maxVariants = 24

// variants returns p, then policies made of one of its parts each: each
// rule alone; each from, to and when entry alone in a rule; and each field
// of a source, an operation or a condition alone. A part is then checked
// where no other part of its rule can hide what it does from the few
// connections tried.
func variants(p *securityv1.AuthorizationPolicy) []*securityv1.AuthorizationPolicy {
	out := []*securityv1.AuthorizationPolicy{p}
	seen := map[string]bool{}
	with := func(r securityv1.Rule) {
		key, _ := json.Marshal(r)
		if len(out) < maxVariants && !seen[string(key)] {
			seen[string(key)] = true
			v := *p
			v.Spec.Rules = []securityv1.Rule{r}
			out = append(out, &v)
		}
	}
	if len(p.Spec.Rules) > 1 {
		for _, r := range p.Spec.Rules {
			with(r)
		}
	}
	for _, r := range p.Spec.Rules {
		for _, f := range r.From {
			if f.Source == nil {
				continue
			}
			for _, s := range singleFields(*f.Source) {
				with(securityv1.Rule{From: []securityv1.From{{Source: &s}}})
			}
		}
		for _, to := range r.To {
			if to.Operation == nil {
				continue
			}
			for _, op := range singleFields(*to.Operation) {
				with(securityv1.Rule{To: []securityv1.To{{Operation: &op}}})
			}
		}
		for _, c := range r.When {
			with(securityv1.Rule{When: []securityv1.Condition{{Key: c.Key, Values: c.Values}}})
			with(securityv1.Rule{When: []securityv1.Condition{{Key: c.Key, NotValues: c.NotValues}}})
		}
	}
	return out
}

// singleFields returns a copy of v (a Source or an Operation, whose fields
// are all lists of strings) for each field that is set, with that field
// only.
func singleFields[T securityv1.Source | securityv1.Operation](v T) []T {
	var out []T
	rv := reflect.ValueOf(v)
	for i := range rv.NumField() {
		if rv.Field(i).Len() == 0 {
			continue
		}
		var one T
		reflect.ValueOf(&one).Elem().Field(i).Set(rv.Field(i))
		out = append(out, one)
	}
	return out
}

// checkPolicy translates p and checks the result against the reference
// for each connection.
func checkPolicy(t *testing.T, p *securityv1.AuthorizationPolicy, conns []authz.Conn) {
	t.Helper()
	a, conds := model.BuildAuthorization(p, rootNamespace)
	spec, _ := json.Marshal(p.Spec)
	unknown := false
	for _, r := range p.Spec.Rules {
		unknown = unknown || ruleHasUnknown(r, p.Namespace)
	}
	checkShape(t, p, a, conds, unknown)
	if a == nil {
		return
	}
	if err := state.NewStore().Apply(state.AuthorizationTypeURL, map[string]proto.Message{p.Namespace + "/" + p.Name: a}, nil); err != nil {
		t.Fatalf("ztunnel rejects the translation of %s: %v\nAuthorization: %v", spec, err, a)
	}
	for _, c := range conns {
		got := authz.Matches(a, c)
		var want bool
		var why string
		switch a.GetAction() {
		case workloadv1.Action_ALLOW:
			for i, r := range p.Spec.Rules {
				if !ruleHasUnknown(r, p.Namespace) && evalRule(r, p.Namespace, c) == yes {
					want, why = true, fmt.Sprintf("rule %d, which has nothing ztunnel cannot check, matches", i)
					break
				}
			}
			if !want {
				why = "no rule that ztunnel can check in full matches"
			}
		case workloadv1.Action_DENY:
			v := no
			for _, r := range p.Spec.Rules {
				v = or(v, evalRule(r, p.Namespace, c))
			}
			want = v != no
			why = "the policy read as written " + v.String()
		}
		if got != want {
			t.Fatalf("%s policy in %s: %s\nconnection %+v\nztunnel matches: %v; want %v: %s\nAuthorization: %v",
				a.GetAction(), p.Namespace, spec, c, got, want, why, a)
		}
		authz.Evaluate([]*workloadv1.Authorization{a}, c)
	}
}

// checkShape checks everything but the rules.
func checkShape(t *testing.T, p *securityv1.AuthorizationPolicy, a *workloadv1.Authorization, conds []metav1.Condition, unknown bool) {
	t.Helper()
	if len(conds) != 1 || conds[0].Type != model.ConditionZtunnelAccepted || conds[0].Message == "" {
		t.Fatalf("conditions %+v; want one ZtunnelAccepted with a message", conds)
	}
	accepted := conds[0].Status == metav1.ConditionTrue
	forWaypoint := p.Spec.TargetRef != nil || len(p.Spec.TargetRefs) > 0
	var action workloadv1.Action
	switch p.Spec.Action {
	case "", securityv1.ActionAllow:
		action = workloadv1.Action_ALLOW
	case securityv1.ActionDeny:
		action = workloadv1.Action_DENY
	default:
		action = -1
	}
	if forWaypoint || action < 0 {
		if a != nil || accepted {
			t.Fatalf("policy for a waypoint or with action %q: got %v, accepted %v; want none", p.Spec.Action, a, accepted)
		}
		return
	}
	if a == nil {
		t.Fatalf("ALLOW or DENY policy without targetRefs gave no Authorization (%+v)", conds)
	}
	if accepted == unknown {
		t.Fatalf("ZtunnelAccepted is %s (%s), but the policy has parts ztunnel cannot check: %v", conds[0].Status, conds[0].Message, unknown)
	}
	wantScope := workloadv1.Scope_NAMESPACE
	switch {
	case p.Spec.Selector != nil && len(p.Spec.Selector.MatchLabels) > 0:
		wantScope = workloadv1.Scope_WORKLOAD_SELECTOR
	case p.Namespace == rootNamespace:
		wantScope = workloadv1.Scope_GLOBAL
	}
	if a.GetName() != p.Name || a.GetNamespace() != p.Namespace || a.GetAction() != action || a.GetScope() != wantScope {
		t.Fatalf("Authorization %s/%s %v %v; want %s/%s %v %v", a.GetNamespace(), a.GetName(), a.GetAction(), a.GetScope(),
			p.Namespace, p.Name, action, wantScope)
	}
	if wantScope == workloadv1.Scope_WORKLOAD_SELECTOR && !mapsEqual(a.GetSelector(), p.Spec.Selector.MatchLabels) ||
		wantScope != workloadv1.Scope_WORKLOAD_SELECTOR && len(a.GetSelector()) > 0 {
		t.Fatalf("selector %v from %+v", a.GetSelector(), p.Spec.Selector)
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// tri is a three-valued truth: an attribute ztunnel cannot see is unknown.
type tri int

const (
	no tri = iota
	unknownValue
	yes
)

func (v tri) String() string { return [...]string{"does not match", "may match", "matches"}[v] }

func of(b bool) tri {
	if b {
		return yes
	}
	return no
}

func and(a, b tri) tri { return min(a, b) }
func or(a, b tri) tri  { return max(a, b) }

// anyOf is a positive list: unset holds; else any entry must match.
func anyOf[T any](list []T, match func(T) tri) tri {
	if len(list) == 0 {
		return yes
	}
	v := no
	for _, x := range list {
		v = or(v, match(x))
	}
	return v
}

// noneOf is a not* list: unset holds; else no entry may match.
func noneOf[T any](list []T, match func(T) tri) tri {
	if len(list) == 0 {
		return yes
	}
	v := anyOf(list, match)
	return [...]tri{yes, unknownValue, no}[v]
}

// evalRule reads a rule for connection c: any from, any to, all when.
func evalRule(r securityv1.Rule, namespace string, c authz.Conn) tri {
	v := anyOf(r.From, func(f securityv1.From) tri { return evalSource(f.Source, namespace, c) })
	v = and(v, anyOf(r.To, func(to securityv1.To) tri { return evalOperation(to.Operation, c) }))
	for _, cond := range r.When {
		v = and(v, evalCondition(cond, c))
	}
	return v
}

// ruleHasUnknown reports whether any part of r is unknown to ztunnel,
// whatever the connection.
func ruleHasUnknown(r securityv1.Rule, namespace string) bool {
	found := false
	var z authz.Conn
	watch := func(v tri) {
		if v == unknownValue {
			found = true
		}
	}
	for _, f := range r.From {
		if s := f.Source; s != nil {
			for _, v := range sourceFields(s, namespace, z) {
				watch(v)
			}
		}
	}
	for _, to := range r.To {
		if op := to.Operation; op != nil {
			for _, v := range operationFields(op, z) {
				watch(v)
			}
		}
	}
	for _, cond := range r.When {
		watch(evalCondition(cond, z))
	}
	return found
}

func evalSource(s *securityv1.Source, namespace string, c authz.Conn) tri {
	v := yes
	if s != nil {
		for _, f := range sourceFields(s, namespace, c) {
			v = and(v, f)
		}
	}
	return v
}

// sourceFields evaluates each field of s on its own. The identity fields
// are mTLS-only: plaintext has no principal, namespace or service account.
func sourceFields(s *securityv1.Source, namespace string, c authz.Conn) []tri {
	principal, peerNS, ok := peerOf(c)
	idMatch := func(value string) func(string) tri {
		return func(pattern string) tri { return of(ok && patternMatches(pattern, value)) }
	}
	principalMatch := func(pattern string) tri {
		return idMatch(principal)(strings.TrimPrefix(pattern, "spiffe://"))
	}
	saMatch := func(v string) tri {
		ns, name, found := strings.Cut(v, "/")
		if !found {
			ns, name = namespace, v
		}
		return of(ok && ns == c.SourceIdentity.Namespace && name == c.SourceIdentity.ServiceAccount)
	}
	return []tri{
		anyOf(s.Principals, principalMatch),
		noneOf(s.NotPrincipals, principalMatch),
		l7(s.RequestPrincipals), l7(s.NotRequestPrincipals),
		l7(s.RemoteIPBlocks), l7(s.NotRemoteIPBlocks),
		anyOf(s.Namespaces, idMatch(peerNS)),
		noneOf(s.NotNamespaces, idMatch(peerNS)),
		anyOf(s.ServiceAccounts, saMatch),
		noneOf(s.NotServiceAccounts, saMatch),
		ipField(s.IPBlocks, c.SourceIP, false),
		ipField(s.NotIPBlocks, c.SourceIP, true),
	}
}

func evalOperation(op *securityv1.Operation, c authz.Conn) tri {
	v := yes
	if op != nil {
		for _, f := range operationFields(op, c) {
			v = and(v, f)
		}
	}
	return v
}

func operationFields(op *securityv1.Operation, c authz.Conn) []tri {
	return []tri{
		l7(op.Hosts), l7(op.NotHosts), l7(op.Methods), l7(op.NotMethods), l7(op.Paths), l7(op.NotPaths),
		portField(op.Ports, c.DestinationPort, false),
		portField(op.NotPorts, c.DestinationPort, true),
	}
}

// evalCondition reads a `when` condition: values (any) and notValues
// (none) of the attribute named by key.
func evalCondition(cond securityv1.Condition, c authz.Conn) tri {
	principal, peerNS, ok := peerOf(c)
	strings2 := func(value string, trim bool) tri {
		match := func(p string) tri {
			if trim {
				p = strings.TrimPrefix(p, "spiffe://")
			}
			return of(ok && patternMatches(p, value))
		}
		return and(anyOf(cond.Values, match), noneOf(cond.NotValues, match))
	}
	switch cond.Key {
	case "source.ip":
		return and(ipField(cond.Values, c.SourceIP, false), ipField(cond.NotValues, c.SourceIP, true))
	case "destination.ip":
		return and(ipField(cond.Values, c.DestinationIP, false), ipField(cond.NotValues, c.DestinationIP, true))
	case "destination.port":
		return and(portField(cond.Values, c.DestinationPort, false), portField(cond.NotValues, c.DestinationPort, true))
	case "source.namespace":
		return strings2(peerNS, false)
	case "source.principal":
		return strings2(principal, true)
	}
	return unknownValue // an attribute ztunnel does not know
}

// l7 is an attribute only a waypoint can check.
func l7(values []string) tri {
	if len(values) > 0 {
		return unknownValue
	}
	return yes
}

// peerOf returns the connection's principal (without spiffe://) and
// namespace, and whether it has an identity at all.
func peerOf(c authz.Conn) (principal, namespace string, ok bool) {
	if !c.Mesh || c.SourceIdentity.IsZero() {
		return "", "", false
	}
	return strings.TrimPrefix(c.SourceIdentity.String(), "spiffe://"), c.SourceIdentity.Namespace, true
}

// patternMatches is Istio's string match: "*" is any non-empty value, a
// leading or trailing '*' a suffix or prefix match, anything else exact.
func patternMatches(pattern, v string) bool {
	switch {
	case pattern == "*":
		return v != ""
	case strings.HasPrefix(pattern, "*"):
		return strings.HasSuffix(v, pattern[1:])
	case strings.HasSuffix(pattern, "*"):
		return strings.HasPrefix(v, pattern[:len(pattern)-1])
	}
	return v == pattern
}

// ipField reads ipBlocks-like values: IP addresses or CIDR ranges. If one
// of them is neither, the field is unknown.
func ipField(values []string, ip netip.Addr, negated bool) tri {
	var prefixes []netip.Prefix
	for _, v := range values {
		p, ok := referencePrefix(v)
		if !ok {
			return unknownValue
		}
		prefixes = append(prefixes, p)
	}
	match := func(p netip.Prefix) tri { return of(p.Contains(ip.Unmap())) }
	if negated {
		return noneOf(prefixes, match)
	}
	return anyOf(prefixes, match)
}

// referencePrefix reads an address ("10.0.0.1", "fd00::1") or a range
// ("10.0.0.0/8"; host bits are ignored). An IPv4 address or range written
// in IPv6 form (::ffff:10.0.0.0/104) is IPv4. Zones are not addresses of
// a policy.
func referencePrefix(v string) (netip.Prefix, bool) {
	addr, _, isRange := strings.Cut(v, "/")
	ip, err := netip.ParseAddr(addr)
	if err != nil || ip.Zone() != "" {
		return netip.Prefix{}, false
	}
	n := ip.BitLen()
	if isRange {
		p, err := netip.ParsePrefix(v)
		if err != nil {
			return netip.Prefix{}, false
		}
		n = p.Bits()
	}
	if ip.Is4In6() {
		if n < 96 {
			return netip.PrefixFrom(ip, n).Masked(), true // an IPv6 range
		}
		ip, n = ip.Unmap(), n-96
	}
	return netip.PrefixFrom(ip, n).Masked(), true
}

// portField reads port values: decimal numbers from 1 to 65535. If one of
// them is not, the field is unknown.
func portField(values []string, port uint16, negated bool) tri {
	var ports []uint16
	for _, v := range values {
		n, err := strconv.ParseUint(v, 10, 16)
		if err != nil || n == 0 {
			return unknownValue
		}
		ports = append(ports, uint16(n))
	}
	match := func(p uint16) tri { return of(p == port) }
	if negated {
		return noneOf(ports, match)
	}
	return anyOf(ports, match)
}

// connections builds the connections to try: plaintext and mTLS from
// identities the policy names (and the fuzzed one), from and to addresses
// at the edges of the ranges it names (and the fuzzed ones), to the ports
// it names (and the fuzzed one). Each list is capped, so that one input
// costs at most a few hundred evaluations.
func connections(p *securityv1.AuthorizationPolicy, ns, sa string, src, dst []byte, port uint16) []authz.Conn {
	const maxIDs, maxIPs, maxPorts = 12, 12, 6
	var ids []spiffe.Identity
	addID := func(id spiffe.Identity, err error) {
		if err == nil && len(ids) < maxIDs && !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	addID(spiffe.New("cluster.local", ns, sa))
	addID(spiffe.New("cluster.local", "shop", "web"))
	var ips []netip.Addr
	addIP := func(ip netip.Addr) {
		if ip.IsValid() && len(ips) < maxIPs && !slices.Contains(ips, ip) {
			ips = append(ips, ip)
		}
	}
	for _, b := range [][]byte{src, dst} {
		if ip, ok := netip.AddrFromSlice(b); ok {
			addIP(ip)
		}
	}
	addIP(netip.MustParseAddr("10.0.0.1"))
	ports := []uint16{port, 8080}

	// A value is a principal, a namespace or a service account, maybe
	// with a wildcard: try it as each, with the wildcard filled in a few
	// ways that make an identity.
	fillers := []string{"", "x", "cluster.local/ns/shop/sa/", "/sa/" + sa, "cluster.local/ns/" + ns + "/sa/" + sa}
	strs := func(values []string) {
		for _, v := range values {
			v = strings.TrimPrefix(v, "spiffe://")
			for _, fill := range fillers {
				v := strings.Replace(v, "*", fill, 1)
				addID(spiffe.Parse("spiffe://" + v))
				addID(spiffe.New("cluster.local", v, sa))
				if a, b, ok := strings.Cut(v, "/"); ok {
					addID(spiffe.New("cluster.local", a, b))
				} else {
					addID(spiffe.New("cluster.local", p.Namespace, v))
				}
			}
		}
	}
	cidrs := func(values []string) {
		for _, v := range values {
			if pfx, ok := referencePrefix(v); ok {
				addIP(pfx.Addr())
				addIP(pfx.Addr().Prev())
				last := pfx.Addr()
				for i := pfx.Bits(); i < pfx.Addr().BitLen() && i < pfx.Bits()+8; i++ {
					last = last.Next()
				}
				addIP(last)
			}
		}
	}
	portsOf := func(values []string) {
		for _, v := range values {
			if n, err := strconv.ParseUint(v, 10, 16); err == nil && len(ports) < maxPorts && !slices.Contains(ports, uint16(n)) {
				ports = append(ports, uint16(n))
			}
		}
	}
	for _, r := range p.Spec.Rules {
		for _, f := range r.From {
			if s := f.Source; s != nil {
				strs(slices.Concat(s.Principals, s.NotPrincipals, s.Namespaces, s.NotNamespaces, s.ServiceAccounts, s.NotServiceAccounts))
				cidrs(slices.Concat(s.IPBlocks, s.NotIPBlocks))
			}
		}
		for _, to := range r.To {
			if op := to.Operation; op != nil {
				portsOf(slices.Concat(op.Ports, op.NotPorts))
			}
		}
		for _, c := range r.When {
			switch c.Key {
			case "source.ip", "destination.ip":
				cidrs(slices.Concat(c.Values, c.NotValues))
			case "destination.port":
				portsOf(slices.Concat(c.Values, c.NotValues))
			default:
				strs(slices.Concat(c.Values, c.NotValues))
			}
		}
	}

	var out []authz.Conn
	for _, srcIP := range ips {
		dstIP := ips[(slices.Index(ips, srcIP)+1)%len(ips)]
		for _, pt := range ports {
			out = append(out, authz.Conn{SourceIP: srcIP, DestinationIP: dstIP, DestinationPort: pt})
			for _, id := range ids {
				out = append(out, authz.Conn{SourceIdentity: id, Mesh: true, SourceIP: srcIP, DestinationIP: dstIP, DestinationPort: pt})
			}
		}
	}
	return out
}

// policySeeds cover every field of a policy, in ALLOW and DENY, with
// values that parse and values that do not, and the policies ztunnel
// leaves to waypoints.
var policySeeds = []string{
	`{"metadata":{"name":"l4","namespace":"shop"},"spec":{"selector":{"matchLabels":{"app":"checkout"}},"action":"ALLOW","rules":[{"from":[{"source":{"principals":["cluster.local/ns/shop/sa/frontend","spiffe://cluster.local/ns/ops/sa/*"],"notPrincipals":["*/sa/legacy"],"namespaces":["shop","team-*"],"notNamespaces":["kube-system"],"ipBlocks":["10.0.0.0/8","192.168.1.1"],"notIpBlocks":["10.9.0.0/16"]}},{"source":{"serviceAccounts":["ops/worker","batch"],"notServiceAccounts":["shop/intruder"]}}],"to":[{"operation":{"ports":["8080","9090"],"notPorts":["9091"]}}],"when":[{"key":"source.ip","values":["10.0.0.0/16"],"notValues":["10.0.0.9"]},{"key":"destination.port","values":["8080"]},{"key":"destination.ip","notValues":["fd00::/8"]},{"key":"source.namespace","values":["shop","team-*"],"notValues":["*-dev"]},{"key":"source.principal","notValues":["*admin"]}]}]}}`,
	`{"metadata":{"name":"l7","namespace":"shop"},"spec":{"rules":[{"to":[{"operation":{"methods":["GET"],"paths":["/api/*"],"ports":["8080"]}}]},{"from":[{"source":{"namespaces":["shop"]}}]}]}}`,
	`{"metadata":{"name":"deny-l7","namespace":"shop"},"spec":{"action":"DENY","rules":[{"from":[{"source":{"requestPrincipals":["issuer/*"],"namespaces":["dev"]}}],"to":[{"operation":{"hosts":["admin.example"],"notPorts":["443"]}}],"when":[{"key":"request.headers[x-user]","values":["root"]}]}]}}`,
	`{"metadata":{"name":"bad-values","namespace":"shop"},"spec":{"action":"DENY","rules":[{"from":[{"source":{"ipBlocks":["10.0.0.0/33","10.1.0.0/16"],"notIpBlocks":["fe80::1%eth0"]}}],"to":[{"operation":{"ports":["0","http"]}}]},{"when":[{"key":"destination.port","notValues":["65536"]}]}]}}`,
	`{"metadata":{"name":"bad-allow","namespace":"shop"},"spec":{"rules":[{"from":[{"source":{"ipBlocks":["::ffff:10.0.0.0/104","not-an-ip"]}}]},{"from":[{"source":{"ipBlocks":["::ffff:10.0.0.1","fd00::/120"]}}],"to":[{"operation":{"ports":["22"]}}]}]}}`,
	`{"metadata":{"name":"v6","namespace":"shop"},"spec":{"rules":[{"from":[{"source":{"ipBlocks":["fd00::1"],"notIpBlocks":["fd00::1:0/112"]}}],"when":[{"key":"destination.ip","values":["fd00::2"]}]}]}}`,
	`{"metadata":{"name":"port-zero","namespace":"shop"},"spec":{"action":"DENY","rules":[{"to":[{"operation":{"ports":["0"]}}]},{"to":[{"operation":{"notPorts":["22"]}}],"when":[{"key":"destination.port","values":["08080"]}]}]}}`,
	`{"metadata":{"name":"deny-all","namespace":"shop"},"spec":{"action":"DENY","rules":[{}]}}`,
	`{"metadata":{"name":"allow-nothing","namespace":"shop"},"spec":{}}`,
	`{"metadata":{"name":"plaintext","namespace":"istio-system"},"spec":{"action":"DENY","rules":[{"from":[{"source":{"notPrincipals":["*"]}}]}]}}`,
	`{"metadata":{"name":"empty-parts","namespace":"shop"},"spec":{"rules":[{"from":[{},{"source":{}}],"to":[{"operation":{}}],"when":[{"key":"source.ip"}]}]}}`,
	`{"metadata":{"name":"waypoint","namespace":"shop"},"spec":{"targetRefs":[{"kind":"Gateway","group":"gateway.networking.k8s.io","name":"waypoint"}],"rules":[{}]}}`,
	`{"metadata":{"name":"custom","namespace":"shop"},"spec":{"action":"CUSTOM","provider":{"name":"ext"},"rules":[{}]}}`,
	`{"metadata":{"name":"audit","namespace":"shop"},"spec":{"action":"AUDIT","selector":{"matchLabels":{}},"rules":[{}]}}`,
}
