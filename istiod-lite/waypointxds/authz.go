package waypointxds

import (
	"cmp"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rbachttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	rbacnetv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	securityv1 "github.com/cairnmesh/cairn/apis/security/v1"
	"github.com/cairnmesh/cairn/istiod-lite/model"
)

// ConditionWaypointAccepted is the AuthorizationPolicy condition through
// which the translation says how the waypoint enforces the policy (Istio's
// name for it). LastTransitionTime is left for the status writer.
const ConditionWaypointAccepted = "WaypointAccepted"

// Reasons of the WaypointAccepted condition.
const (
	// PolicyReasonAccepted: the waypoint enforces the policy as written.
	PolicyReasonAccepted = "Accepted"
	// PolicyReasonUnsupportedValue: some parts cannot be enforced; ALLOW
	// rules using them never match (fail closed), DENY and AUDIT rules
	// ignore them (deny or log more), CUSTOM denies what it selects.
	PolicyReasonUnsupportedValue = "UnsupportedValue"
)

// Filter names of Envoy's RBAC filters.
const (
	rbacHTTPFilter    = "envoy.filters.http.rbac"
	rbacNetworkFilter = "envoy.filters.network.rbac"
)

// waypointClass is the GatewayClass of waypoints; a policy in the root
// namespace targeting it applies to every waypoint.
const waypointClass = "istio-waypoint"

// PolicyOutcome is what the translation says about one
// AuthorizationPolicy attached to this waypoint.
type PolicyOutcome struct {
	Policy     types.NamespacedName
	Generation int64
	// Conditions holds one condition, WaypointAccepted.
	Conditions []metav1.Condition
}

// l7Policy is an AuthorizationPolicy translated for this waypoint.
type l7Policy struct {
	key    types.NamespacedName
	action rbacv3.RBAC_Action
	// gateway: the policy applies to every filter chain; else to the chains
	// of services.
	gateway  bool
	services map[types.NamespacedName]bool
	// http and tcp are the Envoy policies for HTTP and TCP chains, by name
	// "<namespace>/<name>/<rule index>" (the name the waypoint logs when
	// a rule decides).
	http, tcp map[string]*rbacv3.Policy
}

func (p *l7Policy) appliesTo(svc types.NamespacedName) bool { return p.gateway || p.services[svc] }

