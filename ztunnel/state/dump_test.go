package state

import (
	"encoding/json"
	"strings"
	"testing"

	workloadv1 "github.com/cairnmesh/cairn/apis/workload/v1"
)

func TestMarshalJSON(t *testing.T) {
	s := NewStore()
	w := pod("shop", "web-1", "node-a", "10.0.0.1", "fd00::1")
	w.Status = workloadv1.WorkloadStatus_HEALTHY
	w.Waypoint = &workloadv1.GatewayAddress{
		Destination:   &workloadv1.GatewayAddress_Hostname{Hostname: &workloadv1.NamespacedHostname{Namespace: "shop", Hostname: "waypoint.shop.svc.cluster.local"}},
		HboneMtlsPort: 15008,
	}
	w.Services = map[string]*workloadv1.PortList{svcName("shop", "web"): {Ports: []*workloadv1.Port{{ServicePort: 80, TargetPort: 8080}}}}
	mustApply(t, s, AddressTypeURL, addresses(wAddr(w), wAddr(pod("shop", "a-first", "node-a", "10.0.0.2")), sAddr(svc("shop", "web", "10.96.0.10"))))
	p := policy("shop", "deny-plaintext", workloadv1.Scope_WORKLOAD_SELECTOR, workloadv1.Action_DENY)
	p.Rules = []*workloadv1.Rule{{Clauses: []*workloadv1.Clause{{Matches: []*workloadv1.Match{{
		NotPrincipals: []*workloadv1.StringMatch{{MatchType: &workloadv1.StringMatch_Presence{Presence: &workloadv1.Presence{}}}},
		SourceIps:     []*workloadv1.CIDR{{Address: ip("10.1.0.0"), Length: 16}},
	}}}}}}
	mustApply(t, s, AuthorizationTypeURL, authorizations(p))

	out, err := json.Marshal(s.Snapshot())
	if err != nil {
		t.Fatal(err)
	}
	var dump struct {
		Workloads      []map[string]any
		Services       []map[string]any
		Authorizations []map[string]any
	}
	if err := json.Unmarshal(out, &dump); err != nil {
		t.Fatalf("dump is not JSON: %v\n%s", err, out)
	}
	if len(dump.Workloads) != 2 || dump.Workloads[0]["name"] != "a-first" {
		t.Errorf("workloads not sorted by uid: %s", out)
	}
	for _, want := range []string{
		`"addresses":["10.0.0.1","fd00::1"]`,
		`"status":"HEALTHY"`,       // zero enum still shown
		`"tunnelProtocol":"HBONE"`, // enum by name
		`"hboneMtlsPort":15008`,    // protojson field names
		`"hostname":"waypoint.shop.svc.cluster.local"`,
		`"services":{"shop/web.shop.svc.cluster.local":{"ports":[{"appProtocol":"","servicePort":80,"targetPort":8080}]}}`,
		`"addresses":[{"address":"10.96.0.10","network":""}]`,
		`"notPrincipals":[{"presence":{}}]`,
		`"sourceIps":[{"address":"10.1.0.0","length":16}]`,
		`"action":"DENY"`,
		`"scope":"WORKLOAD_SELECTOR"`,
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("dump lacks %s:\n%s", want, out)
		}
	}
	// Unset messages and oneof members are left out.
	if strings.Contains(string(out), `"exact"`) || strings.Contains(string(out), `"waypoint":null`) {
		t.Errorf("dump shows unset fields:\n%s", out)
	}

	empty, err := json.Marshal(NewStore().Snapshot())
	if err != nil || string(empty) != `{"workloads":[],"services":[],"authorizations":[]}` {
		t.Errorf("empty dump = %s, %v", empty, err)
	}
}
