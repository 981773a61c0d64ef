package waypointxds

import (
	"strings"
	"testing"

	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

const (
	v1Cluster  = "outbound|80||web-v1.shop.svc.cluster.local"
	v2Cluster  = "outbound|80||web-v2.shop.svc.cluster.local"
	webCluster = "outbound|80||web.shop.svc.cluster.local"
)

// TestHTTPRouteFeatures checks, feature by feature, the Envoy routes that an
// HTTPRoute rule on Service web port 80 becomes.
func TestHTTPRouteFeatures(t *testing.T) {
	for _, tc := range []struct {
		name  string
		rules string
		want  string // JSON list of routev3.Route, metadata left out
	}{{
		name: "exact path",
		rules: `
- matches: [{path: {type: Exact, value: /v1}}]
  backendRefs: [{name: web-v1, port: 80}]`,
		want: `[{"name": "HTTPRoute/shop/r/0", "match": {"path": "/v1"},
  "route": {"cluster": "` + v1Cluster + `", "timeout": "0s"}}]`,
	}, {
		name: "path prefix matches whole segments and ignores a trailing slash",
		rules: `
- matches: [{path: {type: PathPrefix, value: /v1/}}]
  backendRefs: [{name: web-v1, port: 80}]`,
		want: `[{"name": "HTTPRoute/shop/r/0", "match": {"path_separated_prefix": "/v1"},
  "route": {"cluster": "` + v1Cluster + `", "timeout": "0s"}}]`,
	}, {
		name: "prefix / and a rule without matches match everything",
		rules: `
- matches: [{path: {type: PathPrefix, value: /}}]
  backendRefs: [{name: web-v1, port: 80}]
- backendRefs: [{name: web-v2, port: 80}]`,
		want: `[{"name": "HTTPRoute/shop/r/0", "match": {"prefix": "/"}, "route": {"cluster": "` + v1Cluster + `", "timeout": "0s"}},
 {"name": "HTTPRoute/shop/r/1", "match": {"prefix": "/"}, "route": {"cluster": "` + v2Cluster + `", "timeout": "0s"}}]`,
	}, {
		name: "regular expression path",
		rules: `
- matches: [{path: {type: RegularExpression, value: "/v[0-9]+/.*"}}]
  backendRefs: [{name: web-v1, port: 80}]`,
		want: `[{"name": "HTTPRoute/shop/r/0", "match": {"safe_regex": {"regex": "/v[0-9]+/.*"}},
  "route": {"cluster": "` + v1Cluster + `", "timeout": "0s"}}]`,
	}, {
		name: "headers (first of a name wins, case-insensitive), query parameters and method",
		rules: `
- matches:
  - headers:
    - {name: Version, value: one}
    - {name: version, value: two}
    - {type: RegularExpression, name: X-Env, value: "prod|stage"}
    queryParams:
    - {name: animal, value: whale}
    - {name: animal, value: dolphin}
    - {type: RegularExpression, name: num, value: "[0-9]+"}
    method: POST
  backendRefs: [{name: web-v1, port: 80}]`,
		want: `[{"name": "HTTPRoute/shop/r/0",
  "match": {"prefix": "/",
    "headers": [
      {"name": "version", "string_match": {"exact": "one"}},
      {"name": "x-env", "string_match": {"safe_regex": {"regex": "prod|stage"}}},
      {"name": ":method", "string_match": {"exact": "POST"}}],
    "query_parameters": [
      {"name": "animal", "string_match": {"exact": "whale"}},
      {"name": "num", "string_match": {"safe_regex": {"regex": "[0-9]+"}}}]},
  "route": {"cluster": "` + v1Cluster + `", "timeout": "0s"}}]`,
	}, {
		name: "request and response header modifiers",
		rules: `
- filters:
  - type: RequestHeaderModifier
    requestHeaderModifier:
      set: [{name: X-Set, value: a}]
      add: [{name: X-Add, value: b}]
      remove: [X-Remove]
  - type: ResponseHeaderModifier
    responseHeaderModifier:
      set: [{name: X-Resp, value: c}]
      remove: [Server]
  backendRefs: [{name: web-v1, port: 80}]`,
		want: `[{"name": "HTTPRoute/shop/r/0", "match": {"prefix": "/"},
  "request_headers_to_add": [
    {"header": {"key": "x-set", "value": "a"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"},
    {"header": {"key": "x-add", "value": "b"}, "append_action": "APPEND_IF_EXISTS_OR_ADD"}],
  "request_headers_to_remove": ["x-remove"],
  "response_headers_to_add": [{"header": {"key": "x-resp", "value": "c"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}],
  "response_headers_to_remove": ["server"],
  "route": {"cluster": "` + v1Cluster + `", "timeout": "0s"}}]`,
	}, {
		name: "backend header modifiers apply only to their backend",
		rules: `
- backendRefs:
  - name: web-v1
    port: 80
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: X-Backend, value: v1}]}
    - type: ResponseHeaderModifier
      responseHeaderModifier: {add: [{name: X-From, value: v1}]}
  - {name: web-v2, port: 80}`,
		want: `[{"name": "HTTPRoute/shop/r/0", "match": {"prefix": "/"},
  "route": {"timeout": "0s", "weighted_clusters": {"clusters": [
    {"name": "` + v1Cluster + `", "weight": 1,
     "request_headers_to_add": [{"header": {"key": "x-backend", "value": "v1"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}],
     "response_headers_to_add": [{"header": {"key": "x-from", "value": "v1"}}]},
    {"name": "` + v2Cluster + `", "weight": 1}]}}}]`,
	}, {
		name: "weights are kept, zero included, and chosen per request",
		rules: `
- backendRefs:
  - {name: web-v1, port: 80, weight: 70}
  - {name: web-v2, port: 80, weight: 30}
  - {name: web, port: 80, weight: 0}`,
		want: `[{"name": "HTTPRoute/shop/r/0", "match": {"prefix": "/"},
  "route": {"timeout": "0s", "weighted_clusters": {"clusters": [
    {"name": "` + v1Cluster + `", "weight": 70},
    {"name": "` + v2Cluster + `", "weight": 30},
    {"name": "` + webCluster + `", "weight": 0}]}}}]`,
	}, {
		name: "an unresolvable backend's share is answered 500",
		rules: `
- backendRefs:
  - {name: web-v1, port: 80, weight: 3}
  - {name: missing, port: 80, weight: 1}
  - {name: web-v2, port: 81, weight: 1}`,
		want: `[{"name": "HTTPRoute/shop/r/0", "match": {"prefix": "/"},
  "route": {"timeout": "0s", "cluster_not_found_response_code": "INTERNAL_SERVER_ERROR",
    "weighted_clusters": {"clusters": [
      {"name": "` + v1Cluster + `", "weight": 3},
      {"name": "cairn.invalid-backend", "weight": 2}]}}}]`,
	}, {
		name: "every backend unresolvable, no backend, or all weights zero: 500",
		rules: `
- matches: [{path: {type: Exact, value: /missing}}]
  backendRefs: [{name: missing, port: 80}]
- matches: [{path: {type: Exact, value: /none}}]
  filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: a, value: b}]}}]
- matches: [{path: {type: Exact, value: /zero}}]
  backendRefs: [{name: web-v1, port: 80, weight: 0}]`,
		want: `[
 {"name": "HTTPRoute/shop/r/0", "match": {"path": "/missing"}, "direct_response": {"status": 500}},
 {"name": "HTTPRoute/shop/r/1", "match": {"path": "/none"}, "direct_response": {"status": 500},
  "request_headers_to_add": [{"header": {"key": "a", "value": "b"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]},
 {"name": "HTTPRoute/shop/r/2", "match": {"path": "/zero"}, "direct_response": {"status": 500}}]`,
	}, {
		name: "redirect hostname and status; 302 by default",
		rules: `
- matches: [{path: {type: PathPrefix, value: /moved}}]
  filters: [{type: RequestRedirect, requestRedirect: {hostname: example.org, statusCode: 301}}]
- matches: [{path: {type: PathPrefix, value: /found}}]
  filters: [{type: RequestRedirect, requestRedirect: {hostname: example.org}}]`,
		want: `[
 {"name": "HTTPRoute/shop/r/0", "match": {"path_separated_prefix": "/moved"},
  "redirect": {"host_redirect": "example.org", "response_code": "MOVED_PERMANENTLY"}},
 {"name": "HTTPRoute/shop/r/1", "match": {"path_separated_prefix": "/found"},
  "redirect": {"host_redirect": "example.org", "response_code": "FOUND"}}]`,
	}, {
		name: "redirect scheme and port: the scheme's well-known port unless a port is given",
		rules: `
- matches: [{path: {type: Exact, value: /scheme}}]
  filters: [{type: RequestRedirect, requestRedirect: {scheme: https}}]
- matches: [{path: {type: Exact, value: /scheme-http}}]
  filters: [{type: RequestRedirect, requestRedirect: {scheme: http}}]
- matches: [{path: {type: Exact, value: /port}}]
  filters: [{type: RequestRedirect, requestRedirect: {port: 8083}}]
- matches: [{path: {type: Exact, value: /scheme-and-port}}]
  filters: [{type: RequestRedirect, requestRedirect: {scheme: https, port: 8443, statusCode: 302}}]`,
		want: `[
 {"name": "HTTPRoute/shop/r/3", "match": {"path": "/scheme-and-port"},
  "redirect": {"scheme_redirect": "https", "port_redirect": 8443, "response_code": "FOUND"}},
 {"name": "HTTPRoute/shop/r/1", "match": {"path": "/scheme-http"},
  "redirect": {"scheme_redirect": "http", "port_redirect": 80, "response_code": "FOUND"}},
 {"name": "HTTPRoute/shop/r/0", "match": {"path": "/scheme"},
  "redirect": {"scheme_redirect": "https", "port_redirect": 443, "response_code": "FOUND"}},
 {"name": "HTTPRoute/shop/r/2", "match": {"path": "/port"},
  "redirect": {"port_redirect": 8083, "response_code": "FOUND"}}]`,
	}, {
		name: "redirect paths: full, prefix, prefix to / (no double slash), and 303/307/308",
		rules: `
- matches: [{path: {type: PathPrefix, value: /full}}]
  filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: /new}, statusCode: 303}}]
- matches: [{path: {type: PathPrefix, value: /old}}]
  filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /new/}, statusCode: 307}}]
- matches: [{path: {type: PathPrefix, value: /strip}}]
  filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}, statusCode: 308}}]`,
		want: `[
 {"name": "HTTPRoute/shop/r/2", "match": {"path_separated_prefix": "/strip"},
  "redirect": {"regex_rewrite": {"pattern": {"regex": "^/strip/*"}, "substitution": "/"}, "response_code": "PERMANENT_REDIRECT"}},
 {"name": "HTTPRoute/shop/r/0", "match": {"path_separated_prefix": "/full"},
  "redirect": {"path_redirect": "/new", "response_code": "SEE_OTHER"}},
 {"name": "HTTPRoute/shop/r/1", "match": {"path_separated_prefix": "/old"},
  "redirect": {"prefix_rewrite": "/new", "response_code": "TEMPORARY_REDIRECT"}}]`,
	}, {
		name: "URL rewrite: hostname and full path",
		rules: `
- filters: [{type: URLRewrite, urlRewrite: {hostname: example.org, path: {type: ReplaceFullPath, replaceFullPath: /full}}}]
  backendRefs: [{name: web-v1, port: 80}]`,
		want: `[{"name": "HTTPRoute/shop/r/0", "match": {"prefix": "/"},
  "route": {"cluster": "` + v1Cluster + `", "timeout": "0s", "host_rewrite_literal": "example.org",
    "regex_rewrite": {"pattern": {"regex": "^/.*$"}, "substitution": "/full"}}}]`,
	}, {
		name: "URL rewrite of a prefix, to another prefix, to /, and of the prefix /",
		rules: `
- matches: [{path: {type: PathPrefix, value: /api}}]
  filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}}]
  backendRefs: [{name: web-v1, port: 80}]
- matches: [{path: {type: PathPrefix, value: /prefix/one}}]
  filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}}]
  backendRefs: [{name: web-v1, port: 80}]
- filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /root}}}]
  backendRefs: [{name: web-v1, port: 80}]`,
		want: `[
 {"name": "HTTPRoute/shop/r/1", "match": {"path_separated_prefix": "/prefix/one"},
  "route": {"cluster": "` + v1Cluster + `", "timeout": "0s", "regex_rewrite": {"pattern": {"regex": "^/prefix/one/*"}, "substitution": "/"}}},
 {"name": "HTTPRoute/shop/r/0", "match": {"path_separated_prefix": "/api"},
  "route": {"cluster": "` + v1Cluster + `", "timeout": "0s", "prefix_rewrite": "/v2"}},
 {"name": "HTTPRoute/shop/r/2", "match": {"prefix": "/"},
  "route": {"cluster": "` + v1Cluster + `", "timeout": "0s", "prefix_rewrite": "/root/"}}]`,
	}, {
		name: "request mirrors: percent, fraction (exact when a denominator allows), all",
		rules: `
- filters:
  - {type: RequestMirror, requestMirror: {backendRef: {name: web-v2, port: 80}, percent: 50}}
  - {type: RequestMirror, requestMirror: {backendRef: {name: web, port: 80}, fraction: {numerator: 1, denominator: 1000}}}
  - {type: RequestMirror, requestMirror: {backendRef: {name: web, port: 8080}, fraction: {numerator: 1, denominator: 3}}}
  - {type: RequestMirror, requestMirror: {backendRef: {name: web, port: 3000}}}
  backendRefs: [{name: web-v1, port: 80}]`,
		want: `[{"name": "HTTPRoute/shop/r/0", "match": {"prefix": "/"},
  "route": {"cluster": "` + v1Cluster + `", "timeout": "0s", "request_mirror_policies": [
    {"cluster": "` + v2Cluster + `", "runtime_fraction": {"default_value": {"numerator": 50, "denominator": "HUNDRED"}}, "disable_shadow_host_suffix_append": true},
    {"cluster": "` + webCluster + `", "runtime_fraction": {"default_value": {"numerator": 10, "denominator": "TEN_THOUSAND"}}, "disable_shadow_host_suffix_append": true},
    {"cluster": "outbound|8080||web.shop.svc.cluster.local", "runtime_fraction": {"default_value": {"numerator": 333333, "denominator": "MILLION"}}, "disable_shadow_host_suffix_append": true},
    {"cluster": "outbound|3000||web.shop.svc.cluster.local", "runtime_fraction": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}}, "disable_shadow_host_suffix_append": true}]}}]`,
	}, {
		name: "timeouts: request, backendRequest as a per-try timeout, 0 for none",
		rules: `
- matches: [{path: {type: Exact, value: /both}}]
  timeouts: {request: 10s, backendRequest: 2s}
  backendRefs: [{name: web-v1, port: 80}]
- matches: [{path: {type: Exact, value: /none}}]
  timeouts: {request: 0s}
  backendRefs: [{name: web-v1, port: 80}]`,
		want: `[
 {"name": "HTTPRoute/shop/r/0", "match": {"path": "/both"},
  "route": {"cluster": "` + v1Cluster + `", "timeout": "10s", "retry_policy": {"num_retries": 0, "per_try_timeout": "2s"}}},
 {"name": "HTTPRoute/shop/r/1", "match": {"path": "/none"},
  "route": {"cluster": "` + v1Cluster + `", "timeout": "0s"}}]`,
	}, {
		name: "retry (experimental channel)",
		rules: `
- retry: {attempts: 3, codes: [503, 500], backoff: 100ms}
  timeouts: {backendRequest: 1s}
  backendRefs: [{name: web-v1, port: 80}]`,
		want: `[{"name": "HTTPRoute/shop/r/0", "match": {"prefix": "/"},
  "route": {"cluster": "` + v1Cluster + `", "timeout": "0s", "retry_policy": {
    "retry_on": "connect-failure,refused-stream,reset,retriable-status-codes", "num_retries": 3,
    "retriable_status_codes": [503, 500], "retry_back_off": {"base_interval": "0.100s"}, "per_try_timeout": "1s"}}}]`,
	}, {
		name: "named rules name their routes",
		rules: `
- name: canary
  matches: [{path: {type: Exact, value: /named}}]
  backendRefs: [{name: web-v1, port: 80}]`,
		want: `[{"name": "HTTPRoute/shop/r/canary", "match": {"path": "/named"},
  "route": {"cluster": "` + v1Cluster + `", "timeout": "0s"}}]`,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			in := fixtureInput()
			in.HTTPRoutes = []*gatewayv1.HTTPRoute{rulesOnWeb80(t, tc.rules)}
			out := translateValid(t, in)
			got := routesOf(t, out, "shop/web:80")
			if d := diffProto(wantRoutes(t, tc.want), got, ignoreMetadata); d != "" {
				t.Errorf("routes of shop/web:80 (-want +got):\n%s", d)
			}
			o := outcomeFor(t, out.Outcomes, "HTTPRoute", "shop/r", 0)
			if got := cond(o, "Accepted"); got != "True Accepted" {
				t.Errorf("Accepted = %q, want True Accepted (%s)", got, o.Condition("Accepted").Message)
			}
		})
	}
}

