package waypointxds

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	securityv1 "github.com/cairnmesh/cairn/apis/security/v1"
)

// randomInputs is how many random inputs TestRandomInputs translates; each
// has up to 6 routes of up to 4 rules, so the test stays well under a
// second.
const randomInputs = 300

// TestRandomInputs translates random routes, valid and not (bad regular
// expressions, unknown types, huge weights, odd header names, unknown
// Services), and checks that every resource passes Envoy's generated
// validation, that every route gets an outcome, and that the output does
// not depend on the order of the inputs.
func TestRandomInputs(t *testing.T) {
	rng := rand.New(rand.NewPCG(12, 2026))
	for i := range randomInputs {
		in := fixtureInput()
		if rng.IntN(3) == 0 {
			in.Options.MaxRoutesPerPort = 1 + rng.IntN(6) // exercise the bound
		}
		for j := range rng.IntN(7) {
			if rng.IntN(3) == 0 {
				in.GRPCRoutes = append(in.GRPCRoutes, randomGRPCRoute(rng, j))
			} else {
				in.HTTPRoutes = append(in.HTTPRoutes, randomHTTPRoute(rng, j))
			}
		}
		for j := range rng.IntN(3) {
			in.AuthorizationPolicies = append(in.AuthorizationPolicies, randomPolicy(rng, j))
		}
		out := Translate(in)
		if err := validateOutput(out); err != nil {
			t.Fatalf("input %d: %v\nroutes: %s", i, err, dump(in))
		}
		for _, o := range out.Outcomes {
			if o.Condition("Accepted") == nil || o.Condition("ResolvedRefs") == nil {
				t.Fatalf("input %d: outcome without Accepted or ResolvedRefs: %+v", i, o)
			}
		}
		shuffled := in
		shuffled.Services = slices.Clone(in.Services)
		shuffled.Endpoints = slices.Clone(in.Endpoints)
		shuffled.HTTPRoutes = slices.Clone(in.HTTPRoutes)
		shuffled.GRPCRoutes = slices.Clone(in.GRPCRoutes)
		rng.Shuffle(len(shuffled.Services), func(a, b int) {
			shuffled.Services[a], shuffled.Services[b] = shuffled.Services[b], shuffled.Services[a]
		})
		rng.Shuffle(len(shuffled.Endpoints), func(a, b int) {
			shuffled.Endpoints[a], shuffled.Endpoints[b] = shuffled.Endpoints[b], shuffled.Endpoints[a]
		})
		rng.Shuffle(len(shuffled.HTTPRoutes), func(a, b int) {
			shuffled.HTTPRoutes[a], shuffled.HTTPRoutes[b] = shuffled.HTTPRoutes[b], shuffled.HTTPRoutes[a]
		})
		rng.Shuffle(len(shuffled.GRPCRoutes), func(a, b int) {
			shuffled.GRPCRoutes[a], shuffled.GRPCRoutes[b] = shuffled.GRPCRoutes[b], shuffled.GRPCRoutes[a]
		})
		again := Translate(shuffled)
		if a, b := encode(t, out), encode(t, again); !bytes.Equal(a, b) {
			t.Fatalf("input %d: the output depends on the order of the inputs", i)
		}
		if !reflect.DeepEqual(out.Outcomes, again.Outcomes) || !reflect.DeepEqual(out.Policies, again.Policies) {
			t.Fatalf("input %d: outcomes depend on the order of the inputs:\n%+v\n%+v", i, out.Outcomes, again.Outcomes)
		}
	}
}

// encode serialises every resource deterministically, in output order.
func encode(t *testing.T, out Output) []byte {
	t.Helper()
	var msgs []proto.Message
	if out.Listener != nil {
		msgs = append(msgs, out.Listener)
	}
	for _, r := range out.Routes {
		msgs = append(msgs, r)
	}
	for _, c := range out.Clusters {
		msgs = append(msgs, c)
	}
	for _, l := range out.LoadAssignments {
		msgs = append(msgs, l)
	}
	var buf bytes.Buffer
	for _, m := range msgs {
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		buf.Write(b)
	}
	return buf.Bytes()
}

