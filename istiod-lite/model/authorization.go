package model

import (
	"fmt"
	"maps"
	"net/netip"
	"strconv"
	"strings"

	"google.golang.org/protobuf/proto"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	securityv1 "github.com/cairnmesh/cairn/apis/security/v1"
	workloadv1 "github.com/cairnmesh/cairn/apis/workload/v1"
)

// ConditionZtunnelAccepted is the status condition type through which the
// builders report how ztunnel enforces a policy. Its LastTransitionTime and
// ObservedGeneration are left for the status writer to fill.
const ConditionZtunnelAccepted = "ZtunnelAccepted"

// Reasons of the ZtunnelAccepted condition.
const (
	// ReasonAccepted: ztunnel enforces the policy as written.
	ReasonAccepted = "Accepted"
	// ReasonUnsupportedValue: ztunnel enforces the policy only in part
	// (fails closed for ALLOW, denies more for DENY) or not at all.
	ReasonUnsupportedValue = "UnsupportedValue"
	// ReasonNotApplicable: the policy is for a waypoint, not for ztunnel.
	ReasonNotApplicable = "NotApplicable"
)

// l4WhenKeys are the `when` keys ztunnel can check, with the Match fields
// that carry their values and notValues.
var l4WhenKeys = map[string]bool{
	"source.ip": true, "source.namespace": true, "source.principal": true,
	"destination.ip": true, "destination.port": true,
}

// BuildAuthorization translates the L4 part of an AuthorizationPolicy into
// the Authorization that ztunnel enforces, following Istio ambient:
//
//   - A policy with targetRef(s) is for waypoints: no Authorization.
//   - Only ALLOW and DENY are supported: CUSTOM and AUDIT give none.
//   - A selector gives WORKLOAD_SELECTOR scope; without one the policy is
//     NAMESPACE-scoped, or GLOBAL in rootNamespace ("istio-system" if
//     empty).
//   - Rules with attributes ztunnel cannot check (HTTP attributes such as
//     methods, paths, hosts, requestPrincipals, remoteIpBlocks, `when` keys
//     other than source.ip, source.namespace, source.principal,
//     destination.ip and destination.port, or values that do not parse):
//     in an ALLOW policy the rule is left out, so it never matches (fails
//     closed; with no rule left the policy allows nothing); in a DENY
//     policy the unsupported parts are left out, so the rule denies more,
//     never less.
//
// The returned condition (one, of type ZtunnelAccepted) says which of
// these applied, with a message a user can act on.
func BuildAuthorization(p *securityv1.AuthorizationPolicy, rootNamespace string) (*workloadv1.Authorization, []metav1.Condition) {
	if rootNamespace == "" {
		rootNamespace = Config{}.withDefaults().RootNamespace
	}
	if p.Spec.TargetRef != nil || len(p.Spec.TargetRefs) > 0 {
		return nil, condition(metav1.ConditionFalse, ReasonNotApplicable,
			"the policy has targetRefs, so the waypoint of its target enforces it and ztunnel ignores it; "+
				"use a selector instead to have ztunnel enforce its L4 rules")
	}
	a := &workloadv1.Authorization{
		Name:      p.Name,
		Namespace: p.Namespace,
		Scope:     scope(p.Namespace, p.Spec.Selector, rootNamespace),
	}
	if a.Scope == workloadv1.Scope_WORKLOAD_SELECTOR {
		a.Selector = maps.Clone(p.Spec.Selector.MatchLabels)
	}
	switch p.Spec.Action {
	case "", securityv1.ActionAllow:
		a.Action = workloadv1.Action_ALLOW
	case securityv1.ActionDeny:
		a.Action = workloadv1.Action_DENY
	default:
		return nil, condition(metav1.ConditionFalse, ReasonUnsupportedValue, fmt.Sprintf(
			"ztunnel does not support the %s action, so the policy is not enforced at L4; "+
				"attach it to a waypoint with targetRefs to enforce it", p.Spec.Action))
	}
	deny := a.Action == workloadv1.Action_DENY

	var problems []string
	for i, r := range p.Spec.Rules {
		rule, unsupported := translateRule(r, p.Namespace)
		if len(unsupported) > 0 {
			what := strings.Join(unsupported, ", ")
			if !deny {
				problems = append(problems, fmt.Sprintf(
					"rule %d uses %s, which ztunnel cannot check, so ztunnel leaves the rule out and allows less than written", i, what))
				continue
			}
			problems = append(problems, fmt.Sprintf(
				"rule %d uses %s, which ztunnel cannot check, so ztunnel ignores those parts and denies more than written", i, what))
		}
		a.Rules = append(a.Rules, rule)
	}
	if len(problems) == 0 {
		return a, condition(metav1.ConditionTrue, ReasonAccepted, "ztunnel enforces every rule of the policy")
	}
	msg := strings.Join(problems, "; ")
	if !deny && len(a.Rules) == 0 && len(p.Spec.Rules) > 0 {
		msg += "; no rule is left, so the policy denies all traffic to the workloads it applies to"
	}
	msg += ". To enforce HTTP attributes, attach the policy to a waypoint with targetRefs; for ztunnel, keep only L4 fields " +
		"(principals, namespaces, serviceAccounts, ipBlocks and ports with valid values, and the when keys source.ip, " +
		"source.namespace, source.principal, destination.ip, destination.port)"
	return a, condition(metav1.ConditionFalse, ReasonUnsupportedValue, msg)
}

