package waypointxds

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/cairnmesh/cairn/internal/waypointcontract"
)

// Route kinds, as in Gateway API and in route names.
const (
	kindHTTPRoute = "HTTPRoute"
	kindGRPCRoute = "GRPCRoute"
)

// Bounds on one route. They are the CRDs' own limits; the translation
// enforces them again because it does not trust that the CRDs are installed
// with their validation, and a route past them is refused whole.
const (
	maxRules          = 16
	maxMatchesInRoute = 128
	maxPerRule        = 16 // backendRefs, filters, headers or query matches per match
	maxParentRefs     = 32
)

// ruleSpec is an HTTPRoute or GRPCRoute rule in the shape both share;
// GRPCRoute rules are converted into it (their filters are a subset of
// HTTPRoute's).
type ruleSpec struct {
	filters  []gatewayv1.HTTPRouteFilter
	backends []gatewayv1.HTTPBackendRef
	timeouts *gatewayv1.HTTPRouteTimeouts
	retry    *gatewayv1.HTTPRouteRetry
	// sessionPersistence is set when the rule asks for it (not supported).
	sessionPersistence bool
	// prefix is the value of the rule's single PathPrefix match, for
	// ReplacePrefixMatch; hasPrefix is false unless the rule has exactly one
	// match and it is a PathPrefix.
	prefix    string
	hasPrefix bool
}

// action is what a rule does, shared by the Envoy routes of its matches.
type action struct {
	// route holds the action and the header mutations; Match, Name and
	// Metadata are set per match.
	route *routev3.Route
	// targets are the clusters the rule sends to or mirrors to.
	targets []target
	// refs are the references that did not resolve.
	refs []problem
}

// ruleError is why a rule is dropped: an Accepted reason and a message.
type ruleError struct {
	reason  gatewayv1.RouteConditionReason
	message string
}

func unsupported(format string, args ...any) *ruleError {
	return &ruleError{gatewayv1.RouteReasonUnsupportedValue, fmt.Sprintf(format, args...)}
}

func incompatible(format string, args ...any) *ruleError {
	return &ruleError{gatewayv1.RouteReasonIncompatibleFilters, fmt.Sprintf(format, args...)}
}