// TestRouteMetadataMapsBackToTheRule checks the name and metadata that let
// a NACK or an access-log line name the Gateway API rule.
func TestRouteMetadataMapsBackToTheRule(t *testing.T) {
	in := fixtureInput()
	in.HTTPRoutes = []*gatewayv1.HTTPRoute{rulesOnWeb80(t, `
- name: first
  matches: [{path: {value: /a}}, {path: {value: /b}}]
  backendRefs: [{name: web-v1, port: 80}]`)}
	out := translateValid(t, in)
	got := routesOf(t, out, "shop/web:80")
	want := wantRoutes(t, `[
 {"name": "HTTPRoute/shop/r/first", "match": {"path_separated_prefix": "/a"}, "route": {"cluster": "`+v1Cluster+`", "timeout": "0s"},
  "metadata": {"filter_metadata": {"cairn": {"kind": "HTTPRoute", "namespace": "shop", "name": "r", "rule": "first", "match": 0}}}},
 {"name": "HTTPRoute/shop/r/first", "match": {"path_separated_prefix": "/b"}, "route": {"cluster": "`+v1Cluster+`", "timeout": "0s"},
  "metadata": {"filter_metadata": {"cairn": {"kind": "HTTPRoute", "namespace": "shop", "name": "r", "rule": "first", "match": 1}}}}]`)
	if d := diffProto(want, got); d != "" {
		t.Errorf("(-want +got):\n%s", d)
	}
}