// policies translates the AuthorizationPolicies that target this waypoint's
// Gateway, its GatewayClass (from the root namespace) or a Service bound to
// it. Policies with a selector, or targeting anything else, are not the
// waypoint's.
func (t *translator) policies(bound map[types.NamespacedName]bool) ([]*l7Policy, []PolicyOutcome) {
	var out []*l7Policy
	var outcomes []PolicyOutcome
	for _, p := range t.in.AuthorizationPolicies {
		if p == nil {
			continue
		}
		lp := &l7Policy{key: types.NamespacedName{Namespace: p.Namespace, Name: p.Name}, services: map[types.NamespacedName]bool{}}
		refs := slices.Clone(p.Spec.TargetRefs)
		if p.Spec.TargetRef != nil {
			refs = append(refs, *p.Spec.TargetRef)
		}
		for _, ref := range refs {
			if ref.Namespace != "" && ref.Namespace != p.Namespace {
				continue // policies never reach across namespaces
			}
			switch {
			case ref.Group == gatewayv1.GroupName && ref.Kind == "Gateway":
				lp.gateway = lp.gateway || (p.Namespace == t.in.Waypoint.Namespace && ref.Name == t.in.Waypoint.Name)
			case ref.Group == gatewayv1.GroupName && ref.Kind == "GatewayClass":
				lp.gateway = lp.gateway || (p.Namespace == t.opts.RootNamespace && ref.Name == waypointClass)
			case (ref.Group == "" || ref.Group == "core") && ref.Kind == "Service":
				svc := types.NamespacedName{Namespace: p.Namespace, Name: ref.Name}
				if bound[svc] {
					lp.services[svc] = true
				}
			}
		}
		if !lp.gateway && len(lp.services) == 0 {
			continue
		}
		var problems []string
		switch p.Spec.Action {
		case "", securityv1.ActionAllow:
			lp.action = rbacv3.RBAC_ALLOW
		case securityv1.ActionDeny:
			lp.action = rbacv3.RBAC_DENY
		case securityv1.ActionAudit:
			lp.action = rbacv3.RBAC_LOG
		case securityv1.ActionCustom:
			// No external authorizer: deny what the policy would send to
			// one, rather than let it through unchecked.
			lp.action = rbacv3.RBAC_DENY
			problems = append(problems, "CUSTOM (external authorization) is not supported, so the waypoint denies the requests the policy selects")
		default:
			problems = append(problems, fmt.Sprintf("action %q is not supported, so the waypoint denies the requests the policy selects", p.Spec.Action))
			lp.action = rbacv3.RBAC_DENY
		}
		allow := lp.action == rbacv3.RBAC_ALLOW
		tcpPorts := t.tcpPorts(lp, bound)
		lp.http, lp.tcp = map[string]*rbacv3.Policy{}, map[string]*rbacv3.Policy{}
		report := func(i int, what []string, where string) {
			if allow {
				problems = append(problems, fmt.Sprintf("rule %d uses %s, which %s, so the rule never matches (fails closed)",
					i, strings.Join(what, ", "), where))
			} else {
				problems = append(problems, fmt.Sprintf("rule %d uses %s, which %s, so those parts are ignored and the rule matches more",
					i, strings.Join(what, ", "), where))
			}
		}
		for i, r := range p.Spec.Rules {
			name := fmt.Sprintf("%s/%s/%d", p.Namespace, p.Name, i)
			pol, unsupported := l7Rule(r, p.Namespace, false)
			if len(unsupported) > 0 {
				report(i, unsupported, "the waypoint cannot check")
			}
			if len(unsupported) == 0 || !allow {
				lp.http[name] = pol
			}
			tcpPol, tcpUnsupported := l7Rule(r, p.Namespace, true)
			if extra := slices.DeleteFunc(slices.Clone(tcpUnsupported), func(u string) bool { return slices.Contains(unsupported, u) }); len(extra) > 0 && len(tcpPorts) > 0 {
				report(i, extra, "cannot be checked on the ports that are not HTTP ("+strings.Join(tcpPorts, ", ")+")")
			}
			if len(tcpUnsupported) == 0 || !allow {
				lp.tcp[name] = tcpPol
			}
		}
		out = append(out, lp)
		c := metav1.Condition{Type: ConditionWaypointAccepted, Status: metav1.ConditionTrue, Reason: PolicyReasonAccepted,
			Message:            fmt.Sprintf("waypoint %s/%s enforces every rule of the policy", t.in.Waypoint.Namespace, t.in.Waypoint.Name),
			ObservedGeneration: p.Generation}
		if len(problems) > 0 {
			c.Status, c.Reason = metav1.ConditionFalse, PolicyReasonUnsupportedValue
			c.Message = fmt.Sprintf("waypoint %s/%s: %s", t.in.Waypoint.Namespace, t.in.Waypoint.Name, strings.Join(problems, "; "))
		}
		outcomes = append(outcomes, PolicyOutcome{Policy: lp.key, Generation: p.Generation, Conditions: []metav1.Condition{c}})
	}
	slices.SortFunc(out, func(a, b *l7Policy) int { return cmp.Compare(a.key.String(), b.key.String()) })
	slices.SortFunc(outcomes, func(a, b PolicyOutcome) int { return cmp.Compare(a.Policy.String(), b.Policy.String()) })
	return out, outcomes
}

// tcpPorts lists the bound Service ports that are not HTTP and that a
// policy applies to, as "<namespace>/<name>:<port>".
func (t *translator) tcpPorts(p *l7Policy, bound map[types.NamespacedName]bool) []string {
	var out []string
	for key := range bound {
		if !p.appliesTo(key) {
			continue
		}
		for _, port := range t.services[key].Ports {
			if !protocolOf(port).http() {
				out = append(out, fmt.Sprintf("%s:%d", key, port.Port))
			}
		}
	}
	slices.Sort(out)
	return out
}