// buildAction translates a rule's filters, backends, timeouts and retry.
func (t *translator) buildAction(kind, routeNS string, parents []gatewayv1.ParentReference, spec ruleSpec) (action, *ruleError) {
	var a action
	if spec.sessionPersistence {
		return a, unsupported("sessionPersistence is not supported")
	}
	if len(spec.filters) > maxPerRule || len(spec.backends) > maxPerRule {
		return a, unsupported("more than %d filters or backendRefs in a rule", maxPerRule)
	}
	var (
		reqHeaders, respHeaders *gatewayv1.HTTPHeaderFilter
		redirect                *gatewayv1.HTTPRequestRedirectFilter
		rewrite                 *gatewayv1.HTTPURLRewriteFilter
		mirrors                 []*gatewayv1.HTTPRequestMirrorFilter
	)
	for _, f := range spec.filters {
		missing := false
		switch f.Type {
		case gatewayv1.HTTPRouteFilterRequestHeaderModifier:
			reqHeaders, missing = f.RequestHeaderModifier, f.RequestHeaderModifier == nil
		case gatewayv1.HTTPRouteFilterResponseHeaderModifier:
			respHeaders, missing = f.ResponseHeaderModifier, f.ResponseHeaderModifier == nil
		case gatewayv1.HTTPRouteFilterRequestRedirect:
			redirect, missing = f.RequestRedirect, f.RequestRedirect == nil
		case gatewayv1.HTTPRouteFilterURLRewrite:
			rewrite, missing = f.URLRewrite, f.URLRewrite == nil
		case gatewayv1.HTTPRouteFilterRequestMirror:
			mirrors, missing = append(mirrors, f.RequestMirror), f.RequestMirror == nil
		case gatewayv1.HTTPRouteFilterCORS, gatewayv1.HTTPRouteFilterExternalAuth, gatewayv1.HTTPRouteFilterExtensionRef:
			return a, unsupported("the %s filter is not supported by Cairn's waypoint", f.Type)
		default:
			return a, unsupported("filter type %q is not supported", f.Type)
		}
		if missing {
			return a, unsupported("filter type %s without its %s field", f.Type, lowerFirst(string(f.Type)))
		}
	}
	switch {
	case redirect != nil && rewrite != nil:
		return a, incompatible("RequestRedirect and URLRewrite cannot be combined")
	case redirect != nil && len(spec.backends) > 0:
		return a, incompatible("RequestRedirect cannot be combined with backendRefs: a redirect is answered by the waypoint")
	case redirect != nil && len(mirrors) > 0:
		return a, incompatible("RequestRedirect cannot be combined with RequestMirror: a redirect is answered by the waypoint and nothing is forwarded to mirror")
	}

	r := &routev3.Route{}
	var err error
	if reqHeaders != nil {
		if r.RequestHeadersToAdd, r.RequestHeadersToRemove, err = headerOptions(reqHeaders); err != nil {
			return a, unsupported("RequestHeaderModifier: %v", err)
		}
	}
	if respHeaders != nil {
		if r.ResponseHeadersToAdd, r.ResponseHeadersToRemove, err = headerOptions(respHeaders); err != nil {
			return a, unsupported("ResponseHeaderModifier: %v", err)
		}
	}
	a.route = r

	if redirect != nil {
		ra, rerr := redirectAction(redirect, spec)
		if rerr != nil {
			return a, rerr
		}
		r.Action = &routev3.Route_Redirect{Redirect: ra}
		return a, nil
	}

	ra := &routev3.RouteAction{}
	failStatus := uint32(500)
	if kind == kindGRPCRoute {
		// gRPC clients see 503 as UNAVAILABLE, which GRPCRoute requires.
		failStatus = 503
	}
	if rerr := t.backends(kind, routeNS, parents, spec.backends, ra, &a); rerr != nil {
		return a, rerr
	}
	if ra.ClusterSpecifier == nil {
		// No backend, all invalid, or all weights 0: Gateway API answers
		// every request with 500 (UNAVAILABLE for gRPC).
		r.Action = &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{Status: failStatus}}
		return a, nil
	}

	if rewrite != nil {
		if rewrite.Hostname != nil {
			host := string(*rewrite.Hostname)
			if !validHeaderValue(host) || host == "" {
				return a, unsupported("URLRewrite hostname %q is not valid", host)
			}
			ra.HostRewriteSpecifier = &routev3.RouteAction_HostRewriteLiteral{HostRewriteLiteral: host}
		}
		if p := rewrite.Path; p != nil {
			pc, rerr := pathModifier("URLRewrite", p, spec)
			if rerr != nil {
				return a, rerr
			}
			if pc.full != "" {
				ra.RegexRewrite = &matcherv3.RegexMatchAndSubstitute{
					Pattern:      &matcherv3.RegexMatcher{Regex: "^/.*$"},
					Substitution: escapeSubstitution(pc.full),
				}
			} else {
				ra.PrefixRewrite, ra.RegexRewrite = pc.prefix, pc.regex
			}
		}
	}

	for _, m := range mirrors {
		policy, tgt, prob, rerr := t.mirror(kind, routeNS, parents, m)
		if rerr != nil {
			return a, rerr
		}
		if prob != nil {
			a.refs = append(a.refs, *prob)
			continue
		}
		ra.RequestMirrorPolicies = append(ra.RequestMirrorPolicies, policy)
		a.targets = append(a.targets, tgt)
	}

	// Always set: Envoy's default of 15 s must not apply, and a long gRPC
	// stream must not be cut. 0 means no timeout.
	ra.Timeout = durationpb.New(0)
	var perTry *durationpb.Duration
	if to := spec.timeouts; to != nil {
		if to.Request != nil {
			d, err := parseDuration(*to.Request)
			if err != nil {
				return a, unsupported("timeouts.request: %v", err)
			}
			ra.Timeout = durationpb.New(d)
		}
		if to.BackendRequest != nil {
			d, err := parseDuration(*to.BackendRequest)
			if err != nil {
				return a, unsupported("timeouts.backendRequest: %v", err)
			}
			if d > 0 {
				perTry = durationpb.New(d)
			}
		}
	}
	if spec.retry != nil {
		rp, rerr := retryPolicy(spec.retry)
		if rerr != nil {
			return a, rerr
		}
		rp.PerTryTimeout = perTry
		ra.RetryPolicy = rp
	} else if perTry != nil {
		// A per-try timeout without retries: one try, bounded.
		ra.RetryPolicy = &routev3.RetryPolicy{NumRetries: wrapperspb.UInt32(0), PerTryTimeout: perTry}
	}
	r.Action = &routev3.Route_Route{Route: ra}
	return a, nil
}