func dump(in Input) string {
	var b bytes.Buffer
	for _, r := range in.HTTPRoutes {
		fmt.Fprintf(&b, "%s %+v\n", r.Name, r.Spec)
	}
	for _, r := range in.GRPCRoutes {
		fmt.Fprintf(&b, "%s %+v\n", r.Name, r.Spec)
	}
	return b.String()
}

func pick[T any](rng *rand.Rand, xs ...T) T { return xs[rng.IntN(len(xs))] }

// pickBad picks from bad one time in badOdds, else from good: most rules
// stay valid (and reach the output, where validation looks at them), a
// few carry a value the translation must refuse.
func pickBad[T any](rng *rand.Rand, good, bad []T) T {
	if len(bad) > 0 && rng.IntN(badOdds) == 0 {
		return pick(rng, bad...)
	}
	return pick(rng, good...)
}

const badOdds = 12

func ptr[T any](v T) *T { return &v }

func randomParents(rng *rand.Rand) []gatewayv1.ParentReference {
	var out []gatewayv1.ParentReference
	for range 1 + rng.IntN(2) {
		ref := gatewayv1.ParentReference{
			Group: ptr(gatewayv1.Group(pickBad(rng, []string{"", "core"}, []string{gatewayv1.GroupName}))),
			Kind:  ptr(gatewayv1.Kind(pickBad(rng, []string{"Service"}, []string{"Gateway"}))),
			Name:  gatewayv1.ObjectName(pickBad(rng, []string{"web", "web", "web-v1", "web-v2"}, []string{"plain", "missing"})),
		}
		if rng.IntN(3) == 0 {
			ref.Port = ptr(gatewayv1.PortNumber(pickBad(rng, []int32{80, 8080, 7070, 3000}, []int32{9090, 81})))
		}
		if rng.IntN(6) == 0 {
			ref.SectionName = ptr(gatewayv1.SectionName(pickBad(rng, []string{"http", "grpc"}, []string{"nope"})))
		}
		if rng.IntN(6) == 0 {
			ref.Namespace = ptr(gatewayv1.Namespace(pick(rng, "shop", "other")))
		}
		out = append(out, ref)
	}
	return out
}

func randomBackends(rng *rand.Rand) []gatewayv1.HTTPBackendRef {
	var out []gatewayv1.HTTPBackendRef
	for range rng.IntN(4) {
		b := gatewayv1.HTTPBackendRef{}
		b.Name = gatewayv1.ObjectName(pickBad(rng, []string{"web", "web-v1", "web-v2"}, []string{"api", "missing"}))
		b.Port = ptr(gatewayv1.PortNumber(pickBad(rng, []int32{80, 7070, 8080}, []int32{81})))
		if rng.IntN(4) == 0 {
			b.Namespace = ptr(gatewayv1.Namespace(pick(rng, "other", "shop")))
		}
		if rng.IntN(10) == 0 {
			b.Kind = ptr(gatewayv1.Kind("Bucket"))
		}
		if rng.IntN(2) == 0 {
			b.Weight = ptr(pickBad(rng, []int32{0, 1, 30, 70, 1000000}, []int32{-1, 2000000}))
		}
		if rng.IntN(4) == 0 {
			b.Filters = []gatewayv1.HTTPRouteFilter{randomFilter(rng)}
		}
		out = append(out, b)
	}
	return out
}

func randomHeaderFilter(rng *rand.Rand) *gatewayv1.HTTPHeaderFilter {
	name := gatewayv1.HTTPHeaderName(pickBad(rng, []string{"X-A", "x-b"}, []string{"bad name", "x\r\ny", ":path"}))
	value := pickBad(rng, []string{"v", "", "a,b"}, []string{"bad\nvalue"})
	return &gatewayv1.HTTPHeaderFilter{
		Set:    []gatewayv1.HTTPHeader{{Name: name, Value: value}},
		Add:    []gatewayv1.HTTPHeader{{Name: "x-add", Value: value}},
		Remove: []string{pickBad(rng, []string{"x-rm"}, []string{"bad name"})},
	}
}