// rbacFilters returns, for one chain, the RBAC filters of the policies that
// apply to it, in Istio's order of evaluation: AUDIT (LOG, so that audited
// requests are marked even when denied), DENY, then ALLOW (when any ALLOW
// policy applies, a request must match one of its rules). http selects the
// HTTP or the network filter.
func rbacFilters[F any](policies []*l7Policy, svc types.NamespacedName, http bool, wrap func(name string, cfg *rbacv3.RBAC) F) []F {
	var out []F
	for _, action := range []rbacv3.RBAC_Action{rbacv3.RBAC_LOG, rbacv3.RBAC_DENY, rbacv3.RBAC_ALLOW} {
		var cfg *rbacv3.RBAC
		for _, p := range policies {
			if p.action != action || !p.appliesTo(svc) {
				continue
			}
			if cfg == nil {
				cfg = &rbacv3.RBAC{Action: action, Policies: map[string]*rbacv3.Policy{}}
			}
			src := p.http
			if !http {
				src = p.tcp
			}
			for name, pol := range src {
				cfg.Policies[name] = pol
			}
		}
		if cfg == nil || (action != rbacv3.RBAC_ALLOW && len(cfg.Policies) == 0) {
			// An ALLOW filter without policies denies everything, which is
			// what an ALLOW policy whose rules all fail closed must do;
			// DENY and LOG filters without policies do nothing.
			continue
		}
		name := rbacHTTPFilter
		if !http {
			name = rbacNetworkFilter
		}
		out = append(out, wrap(name, cfg))
	}
	return out
}

func httpRBACFilter(name string, cfg *rbacv3.RBAC) *hcmv3.HttpFilter {
	return &hcmv3.HttpFilter{Name: name, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(&rbachttpv3.RBAC{Rules: cfg})}}
}

func networkRBACFilter(statPrefix string) func(name string, cfg *rbacv3.RBAC) *listenerv3.Filter {
	return func(name string, cfg *rbacv3.RBAC) *listenerv3.Filter {
		return typedFilter(name, &rbacnetv3.RBAC{Rules: cfg, StatPrefix: statPrefix})
	}
}

// l7Rule translates one rule into an Envoy policy: any of its permissions
// (here one AND of the to and when clauses on the request) and any of its
// principals (one AND of the from and when clauses on the caller). With l4,
// only what a TCP connection carries can be checked. unsupported names what
// was left out.
func l7Rule(r securityv1.Rule, namespace string, l4 bool) (*rbacv3.Policy, []string) {
	b := &ruleBuilder{namespace: namespace, l4: l4}
	var perms []*rbacv3.Permission
	var princs []*rbacv3.Principal
	if len(r.From) > 0 {
		var alts []*rbacv3.Principal
		for _, f := range r.From {
			alts = append(alts, b.source(f.Source))
		}
		princs = append(princs, orIDs(alts))
	}
	if len(r.To) > 0 {
		var alts []*rbacv3.Permission
		for _, to := range r.To {
			alts = append(alts, b.operation(to.Operation))
		}
		perms = append(perms, orRules(alts))
	}
	for _, c := range r.When {
		perm, princ := b.when(c)
		if perm != nil {
			perms = append(perms, perm)
		}
		if princ != nil {
			princs = append(princs, princ)
		}
	}
	return &rbacv3.Policy{Permissions: []*rbacv3.Permission{andRules(perms)}, Principals: []*rbacv3.Principal{andIDs(princs)}}, b.unsupported
}

type ruleBuilder struct {
	namespace   string
	l4          bool
	unsupported []string
}

func (b *ruleBuilder) skip(what string) {
	if !slices.Contains(b.unsupported, what) {
		b.unsupported = append(b.unsupported, what)
	}
}

// httpOnly reports whether an HTTP attribute can be checked here, noting
// it as unsupported when it cannot.
func (b *ruleBuilder) httpOnly(field string, values []string) bool {
	if len(values) == 0 {
		return false
	}
	if b.l4 {
		b.skip(field)
		return false
	}
	return true
}