func condition(status metav1.ConditionStatus, reason, message string) []metav1.Condition {
	return []metav1.Condition{{Type: ConditionZtunnelAccepted, Status: status, Reason: reason, Message: message}}
}

func scope(namespace string, sel *securityv1.WorkloadSelector, rootNamespace string) workloadv1.Scope {
	switch {
	case hasSelector(sel):
		return workloadv1.Scope_WORKLOAD_SELECTOR
	case namespace == rootNamespace:
		return workloadv1.Scope_GLOBAL
	}
	return workloadv1.Scope_NAMESPACE
}

// translateRule turns a rule into clauses: one for from (a match per
// source), one for to (a match per operation), one per when condition.
// Unsupported fields are dropped from their match and named in
// unsupported; the caller drops the whole rule of an ALLOW policy. A match
// left empty matches everything, and so does its clause, which is then
// dropped.
func translateRule(r securityv1.Rule, namespace string) (rule *workloadv1.Rule, unsupported []string) {
	rule = &workloadv1.Rule{}
	var u fieldSet
	addClause := func(matches []*workloadv1.Match) {
		for _, m := range matches {
			if proto.Size(m) == 0 {
				return // this match, and so the clause, matches everything
			}
		}
		if len(matches) > 0 {
			rule.Clauses = append(rule.Clauses, &workloadv1.Clause{Matches: matches})
		}
	}
	var from []*workloadv1.Match
	for _, f := range r.From {
		from = append(from, sourceMatch(f.Source, namespace, &u))
	}
	addClause(from)
	var to []*workloadv1.Match
	for _, t := range r.To {
		to = append(to, operationMatch(t.Operation, &u))
	}
	addClause(to)
	for _, c := range r.When {
		addClause([]*workloadv1.Match{whenMatch(c, &u)})
	}
	return rule, u.names
}

// fieldSet collects the names of unsupported attributes, once each.
type fieldSet struct{ names []string }

func (s *fieldSet) add(name string) {
	for _, n := range s.names {
		if n == name {
			return
		}
	}
	s.names = append(s.names, name)
}

// l7 records HTTP-only attributes that are set.
func (s *fieldSet) l7(name string, values []string) {
	if len(values) > 0 {
		s.add(name)
	}
}

func sourceMatch(src *securityv1.Source, namespace string, u *fieldSet) *workloadv1.Match {
	m := &workloadv1.Match{}
	if src == nil {
		return m
	}
	u.l7("requestPrincipals", src.RequestPrincipals)
	u.l7("notRequestPrincipals", src.NotRequestPrincipals)
	u.l7("remoteIpBlocks", src.RemoteIPBlocks)
	u.l7("notRemoteIpBlocks", src.NotRemoteIPBlocks)
	m.Principals = principalMatches(src.Principals)
	m.NotPrincipals = principalMatches(src.NotPrincipals)
	m.Namespaces = stringMatches(src.Namespaces)
	m.NotNamespaces = stringMatches(src.NotNamespaces)
	m.ServiceAccounts = serviceAccountMatches(src.ServiceAccounts, namespace)
	m.NotServiceAccounts = serviceAccountMatches(src.NotServiceAccounts, namespace)
	m.SourceIps = cidrs("ipBlocks", src.IPBlocks, u)
	m.NotSourceIps = cidrs("notIpBlocks", src.NotIPBlocks, u)
	return m
}

func operationMatch(op *securityv1.Operation, u *fieldSet) *workloadv1.Match {
	m := &workloadv1.Match{}
	if op == nil {
		return m
	}
	u.l7("hosts", op.Hosts)
	u.l7("notHosts", op.NotHosts)
	u.l7("methods", op.Methods)
	u.l7("notMethods", op.NotMethods)
	u.l7("paths", op.Paths)
	u.l7("notPaths", op.NotPaths)
	m.DestinationPorts = ports("ports", op.Ports, u)
	m.NotDestinationPorts = ports("notPorts", op.NotPorts, u)
	return m
}