// backends sets the cluster specifier of ra from the rule's backendRefs, or
// leaves it nil when every request must fail. Each backend's weight is kept,
// 0 included (it receives nothing, but the configuration still says so); the
// share of backends that did not resolve goes to InvalidBackendCluster,
// which the route answers with 500.
func (t *translator) backends(kind, routeNS string, parents []gatewayv1.ParentReference, refs []gatewayv1.HTTPBackendRef, ra *routev3.RouteAction, a *action) *ruleError {
	var (
		weighted     []*routev3.WeightedCluster_ClusterWeight
		total        uint64
		invalid      uint64
		withFilters  bool
		validTargets []target
	)
	for _, ref := range refs {
		weight := uint64(1)
		if ref.Weight != nil {
			if *ref.Weight < 0 || *ref.Weight > 1000000 {
				return unsupported("backendRef weight %d is outside 0..1000000", *ref.Weight)
			}
			weight = uint64(*ref.Weight)
		}
		total += weight
		cw := &routev3.WeightedCluster_ClusterWeight{Weight: wrapperspb.UInt32(uint32(weight))}
		for _, f := range ref.Filters {
			var err error
			switch {
			case f.Type == gatewayv1.HTTPRouteFilterRequestHeaderModifier && f.RequestHeaderModifier != nil:
				cw.RequestHeadersToAdd, cw.RequestHeadersToRemove, err = headerOptions(f.RequestHeaderModifier)
			case f.Type == gatewayv1.HTTPRouteFilterResponseHeaderModifier && f.ResponseHeaderModifier != nil:
				cw.ResponseHeadersToAdd, cw.ResponseHeadersToRemove, err = headerOptions(f.ResponseHeaderModifier)
			default:
				return unsupported("the %s filter is not supported on a backendRef (only RequestHeaderModifier and ResponseHeaderModifier are)", f.Type)
			}
			if err != nil {
				return unsupported("backendRef %s filter: %v", f.Type, err)
			}
			withFilters = true
		}
		tgt, prob := t.resolveBackend(kind, routeNS, parents, ref.BackendObjectReference)
		if prob != nil {
			a.refs = append(a.refs, *prob)
			invalid += weight
			continue
		}
		cw.Name = t.clusterName(tgt)
		weighted = append(weighted, cw)
		validTargets = append(validTargets, tgt)
	}
	if total == 0 || len(weighted) == 0 {
		return nil
	}
	a.targets = append(a.targets, validTargets...)
	if len(refs) == 1 && !withFilters {
		ra.ClusterSpecifier = &routev3.RouteAction_Cluster{Cluster: weighted[0].Name}
		return nil
	}
	if invalid > 0 {
		weighted = append(weighted, &routev3.WeightedCluster_ClusterWeight{
			Name:   waypointcontract.InvalidBackendCluster,
			Weight: wrapperspb.UInt32(uint32(invalid)),
		})
		if kind == kindHTTPRoute {
			// GRPCRoute keeps Envoy's default, 503 (UNAVAILABLE).
			ra.ClusterNotFoundResponseCode = routev3.RouteAction_INTERNAL_SERVER_ERROR
		}
	}
	ra.ClusterSpecifier = &routev3.RouteAction_WeightedClusters{WeightedClusters: &routev3.WeightedCluster{Clusters: weighted}}
	return nil
}

