package model

import (
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	securityv1 "github.com/cairnmesh/cairn/apis/security/v1"
	workloadv1 "github.com/cairnmesh/cairn/apis/workload/v1"
)

func testPolicy(ns string, action securityv1.Action, rules ...securityv1.Rule) *securityv1.AuthorizationPolicy {
	return &securityv1.AuthorizationPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "p"},
		Spec:       securityv1.AuthorizationPolicySpec{Action: action, Rules: rules},
	}
}

func from(src securityv1.Source) securityv1.Rule {
	return securityv1.Rule{From: []securityv1.From{{Source: &src}}}
}

func to(op securityv1.Operation) securityv1.Rule {
	return securityv1.Rule{To: []securityv1.To{{Operation: &op}}}
}

func when(key string, values ...string) securityv1.Rule {
	return securityv1.Rule{When: []securityv1.Condition{{Key: key, Values: values}}}
}

// oneMatch is a rule with one clause of one match.
func oneMatch(m *workloadv1.Match) *workloadv1.Rule {
	return &workloadv1.Rule{Clauses: []*workloadv1.Clause{{Matches: []*workloadv1.Match{m}}}}
}

func exact(s string) *workloadv1.StringMatch {
	return &workloadv1.StringMatch{MatchType: &workloadv1.StringMatch_Exact{Exact: s}}
}

func TestBuildAuthorizationScopeAndAction(t *testing.T) {
	sel := &securityv1.WorkloadSelector{MatchLabels: map[string]string{"app": "web"}}
	tests := []struct {
		name       string
		ns, root   string
		selector   *securityv1.WorkloadSelector
		action     securityv1.Action
		wantScope  workloadv1.Scope
		wantAction workloadv1.Action
	}{
		{"namespace", "shop", "", nil, "", workloadv1.Scope_NAMESPACE, workloadv1.Action_ALLOW},
		{"root namespace is global", "istio-system", "", nil, securityv1.ActionAllow, workloadv1.Scope_GLOBAL, workloadv1.Action_ALLOW},
		{"configured root", "mesh-root", "mesh-root", nil, securityv1.ActionDeny, workloadv1.Scope_GLOBAL, workloadv1.Action_DENY},
		{"istio-system is not root when another is", "istio-system", "mesh-root", nil, "", workloadv1.Scope_NAMESPACE, workloadv1.Action_ALLOW},
		{"selector", "shop", "", sel, securityv1.ActionDeny, workloadv1.Scope_WORKLOAD_SELECTOR, workloadv1.Action_DENY},
		{"selector in root", "istio-system", "", sel, "", workloadv1.Scope_WORKLOAD_SELECTOR, workloadv1.Action_ALLOW},
		{"empty selector is namespace-wide", "shop", "", &securityv1.WorkloadSelector{}, "", workloadv1.Scope_NAMESPACE, workloadv1.Action_ALLOW},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := testPolicy(tc.ns, tc.action, securityv1.Rule{})
			p.Spec.Selector = tc.selector
			a, conds := BuildAuthorization(p, tc.root)
			if a == nil {
				t.Fatalf("no authorization: %v", conds)
			}
			if a.Scope != tc.wantScope || a.Action != tc.wantAction {
				t.Errorf("scope %v action %v, want %v %v", a.Scope, a.Action, tc.wantScope, tc.wantAction)
			}
			if (a.Scope == workloadv1.Scope_WORKLOAD_SELECTOR) != (a.Selector != nil) {
				t.Errorf("selector %v with scope %v", a.Selector, a.Scope)
			}
			if len(conds) != 1 || conds[0].Status != metav1.ConditionTrue || conds[0].Reason != ReasonAccepted {
				t.Errorf("conditions %v", conds)
			}
			if AuthorizationName(a) != tc.ns+"/p" {
				t.Errorf("name %q", AuthorizationName(a))
			}
		})
	}
}

