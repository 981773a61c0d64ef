package waypointxds

import (
	"fmt"
	"regexp"
	"strings"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// maxRegexLen bounds every regular expression a route may carry. The CRDs
// bound path values to 1024 bytes; the translation does not trust that they
// are installed with their validation.
const maxRegexLen = 1024

// rank orders matches by Gateway API precedence: a smaller rank is tried
// first, compared element by element.
type rank [5]int

func (a rank) less(b rank) bool {
	for i := range a {
		if a[i] != b[i] {
			return a[i] < b[i]
		}
	}
	return false
}

// Path kinds in precedence order. Gateway API puts Exact before every
// PathPrefix and leaves RegularExpression to implementations; a regular
// expression states a narrower intent than a prefix, so it comes before the
// prefixes (as in Envoy Gateway).
const (
	pathExact = iota
	pathRegex
	pathPrefix
)

// httpMatch translates one HTTPRouteMatch. Its rank is: path kind, longer
// path first, method match first, more header matches first, more query
// matches first.
func httpMatch(m gatewayv1.HTTPRouteMatch) (*routev3.RouteMatch, rank, error) {
	out := &routev3.RouteMatch{}
	var r rank
	typ, value := gatewayv1.PathMatchPathPrefix, "/"
	if m.Path != nil {
		if m.Path.Type != nil {
			typ = *m.Path.Type
		}
		if m.Path.Value != nil {
			value = *m.Path.Value
		}
	}
	switch typ {
	case gatewayv1.PathMatchExact:
		if err := checkPath(value); err != nil {
			return nil, r, err
		}
		out.PathSpecifier = &routev3.RouteMatch_Path{Path: value}
		r[0], r[1] = pathExact, -len(value)
	case gatewayv1.PathMatchPathPrefix:
		if err := checkPath(value); err != nil {
			return nil, r, err
		}
		// A trailing "/" is ignored: "/foo/" matches what "/foo" matches.
		trimmed := strings.TrimSuffix(value, "/")
		if trimmed == "" {
			out.PathSpecifier = &routev3.RouteMatch_Prefix{Prefix: "/"}
		} else {
			out.PathSpecifier = &routev3.RouteMatch_PathSeparatedPrefix{PathSeparatedPrefix: trimmed}
		}
		r[0], r[1] = pathPrefix, -len(trimmed)
	case gatewayv1.PathMatchRegularExpression:
		re, err := regex(value)
		if err != nil {
			return nil, r, fmt.Errorf("path: %w", err)
		}
		out.PathSpecifier = &routev3.RouteMatch_SafeRegex{SafeRegex: re}
		r[0], r[1] = pathRegex, -len(value)
	default:
		return nil, r, fmt.Errorf("path match type %q is not supported (use Exact, PathPrefix or RegularExpression)", typ)
	}

	specs := make([]headerSpec, len(m.Headers))
	for i, h := range m.Headers {
		specs[i] = headerSpec{string(h.Name), string(deref(h.Type)), h.Value}
	}
	hs, err := headerMatchers(specs)
	if err != nil {
		return nil, r, err
	}
	out.Headers = hs
	headers := len(out.Headers)

	seenQuery := map[string]bool{}
	for _, q := range m.QueryParams {
		name := string(q.Name)
		if seenQuery[name] {
			continue
		}
		seenQuery[name] = true
		if name == "" || strings.ContainsAny(name, "&=#") {
			return nil, r, fmt.Errorf("query parameter name %q is not valid", name)
		}
		typ := gatewayv1.QueryParamMatchExact
		if q.Type != nil {
			typ = *q.Type
		}
		sm, err := stringMatch(string(typ), q.Value)
		if err != nil {
			return nil, r, fmt.Errorf("query parameter %s: %w", name, err)
		}
		out.QueryParameters = append(out.QueryParameters, &routev3.QueryParameterMatcher{
			Name:                         name,
			QueryParameterMatchSpecifier: &routev3.QueryParameterMatcher_StringMatch{StringMatch: sm},
		})
	}

	r[2] = 1
	if m.Method != nil && *m.Method != "" {
		method := string(*m.Method)
		if !validToken(method) {
			return nil, r, fmt.Errorf("method %q is not valid", method)
		}
		out.Headers = append(out.Headers, &routev3.HeaderMatcher{
			Name:                 ":method",
			HeaderMatchSpecifier: exactHeader(method),
		})
		r[2] = 0
	}
	r[3], r[4] = -headers, -len(out.QueryParameters)
	return out, r, nil
}

// grpcMatch translates one GRPCRouteMatch. Its rank is: longer service
// first, longer method first, more header matches first (Gateway API's
// GRPCRoute precedence; hostnames do not apply to Service parents).
func grpcMatch(m gatewayv1.GRPCRouteMatch) (*routev3.RouteMatch, rank, error) {
	out := &routev3.RouteMatch{Grpc: &routev3.RouteMatch_GrpcRouteMatchOptions{}}
	var r rank
	out.PathSpecifier = &routev3.RouteMatch_Prefix{Prefix: "/"}
	if mm := m.Method; mm != nil {
		service, method := deref(mm.Service), deref(mm.Method)
		typ := gatewayv1.GRPCMethodMatchExact
		if mm.Type != nil {
			typ = *mm.Type
		}
		switch typ {
		case gatewayv1.GRPCMethodMatchExact:
			if strings.Contains(service, "/") || strings.Contains(method, "/") ||
				strings.ContainsAny(service+method, "?# ") {
				return nil, r, fmt.Errorf("gRPC service %q or method %q is not valid", service, method)
			}
			switch {
			case service != "" && method != "":
				out.PathSpecifier = &routev3.RouteMatch_Path{Path: "/" + service + "/" + method}
			case service != "":
				out.PathSpecifier = &routev3.RouteMatch_Prefix{Prefix: "/" + service + "/"}
			case method != "":
				re, err := regex("/[^/]+/" + regexp.QuoteMeta(method))
				if err != nil {
					return nil, r, err
				}
				out.PathSpecifier = &routev3.RouteMatch_SafeRegex{SafeRegex: re}
			}
		case gatewayv1.GRPCMethodMatchRegularExpression:
			if service == "" && method == "" {
				break
			}
			svcRe, methodRe := "[^/]+", "[^/]+"
			if service != "" {
				if _, err := regex(service); err != nil {
					return nil, r, fmt.Errorf("gRPC service: %w", err)
				}
				svcRe = service
			}
			if method != "" {
				if _, err := regex(method); err != nil {
					return nil, r, fmt.Errorf("gRPC method: %w", err)
				}
				methodRe = method
			}
			re, err := regex("/(" + svcRe + ")/(" + methodRe + ")")
			if err != nil {
				return nil, r, err
			}
			out.PathSpecifier = &routev3.RouteMatch_SafeRegex{SafeRegex: re}
		default:
			return nil, r, fmt.Errorf("gRPC method match type %q is not supported (use Exact or RegularExpression)", typ)
		}
		r[0], r[1] = -len(service), -len(method)
	}
	specs := make([]headerSpec, len(m.Headers))
	for i, h := range m.Headers {
		specs[i] = headerSpec{string(h.Name), string(deref(h.Type)), h.Value}
	}
	hs, err := headerMatchers(specs)
	if err != nil {
		return nil, r, err
	}
	out.Headers = hs
	r[2] = -len(out.Headers)
	return out, r, nil
}

// headerSpec is a header match of an HTTPRoute or a GRPCRoute; typ "" is
// Exact, the default of both.
type headerSpec struct{ name, typ, value string }

// headerMatchers translates header matches. Names are case-insensitive and
// only the first match of a name counts, as Gateway API says.
func headerMatchers(specs []headerSpec) ([]*routev3.HeaderMatcher, error) {
	var out []*routev3.HeaderMatcher
	seen := map[string]bool{}
	for _, h := range specs {
		name := strings.ToLower(h.name)
		if seen[name] {
			continue
		}
		seen[name] = true
		typ := h.typ
		if typ == "" {
			typ = string(gatewayv1.HeaderMatchExact)
		}
		hm, err := headerMatch(name, typ, h.value)
		if err != nil {
			return nil, err
		}
		out = append(out, hm)
	}
	return out, nil
}

func headerMatch(name, typ, value string) (*routev3.HeaderMatcher, error) {
	if !validToken(name) {
		return nil, fmt.Errorf("header name %q is not valid", name)
	}
	sm, err := stringMatch(typ, value)
	if err != nil {
		return nil, fmt.Errorf("header %s: %w", name, err)
	}
	return &routev3.HeaderMatcher{Name: name, HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: sm}}, nil
}