// mirror translates a RequestMirror filter. A backend that does not
// resolve is reported and not mirrored to, as Gateway API requires.
func (t *translator) mirror(kind, routeNS string, parents []gatewayv1.ParentReference, m *gatewayv1.HTTPRequestMirrorFilter) (*routev3.RouteAction_RequestMirrorPolicy, target, *problem, *ruleError) {
	fraction := &typev3.FractionalPercent{Numerator: 100, Denominator: typev3.FractionalPercent_HUNDRED}
	switch {
	case m.Percent != nil && m.Fraction != nil:
		return nil, target{}, nil, unsupported("RequestMirror sets both percent and fraction")
	case m.Percent != nil:
		if *m.Percent < 0 || *m.Percent > 100 {
			return nil, target{}, nil, unsupported("RequestMirror percent %d is outside 0..100", *m.Percent)
		}
		fraction.Numerator = uint32(*m.Percent)
	case m.Fraction != nil:
		f, err := fractionalPercent(m.Fraction)
		if err != nil {
			return nil, target{}, nil, unsupported("RequestMirror fraction: %v", err)
		}
		fraction = f
	}
	tgt, prob := t.resolveBackend(kind, routeNS, parents, m.BackendRef)
	if prob != nil {
		prob.message = "RequestMirror " + prob.message
		return nil, target{}, prob, nil
	}
	return &routev3.RouteAction_RequestMirrorPolicy{
		Cluster:                       t.clusterName(tgt),
		RuntimeFraction:               &corev3.RuntimeFractionalPercent{DefaultValue: fraction},
		DisableShadowHostSuffixAppend: true,
	}, tgt, nil, nil
}

// fractionalPercent represents numerator/denominator exactly when one of
// Envoy's denominators (100, 10 000, 1 000 000) is a multiple of it, else
// rounds down to millionths.
func fractionalPercent(f *gatewayv1.Fraction) (*typev3.FractionalPercent, error) {
	den := int64(100)
	if f.Denominator != nil {
		den = int64(*f.Denominator)
	}
	num := int64(f.Numerator)
	if den <= 0 || num < 0 || num > den {
		return nil, fmt.Errorf("%d/%d is not a fraction between 0 and 1", num, den)
	}
	for _, d := range []struct {
		value int64
		typ   typev3.FractionalPercent_DenominatorType
	}{{100, typev3.FractionalPercent_HUNDRED}, {10000, typev3.FractionalPercent_TEN_THOUSAND}, {1000000, typev3.FractionalPercent_MILLION}} {
		if d.value%den == 0 {
			return &typev3.FractionalPercent{Numerator: uint32(num * (d.value / den)), Denominator: d.typ}, nil
		}
	}
	return &typev3.FractionalPercent{Numerator: uint32(num * 1000000 / den), Denominator: typev3.FractionalPercent_MILLION}, nil
}

// redirectAction translates a RequestRedirect filter. The port follows
// Gateway API: the filter's port; else, when the scheme changes, the
// scheme's well-known port (80 for http, 443 for https), which Envoy and
// the waypoint leave out of Location; else the port the request came to
// (port_redirect unset).
func redirectAction(f *gatewayv1.HTTPRequestRedirectFilter, spec ruleSpec) (*routev3.RedirectAction, *ruleError) {
	ra := &routev3.RedirectAction{ResponseCode: routev3.RedirectAction_FOUND}
	if f.StatusCode != nil {
		switch *f.StatusCode {
		case 301:
			ra.ResponseCode = routev3.RedirectAction_MOVED_PERMANENTLY
		case 302:
			ra.ResponseCode = routev3.RedirectAction_FOUND
		case 303:
			ra.ResponseCode = routev3.RedirectAction_SEE_OTHER
		case 307:
			ra.ResponseCode = routev3.RedirectAction_TEMPORARY_REDIRECT
		case 308:
			ra.ResponseCode = routev3.RedirectAction_PERMANENT_REDIRECT
		default:
			return nil, unsupported("RequestRedirect statusCode %d is not supported (use 301, 302, 303, 307 or 308)", *f.StatusCode)
		}
	}
	if f.Scheme != nil {
		switch *f.Scheme {
		case "http":
			ra.PortRedirect = 80
		case "https":
			ra.PortRedirect = 443
		default:
			return nil, unsupported("RequestRedirect scheme %q is not supported (use http or https)", *f.Scheme)
		}
		ra.SchemeRewriteSpecifier = &routev3.RedirectAction_SchemeRedirect{SchemeRedirect: *f.Scheme}
	}
	if f.Port != nil {
		if *f.Port < 1 || *f.Port > 65535 {
			return nil, unsupported("RequestRedirect port %d is not a port", *f.Port)
		}
		ra.PortRedirect = uint32(*f.Port)
	}
	if f.Hostname != nil {
		host := string(*f.Hostname)
		if host == "" || !validHeaderValue(host) || strings.ContainsAny(host, "/:@ ") {
			return nil, unsupported("RequestRedirect hostname %q is not valid", host)
		}
		ra.HostRedirect = host
	}
	if p := f.Path; p != nil {
		pc, rerr := pathModifier("RequestRedirect", p, spec)
		if rerr != nil {
			return nil, rerr
		}
		switch {
		case pc.full != "":
			ra.PathRewriteSpecifier = &routev3.RedirectAction_PathRedirect{PathRedirect: pc.full}
		case pc.regex != nil:
			ra.PathRewriteSpecifier = &routev3.RedirectAction_RegexRewrite{RegexRewrite: pc.regex}
		default:
			ra.PathRewriteSpecifier = &routev3.RedirectAction_PrefixRewrite{PrefixRewrite: pc.prefix}
		}
	}
	return ra, nil
}