func randomFilter(rng *rand.Rand) gatewayv1.HTTPRouteFilter {
	switch pickBad(rng, []int{0, 1, 2, 3, 4}, []int{5, 6, 7}) {
	case 0:
		return gatewayv1.HTTPRouteFilter{Type: gatewayv1.HTTPRouteFilterRequestHeaderModifier, RequestHeaderModifier: randomHeaderFilter(rng)}
	case 1:
		return gatewayv1.HTTPRouteFilter{Type: gatewayv1.HTTPRouteFilterResponseHeaderModifier, ResponseHeaderModifier: randomHeaderFilter(rng)}
	case 2:
		f := &gatewayv1.HTTPRequestRedirectFilter{}
		if rng.IntN(2) == 0 {
			f.Scheme = ptr(pickBad(rng, []string{"http", "https"}, []string{"ftp"}))
		}
		if rng.IntN(2) == 0 {
			f.Hostname = ptr(gatewayv1.PreciseHostname(pickBad(rng, []string{"example.org"}, []string{"bad/host", ""})))
		}
		if rng.IntN(2) == 0 {
			f.Port = ptr(gatewayv1.PortNumber(pickBad(rng, []int32{8083, 443}, []int32{0, 70000})))
		}
		if rng.IntN(2) == 0 {
			f.StatusCode = ptr(pickBad(rng, []int{301, 302, 303, 307, 308}, []int{200}))
		}
		if rng.IntN(2) == 0 {
			f.Path = randomPathModifier(rng)
		}
		return gatewayv1.HTTPRouteFilter{Type: gatewayv1.HTTPRouteFilterRequestRedirect, RequestRedirect: f}
	case 3:
		f := &gatewayv1.HTTPURLRewriteFilter{Path: randomPathModifier(rng)}
		if rng.IntN(2) == 0 {
			f.Hostname = ptr(gatewayv1.PreciseHostname(pickBad(rng, []string{"example.org"}, []string{"bad\nhost"})))
		}
		return gatewayv1.HTTPRouteFilter{Type: gatewayv1.HTTPRouteFilterURLRewrite, URLRewrite: f}
	case 4:
		m := &gatewayv1.HTTPRequestMirrorFilter{}
		m.BackendRef.Name = gatewayv1.ObjectName(pickBad(rng, []string{"web-v2"}, []string{"missing"}))
		m.BackendRef.Port = ptr(gatewayv1.PortNumber(80))
		switch rng.IntN(4) {
		case 0:
			m.Percent = ptr(pickBad(rng, []int32{0, 50, 100}, []int32{101}))
		case 1:
			m.Fraction = &gatewayv1.Fraction{Numerator: pick[int32](rng, 0, 1, 3), Denominator: ptr(pickBad(rng, []int32{3, 100, 7, 1000000}, []int32{0}))}
		}
		return gatewayv1.HTTPRouteFilter{Type: gatewayv1.HTTPRouteFilterRequestMirror, RequestMirror: m}
	case 5:
		return gatewayv1.HTTPRouteFilter{Type: gatewayv1.HTTPRouteFilterCORS, CORS: &gatewayv1.HTTPCORSFilter{}}
	case 6:
		return gatewayv1.HTTPRouteFilter{Type: "Unknown"}
	}
	return gatewayv1.HTTPRouteFilter{Type: gatewayv1.HTTPRouteFilterRequestHeaderModifier} // field missing
}

func randomPathModifier(rng *rand.Rand) *gatewayv1.HTTPPathModifier {
	if rng.IntN(2) == 0 {
		return &gatewayv1.HTTPPathModifier{Type: gatewayv1.FullPathHTTPPathModifier, ReplaceFullPath: ptr(pickBad(rng, []string{"/new", "/"}, []string{"no-slash", `/a\1`}))}
	}
	return &gatewayv1.HTTPPathModifier{Type: gatewayv1.PrefixMatchHTTPPathModifier, ReplacePrefixMatch: ptr(pick(rng, "/new", "/", "", "/x/"))}
}