// TestPrecedenceAcrossRoutes merges several routes on one Service port in
// Gateway API order: exact, then regular expressions, then longest prefix;
// then method, most headers, most query parameters; then the oldest route,
// then namespace/name, then rule order.
func TestPrecedenceAcrossRoutes(t *testing.T) {
	parent := `parentRefs: [{group: "", kind: Service, name: web}]`
	backend := `backendRefs: [{name: web-v1, port: 80}]`
	in := fixtureInput()
	in.HTTPRoutes = []*gatewayv1.HTTPRoute{
		httpRoute(t, 10, `
metadata: {name: a}
spec:
  `+parent+`
  rules:
  - {matches: [{path: {value: /}}], `+backend+`}
  - {matches: [{path: {value: /api}}], `+backend+`}
  - {matches: [{path: {type: Exact, value: /api/v1}}], `+backend+`}
  - {matches: [{path: {value: /x}}], `+backend+`}
  - {matches: [{path: {value: /x}}], `+backend+`}
  - {matches: [{path: {value: /api/v2}}], `+backend+`}`),
		httpRoute(t, 5, `
metadata: {name: c}
spec:
  `+parent+`
  rules:
  - {matches: [{path: {value: /api}}], `+backend+`}`),
		httpRoute(t, 5, `
metadata: {name: b}
spec:
  `+parent+`
  rules:
  - {matches: [{path: {value: /api}, method: GET}], `+backend+`}
  - {matches: [{path: {value: /api}, headers: [{name: x, value: "1"}]}], `+backend+`}
  - {matches: [{path: {value: /api}, headers: [{name: x, value: "1"}, {name: y, value: "2"}]}], `+backend+`}
  - {matches: [{path: {value: /api}, queryParams: [{name: q, value: "1"}]}], `+backend+`}
  - {matches: [{path: {type: RegularExpression, value: "/api/.*"}}], `+backend+`}
  - {matches: [{path: {value: /api}}], `+backend+`}`),
	}
	out := translateValid(t, in)
	var got []string
	for _, r := range routesOf(t, out, "shop/web:80") {
		got = append(got, r.GetName())
	}
	want := []string{
		"HTTPRoute/shop/a/2", // exact
		"HTTPRoute/shop/b/4", // regular expression
		"HTTPRoute/shop/a/5", // longest prefix
		"HTTPRoute/shop/b/0", // method
		"HTTPRoute/shop/b/2", // two headers
		"HTTPRoute/shop/b/1", // one header
		"HTTPRoute/shop/b/3", // query parameter
		"HTTPRoute/shop/b/5", // tie: oldest, then shop/b before shop/c
		"HTTPRoute/shop/c/0",
		"HTTPRoute/shop/a/1", // tie, newest route
		"HTTPRoute/shop/a/3", // shorter prefix; tie within a route: rule order
		"HTTPRoute/shop/a/4",
		"HTTPRoute/shop/a/0", // "/"
	}
	if d := diffProto(want, got); d != "" {
		t.Errorf("route order (-want +got):\n%s", d)
	}
	// The same routes on web:8080 (no port in the parentRef) in the same order.
	var got8080 []string
	for _, r := range routesOf(t, out, "shop/web:8080") {
		got8080 = append(got8080, r.GetName())
	}
	if d := diffProto(want, got8080); d != "" {
		t.Errorf("route order on 8080 (-want +got):\n%s", d)
	}
}