func (b *ruleBuilder) source(s *securityv1.Source) *rbacv3.Principal {
	if s == nil {
		return anyID()
	}
	var ids []*rbacv3.Principal
	add := func(values []string, negate bool, conv func(string) *rbacv3.Principal) {
		if p := principals.anyOf(values, negate, conv); p != nil {
			ids = append(ids, p)
		}
	}
	if len(s.RequestPrincipals) > 0 || len(s.NotRequestPrincipals) > 0 {
		b.skip("requestPrincipals (no RequestAuthentication)")
	}
	add(s.Principals, false, principalID)
	add(s.NotPrincipals, true, principalID)
	add(s.Namespaces, false, namespaceID)
	add(s.NotNamespaces, true, namespaceID)
	add(s.ServiceAccounts, false, b.serviceAccountID)
	add(s.NotServiceAccounts, true, b.serviceAccountID)
	add(s.IPBlocks, false, b.ipID("ipBlocks", directRemoteIP))
	add(s.NotIPBlocks, true, b.ipID("notIpBlocks", directRemoteIP))
	if b.httpOnly("remoteIpBlocks", s.RemoteIPBlocks) {
		add(s.RemoteIPBlocks, false, b.ipID("remoteIpBlocks", remoteIP))
	}
	if b.httpOnly("notRemoteIpBlocks", s.NotRemoteIPBlocks) {
		add(s.NotRemoteIPBlocks, true, b.ipID("notRemoteIpBlocks", remoteIP))
	}
	return andIDs(ids)
}

func (b *ruleBuilder) operation(o *securityv1.Operation) *rbacv3.Permission {
	if o == nil {
		return anyPerm()
	}
	var rules []*rbacv3.Permission
	add := func(values []string, negate bool, conv func(string) *rbacv3.Permission) {
		if p := permissions.anyOf(values, negate, conv); p != nil {
			rules = append(rules, p)
		}
	}
	if b.httpOnly("hosts", o.Hosts) {
		add(o.Hosts, false, hostPerm)
	}
	if b.httpOnly("notHosts", o.NotHosts) {
		add(o.NotHosts, true, hostPerm)
	}
	if b.httpOnly("methods", o.Methods) {
		add(o.Methods, false, methodPerm)
	}
	if b.httpOnly("notMethods", o.NotMethods) {
		add(o.NotMethods, true, methodPerm)
	}
	if b.httpOnly("paths", o.Paths) {
		add(o.Paths, false, pathPerm)
	}
	if b.httpOnly("notPaths", o.NotPaths) {
		add(o.NotPaths, true, pathPerm)
	}
	add(o.Ports, false, b.portPerm("ports"))
	add(o.NotPorts, true, b.portPerm("notPorts"))
	return andRules(rules)
}

// when translates one condition into a permission (request attributes) or
// a principal (caller attributes); unsupported keys give neither.
func (b *ruleBuilder) when(c securityv1.Condition) (*rbacv3.Permission, *rbacv3.Principal) {
	key := c.Key
	if header, ok := strings.CutPrefix(key, "request.headers["); ok && strings.HasSuffix(header, "]") {
		name := strings.ToLower(strings.TrimSuffix(header, "]"))
		if !validToken(name) || b.l4 {
			b.skip("the when key " + key)
			return nil, nil
		}
		return permissions.condition(c, func(v string) *rbacv3.Permission { return headerPerm(name, v, false) }), nil
	}
	switch key {
	case "source.ip":
		return nil, principals.condition(c, b.ipID("when source.ip", directRemoteIP))
	case "remote.ip":
		if b.l4 {
			b.skip("the when key remote.ip")
			return nil, nil
		}
		return nil, principals.condition(c, b.ipID("when remote.ip", remoteIP))
	case "source.namespace":
		return nil, principals.condition(c, namespaceID)
	case "source.principal":
		return nil, principals.condition(c, principalID)
	case "destination.ip":
		return permissions.condition(c, b.destinationIPPerm), nil
	case "destination.port":
		return permissions.condition(c, b.portPerm("when destination.port")), nil
	}
	b.skip("the when key " + key)
	return nil, nil
}

// setOps combines Envoy permissions or principals: any of, all of, not.
type setOps[T any] struct {
	or, and func([]*T) *T
	not     func(*T) *T
}