func randomHTTPMatch(rng *rand.Rand) gatewayv1.HTTPRouteMatch {
	m := gatewayv1.HTTPRouteMatch{}
	if rng.IntN(4) > 0 {
		typ := pickBad(rng, []gatewayv1.PathMatchType{gatewayv1.PathMatchExact, gatewayv1.PathMatchPathPrefix, gatewayv1.PathMatchPathPrefix, gatewayv1.PathMatchRegularExpression}, []gatewayv1.PathMatchType{"Bogus"})
		value := pickBad(rng, []string{"/", "/a", "/a/", "/a/b", "/(x|y)+"}, []string{"//x", "no-slash", "/a?b", "/a#b", "(", ""})
		m.Path = &gatewayv1.HTTPPathMatch{Type: &typ, Value: &value}
	}
	for range rng.IntN(3) {
		typ := pick(rng, gatewayv1.HeaderMatchExact, gatewayv1.HeaderMatchRegularExpression)
		m.Headers = append(m.Headers, gatewayv1.HTTPHeaderMatch{
			Type: &typ, Name: gatewayv1.HTTPHeaderName(pickBad(rng, []string{"version", "Version", "x-b"}, []string{"bad name"})), Value: pickBad(rng, []string{"one", "[a-z]+"}, []string{"("}),
		})
	}
	for range rng.IntN(3) {
		typ := pick(rng, gatewayv1.QueryParamMatchExact, gatewayv1.QueryParamMatchRegularExpression)
		m.QueryParams = append(m.QueryParams, gatewayv1.HTTPQueryParamMatch{
			Type: &typ, Name: gatewayv1.HTTPHeaderName(pickBad(rng, []string{"animal", "q"}, []string{"", "a=b"})), Value: pickBad(rng, []string{"whale", "[0-9]+"}, []string{"("}),
		})
	}
	if rng.IntN(3) == 0 {
		m.Method = ptr(gatewayv1.HTTPMethod(pickBad(rng, []string{"GET", "POST"}, []string{"BAD METHOD"})))
	}
	return m
}

func randomHTTPRoute(rng *rand.Rand, i int) *gatewayv1.HTTPRoute {
	r := &gatewayv1.HTTPRoute{}
	r.Name = fmt.Sprintf("h%d", i)
	r.Namespace = pick(rng, "shop", "shop", "client")
	r.Generation = 1
	r.CreationTimestamp = metav1.NewTime(epoch.Add(time.Duration(rng.Int64N(5e9))))
	r.Spec.ParentRefs = randomParents(rng)
	for j := range 1 + rng.IntN(4) {
		rule := gatewayv1.HTTPRouteRule{BackendRefs: randomBackends(rng)}
		if rng.IntN(4) == 0 {
			rule.Name = ptr(gatewayv1.SectionName(fmt.Sprintf("rule-%d", j)))
		}
		for range rng.IntN(3) {
			rule.Matches = append(rule.Matches, randomHTTPMatch(rng))
		}
		for range rng.IntN(3) {
			rule.Filters = append(rule.Filters, randomFilter(rng))
		}
		if rng.IntN(4) == 0 {
			rule.Timeouts = &gatewayv1.HTTPRouteTimeouts{
				Request:        ptr(gatewayv1.Duration(pickBad(rng, []string{"10s", "0s", "1h2m3s4ms"}, []string{"1.5s"}))),
				BackendRequest: ptr(gatewayv1.Duration(pickBad(rng, []string{"1s", "0s"}, []string{"bad"}))),
			}
		}
		if rng.IntN(5) == 0 {
			rule.Retry = &gatewayv1.HTTPRouteRetry{
				Attempts: ptr(pickBad(rng, []int{0, 1, 3}, []int{1000})),
				Codes:    []gatewayv1.HTTPRouteRetryStatusCode{gatewayv1.HTTPRouteRetryStatusCode(pickBad(rng, []int{500, 503}, []int{200}))},
				Backoff:  ptr(gatewayv1.Duration(pickBad(rng, []string{"100ms", "0s"}, []string{"x"}))),
			}
		}
		r.Spec.Rules = append(r.Spec.Rules, rule)
	}
	return r
}

