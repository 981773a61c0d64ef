package waypointxds

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/proto"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/cairnmesh/cairn/internal/waypointcontract"
)

// translator holds the indexes of one translation.
type translator struct {
	in       Input
	opts     Options
	services map[types.NamespacedName]Service
	// used are the clusters the resources refer to.
	used map[target]bool
	// l7 are the AuthorizationPolicies attached to this waypoint.
	l7 []*l7Policy
}

func newTranslator(in Input) *translator {
	t := &translator{
		in:       in,
		opts:     in.Options.withDefaults(),
		services: map[types.NamespacedName]Service{},
		used:     map[target]bool{},
	}
	for _, s := range in.Services {
		t.services[s.key()] = s
	}
	return t
}

func (t *translator) clusterName(tg target) string {
	return fmt.Sprintf("outbound|%d||%s.%s.svc.%s", tg.port, tg.service.Name, tg.service.Namespace, t.opts.DomainSuffix)
}

// compiledRoute is a route translated once, independent of the Service
// port it attaches to.
type compiledRoute struct {
	kind       string
	key        types.NamespacedName
	generation int64
	created    time.Time
	parents    []gatewayv1.ParentReference
	rules      []compiledRule
	// refused says why the whole route is refused, "" if it is not.
	refused string
	// dropped lists the rules left out, with the reason of the first.
	dropped    []string
	dropReason gatewayv1.RouteConditionReason
	refs       []problem
}

type compiledRule struct {
	index   int
	name    string
	matches []compiledMatch
	act     action
}

type compiledMatch struct {
	match *routev3.RouteMatch
	rank  rank
	index int
}

func (c *compiledRoute) drop(name string, e *ruleError) {
	if len(c.dropped) == 0 {
		c.dropReason = e.reason
	}
	c.dropped = append(c.dropped, fmt.Sprintf("rule %s: %s", name, e.message))
}

// older orders routes as Gateway API breaks precedence ties: the oldest
// first, then by "<namespace>/<name>".
func (c *compiledRoute) older(o *compiledRoute) int {
	if !c.created.Equal(o.created) {
		if c.created.Before(o.created) {
			return -1
		}
		return 1
	}
	return cmp.Compare(c.key.String(), o.key.String())
}

func (t *translator) compileHTTPRoute(r *gatewayv1.HTTPRoute) *compiledRoute {
	counts := make([]int, len(r.Spec.Rules))
	for i, rule := range r.Spec.Rules {
		counts[i] = len(rule.Matches)
	}
	c := newCompiledRoute(kindHTTPRoute, r.ObjectMeta, r.Spec.ParentRefs, counts)
	if c.refused != "" {
		return c
	}
	for i, rule := range r.Spec.Rules {
		spec := ruleSpec{
			filters: rule.Filters, backends: rule.BackendRefs, timeouts: rule.Timeouts, retry: rule.Retry,
			sessionPersistence: rule.SessionPersistence != nil,
		}
		// ReplacePrefixMatch needs the rule's one PathPrefix match (no
		// match at all is PathPrefix "/").
		if len(rule.Matches) <= 1 {
			typ, value := gatewayv1.PathMatchPathPrefix, "/"
			if len(rule.Matches) == 1 && rule.Matches[0].Path != nil {
				p := rule.Matches[0].Path
				if p.Type != nil {
					typ = *p.Type
				}
				if p.Value != nil {
					value = *p.Value
				}
			}
			spec.prefix, spec.hasPrefix = value, typ == gatewayv1.PathMatchPathPrefix
		}
		t.addRule(c, i, rule.Name, len(rule.Matches), spec, func(j int) (*routev3.RouteMatch, rank, *ruleError) {
			var m gatewayv1.HTTPRouteMatch
			if j < len(rule.Matches) {
				m = rule.Matches[j]
			}
			if len(m.Headers) > maxPerRule || len(m.QueryParams) > maxPerRule {
				return nil, rank{}, unsupported("match %d has more than %d header or query parameter matches", j, maxPerRule)
			}
			rm, rk, err := httpMatch(m)
			if err != nil {
				return nil, rank{}, unsupported("match %d: %v", j, err)
			}
			return rm, rk, nil
		})
	}
	return c
}