// TestParentRefPort: a route names a port (by number or by name) applies
// only to that port; the Service's other ports keep their default route.
func TestParentRefPort(t *testing.T) {
	in := fixtureInput()
	in.HTTPRoutes = []*gatewayv1.HTTPRoute{
		httpRoute(t, 0, `
metadata: {name: by-number}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules: [{backendRefs: [{name: web-v1, port: 80}]}]`),
		httpRoute(t, 1, `
metadata: {name: by-name}
spec:
  parentRefs: [{group: "", kind: Service, name: web, sectionName: http-alt}]
  rules: [{backendRefs: [{name: web-v2, port: 80}]}]`),
	}
	out := translateValid(t, in)
	names := func(name string) []string {
		var out2 []string
		for _, r := range routesOf(t, out, name) {
			out2 = append(out2, r.GetName())
		}
		return out2
	}
	for port, want := range map[string][]string{
		"shop/web:80":   {"HTTPRoute/shop/by-number/0"},
		"shop/web:8080": {"HTTPRoute/shop/by-name/0"},
		"shop/web:7070": {"default/shop/web:7070"},
		"shop/web:3000": {"default/shop/web:3000"},
	} {
		if d := diffProto(want, names(port)); d != "" {
			t.Errorf("%s (-want +got):\n%s", port, d)
		}
	}
	for _, tc := range []struct{ route, msg string }{
		{"shop/by-number", "port(s) 80"},
		{"shop/by-name", "port(s) 8080"},
	} {
		o := outcomeFor(t, out.Outcomes, "HTTPRoute", tc.route, 0)
		if c := o.Condition("Accepted"); c == nil || c.Status != "True" || !strings.Contains(c.Message, tc.msg) {
			t.Errorf("%s Accepted = %+v, want True naming %q", tc.route, c, tc.msg)
		}
	}
}