var (
	permissions = setOps[rbacv3.Permission]{or: orRules, and: andRules, not: func(p *rbacv3.Permission) *rbacv3.Permission {
		return &rbacv3.Permission{Rule: &rbacv3.Permission_NotRule{NotRule: p}}
	}}
	principals = setOps[rbacv3.Principal]{or: orIDs, and: andIDs, not: func(p *rbacv3.Principal) *rbacv3.Principal {
		return &rbacv3.Principal{Identifier: &rbacv3.Principal_NotId{NotId: p}}
	}}
)

// anyOf matches any of values (none of them when negate); nil when no
// value converts (an unsupported value, already noted by conv).
func (o setOps[T]) anyOf(values []string, negate bool, conv func(string) *T) *T {
	var alts []*T
	for _, v := range values {
		if p := conv(v); p != nil {
			alts = append(alts, p)
		}
	}
	if len(alts) == 0 {
		return nil
	}
	if negate {
		return o.not(o.or(alts))
	}
	return o.or(alts)
}

// condition matches a when condition: any of its values and none of its
// notValues; nil when it gives nothing to match.
func (o setOps[T]) condition(c securityv1.Condition, conv func(string) *T) *T {
	var parts []*T
	if p := o.anyOf(c.Values, false, conv); p != nil {
		parts = append(parts, p)
	}
	if p := o.anyOf(c.NotValues, true, conv); p != nil {
		parts = append(parts, p)
	}
	if len(parts) == 0 {
		return nil
	}
	return o.and(parts)
}

// istioMatch turns an Istio value into a StringMatcher: "*" is presence,
// "abc*" a prefix, "*abc" a suffix, anything else exact.
func istioMatch(v, prefix string, ignoreCase bool) *matcherv3.StringMatcher {
	switch {
	case v == "*":
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: ".+"}}}
	case strings.HasPrefix(v, "*"):
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Suffix{Suffix: v[1:]}, IgnoreCase: ignoreCase}
	case strings.HasSuffix(v, "*"):
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: prefix + v[:len(v)-1]}, IgnoreCase: ignoreCase}
	}
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: prefix + v}, IgnoreCase: ignoreCase}
}

func authenticated(m *matcherv3.StringMatcher) *rbacv3.Principal {
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_Authenticated_{Authenticated: &rbacv3.Principal_Authenticated{PrincipalName: m}}}
}

// principalID matches the caller's SPIFFE ID; Istio writes principals
// without the spiffe:// scheme.
func principalID(v string) *rbacv3.Principal {
	return authenticated(istioMatch(strings.TrimPrefix(v, "spiffe://"), "spiffe://", false))
}

// globSegment turns an Istio pattern for one path segment ("*", "a*",
// "*a", "a") into a regular expression.
func globSegment(v string) string {
	switch {
	case v == "*":
		return "[^/]+"
	case strings.HasPrefix(v, "*"):
		return "[^/]*" + regexp.QuoteMeta(v[1:])
	case strings.HasSuffix(v, "*"):
		return regexp.QuoteMeta(v[:len(v)-1]) + "[^/]*"
	}
	return regexp.QuoteMeta(v)
}

// namespaceID matches callers of a namespace by their SPIFFE ID.
func namespaceID(v string) *rbacv3.Principal {
	return authenticated(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{
		Regex: "^spiffe://[^/]+/ns/" + globSegment(v) + "/sa/[^/]+$",
	}}})
}

// serviceAccountID reads "<namespace>/<name>", or "<name>" in the policy's
// namespace.
func (b *ruleBuilder) serviceAccountID(v string) *rbacv3.Principal {
	ns, name, ok := strings.Cut(v, "/")
	if !ok {
		ns, name = b.namespace, v
	}
	return authenticated(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{
		Regex: "^spiffe://[^/]+/ns/" + regexp.QuoteMeta(ns) + "/sa/" + regexp.QuoteMeta(name) + "$",
	}}})
}

func directRemoteIP(c *corev3.CidrRange) *rbacv3.Principal {
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_DirectRemoteIp{DirectRemoteIp: c}}
}

func remoteIP(c *corev3.CidrRange) *rbacv3.Principal {
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_RemoteIp{RemoteIp: c}}
}