func (t *translator) compileGRPCRoute(r *gatewayv1.GRPCRoute) *compiledRoute {
	counts := make([]int, len(r.Spec.Rules))
	for i, rule := range r.Spec.Rules {
		counts[i] = len(rule.Matches)
	}
	c := newCompiledRoute(kindGRPCRoute, r.ObjectMeta, r.Spec.ParentRefs, counts)
	if c.refused != "" {
		return c
	}
	for i, rule := range r.Spec.Rules {
		spec := ruleSpec{filters: grpcFilters(rule.Filters), sessionPersistence: rule.SessionPersistence != nil}
		for _, b := range rule.BackendRefs {
			spec.backends = append(spec.backends, gatewayv1.HTTPBackendRef{BackendRef: b.BackendRef, Filters: grpcFilters(b.Filters)})
		}
		t.addRule(c, i, rule.Name, len(rule.Matches), spec, func(j int) (*routev3.RouteMatch, rank, *ruleError) {
			var m gatewayv1.GRPCRouteMatch
			if j < len(rule.Matches) {
				m = rule.Matches[j]
			}
			if len(m.Headers) > maxPerRule {
				return nil, rank{}, unsupported("match %d has more than %d header matches", j, maxPerRule)
			}
			rm, rk, err := grpcMatch(m)
			if err != nil {
				return nil, rank{}, unsupported("match %d: %v", j, err)
			}
			return rm, rk, nil
		})
	}
	return c
}

// newCompiledRoute starts the translation of a route; matches has the
// number of matches of each rule. A route past the CRDs' bounds is refused
// whole.
func newCompiledRoute(kind string, meta metav1.ObjectMeta, parents []gatewayv1.ParentReference, matches []int) *compiledRoute {
	c := &compiledRoute{
		kind: kind, key: types.NamespacedName{Namespace: meta.Namespace, Name: meta.Name},
		generation: meta.Generation, created: meta.CreationTimestamp.Time, parents: parents,
	}
	total := 0
	for _, n := range matches {
		total += max(1, n) // a rule without matches matches everything: one route
	}
	if len(matches) > maxRules || total > maxMatchesInRoute || len(parents) > maxParentRefs {
		c.refused = fmt.Sprintf("the route has more than %d rules, %d matches or %d parentRefs", maxRules, maxMatchesInRoute, maxParentRefs)
	}
	return c
}

// addRule translates rule index of c: its matches (n of them, or one that
// matches everything when n is 0) with match, then its action. A rule with
// anything that cannot be translated is dropped, with the reason.
func (t *translator) addRule(c *compiledRoute, index int, name *gatewayv1.SectionName, n int, spec ruleSpec,
	match func(j int) (*routev3.RouteMatch, rank, *ruleError)) {
	rn := ruleName(name, index)
	var compiled []compiledMatch
	var rerr *ruleError
	for j := range max(1, n) {
		rm, rk, err := match(j)
		if err != nil {
			rerr = err
			break
		}
		compiled = append(compiled, compiledMatch{rm, rk, j})
	}
	var act action
	if rerr == nil {
		act, rerr = t.buildAction(c.kind, c.key.Namespace, c.parents, spec)
	}
	c.refs = append(c.refs, act.refs...)
	if rerr != nil {
		c.drop(rn, rerr)
		return
	}
	c.rules = append(c.rules, compiledRule{index: index, name: rn, matches: compiled, act: act})
}

// grpcFilters converts GRPCRoute filters into the HTTPRoute filters they
// are a subset of (same type names, same fields).
func grpcFilters(fs []gatewayv1.GRPCRouteFilter) []gatewayv1.HTTPRouteFilter {
	out := make([]gatewayv1.HTTPRouteFilter, 0, len(fs))
	for _, f := range fs {
		out = append(out, gatewayv1.HTTPRouteFilter{
			Type:                   gatewayv1.HTTPRouteFilterType(f.Type),
			RequestHeaderModifier:  f.RequestHeaderModifier,
			ResponseHeaderModifier: f.ResponseHeaderModifier,
			RequestMirror:          f.RequestMirror,
			ExtensionRef:           f.ExtensionRef,
		})
	}
	return out
}

// portKey is one bound Service port.
type portKey struct {
	service types.NamespacedName
	port    int32
}

// attachment is a route attached to a Service port through one parentRef.
type attachment struct {
	route       *compiledRoute
	parentIndex int
}