func whenMatch(c securityv1.Condition, u *fieldSet) *workloadv1.Match {
	m := &workloadv1.Match{}
	if !l4WhenKeys[c.Key] {
		u.add("the when key " + c.Key)
		return m
	}
	field := "when " + c.Key
	switch c.Key {
	case "source.ip":
		m.SourceIps = cidrs(field, c.Values, u)
		m.NotSourceIps = cidrs(field, c.NotValues, u)
	case "source.namespace":
		m.Namespaces = stringMatches(c.Values)
		m.NotNamespaces = stringMatches(c.NotValues)
	case "source.principal":
		m.Principals = principalMatches(c.Values)
		m.NotPrincipals = principalMatches(c.NotValues)
	case "destination.ip":
		m.DestinationIps = cidrs(field, c.Values, u)
		m.NotDestinationIps = cidrs(field, c.NotValues, u)
	case "destination.port":
		m.DestinationPorts = ports(field, c.Values, u)
		m.NotDestinationPorts = ports(field, c.NotValues, u)
	}
	return m
}

// stringMatch turns an Istio pattern into a StringMatch: "*" is presence,
// "abc*" a prefix, "*abc" a suffix, anything else exact.
func stringMatch(v string) *workloadv1.StringMatch {
	switch {
	case v == "*":
		return &workloadv1.StringMatch{MatchType: &workloadv1.StringMatch_Presence{Presence: &workloadv1.Presence{}}}
	case strings.HasPrefix(v, "*"):
		return &workloadv1.StringMatch{MatchType: &workloadv1.StringMatch_Suffix{Suffix: v[1:]}}
	case strings.HasSuffix(v, "*"):
		return &workloadv1.StringMatch{MatchType: &workloadv1.StringMatch_Prefix{Prefix: v[:len(v)-1]}}
	}
	return &workloadv1.StringMatch{MatchType: &workloadv1.StringMatch_Exact{Exact: v}}
}

func stringMatches(values []string) []*workloadv1.StringMatch {
	var out []*workloadv1.StringMatch
	for _, v := range values {
		out = append(out, stringMatch(v))
	}
	return out
}

// principalMatches accepts principals with or without the spiffe://
// scheme; ztunnel compares them without it.
func principalMatches(values []string) []*workloadv1.StringMatch {
	var out []*workloadv1.StringMatch
	for _, v := range values {
		out = append(out, stringMatch(strings.TrimPrefix(v, "spiffe://")))
	}
	return out
}

// serviceAccountMatches reads "<namespace>/<name>", or "<name>" in the
// policy's namespace.
func serviceAccountMatches(values []string, namespace string) []*workloadv1.ServiceAccountMatch {
	var out []*workloadv1.ServiceAccountMatch
	for _, v := range values {
		ns, name, ok := strings.Cut(v, "/")
		if !ok {
			ns, name = namespace, v
		}
		out = append(out, &workloadv1.ServiceAccountMatch{Namespace: ns, ServiceAccount: name})
	}
	return out
}

// cidrs parses IPs and CIDRs. If any value does not parse, the whole field
// is dropped and reported: leaving out one entry of a list would narrow a
// DENY, and for an ALLOW the rule is dropped anyway.
func cidrs(field string, values []string, u *fieldSet) []*workloadv1.CIDR {
	var out []*workloadv1.CIDR
	for _, v := range values {
		prefix, err := ParseCIDR(v)
		if err != nil {
			u.add(fmt.Sprintf("%s value %q (not an IP address or CIDR)", field, v))
			return nil
		}
		out = append(out, &workloadv1.CIDR{Address: prefix.Addr().AsSlice(), Length: uint32(prefix.Bits())})
	}
	return out
}

// ParseCIDR reads an AuthorizationPolicy IP value: a CIDR (masked), or an
// address as a single-address prefix. An IPv6 zone is refused. The
// waypoint's translation (waypointxds) reads IP values with it too, so that
// ztunnel and the waypoint accept the same values.
func ParseCIDR(v string) (netip.Prefix, error) {
	if strings.Contains(v, "/") {
		p, err := netip.ParsePrefix(v)
		if err != nil {
			return netip.Prefix{}, err
		}
		return p.Masked(), nil
	}
	ip, err := netip.ParseAddr(v)
	if err != nil {
		return netip.Prefix{}, err
	}
	if ip.Zone() != "" {
		// netip takes "fe80::1%eth0" as an address; a policy cannot mean
		// "this address on some node's link eth0", and the zone would be
		// lost on the way to ztunnel, which would match the address from
		// anywhere.
		return netip.Prefix{}, fmt.Errorf("%q has an IPv6 zone", v)
	}
	ip = ip.Unmap()
	return netip.PrefixFrom(ip, ip.BitLen()), nil
}

// ports parses port numbers; like cidrs, a bad value drops the field.
func ports(field string, values []string, u *fieldSet) []uint32 {
	var out []uint32
	for _, v := range values {
		n, err := strconv.ParseUint(v, 10, 16)
		if err != nil || n == 0 {
			u.add(fmt.Sprintf("%s value %q (not a port number)", field, v))
			return nil
		}
		out = append(out, uint32(n))
	}
	return out
}
