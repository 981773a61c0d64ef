package waypointxds

import (
	"strings"
	"testing"

	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

const callerFromClient = `"filter_state": [{"key": "io.istio.peer_principal", "string_match": {"prefix": "spiffe://cluster.local/ns/client/sa/"}}]`

// TestConsumerRoutes: a route in another namespace than its Service applies
// only to callers from the route's namespace (matched on the caller's
// SPIFFE ID, from the HBONE peer certificate), before the producer routes.
func TestConsumerRoutes(t *testing.T) {
	consumer := func(t *testing.T) *gatewayv1.HTTPRoute {
		return httpRoute(t, 0, `
metadata: {name: consumer, namespace: client}
spec:
  parentRefs: [{group: "", kind: Service, name: web, namespace: shop, port: 80}]
  rules:
  - filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: X-Header-Set, value: set}]}}]
    backendRefs: [{name: web, namespace: shop, port: 80}]`)
	}
	t.Run("without producer routes", func(t *testing.T) {
		in := fixtureInput()
		in.HTTPRoutes = []*gatewayv1.HTTPRoute{consumer(t)}
		out := translateValid(t, in)
		want := wantRoutes(t, `[
 {"name": "HTTPRoute/client/consumer/0", "match": {"prefix": "/", `+callerFromClient+`},
  "response_headers_to_add": [{"header": {"key": "x-header-set", "value": "set"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}],
  "route": {"cluster": "`+webCluster+`", "timeout": "0s"}},
 {"name": "consumer-no-match/client", "match": {"prefix": "/", `+callerFromClient+`}, "direct_response": {"status": 404}},
 {"name": "default/shop/web:80", "match": {"prefix": "/"}, "route": {"cluster": "`+webCluster+`", "timeout": "0s"}}]`)
		if d := diffProto(want, routesOf(t, out, "shop/web:80"), ignoreMetadata); d != "" {
			t.Errorf("(-want +got):\n%s", d)
		}
		o := outcomeFor(t, out.Outcomes, "HTTPRoute", "client/consumer", 0)
		if cond(o, "Accepted") != "True Accepted" || cond(o, "ResolvedRefs") != "True ResolvedRefs" {
			t.Errorf("outcome %+v: a consumer route may send to the one Service it is for without a ReferenceGrant", o.Conditions)
		}
	})
	t.Run("before producer routes", func(t *testing.T) {
		in := fixtureInput()
		in.HTTPRoutes = []*gatewayv1.HTTPRoute{consumer(t), rulesOnWeb80(t, `
- matches: [{path: {type: Exact, value: /v1}}]
  backendRefs: [{name: web-v1, port: 80}]`)}
		out := translateValid(t, in)
		var names []string
		for _, r := range routesOf(t, out, "shop/web:80") {
			names = append(names, r.GetName())
		}
		// The consumer's other requests fall through to the producer
		// routes, which apply to every caller; unmatched, they get 404.
		want := []string{"HTTPRoute/client/consumer/0", "HTTPRoute/shop/r/0"}
		if d := diffProto(want, names); d != "" {
			t.Errorf("(-want +got):\n%s", d)
		}
	})
	t.Run("another Service in the producer namespace needs a ReferenceGrant", func(t *testing.T) {
		in := fixtureInput()
		r := consumer(t)
		r.Spec.Rules[0].BackendRefs[0].Name = "web-v2"
		in.HTTPRoutes = []*gatewayv1.HTTPRoute{r}
		out := translateValid(t, in)
		o := outcomeFor(t, out.Outcomes, "HTTPRoute", "client/consumer", 0)
		if got := cond(o, "ResolvedRefs"); got != "False RefNotPermitted" {
			t.Errorf("ResolvedRefs = %q, want False RefNotPermitted", got)
		}
		got := routesOf(t, out, "shop/web:80")[0]
		if got.GetDirectResponse().GetStatus() != 500 {
			t.Errorf("route %v: a backend that is not permitted must answer 500", got)
		}
	})
}

// TestGRPCRoute: service and method matches (exact and regular
// expression), headers, GRPCRoute precedence, weights, and the ports a
// GRPCRoute can attach to (HTTP/2 or detected, never HTTP/1.1 only).
func TestGRPCRoute(t *testing.T) {
	in := fixtureInput()
	in.GRPCRoutes = []*gatewayv1.GRPCRoute{grpcRoute(t, 0, `
metadata: {name: g}
spec:
  parentRefs: [{group: "", kind: Service, name: web}]
  rules:
  - matches: [{method: {service: pkg.Echo, method: Call}}]
    backendRefs: [{name: web-v1, port: 7070}]
  - matches: [{method: {service: pkg.Echo}}]
    backendRefs: [{name: web-v1, port: 7070, weight: 70}, {name: web-v2, port: 7070, weight: 30}, {name: web, port: 7070, weight: 0}]
  - matches: [{method: {method: Call}}]
    filters: [{type: RequestHeaderModifier, requestHeaderModifier: {add: [{name: x-via, value: waypoint}]}}]
    backendRefs: [{name: web-v1, port: 7070}]
  - matches: [{method: {type: RegularExpression, service: "pkg\\..*", method: "C.*"}}]
    backendRefs: [{name: missing, port: 7070}]
  - matches: [{headers: [{name: X-Tenant, value: a}]}]
    backendRefs: [{name: web-v1, port: 7070}]`)}
	out := translateValid(t, in)
	v1 := "outbound|7070||web-v1.shop.svc.cluster.local"
	want := wantRoutes(t, `[
 {"name": "GRPCRoute/shop/g/0", "match": {"path": "/pkg.Echo/Call", "grpc": {}}, "route": {"cluster": "`+v1+`", "timeout": "0s"}},
 {"name": "GRPCRoute/shop/g/1", "match": {"prefix": "/pkg.Echo/", "grpc": {}}, "route": {"timeout": "0s", "weighted_clusters": {"clusters": [
   {"name": "`+v1+`", "weight": 70},
   {"name": "outbound|7070||web-v2.shop.svc.cluster.local", "weight": 30},
   {"name": "outbound|7070||web.shop.svc.cluster.local", "weight": 0}]}}},
 {"name": "GRPCRoute/shop/g/3", "match": {"safe_regex": {"regex": "/(pkg\\..*)/(C.*)"}, "grpc": {}}, "direct_response": {"status": 503}},
 {"name": "GRPCRoute/shop/g/2", "match": {"safe_regex": {"regex": "/[^/]+/Call"}, "grpc": {}},
  "request_headers_to_add": [{"header": {"key": "x-via", "value": "waypoint"}}],
  "route": {"cluster": "`+v1+`", "timeout": "0s"}},
 {"name": "GRPCRoute/shop/g/4", "match": {"prefix": "/", "grpc": {}, "headers": [{"name": "x-tenant", "string_match": {"exact": "a"}}]},
  "route": {"cluster": "`+v1+`", "timeout": "0s"}}]`)
	if d := diffProto(want, routesOf(t, out, "shop/web:7070"), ignoreMetadata); d != "" {
		t.Errorf("shop/web:7070 (-want +got):\n%s", d)
	}
	// Port 3000 (protocol detected) takes the route too; 80 and 8080
	// (HTTP/1.1) keep their default route.
	if got := routesOf(t, out, "shop/web:3000")[0].GetName(); got != "GRPCRoute/shop/g/0" {
		t.Errorf("shop/web:3000 first route %s, want GRPCRoute/shop/g/0", got)
	}
	for _, name := range []string{"shop/web:80", "shop/web:8080"} {
		if got := routesOf(t, out, name)[0].GetName(); got != "default/"+name {
			t.Errorf("%s first route %s, want the default route", name, got)
		}
	}
	o := outcomeFor(t, out.Outcomes, "GRPCRoute", "shop/g", 0)
	if c := o.Condition("Accepted"); c.Status != "True" || !strings.Contains(c.Message, "port(s) 3000, 7070") {
		t.Errorf("Accepted %+v, want True on ports 3000, 7070", c)
	}
	if got := cond(o, "ResolvedRefs"); got != "False BackendNotFound" {
		t.Errorf("ResolvedRefs = %q, want False BackendNotFound", got)
	}

	t.Run("an HTTP/1.1 port named explicitly is not a parent", func(t *testing.T) {
		in := fixtureInput()
		in.GRPCRoutes = []*gatewayv1.GRPCRoute{grpcRoute(t, 0, `
metadata: {name: g}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules: [{backendRefs: [{name: web-v1, port: 7070}]}]`)}
		out := translateValid(t, in)
		o := outcomeFor(t, out.Outcomes, "GRPCRoute", "shop/g", 0)
		if c := o.Condition("Accepted"); c.Reason != "NoMatchingParent" || !strings.Contains(c.Message, "port 80") {
			t.Errorf("Accepted %+v, want NoMatchingParent naming port 80", c)
		}
	})
}

// TestHTTPAndGRPCRoutesDoNotMerge: on one Service port the kind of the
// oldest route wins and routes of the other kind are not accepted there.
func TestHTTPAndGRPCRoutesDoNotMerge(t *testing.T) {
	for _, tc := range []struct {
		name               string
		httpAge, grpcAge   int
		winner, loserKind  string
		loser, loserReason string
	}{
		{"HTTPRoute older", 0, 5, "HTTPRoute/shop/h/0", "GRPCRoute", "shop/g", "HTTPRoute shop/h"},
		{"GRPCRoute older", 5, 0, "GRPCRoute/shop/g/0", "HTTPRoute", "shop/h", "GRPCRoute shop/g"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := fixtureInput()
			in.HTTPRoutes = []*gatewayv1.HTTPRoute{httpRoute(t, tc.httpAge, `
metadata: {name: h}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 7070}]
  rules: [{backendRefs: [{name: web-v1, port: 7070}]}]`)}
			in.GRPCRoutes = []*gatewayv1.GRPCRoute{grpcRoute(t, tc.grpcAge, `
metadata: {name: g}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 7070}]
  rules: [{backendRefs: [{name: web-v2, port: 7070}]}]`)}
			out := translateValid(t, in)
			rs := routesOf(t, out, "shop/web:7070")
			if len(rs) != 1 || rs[0].GetName() != tc.winner {
				t.Errorf("routes %v, want only %s", rs, tc.winner)
			}
			o := outcomeFor(t, out.Outcomes, tc.loserKind, tc.loser, 0)
			if c := o.Condition("Accepted"); c.Status != "False" || c.Reason != string(ReasonConflicted) || !strings.Contains(c.Message, tc.loserReason) {
				t.Errorf("loser Accepted %+v, want False Conflicted naming %s", c, tc.loserReason)
			}
		})
	}
}