// parentState collects what happened to one (route, parentRef).
type parentState struct {
	route       *compiledRoute
	parentIndex int
	// ports the route applies to; lost says why it does not apply to
	// others (lost to a route of the other kind, or past the route limit),
	// lostReason is the reason of the first.
	ports      []int32
	lost       []string
	lostReason gatewayv1.RouteConditionReason
	// notAccepted says why the parentRef is not accepted, "" if it is.
	notAccepted string
	reason      gatewayv1.RouteConditionReason
}

func (t *translator) run() Output {
	var routes []*compiledRoute
	for _, r := range t.in.HTTPRoutes {
		if r != nil && t.namesBoundService(r.Namespace, r.Spec.ParentRefs) {
			routes = append(routes, t.compileHTTPRoute(r))
		}
	}
	for _, r := range t.in.GRPCRoutes {
		if r != nil && t.namesBoundService(r.Namespace, r.Spec.ParentRefs) {
			routes = append(routes, t.compileGRPCRoute(r))
		}
	}
	slices.SortFunc(routes, func(a, b *compiledRoute) int {
		return cmp.Or(cmp.Compare(a.kind, b.kind), cmp.Compare(a.key.String(), b.key.String()))
	})

	attached := map[portKey][]attachment{}
	var states []*parentState
	for _, r := range routes {
		seen := map[portKey]bool{}
		for pi, ref := range r.parents {
			svc, ok := t.boundParent(r.key.Namespace, ref)
			if !ok {
				continue
			}
			st := &parentState{route: r, parentIndex: pi}
			states = append(states, st)
			ports, why := t.attachablePorts(r, svc, ref)
			if why != "" {
				st.notAccepted, st.reason = why, gatewayv1.RouteReasonNoMatchingParent
				continue
			}
			switch {
			case r.refused != "":
				st.notAccepted, st.reason = r.refused, gatewayv1.RouteReasonUnsupportedValue
				continue
			case len(r.rules) == 0 && len(r.dropped) > 0:
				st.notAccepted, st.reason = "every rule is invalid: "+strings.Join(r.dropped, "; "), r.dropReason
				continue
			}
			st.ports = ports
			for _, p := range ports {
				pk := portKey{svc.key(), p}
				if !seen[pk] {
					seen[pk] = true
					attached[pk] = append(attached[pk], attachment{route: r, parentIndex: pi})
				}
			}
		}
	}
	t.resolveKindConflicts(attached, states)
	t.limitRoutes(attached, states)

	out := Output{}
	var bound []Service
	for _, s := range t.services {
		if s.Waypoint != nil && *s.Waypoint == t.in.Waypoint.key() && t.in.Waypoint.servesServices() && len(s.VIPs) > 0 {
			bound = append(bound, s)
		}
	}
	slices.SortFunc(bound, func(a, b Service) int { return cmp.Compare(a.key().String(), b.key().String()) })
	boundSet := map[types.NamespacedName]bool{}
	for _, s := range bound {
		boundSet[s.key()] = true
	}
	t.l7, out.Policies = t.policies(boundSet)
	var chains []chainSpec
	for _, s := range bound {
		ports := slices.Clone(s.Ports)
		slices.SortFunc(ports, func(a, b Port) int { return cmp.Compare(a.Port, b.Port) })
		for _, p := range ports {
			pk := portKey{s.key(), p.Port}
			pr := protocolOf(p)
			chains = append(chains, chainSpec{service: s, port: p, proto: pr, routeConfig: t.routeConfigName(pk)})
			if !pr.http() {
				t.used[target{s.key(), p.Port}] = true
				continue
			}
			out.Routes = append(out.Routes, t.routeConfig(pk, attached[pk]))
		}
	}
	if len(chains) > 0 {
		out.Listener = t.listener(chains)
	}
	out.Clusters, out.LoadAssignments = t.clusters()
	out.Outcomes = t.outcomes(states)
	return out
}

// namesBoundService reports whether a route has a parentRef to a Service
// bound to this waypoint.
func (t *translator) namesBoundService(routeNS string, refs []gatewayv1.ParentReference) bool {
	for _, ref := range refs {
		if _, ok := t.boundParent(routeNS, ref); ok {
			return true
		}
	}
	return false
}

