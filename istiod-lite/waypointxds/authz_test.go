package waypointxds

import (
	"strings"
	"testing"

	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	rbachttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	rbacnetv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	"sigs.k8s.io/yaml"

	securityv1 "github.com/cairnmesh/cairn/apis/security/v1"
)

func authzPolicy(t *testing.T, doc string) *securityv1.AuthorizationPolicy {
	t.Helper()
	p := &securityv1.AuthorizationPolicy{}
	if err := yaml.UnmarshalStrict([]byte(doc), p); err != nil {
		t.Fatalf("AuthorizationPolicy YAML: %v\n%s", err, doc)
	}
	if p.Namespace == "" {
		p.Namespace = "shop"
	}
	p.Generation = 3
	return p
}

// rbacOf returns the RBAC configurations of a chain's filters, in order:
// "<action>" per RBAC filter, and the configurations.
func rbacOf(t *testing.T, out Output, chain string) ([]string, []*rbacv3.RBAC) {
	t.Helper()
	fc := chainByName(t, out.Listener, chain)
	var actions []string
	var cfgs []*rbacv3.RBAC
	add := func(cfg *rbacv3.RBAC) {
		actions = append(actions, cfg.GetAction().String())
		cfgs = append(cfgs, cfg)
	}
	for _, f := range fc.GetFilters() {
		inner, err := f.GetTypedConfig().UnmarshalNew()
		if err != nil {
			t.Fatal(err)
		}
		switch m := inner.(type) {
		case *rbacnetv3.RBAC:
			add(m.GetRules())
		case *hcmv3.HttpConnectionManager:
			for _, hf := range m.GetHttpFilters() {
				h, err := hf.GetTypedConfig().UnmarshalNew()
				if err != nil {
					t.Fatal(err)
				}
				if r, ok := h.(*rbachttpv3.RBAC); ok {
					add(r.GetRules())
				}
			}
		}
	}
	return actions, cfgs
}