func TestBuildAuthorizationNotForZtunnel(t *testing.T) {
	tests := []struct {
		name         string
		mod          func(*securityv1.AuthorizationPolicy)
		reason, text string
	}{
		{"custom", func(p *securityv1.AuthorizationPolicy) { p.Spec.Action = securityv1.ActionCustom }, ReasonUnsupportedValue, "CUSTOM action"},
		{"audit", func(p *securityv1.AuthorizationPolicy) { p.Spec.Action = securityv1.ActionAudit }, ReasonUnsupportedValue, "AUDIT action"},
		{"targetRefs", func(p *securityv1.AuthorizationPolicy) {
			p.Spec.TargetRefs = []securityv1.PolicyTargetReference{{Group: "gateway.networking.k8s.io", Kind: "Gateway", Name: "waypoint"}}
		}, ReasonNotApplicable, "targetRefs"},
		{"targetRef", func(p *securityv1.AuthorizationPolicy) {
			p.Spec.TargetRef = &securityv1.PolicyTargetReference{Kind: "Service", Name: "web"}
		}, ReasonNotApplicable, "waypoint"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := testPolicy("shop", securityv1.ActionAllow, securityv1.Rule{})
			tc.mod(p)
			a, conds := BuildAuthorization(p, "")
			if a != nil {
				t.Errorf("got an authorization: %v", a)
			}
			if len(conds) != 1 || conds[0].Type != ConditionZtunnelAccepted || conds[0].Status != metav1.ConditionFalse ||
				conds[0].Reason != tc.reason || !strings.Contains(conds[0].Message, tc.text) {
				t.Errorf("conditions %+v, want reason %s with %q", conds, tc.reason, tc.text)
			}
		})
	}
}

// TestBuildAuthorizationL4 checks each L4 field's translation.
func TestBuildAuthorizationL4(t *testing.T) {
	cidr := func(ip []byte, bits uint32) *workloadv1.CIDR { return &workloadv1.CIDR{Address: ip, Length: bits} }
	tests := []struct {
		name string
		rule securityv1.Rule
		want *workloadv1.Rule
	}{
		{"empty rule matches all", securityv1.Rule{}, &workloadv1.Rule{}},
		{"principals and patterns", from(securityv1.Source{Principals: []string{"spiffe://td/ns/a/sa/b", "td/ns/a/*", "*/sa/b", "*"}}),
			oneMatch(&workloadv1.Match{Principals: []*workloadv1.StringMatch{
				exact("td/ns/a/sa/b"),
				{MatchType: &workloadv1.StringMatch_Prefix{Prefix: "td/ns/a/"}},
				{MatchType: &workloadv1.StringMatch_Suffix{Suffix: "/sa/b"}},
				{MatchType: &workloadv1.StringMatch_Presence{Presence: &workloadv1.Presence{}}},
			}})},
		{"not principals", from(securityv1.Source{NotPrincipals: []string{"td/ns/a/sa/b"}}),
			oneMatch(&workloadv1.Match{NotPrincipals: []*workloadv1.StringMatch{exact("td/ns/a/sa/b")}})},
		{"namespaces", from(securityv1.Source{Namespaces: []string{"a"}, NotNamespaces: []string{"b"}}),
			oneMatch(&workloadv1.Match{Namespaces: []*workloadv1.StringMatch{exact("a")}, NotNamespaces: []*workloadv1.StringMatch{exact("b")}})},
		{"service accounts", from(securityv1.Source{ServiceAccounts: []string{"other/x", "y"}, NotServiceAccounts: []string{"z"}}),
			oneMatch(&workloadv1.Match{
				ServiceAccounts:    []*workloadv1.ServiceAccountMatch{{Namespace: "other", ServiceAccount: "x"}, {Namespace: "shop", ServiceAccount: "y"}},
				NotServiceAccounts: []*workloadv1.ServiceAccountMatch{{Namespace: "shop", ServiceAccount: "z"}},
			})},
		{"ip blocks", from(securityv1.Source{IPBlocks: []string{"10.1.2.3/8", "fd00::1"}, NotIPBlocks: []string{"10.0.0.1"}}),
			oneMatch(&workloadv1.Match{
				SourceIps:    []*workloadv1.CIDR{cidr([]byte{10, 0, 0, 0}, 8), cidr([]byte{0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}, 128)},
				NotSourceIps: []*workloadv1.CIDR{cidr([]byte{10, 0, 0, 1}, 32)},
			})},
		{"ports", to(securityv1.Operation{Ports: []string{"80"}, NotPorts: []string{"81"}}),
			oneMatch(&workloadv1.Match{DestinationPorts: []uint32{80}, NotDestinationPorts: []uint32{81}})},
		{"two sources are one clause", securityv1.Rule{From: []securityv1.From{
			{Source: &securityv1.Source{Namespaces: []string{"a"}}}, {Source: &securityv1.Source{Namespaces: []string{"b"}}},
		}}, &workloadv1.Rule{Clauses: []*workloadv1.Clause{{Matches: []*workloadv1.Match{
			{Namespaces: []*workloadv1.StringMatch{exact("a")}}, {Namespaces: []*workloadv1.StringMatch{exact("b")}},
		}}}}},
		{"from and to are two clauses", securityv1.Rule{
			From: []securityv1.From{{Source: &securityv1.Source{Namespaces: []string{"a"}}}},
			To:   []securityv1.To{{Operation: &securityv1.Operation{Ports: []string{"80"}}}},
		}, &workloadv1.Rule{Clauses: []*workloadv1.Clause{
			{Matches: []*workloadv1.Match{{Namespaces: []*workloadv1.StringMatch{exact("a")}}}},
			{Matches: []*workloadv1.Match{{DestinationPorts: []uint32{80}}}},
		}}},
		{"when source.ip", when("source.ip", "10.0.0.0/24"), oneMatch(&workloadv1.Match{SourceIps: []*workloadv1.CIDR{cidr([]byte{10, 0, 0, 0}, 24)}})},
		{"when source.namespace", when("source.namespace", "a"), oneMatch(&workloadv1.Match{Namespaces: []*workloadv1.StringMatch{exact("a")}})},
		{"when source.principal", when("source.principal", "td/ns/a/sa/b"), oneMatch(&workloadv1.Match{Principals: []*workloadv1.StringMatch{exact("td/ns/a/sa/b")}})},
		{"when destination.ip", when("destination.ip", "10.0.0.1"), oneMatch(&workloadv1.Match{DestinationIps: []*workloadv1.CIDR{cidr([]byte{10, 0, 0, 1}, 32)}})},
		{"when destination.port", when("destination.port", "443"), oneMatch(&workloadv1.Match{DestinationPorts: []uint32{443}})},
		{"when notValues", securityv1.Rule{When: []securityv1.Condition{{Key: "destination.port", NotValues: []string{"22"}}}},
			oneMatch(&workloadv1.Match{NotDestinationPorts: []uint32{22}})},
	}
	for _, action := range []securityv1.Action{securityv1.ActionAllow, securityv1.ActionDeny} {
		for _, tc := range tests {
			t.Run(string(action)+"/"+tc.name, func(t *testing.T) {
				a, conds := BuildAuthorization(testPolicy("shop", action, tc.rule), "")
				if len(a.GetRules()) != 1 || !Equal(a.Rules[0], tc.want) {
					t.Errorf("rules %v, want %v", a.GetRules(), tc.want)
				}
				if conds[0].Reason != ReasonAccepted {
					t.Errorf("conditions %v", conds)
				}
			})
		}
	}
}