// boundParent returns the Service a parentRef names if it is bound to this
// waypoint.
func (t *translator) boundParent(routeNS string, ref gatewayv1.ParentReference) (Service, bool) {
	key, ok := serviceParent(routeNS, ref)
	if !ok {
		return Service{}, false
	}
	svc, ok := t.services[key]
	if !ok || svc.Waypoint == nil || *svc.Waypoint != t.in.Waypoint.key() {
		return Service{}, false
	}
	return svc, true
}

// serviceParent returns the Service a parentRef names, or false when it
// names something else (a Gateway, for example).
func serviceParent(routeNS string, ref gatewayv1.ParentReference) (types.NamespacedName, bool) {
	group := gatewayv1.GroupName
	if ref.Group != nil {
		group = string(*ref.Group)
	}
	kind := "Gateway"
	if ref.Kind != nil {
		kind = string(*ref.Kind)
	}
	if (group != "" && group != "core") || kind != "Service" {
		return types.NamespacedName{}, false
	}
	ns := routeNS
	if ref.Namespace != nil && *ref.Namespace != "" {
		ns = string(*ref.Namespace)
	}
	return types.NamespacedName{Namespace: ns, Name: string(ref.Name)}, true
}

// attachablePorts returns the ports of svc a route attaches to through ref,
// or why it attaches to none.
func (t *translator) attachablePorts(r *compiledRoute, svc Service, ref gatewayv1.ParentReference) ([]int32, string) {
	w := t.in.Waypoint
	if !w.servesServices() {
		return nil, fmt.Sprintf("Service %s uses waypoint %s/%s, which handles %s traffic only (istio.io/waypoint-for: %s): "+
			"set istio.io/waypoint-for to service or all on the waypoint for routes to apply", svc.key(), w.Namespace, w.Name, w.For, w.For)
	}
	if len(svc.VIPs) == 0 {
		return nil, fmt.Sprintf("Service %s is headless: routes apply to traffic sent to a Service's cluster IP, and a headless Service has none", svc.key())
	}
	ok := func(p Port) bool {
		if r.kind == kindGRPCRoute {
			return protocolOf(p).grpc()
		}
		return protocolOf(p).http()
	}
	explicit := ref.Port != nil || (ref.SectionName != nil && *ref.SectionName != "")
	var out []int32
	var refusedWhy string
	for _, p := range svc.Ports {
		if ref.Port != nil && p.Port != int32(*ref.Port) {
			continue
		}
		if ref.SectionName != nil && *ref.SectionName != "" && p.Name != string(*ref.SectionName) {
			continue
		}
		if !ok(p) {
			refusedWhy = fmt.Sprintf("port %d of Service %s carries %s, not what a %s needs: set its appProtocol (http, http2, grpc or kubernetes.io/h2c)",
				p.Port, svc.key(), protocolOf(p), r.kind)
			continue
		}
		out = append(out, p.Port)
	}
	slices.Sort(out)
	switch {
	case len(out) > 0:
		return out, ""
	case refusedWhy != "" && explicit:
		return nil, refusedWhy
	case explicit:
		return nil, fmt.Sprintf("Service %s has no port matching the parentRef (port %v, sectionName %q); its ports: %s",
			svc.key(), deref(ref.Port), deref(ref.SectionName), portList(svc))
	}
	want := "HTTP"
	if r.kind == kindGRPCRoute {
		want = "HTTP/2"
	}
	return nil, fmt.Sprintf("Service %s has no %s port: set appProtocol on the ports the route is for", svc.key(), want)
}

// resolveKindConflicts keeps, on each Service port, only routes of one
// kind: Gateway API forbids merging HTTPRoutes and GRPCRoutes, and accepts
// the kind of the oldest route.
func (t *translator) resolveKindConflicts(attached map[portKey][]attachment, states []*parentState) {
	for _, pk := range sortedPortKeys(attached) {
		atts := attached[pk]
		var winner *compiledRoute
		mixed := false
		for _, a := range atts {
			if winner == nil || a.route.older(winner) < 0 {
				winner = a.route
			}
		}
		for _, a := range atts {
			mixed = mixed || a.route.kind != winner.kind
		}
		if !mixed {
			continue
		}
		kept := atts[:0]
		for _, a := range atts {
			if a.route.kind == winner.kind {
				kept = append(kept, a)
				continue
			}
			for _, st := range statesOf(states, a.route, pk) {
				st.lose(pk.port, ReasonConflicted, fmt.Sprintf("port %d lost to %s %s, which is older (HTTPRoutes and GRPCRoutes do not merge on a Service port)",
					pk.port, winner.kind, winner.key))
			}
		}
		attached[pk] = kept
	}
}