// TestAuthorizationPolicies: policies attached to the waypoint's Gateway
// apply to every chain, those attached to a Service to its chains, as RBAC
// filters in the order AUDIT, DENY, ALLOW; HTTP attributes cannot be
// checked on TCP ports, where an ALLOW rule using them never matches and
// a DENY rule ignores them.
func TestAuthorizationPolicies(t *testing.T) {
	in := fixtureInput()
	in.AuthorizationPolicies = []*securityv1.AuthorizationPolicy{
		authzPolicy(t, `
metadata: {name: allow-get}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  rules:
  - from: [{source: {principals: [cluster.local/ns/client/sa/curl]}}]
    to: [{operation: {methods: [GET], paths: ["/api/*"]}}]`),
		authzPolicy(t, `
metadata: {name: deny-post}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: DENY
  rules: [{to: [{operation: {methods: [POST]}}]}]`),
		authzPolicy(t, `
metadata: {name: audit}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: AUDIT
  rules: [{}]`),
		// Not this waypoint's: a selector policy (ztunnel's), another
		// Gateway, a Service of another namespace, an unbound Service.
		authzPolicy(t, `
metadata: {name: selector}
spec:
  selector: {matchLabels: {app: web}}
  action: DENY`),
		authzPolicy(t, `
metadata: {name: other-gateway}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: another}]
  action: DENY`),
		authzPolicy(t, `
metadata: {name: cross-namespace}
spec:
  targetRefs: [{kind: Service, group: "", name: web, namespace: other}]
  action: DENY`),
		authzPolicy(t, `
metadata: {name: unbound}
spec:
  targetRefs: [{kind: Service, group: "", name: plain}]
  action: DENY`),
	}
	out := translateValid(t, in)

	actions, cfgs := rbacOf(t, out, "shop/web:80")
	if d := diffProto([]string{"LOG", "DENY", "ALLOW"}, actions); d != "" {
		t.Fatalf("RBAC filters of shop/web:80 (-want +got):\n%s", d)
	}
	wantAllow := decode(t, `{"action": "ALLOW", "policies": {"shop/allow-get/0": {
  "permissions": [{"and_rules": {"rules": [
    {"header": {"name": ":method", "string_match": {"exact": "GET"}}},
    {"url_path": {"path": {"prefix": "/api/"}}}]}}],
  "principals": [{"authenticated": {"principal_name": {"exact": "spiffe://cluster.local/ns/client/sa/curl"}}}]}}}`, &rbacv3.RBAC{})
	if d := diffProto(wantAllow, cfgs[2]); d != "" {
		t.Errorf("ALLOW (-want +got):\n%s", d)
	}
	wantDeny := decode(t, `{"action": "DENY", "policies": {"shop/deny-post/0": {
  "permissions": [{"header": {"name": ":method", "string_match": {"exact": "POST"}}}],
  "principals": [{"any": true}]}}}`, &rbacv3.RBAC{})
	if d := diffProto(wantDeny, cfgs[1]); d != "" {
		t.Errorf("DENY (-want +got):\n%s", d)
	}
	wantAudit := decode(t, `{"action": "LOG", "policies": {"shop/audit/0": {"permissions": [{"any": true}], "principals": [{"any": true}]}}}`, &rbacv3.RBAC{})
	if d := diffProto(wantAudit, cfgs[0]); d != "" {
		t.Errorf("LOG (-want +got):\n%s", d)
	}

	// Another bound Service: only the Gateway's policies.
	if actions, _ := rbacOf(t, out, "shop/web-v1:80"); strings.Join(actions, ",") != "LOG,DENY" {
		t.Errorf("shop/web-v1:80 RBAC filters %v, want LOG,DENY", actions)
	}
	// The TCP port: the DENY rule's method cannot be checked, so it denies
	// every connection; the ALLOW rule never matches, so nothing is allowed.
	actions, cfgs = rbacOf(t, out, "shop/web:9090")
	if strings.Join(actions, ",") != "LOG,DENY,ALLOW" {
		t.Fatalf("shop/web:9090 RBAC filters %v, want LOG,DENY,ALLOW", actions)
	}
	if p := cfgs[1].GetPolicies()["shop/deny-post/0"]; !p.GetPermissions()[0].GetAny() {
		t.Errorf("TCP DENY policy %v, want any (deny more)", p)
	}
	if n := len(cfgs[2].GetPolicies()); n != 0 {
		t.Errorf("TCP ALLOW has %d policies, want none (fail closed)", n)
	}

	var got []string
	for _, o := range out.Policies {
		c := o.Conditions[0]
		got = append(got, o.Policy.String()+" "+string(c.Status)+" "+c.Reason)
		if c.Type != ConditionWaypointAccepted || c.ObservedGeneration != 3 {
			t.Errorf("%s condition %+v", o.Policy, c)
		}
	}
	want := []string{
		"shop/allow-get False UnsupportedValue", // on shop/web:9090
		"shop/audit True Accepted",
		"shop/deny-post False UnsupportedValue", // on shop/web:9090
	}
	if d := diffProto(want, got); d != "" {
		t.Errorf("policy outcomes (-want +got):\n%s", d)
	}
	if msg := out.Policies[0].Conditions[0].Message; !strings.Contains(msg, "shop/web:9090") || !strings.Contains(msg, "fails closed") {
		t.Errorf("allow-get message %q should name the TCP port and say it fails closed", msg)
	}
}