func randomGRPCRoute(rng *rand.Rand, i int) *gatewayv1.GRPCRoute {
	r := &gatewayv1.GRPCRoute{}
	r.Name = fmt.Sprintf("g%d", i)
	r.Namespace = pick(rng, "shop", "client")
	r.Generation = 1
	r.CreationTimestamp = metav1.NewTime(epoch.Add(time.Duration(rng.Int64N(5e9))))
	r.Spec.ParentRefs = randomParents(rng)
	for range 1 + rng.IntN(3) {
		rule := gatewayv1.GRPCRouteRule{}
		for range rng.IntN(3) {
			typ := pickBad(rng, []gatewayv1.GRPCMethodMatchType{gatewayv1.GRPCMethodMatchExact, gatewayv1.GRPCMethodMatchRegularExpression}, []gatewayv1.GRPCMethodMatchType{"Bogus"})
			m := gatewayv1.GRPCRouteMatch{Method: &gatewayv1.GRPCMethodMatch{Type: &typ}}
			if rng.IntN(3) > 0 {
				m.Method.Service = ptr(pickBad(rng, []string{"pkg.Echo", "pkg\\..*"}, []string{"a/b", "("}))
			}
			if rng.IntN(3) > 0 {
				m.Method.Method = ptr(pickBad(rng, []string{"Call", "C.*"}, []string{"a b"}))
			}
			if rng.IntN(2) == 0 {
				m.Headers = []gatewayv1.GRPCHeaderMatch{{Name: "x-tenant", Value: "a"}}
			}
			rule.Matches = append(rule.Matches, m)
		}
		for _, b := range randomBackends(rng) {
			rule.BackendRefs = append(rule.BackendRefs, gatewayv1.GRPCBackendRef{BackendRef: b.BackendRef})
		}
		if rng.IntN(3) == 0 {
			f := randomFilter(rng)
			rule.Filters = append(rule.Filters, gatewayv1.GRPCRouteFilter{
				Type:                   gatewayv1.GRPCRouteFilterType(f.Type),
				RequestHeaderModifier:  f.RequestHeaderModifier,
				ResponseHeaderModifier: f.ResponseHeaderModifier,
				RequestMirror:          f.RequestMirror,
			})
		}
		r.Spec.Rules = append(r.Spec.Rules, rule)
	}
	return r
}

func randomValues(rng *rand.Rand, values ...string) []string {
	var out []string
	for range rng.IntN(3) {
		out = append(out, pick(rng, values...))
	}
	return out
}

func randomPolicy(rng *rand.Rand, i int) *securityv1.AuthorizationPolicy {
	p := &securityv1.AuthorizationPolicy{}
	p.Name = fmt.Sprintf("p%d", i)
	p.Namespace = pick(rng, "shop", "shop", "istio-system")
	p.Spec.Action = securityv1.Action(pick(rng, "", "ALLOW", "DENY", "AUDIT", "CUSTOM", "BOGUS"))
	p.Spec.TargetRefs = []securityv1.PolicyTargetReference{pick(rng,
		securityv1.PolicyTargetReference{Group: gatewayv1.GroupName, Kind: "Gateway", Name: "waypoint"},
		securityv1.PolicyTargetReference{Group: gatewayv1.GroupName, Kind: "GatewayClass", Name: "istio-waypoint"},
		securityv1.PolicyTargetReference{Kind: "Service", Name: pick(rng, "web", "web-v1", "plain")},
	)}
	strs := []string{"*", "a*", "*a", "exact", "", "10.0.0.0/8", "::1", "bad ip", "80", "0", "99999"}
	for range rng.IntN(3) {
		r := securityv1.Rule{}
		if rng.IntN(2) == 0 {
			r.From = []securityv1.From{{Source: &securityv1.Source{
				Principals: randomValues(rng, strs...), NotPrincipals: randomValues(rng, strs...),
				Namespaces: randomValues(rng, strs...), ServiceAccounts: randomValues(rng, "sa", "ns/sa", "a/b/c"),
				IPBlocks: randomValues(rng, strs...), RemoteIPBlocks: randomValues(rng, strs...),
				RequestPrincipals: randomValues(rng, strs...),
			}}}
		}
		if rng.IntN(2) == 0 {
			r.To = []securityv1.To{{Operation: &securityv1.Operation{
				Hosts: randomValues(rng, strs...), Methods: randomValues(rng, "GET", "*", "bad method"),
				Paths: randomValues(rng, strs...), NotPaths: randomValues(rng, strs...), Ports: randomValues(rng, strs...),
			}}}
		}
		for range rng.IntN(2) {
			r.When = append(r.When, securityv1.Condition{
				Key:    pick(rng, "request.headers[x-a]", "request.headers[bad name]", "source.ip", "remote.ip", "source.namespace", "destination.port", "destination.ip", "request.auth.claims[a]"),
				Values: randomValues(rng, strs...), NotValues: randomValues(rng, strs...),
			})
		}
		p.Spec.Rules = append(p.Spec.Rules, r)
	}
	return p
}