// pathChange is a checked path modifier: a full path, or the replacement
// of the matched prefix (prefix, or regex for the "/" case).
type pathChange struct {
	full   string
	prefix string
	regex  *matcherv3.RegexMatchAndSubstitute
}

// pathModifier checks the path modifier of a URLRewrite or RequestRedirect
// filter (named by filter, for messages).
func pathModifier(filter string, p *gatewayv1.HTTPPathModifier, spec ruleSpec) (pathChange, *ruleError) {
	switch p.Type {
	case gatewayv1.FullPathHTTPPathModifier:
		if p.ReplaceFullPath == nil || checkPath(*p.ReplaceFullPath) != nil {
			return pathChange{}, unsupported("%s ReplaceFullPath needs an absolute path", filter)
		}
		return pathChange{full: *p.ReplaceFullPath}, nil
	case gatewayv1.PrefixMatchHTTPPathModifier:
		if !spec.hasPrefix {
			return pathChange{}, unsupported("%s ReplacePrefixMatch needs exactly one match, of type PathPrefix", filter)
		}
		repl := deref(p.ReplacePrefixMatch)
		if repl != "" && checkPath(repl) != nil {
			return pathChange{}, unsupported("%s ReplacePrefixMatch %q is not an absolute path", filter, repl)
		}
		prefix, re := prefixReplace(spec.prefix, repl)
		return pathChange{prefix: prefix, regex: re}, nil
	}
	return pathChange{}, unsupported("%s path type %q is not supported", filter, p.Type)
}

// prefixReplace implements ReplacePrefixMatch for a route matching the
// PathPrefix prefix, as Gateway API's table says: trailing slashes of the
// prefix and the replacement do not count, and replacing a prefix by "/"
// (or "") gives "/bar" for "/foo/bar" and "/" for "/foo" and "/foo/". Envoy's
// prefix_rewrite would give "//bar" there, so that case is a regex_rewrite,
// which means the same to Envoy and to Cairn's waypoint.
func prefixReplace(prefix, repl string) (string, *matcherv3.RegexMatchAndSubstitute) {
	p := strings.TrimSuffix(prefix, "/")
	r := strings.TrimSuffix(repl, "/")
	switch {
	case r == "" && p == "":
		return "/", nil
	case r == "":
		return "", &matcherv3.RegexMatchAndSubstitute{
			Pattern:      &matcherv3.RegexMatcher{Regex: "^" + regexp.QuoteMeta(p) + "/*"},
			Substitution: "/",
		}
	case p == "":
		// The route matches every path ("/"): "/bar" becomes "<r>/bar".
		return r + "/", nil
	}
	return r, nil
}