// ipID parses IPs and CIDRs; a value that does not parse is reported and
// matches nothing (nil), which for an ALLOW rule drops the rule.
func (b *ruleBuilder) ipID(field string, conv func(*corev3.CidrRange) *rbacv3.Principal) func(string) *rbacv3.Principal {
	return func(v string) *rbacv3.Principal {
		c, err := cidrRange(v)
		if err != nil {
			b.skip(fmt.Sprintf("%s value %q (%v)", field, v, err))
			return nil
		}
		return conv(c)
	}
}

func (b *ruleBuilder) destinationIPPerm(v string) *rbacv3.Permission {
	c, err := cidrRange(v)
	if err != nil {
		b.skip(fmt.Sprintf("when destination.ip value %q (%v)", v, err))
		return nil
	}
	return &rbacv3.Permission{Rule: &rbacv3.Permission_DestinationIp{DestinationIp: c}}
}

func (b *ruleBuilder) portPerm(field string) func(string) *rbacv3.Permission {
	return func(v string) *rbacv3.Permission {
		n, err := strconv.ParseUint(v, 10, 16)
		if err != nil || n == 0 {
			b.skip(fmt.Sprintf("%s value %q (not a port number)", field, v))
			return nil
		}
		return &rbacv3.Permission{Rule: &rbacv3.Permission_DestinationPort{DestinationPort: uint32(n)}}
	}
}

func cidrRange(v string) (*corev3.CidrRange, error) {
	p, err := model.ParseCIDR(v)
	if err != nil {
		return nil, fmt.Errorf("not an IP address or CIDR")
	}
	return &corev3.CidrRange{AddressPrefix: p.Addr().String(), PrefixLen: wrapperspb.UInt32(uint32(p.Bits()))}, nil
}

func headerPerm(name, v string, ignoreCase bool) *rbacv3.Permission {
	return &rbacv3.Permission{Rule: &rbacv3.Permission_Header{Header: &routev3.HeaderMatcher{
		Name: name, HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: istioMatch(v, "", ignoreCase)},
	}}}
}

// hostPerm matches the request's authority, case-insensitively as host
// names compare.
func hostPerm(v string) *rbacv3.Permission { return headerPerm(":authority", v, true) }

func methodPerm(v string) *rbacv3.Permission { return headerPerm(":method", v, false) }

func pathPerm(v string) *rbacv3.Permission {
	return &rbacv3.Permission{Rule: &rbacv3.Permission_UrlPath{UrlPath: &matcherv3.PathMatcher{
		Rule: &matcherv3.PathMatcher_Path{Path: istioMatch(v, "", false)},
	}}}
}

func anyPerm() *rbacv3.Permission { return &rbacv3.Permission{Rule: &rbacv3.Permission_Any{Any: true}} }

func anyID() *rbacv3.Principal {
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_Any{Any: true}}
}

// andRules, orRules, andIDs and orIDs build sets, with "any" for an empty
// AND and no wrapper around a single element. An empty OR never happens:
// callers only build one from a non-empty list.
func andRules(rs []*rbacv3.Permission) *rbacv3.Permission {
	switch len(rs) {
	case 0:
		return anyPerm()
	case 1:
		return rs[0]
	}
	return &rbacv3.Permission{Rule: &rbacv3.Permission_AndRules{AndRules: &rbacv3.Permission_Set{Rules: rs}}}
}

func orRules(rs []*rbacv3.Permission) *rbacv3.Permission {
	if len(rs) == 1 {
		return rs[0]
	}
	return &rbacv3.Permission{Rule: &rbacv3.Permission_OrRules{OrRules: &rbacv3.Permission_Set{Rules: rs}}}
}

func andIDs(ids []*rbacv3.Principal) *rbacv3.Principal {
	switch len(ids) {
	case 0:
		return anyID()
	case 1:
		return ids[0]
	}
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_AndIds{AndIds: &rbacv3.Principal_Set{Ids: ids}}}
}

func orIDs(ids []*rbacv3.Principal) *rbacv3.Principal {
	if len(ids) == 1 {
		return ids[0]
	}
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_OrIds{OrIds: &rbacv3.Principal_Set{Ids: ids}}}
}