// TestNoRouteSendsToTheService: a bound Service without routes gets, per
// HTTP port, one route to its own cluster, as without a waypoint; a
// request that no route of a routed port matches gets Envoy's 404.
func TestNoRouteSendsToTheService(t *testing.T) {
	out := translateValid(t, fixtureInput())
	want := wantRoutes(t, `[{"name": "default/shop/web:80", "match": {"prefix": "/"},
  "route": {"cluster": "`+webCluster+`", "timeout": "0s"},
  "metadata": {"filter_metadata": {"cairn": {"kind": "Service", "namespace": "shop", "name": "web"}}}}]`)
	if d := diffProto(want, routesOf(t, out, "shop/web:80")); d != "" {
		t.Errorf("(-want +got):\n%s", d)
	}
	rc := routeConfig(t, out, "shop/web:80")
	if vh := rc.GetVirtualHosts()[0]; len(vh.GetDomains()) != 1 || vh.GetDomains()[0] != "*" {
		t.Errorf("domains = %v, want [*]: routes are chosen by the dialled address, not the Host header", vh.GetDomains())
	}
	// No RouteConfiguration for the TCP port, and none for Services not
	// bound to this waypoint.
	for _, r := range out.Routes {
		switch r.GetName() {
		case "shop/web:9090", "shop/plain:80", "other/api:80":
			t.Errorf("unexpected RouteConfiguration %s", r.GetName())
		}
	}
}