// retryPolicy translates HTTPRoute retry (experimental channel). Gateway
// API asks to retry on connection errors whenever retry is set, and on the
// listed codes; attempts default to 1, as Envoy's.
func retryPolicy(r *gatewayv1.HTTPRouteRetry) (*routev3.RetryPolicy, *ruleError) {
	rp := &routev3.RetryPolicy{RetryOn: "connect-failure,refused-stream,reset", NumRetries: wrapperspb.UInt32(1)}
	if r.Attempts != nil {
		if *r.Attempts < 0 || *r.Attempts > 100 {
			return nil, unsupported("retry attempts %d is outside 0..100", *r.Attempts)
		}
		rp.NumRetries = wrapperspb.UInt32(uint32(*r.Attempts))
	}
	for _, c := range r.Codes {
		if c < 400 || c > 599 {
			return nil, unsupported("retry code %d is outside 400..599", c)
		}
		rp.RetriableStatusCodes = append(rp.RetriableStatusCodes, uint32(c))
	}
	if len(rp.RetriableStatusCodes) > 0 {
		rp.RetryOn += ",retriable-status-codes"
	}
	if r.Backoff != nil {
		d, err := parseDuration(*r.Backoff)
		if err != nil {
			return nil, unsupported("retry backoff: %v", err)
		}
		if d > 0 {
			rp.RetryBackOff = &routev3.RetryPolicy_RetryBackOff{BaseInterval: durationpb.New(d)}
		}
	}
	return rp, nil
}

// headerOptions translates a header filter: set overwrites, add appends.
// Names are lowercased (HTTP/2 requires it; HTTP/1.1 names are
// case-insensitive).
func headerOptions(f *gatewayv1.HTTPHeaderFilter) ([]*corev3.HeaderValueOption, []string, error) {
	if len(f.Set)+len(f.Add)+len(f.Remove) > 3*maxPerRule {
		return nil, nil, fmt.Errorf("more than %d header changes", 3*maxPerRule)
	}
	var add []*corev3.HeaderValueOption
	option := func(h gatewayv1.HTTPHeader, how corev3.HeaderValueOption_HeaderAppendAction) error {
		name := strings.ToLower(string(h.Name))
		if !validToken(name) {
			return fmt.Errorf("header name %q is not valid", h.Name)
		}
		if !validHeaderValue(h.Value) {
			return fmt.Errorf("header %s has a value with a line break or NUL", name)
		}
		add = append(add, &corev3.HeaderValueOption{
			Header:       &corev3.HeaderValue{Key: name, Value: h.Value},
			AppendAction: how,
		})
		return nil
	}
	for _, h := range f.Set {
		if err := option(h, corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD); err != nil {
			return nil, nil, err
		}
	}
	for _, h := range f.Add {
		if err := option(h, corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD); err != nil {
			return nil, nil, err
		}
	}
	var remove []string
	for _, name := range f.Remove {
		name = strings.ToLower(name)
		if !validToken(name) {
			return nil, nil, fmt.Errorf("header name %q is not valid", name)
		}
		remove = append(remove, name)
	}
	return add, remove, nil
}

func validHeaderValue(v string) bool { return !strings.ContainsAny(v, "\x00\r\n") }

// escapeSubstitution makes s literal in an RE2 rewrite string.
func escapeSubstitution(s string) string { return strings.ReplaceAll(s, `\`, `\\`) }

// durationRE is GEP-2257's Gateway API Duration: 1 to 4 parts of up to 5
// digits with h, m, s or ms.
var durationRE = regexp.MustCompile(`^([0-9]{1,5}(h|m|s|ms)){1,4}$`)

func parseDuration(d gatewayv1.Duration) (time.Duration, error) {
	s := string(d)
	if !durationRE.MatchString(s) {
		return 0, fmt.Errorf("%q is not a Gateway API duration (e.g. 10s, 1m30s, 500ms)", s)
	}
	out, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%q: %w", s, err)
	}
	return out, nil
}

func lowerFirst(s string) string {
	if s == "" {
		return s
	}
	return strings.ToLower(s[:1]) + s[1:]
}

// ruleName is a rule's name, or its index when it has none.
func ruleName(name *gatewayv1.SectionName, index int) string {
	if name != nil && *name != "" {
		return string(*name)
	}
	return strconv.Itoa(index)
}