func (st *parentState) lose(port int32, reason gatewayv1.RouteConditionReason, msg string) {
	st.ports = slices.DeleteFunc(st.ports, func(p int32) bool { return p == port })
	if len(st.lost) == 0 {
		st.lostReason = reason
	}
	st.lost = append(st.lost, msg)
}

// sortedPortKeys returns the keys in a fixed order, so that messages that
// list several ports always list them the same way.
func sortedPortKeys(m map[portKey][]attachment) []portKey {
	keys := make([]portKey, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b portKey) int {
		return cmp.Or(cmp.Compare(a.service.String(), b.service.String()), cmp.Compare(a.port, b.port))
	})
	return keys
}

// statesOf returns the states of a route's parentRefs that attach it to a
// Service port (several parentRefs may name the same port).
func statesOf(states []*parentState, r *compiledRoute, pk portKey) []*parentState {
	var out []*parentState
	for _, st := range states {
		if st.route == r && slices.Contains(st.ports, pk.port) && parentKey(r, st.parentIndex) == pk.service {
			out = append(out, st)
		}
	}
	return out
}

// limitRoutes bounds the Envoy routes of each Service port: any namespace
// may attach consumer routes to any Service, so without a bound a hostile
// namespace could grow another team's waypoint configuration at will.
// Producer routes are kept first, then consumer routes, the oldest first;
// a route that does not fit is left out of that port, and says so.
func (t *translator) limitRoutes(attached map[portKey][]attachment, states []*parentState) {
	limit := t.opts.MaxRoutesPerPort
	for _, pk := range sortedPortKeys(attached) {
		atts := attached[pk]
		total := 0
		for _, a := range atts {
			total += a.route.matchCount()
		}
		if total <= limit {
			continue
		}
		sorted := slices.Clone(atts)
		slices.SortFunc(sorted, func(a, b attachment) int {
			ca, cb := a.route.key.Namespace != pk.service.Namespace, b.route.key.Namespace != pk.service.Namespace
			if ca != cb {
				if cb {
					return -1
				}
				return 1
			}
			return a.route.older(b.route)
		})
		var kept []attachment
		n := 0
		for _, a := range sorted {
			c := a.route.matchCount()
			if n+c > limit {
				for _, st := range statesOf(states, a.route, pk) {
					st.lose(pk.port, ReasonTooManyRoutes, fmt.Sprintf(
						"port %d: the Service port already has the most routes a waypoint takes (%d matches); older routes and producer routes come first",
						pk.port, limit))
				}
				continue
			}
			n += c
			kept = append(kept, a)
		}
		attached[pk] = kept
	}
	for _, st := range states {
		if st.notAccepted == "" && len(st.ports) == 0 && len(st.lost) > 0 {
			st.notAccepted, st.reason = strings.Join(st.lost, "; "), st.lostReason
		}
	}
}

// matchCount is how many Envoy routes the route gives per port.
func (c *compiledRoute) matchCount() int {
	n := 0
	for _, r := range c.rules {
		n += len(r.matches)
	}
	return n
}

// Accepted reasons of Cairn's own, where Gateway API has none.
const (
	// ReasonConflicted: the route lost every port it names to an older
	// route of the other kind (HTTPRoute or GRPCRoute).
	ReasonConflicted gatewayv1.RouteConditionReason = "Conflicted"
	// ReasonTooManyRoutes: every port the route names already has
	// Options.MaxRoutesPerPort routes.
	ReasonTooManyRoutes gatewayv1.RouteConditionReason = "TooManyRoutes"
)

func (t *translator) routeConfigName(pk portKey) string {
	return fmt.Sprintf("%s:%d", pk.service, pk.port)
}

// entry is one Envoy route to be: a match of a rule of a route.
type entry struct {
	route *compiledRoute
	rule  *compiledRule
	match compiledMatch
}

func (e entry) compare(o entry) int {
	if e.match.rank != o.match.rank {
		if e.match.rank.less(o.match.rank) {
			return -1
		}
		return 1
	}
	return cmp.Or(e.route.older(o.route), cmp.Compare(e.rule.index, o.rule.index), cmp.Compare(e.match.index, o.match.index))
}

