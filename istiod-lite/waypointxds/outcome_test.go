package waypointxds

import (
	"strings"
	"testing"
	"time"

	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// TestOutcomes checks each status reason a user can meet, with a message
// that names what to fix, and that what is refused is not configured.
func TestOutcomes(t *testing.T) {
	grant := func(t *testing.T, kind string) *gatewayv1.ReferenceGrant {
		g := &gatewayv1.ReferenceGrant{}
		g.Namespace, g.Name = "other", "let-shop-in"
		g.Spec.From = []gatewayv1.ReferenceGrantFrom{{Group: gatewayv1.GroupName, Kind: gatewayv1.Kind(kind), Namespace: "shop"}}
		g.Spec.To = []gatewayv1.ReferenceGrantTo{{Group: "", Kind: "Service"}}
		return g
	}
	for _, tc := range []struct {
		name     string
		route    string // YAML of spec (parentRefs and rules)
		grants   []*gatewayv1.ReferenceGrant
		forWhat  string
		accepted string // "<status> <reason>"
		resolved string
		partial  string
		msg      string // in the message of the first condition not True
		routes   []string
	}{{
		name: "accepted, references resolved",
		route: `
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules: [{backendRefs: [{name: web-v1, port: 80}]}]`,
		accepted: "True Accepted", resolved: "True ResolvedRefs", routes: []string{"HTTPRoute/shop/r/0"},
	}, {
		name: "unknown backend Service",
		route: `
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules: [{backendRefs: [{name: nope, port: 80}]}]`,
		accepted: "True Accepted", resolved: "False BackendNotFound", msg: "Service shop/nope not found",
		routes: []string{"HTTPRoute/shop/r/0"},
	}, {
		name: "backend port the Service does not have",
		route: `
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules: [{backendRefs: [{name: web-v1, port: 81}]}]`,
		accepted: "True Accepted", resolved: "False BackendNotFound", msg: "has no port 81 (its ports: 80, 7070)",
		routes: []string{"HTTPRoute/shop/r/0"},
	}, {
		name: "cross-namespace backend without a ReferenceGrant",
		route: `
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules: [{backendRefs: [{name: api, namespace: other, port: 80}]}]`,
		accepted: "True Accepted", resolved: "False RefNotPermitted", msg: "add a ReferenceGrant in namespace other",
		routes: []string{"HTTPRoute/shop/r/0"},
	}, {
		name: "cross-namespace backend with a ReferenceGrant",
		route: `
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules: [{backendRefs: [{name: api, namespace: other, port: 80}]}]`,
		grants:   []*gatewayv1.ReferenceGrant{grant(t, "HTTPRoute")},
		accepted: "True Accepted", resolved: "True ResolvedRefs", routes: []string{"HTTPRoute/shop/r/0"},
	}, {
		name: "a ReferenceGrant for another route kind does not apply",
		route: `
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules: [{backendRefs: [{name: api, namespace: other, port: 80}]}]`,
		grants:   []*gatewayv1.ReferenceGrant{grant(t, "GRPCRoute")},
		accepted: "True Accepted", resolved: "False RefNotPermitted", routes: []string{"HTTPRoute/shop/r/0"},
	}, {
		name: "backend of another kind",
		route: `
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules: [{backendRefs: [{group: example.com, kind: Bucket, name: b}]}]`,
		accepted: "True Accepted", resolved: "False InvalidKind", msg: "Bucket shop/b",
		routes: []string{"HTTPRoute/shop/r/0"},
	}, {
		name: "parent port the Service does not have",
		route: `
  parentRefs: [{group: "", kind: Service, name: web, port: 81}]
  rules: [{backendRefs: [{name: web-v1, port: 80}]}]`,
		accepted: "False NoMatchingParent", resolved: "True ResolvedRefs", msg: "its ports: 80, 8080, 7070, 9090, 3000",
		routes: []string{"default/shop/web:80"},
	}, {
		name: "parent port that is not HTTP",
		route: `
  parentRefs: [{group: "", kind: Service, name: web, port: 9090}]
  rules: [{backendRefs: [{name: web-v1, port: 80}]}]`,
		accepted: "False NoMatchingParent", resolved: "True ResolvedRefs", msg: "port 9090 of Service shop/web carries tcp",
		routes: []string{"default/shop/web:80"},
	}, {
		name: "waypoint for workload traffic only",
		route: `
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules: [{backendRefs: [{name: web-v1, port: 80}]}]`,
		forWhat:  ForWorkload,
		accepted: "False NoMatchingParent", resolved: "True ResolvedRefs", msg: "istio.io/waypoint-for",
	}, {
		name: "an unsupported filter in the only rule",
		route: `
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - filters: [{type: CORS, cors: {allowOrigins: ["https://example.org"]}}]
    backendRefs: [{name: web-v1, port: 80}]`,
		accepted: "False UnsupportedValue", resolved: "True ResolvedRefs", msg: "rule 0: the CORS filter is not supported",
		routes: []string{"default/shop/web:80"},
	}, {
		name: "an unsupported filter in one of two rules",
		route: `
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - matches: [{path: {value: /cors}}]
    filters: [{type: ExtensionRef, extensionRef: {group: example.com, kind: Thing, name: x}}]
    backendRefs: [{name: web-v1, port: 80}]
  - backendRefs: [{name: web-v2, port: 80}]`,
		accepted: "True Accepted", resolved: "True ResolvedRefs", partial: "True UnsupportedValue",
		msg: "Dropped Rule(s): rule 0: the ExtensionRef filter", routes: []string{"HTTPRoute/shop/r/1"},
	}, {
		name: "incompatible filters",
		route: `
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - filters:
    - {type: RequestRedirect, requestRedirect: {hostname: example.org}}
    - {type: URLRewrite, urlRewrite: {hostname: example.org}}`,
		accepted: "False IncompatibleFilters", resolved: "True ResolvedRefs", msg: "cannot be combined",
		routes: []string{"default/shop/web:80"},
	}, {
		name: "a regular expression that is not RE2",
		route: `
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - matches: [{path: {type: RegularExpression, value: "/(?<=a)b"}}]
    backendRefs: [{name: web-v1, port: 80}]`,
		accepted: "False UnsupportedValue", resolved: "True ResolvedRefs", msg: "not valid RE2",
		routes: []string{"default/shop/web:80"},
	}, {
		name: "a duration that is not a Gateway API duration",
		route: `
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - timeouts: {request: 1.5s}
    backendRefs: [{name: web-v1, port: 80}]`,
		accepted: "False UnsupportedValue", resolved: "True ResolvedRefs", msg: "not a Gateway API duration",
		routes: []string{"default/shop/web:80"},
	}, {
		name: "ReplacePrefixMatch without a single PathPrefix match",
		route: `
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - matches: [{path: {type: Exact, value: /a}}]
    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}}}]
    backendRefs: [{name: web-v1, port: 80}]`,
		accepted: "False UnsupportedValue", resolved: "True ResolvedRefs", msg: "needs exactly one match, of type PathPrefix",
		routes: []string{"default/shop/web:80"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			in := fixtureInput()
			in.Waypoint.For = tc.forWhat
			in.ReferenceGrants = tc.grants
			in.HTTPRoutes = []*gatewayv1.HTTPRoute{httpRoute(t, 0, "metadata: {name: r}\nspec:"+tc.route)}
			out := translateValid(t, in)
			o := outcomeFor(t, out.Outcomes, "HTTPRoute", "shop/r", 0)
			for _, c := range []struct{ typ, want string }{
				{"Accepted", tc.accepted}, {"ResolvedRefs", tc.resolved}, {"PartiallyInvalid", tc.partial},
			} {
				if got := cond(o, c.typ); got != c.want {
					t.Errorf("%s = %q, want %q (%+v)", c.typ, got, c.want, o.Conditions)
				}
			}
			if tc.msg != "" {
				var msgs []string
				for _, c := range o.Conditions {
					msgs = append(msgs, c.Message)
				}
				if !strings.Contains(strings.Join(msgs, "\n"), tc.msg) {
					t.Errorf("messages %q do not say %q", msgs, tc.msg)
				}
			}
			for _, c := range o.Conditions {
				if c.ObservedGeneration != 1 {
					t.Errorf("%s observedGeneration %d, want the route's generation 1", c.Type, c.ObservedGeneration)
				}
			}
			if tc.forWhat != "" {
				return
			}
			var names []string
			for _, r := range routesOf(t, out, "shop/web:80") {
				names = append(names, r.GetName())
			}
			if d := diffProto(tc.routes, names); d != "" {
				t.Errorf("routes of shop/web:80 (-want +got):\n%s", d)
			}
		})
	}
}

// TestUnboundOutcomes: a route whose Service does not exist or uses no
// waypoint is not accepted, and the message says which label to add.
func TestUnboundOutcomes(t *testing.T) {
	in := fixtureInput()
	in.HTTPRoutes = []*gatewayv1.HTTPRoute{
		httpRoute(t, 0, `
metadata: {name: r}
spec:
  parentRefs:
  - {group: "", kind: Service, name: plain}
  - {group: "", kind: Service, name: missing}
  - {group: "", kind: Service, name: web}
  - {name: some-gateway}
  rules: [{backendRefs: [{name: web-v1, port: 80}]}]`),
	}
	outs := UnboundOutcomes(in)
	if len(outs) != 2 {
		t.Fatalf("%d outcomes, want 2 (plain and missing; web has a waypoint, some-gateway is not a Service): %+v", len(outs), outs)
	}
	plain := outcomeFor(t, outs, "HTTPRoute", "shop/r", 0)
	if c := plain.Condition("Accepted"); c.Reason != "NoMatchingParent" || !strings.Contains(c.Message, "istio.io/use-waypoint") {
		t.Errorf("plain: %+v", c)
	}
	missing := outcomeFor(t, outs, "HTTPRoute", "shop/r", 1)
	if c := missing.Condition("Accepted"); c.Reason != "NoMatchingParent" || !strings.Contains(c.Message, "shop/missing not found") {
		t.Errorf("missing: %+v", c)
	}
	// The waypoint's own translation reports only the bound parent.
	out := translateValid(t, in)
	if len(out.Outcomes) != 1 || out.Outcomes[0].ParentIndex != 2 {
		t.Errorf("translation outcomes %+v, want one for parentRef 2", out.Outcomes)
	}
}

// TestRouteLimitPerPort: any namespace may attach consumer routes to any
// Service, so the routes of one Service port are bounded; producer routes
// come first, then the oldest consumer routes, and what does not fit is
// not accepted, with the reason.
func TestRouteLimitPerPort(t *testing.T) {
	in := fixtureInput()
	in.Options.MaxRoutesPerPort = 3
	consumer := func(name string, age int, paths ...string) *gatewayv1.HTTPRoute {
		var matches []string
		for _, p := range paths {
			matches = append(matches, "{path: {value: "+p+"}}")
		}
		return httpRoute(t, age, `
metadata: {name: `+name+`, namespace: client}
spec:
  parentRefs: [{group: "", kind: Service, name: web, namespace: shop, port: 80}]
  rules: [{matches: [`+strings.Join(matches, ", ")+`], backendRefs: [{name: web, namespace: shop, port: 80}]}]`)
	}
	in.HTTPRoutes = []*gatewayv1.HTTPRoute{
		consumer("old-and-big", 0, "/a", "/b"),
		consumer("small", 5, "/c"),
		rulesOnWeb80(t, `
- matches: [{path: {value: /p}}, {path: {value: /q}}]
  backendRefs: [{name: web-v1, port: 80}]`),
	}
	in.HTTPRoutes[2].CreationTimestamp.Time = epoch.Add(10 * time.Second) // the newest
	out := translateValid(t, in)
	var names []string
	for _, r := range routesOf(t, out, "shop/web:80") {
		names = append(names, r.GetName())
	}
	want := []string{"HTTPRoute/client/small/0", "HTTPRoute/shop/r/0", "HTTPRoute/shop/r/0"}
	if d := diffProto(want, names); d != "" {
		t.Errorf("routes (-want +got):\n%s", d)
	}
	o := outcomeFor(t, out.Outcomes, "HTTPRoute", "client/old-and-big", 0)
	if got := cond(o, "Accepted"); got != "False TooManyRoutes" {
		t.Errorf("Accepted = %q, want False TooManyRoutes", got)
	}
	if got := cond(outcomeFor(t, out.Outcomes, "HTTPRoute", "client/small", 0), "Accepted"); got != "True Accepted" {
		t.Errorf("small: Accepted = %q", got)
	}
}