// TestBuildAuthorizationUnsupported checks every attribute ztunnel cannot
// check: an ALLOW policy loses the rule (fails closed), a DENY policy keeps
// the rule without the attribute (denies more).
func TestBuildAuthorizationUnsupported(t *testing.T) {
	ns := &workloadv1.Match{Namespaces: []*workloadv1.StringMatch{exact("dev")}}
	tests := []struct {
		name     string
		rule     securityv1.Rule
		mention  string
		wantDeny *workloadv1.Rule
	}{
		{"requestPrincipals", from(securityv1.Source{Namespaces: []string{"dev"}, RequestPrincipals: []string{"iss/sub"}}), "requestPrincipals", oneMatch(ns)},
		{"notRequestPrincipals", from(securityv1.Source{Namespaces: []string{"dev"}, NotRequestPrincipals: []string{"*"}}), "notRequestPrincipals", oneMatch(ns)},
		{"remoteIpBlocks", from(securityv1.Source{Namespaces: []string{"dev"}, RemoteIPBlocks: []string{"1.2.3.4"}}), "remoteIpBlocks", oneMatch(ns)},
		{"notRemoteIpBlocks", from(securityv1.Source{Namespaces: []string{"dev"}, NotRemoteIPBlocks: []string{"1.2.3.4"}}), "notRemoteIpBlocks", oneMatch(ns)},
		{"methods", to(securityv1.Operation{Ports: []string{"80"}, Methods: []string{"GET"}}), "methods", oneMatch(&workloadv1.Match{DestinationPorts: []uint32{80}})},
		{"notMethods", to(securityv1.Operation{NotMethods: []string{"GET"}}), "notMethods", &workloadv1.Rule{}},
		{"paths", to(securityv1.Operation{Paths: []string{"/a"}}), "paths", &workloadv1.Rule{}},
		{"notPaths", to(securityv1.Operation{NotPaths: []string{"/a"}}), "notPaths", &workloadv1.Rule{}},
		{"hosts", to(securityv1.Operation{Hosts: []string{"a"}}), "hosts", &workloadv1.Rule{}},
		{"notHosts", to(securityv1.Operation{NotHosts: []string{"a"}}), "notHosts", &workloadv1.Rule{}},
		{"when key", securityv1.Rule{
			From: []securityv1.From{{Source: &securityv1.Source{Namespaces: []string{"dev"}}}},
			When: []securityv1.Condition{{Key: "request.headers[x]", Values: []string{"y"}}},
		}, "request.headers[x]", oneMatch(ns)},
		{"one L7 source makes the from clause match all", securityv1.Rule{From: []securityv1.From{
			{Source: &securityv1.Source{Namespaces: []string{"dev"}}}, {Source: &securityv1.Source{RequestPrincipals: []string{"*"}}},
		}}, "requestPrincipals", &workloadv1.Rule{}},
		{"bad ip drops the field", from(securityv1.Source{Namespaces: []string{"dev"}, IPBlocks: []string{"10.0.0.0/8", "x"}}), `"x"`, oneMatch(ns)},
		{"ip with a zone", from(securityv1.Source{Namespaces: []string{"dev"}, NotIPBlocks: []string{"fe80::1%eth0"}}), `"fe80::1%eth0"`, oneMatch(ns)},
		{"bad port drops the field", securityv1.Rule{
			From: []securityv1.From{{Source: &securityv1.Source{Namespaces: []string{"dev"}}}},
			To:   []securityv1.To{{Operation: &securityv1.Operation{NotPorts: []string{"http"}}}},
		}, `"http"`, oneMatch(ns)},
		{"port out of range", when("destination.port", "70000"), `"70000"`, &workloadv1.Rule{}},
		{"bad when ip", when("source.ip", "10.0.0.0/99"), `"10.0.0.0/99"`, &workloadv1.Rule{}},
	}
	for _, tc := range tests {
		t.Run("ALLOW/"+tc.name, func(t *testing.T) {
			keep := from(securityv1.Source{Namespaces: []string{"prod"}})
			a, conds := BuildAuthorization(testPolicy("shop", securityv1.ActionAllow, keep, tc.rule), "")
			want := oneMatch(&workloadv1.Match{Namespaces: []*workloadv1.StringMatch{exact("prod")}})
			if len(a.Rules) != 1 || !Equal(a.Rules[0], want) {
				t.Errorf("rules %v, want only %v", a.Rules, want)
			}
			c := conds[0]
			if c.Status != metav1.ConditionFalse || c.Reason != ReasonUnsupportedValue ||
				!strings.Contains(c.Message, "rule 1 uses") || !strings.Contains(c.Message, tc.mention) || !strings.Contains(c.Message, "allows less") {
				t.Errorf("condition %+v should name rule 1 and %s", c, tc.mention)
			}

			// Alone, the rule leaves an ALLOW policy that allows nothing.
			a, conds = BuildAuthorization(testPolicy("shop", securityv1.ActionAllow, tc.rule), "")
			if a == nil || a.Action != workloadv1.Action_ALLOW || len(a.Rules) != 0 {
				t.Errorf("got %v, want an ALLOW policy without rules", a)
			}
			if !strings.Contains(conds[0].Message, "denies all traffic") {
				t.Errorf("condition %+v should say that the policy denies all traffic", conds[0])
			}
		})
		t.Run("DENY/"+tc.name, func(t *testing.T) {
			a, conds := BuildAuthorization(testPolicy("shop", securityv1.ActionDeny, tc.rule), "")
			if len(a.Rules) != 1 || !Equal(a.Rules[0], tc.wantDeny) {
				t.Errorf("rules %v, want %v", a.Rules, tc.wantDeny)
			}
			c := conds[0]
			if c.Status != metav1.ConditionFalse || c.Reason != ReasonUnsupportedValue ||
				!strings.Contains(c.Message, tc.mention) || !strings.Contains(c.Message, "denies more") {
				t.Errorf("condition %+v should name %s", c, tc.mention)
			}
		})
	}
}

func TestBuildAuthorizationNoRules(t *testing.T) {
	allow, _ := BuildAuthorization(testPolicy("shop", securityv1.ActionAllow), "")
	if allow == nil || len(allow.Rules) != 0 || allow.Action != workloadv1.Action_ALLOW {
		t.Errorf("ALLOW without rules: %v, want an ALLOW policy that matches nothing", allow)
	}
}
