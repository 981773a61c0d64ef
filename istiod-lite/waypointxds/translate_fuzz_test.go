package waypointxds

import (
	"bytes"
	"encoding/json"
	"testing"

	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/yaml"

	securityv1 "github.com/cairnmesh/cairn/apis/security/v1"
)

// FuzzTranslate reads what users write, without the CRDs' validation: the
// spec of an HTTPRoute, of a GRPCRoute and of an AuthorizationPolicy (as
// JSON), next to the fixture's Services (route shop/h and shop/g, policy
// shop/p). What must hold: no panic; every resource passes Envoy's
// generated validation, typed configs included; the same input gives the
// same bytes and outcomes; every outcome has Accepted and ResolvedRefs.
func FuzzTranslate(f *testing.F) {
	seed := func(doc string) []byte {
		js, err := yaml.YAMLToJSON([]byte(doc))
		if err != nil {
			f.Fatal(err)
		}
		return js
	}
	f.Add(seed(`
parentRefs: [{group: "", kind: Service, name: web}]
rules:
- matches: [{path: {type: PathPrefix, value: /api}, headers: [{name: x, value: "1"}], queryParams: [{name: q, value: "2"}], method: GET}]
  filters:
  - {type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}}
  - {type: RequestMirror, requestMirror: {backendRef: {name: web-v2, port: 80}, fraction: {numerator: 1, denominator: 3}}}
  backendRefs: [{name: web-v1, port: 80, weight: 3}, {name: missing, port: 80}]
  timeouts: {request: 10s, backendRequest: 1s}
- filters: [{type: RequestRedirect, requestRedirect: {scheme: https, hostname: example.org, statusCode: 308}}]`),
		seed(`
parentRefs: [{group: "", kind: Service, name: web, port: 7070}]
rules:
- matches: [{method: {type: RegularExpression, service: "pkg\\..*", method: "C.*"}, headers: [{name: x-tenant, value: a}]}]
  backendRefs: [{name: web-v1, port: 7070, weight: 70}, {name: web-v2, port: 7070, weight: 30}]`),
		seed(`
targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
action: ALLOW
rules:
- from: [{source: {namespaces: [client], notIpBlocks: [10.0.0.0/8]}}]
  to: [{operation: {methods: [GET], paths: ["/api/*"], ports: ["80"]}}]
  when: [{key: "request.headers[x-tenant]", values: [a]}]`))
	f.Add([]byte(`{}`), []byte(`{}`), []byte(`{}`))

	f.Fuzz(func(t *testing.T, httpSpec, grpcSpec, policySpec []byte) {
		in := fixtureInput()
		if hr := (&gatewayv1.HTTPRoute{}); json.Unmarshal(httpSpec, &hr.Spec) == nil {
			hr.Namespace, hr.Name, hr.Generation = "shop", "h", 1
			in.HTTPRoutes = append(in.HTTPRoutes, hr)
		}
		if gr := (&gatewayv1.GRPCRoute{}); json.Unmarshal(grpcSpec, &gr.Spec) == nil {
			gr.Namespace, gr.Name, gr.Generation = "shop", "g", 1
			in.GRPCRoutes = append(in.GRPCRoutes, gr)
		}
		if p := (&securityv1.AuthorizationPolicy{}); json.Unmarshal(policySpec, &p.Spec) == nil {
			p.Namespace, p.Name, p.Generation = "shop", "p", 1
			in.AuthorizationPolicies = append(in.AuthorizationPolicies, p)
		}
		out := Translate(in)
		if err := validateOutput(out); err != nil {
			t.Fatalf("invalid output: %v", err)
		}
		again := Translate(in)
		if !bytes.Equal(encode(t, out), encode(t, again)) {
			t.Fatal("the same input gave different resources")
		}
		for _, o := range append(out.Outcomes, UnboundOutcomes(in)...) {
			if o.Condition("Accepted") == nil || o.Condition("ResolvedRefs") == nil {
				t.Fatalf("outcome without Accepted or ResolvedRefs: %+v", o)
			}
		}
	})
}