// routeConfig builds the RouteConfiguration of one bound Service port.
func (t *translator) routeConfig(pk portKey, atts []attachment) *routev3.RouteConfiguration {
	var producers []entry
	consumers := map[string][]entry{}
	for _, a := range atts {
		for ri := range a.route.rules {
			rule := &a.route.rules[ri]
			for _, m := range rule.matches {
				e := entry{a.route, rule, m}
				if ns := a.route.key.Namespace; ns != pk.service.Namespace {
					consumers[ns] = append(consumers[ns], e)
				} else {
					producers = append(producers, e)
				}
			}
		}
	}
	var out []*routev3.Route
	for _, ns := range slices.Sorted(maps.Keys(consumers)) {
		es := consumers[ns]
		slices.SortFunc(es, entry.compare)
		for _, e := range es {
			out = append(out, t.envoyRoute(e, ns))
		}
		if len(producers) == 0 {
			// The consumer's requests have rules here, so a request none
			// of them matches is a 404, not the Service's default route.
			out = append(out, &routev3.Route{
				Name:     "consumer-no-match/" + ns,
				Match:    &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}, FilterState: []*matcherv3.FilterStateMatcher{t.callerFrom(ns)}},
				Action:   &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{Status: 404}},
				Metadata: metadata(map[string]any{waypointcontract.MetadataKind: "Namespace", waypointcontract.MetadataName: ns}),
			})
		}
	}
	slices.SortFunc(producers, entry.compare)
	for _, e := range producers {
		out = append(out, t.envoyRoute(e, ""))
	}
	if len(producers) == 0 {
		own := target(pk)
		t.used[own] = true
		out = append(out, &routev3.Route{
			Name:  "default/" + t.routeConfigName(pk),
			Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
			Action: &routev3.Route_Route{Route: &routev3.RouteAction{
				ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: t.clusterName(own)},
				Timeout:          zeroDuration(),
			}},
			Metadata: metadata(map[string]any{
				waypointcontract.MetadataKind:      "Service",
				waypointcontract.MetadataNamespace: pk.service.Namespace,
				waypointcontract.MetadataName:      pk.service.Name,
			}),
		})
	}
	name := t.routeConfigName(pk)
	return &routev3.RouteConfiguration{
		Name: name,
		VirtualHosts: []*routev3.VirtualHost{{
			// Every Host: the route is chosen by the address the client
			// dialled, never by the Host header.
			Name:    name,
			Domains: []string{"*"},
			Routes:  out,
		}},
	}
}

// envoyRoute is the Envoy route of one match; consumerNS, when set,
// restricts it to callers from that namespace.
func (t *translator) envoyRoute(e entry, consumerNS string) *routev3.Route {
	r := proto.CloneOf(e.rule.act.route)
	r.Match = proto.CloneOf(e.match.match)
	if consumerNS != "" {
		r.Match.FilterState = append(r.Match.FilterState, t.callerFrom(consumerNS))
	}
	r.Name = fmt.Sprintf("%s/%s/%s/%s", e.route.kind, e.route.key.Namespace, e.route.key.Name, e.rule.name)
	r.Metadata = metadata(map[string]any{
		waypointcontract.MetadataKind:      e.route.kind,
		waypointcontract.MetadataNamespace: e.route.key.Namespace,
		waypointcontract.MetadataName:      e.route.key.Name,
		waypointcontract.MetadataRule:      e.rule.name,
		waypointcontract.MetadataMatch:     e.match.index,
	})
	for _, tg := range e.rule.act.targets {
		t.used[tg] = true
	}
	return r
}

// callerFrom matches requests whose HBONE peer is a workload of namespace
// ns: its SPIFFE ID, which the waypoint keeps in filter state from the
// mTLS handshake, starts with spiffe://<trust domain>/ns/<ns>/sa/. The
// peer's certificate, not a header a client could set, says where the
// request comes from.
func (t *translator) callerFrom(ns string) *matcherv3.FilterStateMatcher {
	return &matcherv3.FilterStateMatcher{
		Key: waypointcontract.PeerPrincipalFilterState,
		Matcher: &matcherv3.FilterStateMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{
			MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: "spiffe://" + t.opts.TrustDomain + "/ns/" + ns + "/sa/"},
		}},
	}
}