// TestAuthorizationPolicyFields checks the translation of sources,
// operations and conditions, including their not-forms.
func TestAuthorizationPolicyFields(t *testing.T) {
	in := fixtureInput()
	in.AuthorizationPolicies = []*securityv1.AuthorizationPolicy{authzPolicy(t, `
metadata: {name: fields}
spec:
  targetRefs: [{kind: Service, group: "", name: web-v1}]
  action: DENY
  rules:
  - from:
    - source:
        namespaces: [client]
        notServiceAccounts: [other/bad]
        ipBlocks: [10.0.0.0/8]
        remoteIpBlocks: [192.168.1.1]
    to:
    - operation: {hosts: ["*.example.com"], notPaths: ["/admin*"], ports: ["80"]}
    when:
    - {key: "request.headers[X-Tenant]", values: [a]}
    - {key: source.ip, notValues: [10.1.0.0/16]}`)}
	out := translateValid(t, in)
	_, cfgs := rbacOf(t, out, "shop/web-v1:80")
	want := decode(t, `{
 "permissions": [{"and_rules": {"rules": [
   {"and_rules": {"rules": [
     {"header": {"name": ":authority", "string_match": {"suffix": ".example.com", "ignore_case": true}}},
     {"not_rule": {"url_path": {"path": {"prefix": "/admin"}}}},
     {"destination_port": 80}]}},
   {"header": {"name": "x-tenant", "string_match": {"exact": "a"}}}]}}],
 "principals": [{"and_ids": {"ids": [
   {"and_ids": {"ids": [
     {"authenticated": {"principal_name": {"safe_regex": {"regex": "^spiffe://[^/]+/ns/client/sa/[^/]+$"}}}},
     {"not_id": {"authenticated": {"principal_name": {"safe_regex": {"regex": "^spiffe://[^/]+/ns/other/sa/bad$"}}}}},
     {"direct_remote_ip": {"address_prefix": "10.0.0.0", "prefix_len": 8}},
     {"remote_ip": {"address_prefix": "192.168.1.1", "prefix_len": 32}}]}},
   {"not_id": {"direct_remote_ip": {"address_prefix": "10.1.0.0", "prefix_len": 16}}}]}}]}`, &rbacv3.Policy{})
	if d := diffProto(want, cfgs[0].GetPolicies()["shop/fields/0"]); d != "" {
		t.Errorf("(-want +got):\n%s", d)
	}
	if c := out.Policies[0].Conditions[0]; c.Reason != PolicyReasonAccepted {
		t.Errorf("condition %+v, want Accepted: web-v1 has no TCP port and every field is supported", c)
	}
}

// TestAuthorizationPolicyFailsClosed: what the waypoint cannot enforce
// never widens access.
func TestAuthorizationPolicyFailsClosed(t *testing.T) {
	in := fixtureInput()
	in.AuthorizationPolicies = []*securityv1.AuthorizationPolicy{
		authzPolicy(t, `
metadata: {name: jwt}
spec:
  targetRefs: [{kind: Service, group: "", name: web-v1}]
  rules:
  - from: [{source: {requestPrincipals: ["issuer/subject"]}}]
  - from: [{source: {ipBlocks: [not-an-ip]}}]
  - when: [{key: "request.auth.claims[groups]", values: [admin]}]`),
		authzPolicy(t, `
metadata: {name: custom}
spec:
  targetRefs: [{kind: Service, group: "", name: web-v2}]
  action: CUSTOM
  provider: {name: ext-authz}
  rules: [{to: [{operation: {paths: ["/admin"]}}]}]`),
	}
	out := translateValid(t, in)
	actions, cfgs := rbacOf(t, out, "shop/web-v1:80")
	if strings.Join(actions, ",") != "ALLOW" || len(cfgs[0].GetPolicies()) != 0 {
		t.Errorf("web-v1: %v with %d policies, want one ALLOW filter without policies (denies all)", actions, len(cfgs[0].GetPolicies()))
	}
	actions, cfgs = rbacOf(t, out, "shop/web-v2:80")
	if strings.Join(actions, ",") != "DENY" || cfgs[0].GetPolicies()["shop/custom/0"] == nil {
		t.Errorf("web-v2: %v, want the CUSTOM policy's rule as a DENY", actions)
	}
	for _, o := range out.Policies {
		c := o.Conditions[0]
		if c.Status != "False" || c.Reason != PolicyReasonUnsupportedValue {
			t.Errorf("%s: %+v, want False UnsupportedValue", o.Policy, c)
		}
		for _, word := range map[string][]string{
			"shop/jwt":    {"requestPrincipals", "not-an-ip", "request.auth.claims[groups]", "fails closed"},
			"shop/custom": {"CUSTOM"},
		}[o.Policy.String()] {
			if !strings.Contains(c.Message, word) {
				t.Errorf("%s message %q does not mention %q", o.Policy, c.Message, word)
			}
		}
	}
}