func exactHeader(value string) *routev3.HeaderMatcher_StringMatch {
	return &routev3.HeaderMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{
		MatchPattern: &matcherv3.StringMatcher_Exact{Exact: value},
	}}
}

// stringMatch takes the match types HTTPRoute and GRPCRoute share for
// headers and query parameters: Exact and RegularExpression.
func stringMatch(typ, value string) (*matcherv3.StringMatcher, error) {
	switch typ {
	case "Exact":
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: value}}, nil
	case "RegularExpression":
		re, err := regex(value)
		if err != nil {
			return nil, err
		}
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: re}}, nil
	}
	return nil, fmt.Errorf("match type %q is not supported (use Exact or RegularExpression)", typ)
}

// regex checks a regular expression with Go's RE2 syntax, which the
// waypoint uses and which is Envoy's safe_regex dialect.
func regex(expr string) (*matcherv3.RegexMatcher, error) {
	if expr == "" {
		return nil, fmt.Errorf("empty regular expression")
	}
	if len(expr) > maxRegexLen {
		return nil, fmt.Errorf("regular expression longer than %d bytes", maxRegexLen)
	}
	if _, err := regexp.Compile(expr); err != nil {
		return nil, fmt.Errorf("regular expression %q is not valid RE2: %w", expr, err)
	}
	return &matcherv3.RegexMatcher{Regex: expr}, nil
}

// checkPath accepts what Gateway API's CRD accepts for Exact and PathPrefix
// values: an absolute path without query, fragment or "//".
func checkPath(p string) error {
	switch {
	case !strings.HasPrefix(p, "/"):
		return fmt.Errorf("path %q does not start with /", p)
	case strings.Contains(p, "//"):
		return fmt.Errorf("path %q contains //", p)
	case strings.ContainsAny(p, "?# \t\r\n\\"):
		return fmt.Errorf("path %q contains a character a path match cannot hold", p)
	case len(p) > maxRegexLen:
		return fmt.Errorf("path longer than %d bytes", maxRegexLen)
	}
	return nil
}

// validToken reports whether s is an RFC 7230 token: a valid header name or
// method.
func validToken(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range []byte(s) {
		switch {
		case c >= '0' && c <= '9', c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}
