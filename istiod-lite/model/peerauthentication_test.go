package model

import (
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	securityv1 "github.com/cairnmesh/cairn/apis/security/v1"
	workloadv1 "github.com/cairnmesh/cairn/apis/workload/v1"
)

func testPeerAuth(ns, name string, selector map[string]string, mode securityv1.MTLSMode, ports map[string]securityv1.MTLSMode) *securityv1.PeerAuthentication {
	pa := &securityv1.PeerAuthentication{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	if selector != nil {
		pa.Spec.Selector = &securityv1.WorkloadSelector{MatchLabels: selector}
	}
	if mode != "" {
		pa.Spec.Mtls = &securityv1.MutualTLS{Mode: mode}
	}
	for port, m := range ports {
		if pa.Spec.PortLevelMtls == nil {
			pa.Spec.PortLevelMtls = map[string]securityv1.MutualTLS{}
		}
		pa.Spec.PortLevelMtls[port] = securityv1.MutualTLS{Mode: m}
	}
	return pa
}

func TestBuildPeerAuthentication(t *testing.T) {
	const (
		strict     = securityv1.MTLSModeStrict
		permissive = securityv1.MTLSModePermissive
		disable    = securityv1.MTLSModeDisable
		unset      = securityv1.MTLSModeUnset
	)
	web := map[string]string{"app": "web"}
	plaintext := func(m *workloadv1.Match) *workloadv1.Match {
		m.NotPrincipals = []*workloadv1.StringMatch{{MatchType: &workloadv1.StringMatch_Presence{Presence: &workloadv1.Presence{}}}}
		return m
	}
	tests := []struct {
		name      string
		pa        *securityv1.PeerAuthentication
		inherited securityv1.MTLSMode
		want      *workloadv1.Match // nil: no Authorization
		note      string            // in a False condition; "" for Accepted
	}{
		{"strict", testPeerAuth("shop", "p", nil, strict, nil), permissive, plaintext(&workloadv1.Match{}), ""},
		{"permissive", testPeerAuth("shop", "p", nil, permissive, nil), strict, nil, ""},
		{"disable is permissive", testPeerAuth("shop", "p", nil, disable, nil), strict, nil, "DISABLE"},
		{"unset inherits strict", testPeerAuth("shop", "p", nil, unset, nil), strict, plaintext(&workloadv1.Match{}), ""},
		{"no mtls inherits permissive", testPeerAuth("shop", "p", nil, "", nil), permissive, nil, ""},
		{"nothing inherited", testPeerAuth("shop", "p", nil, "", nil), "", nil, ""},
		{"strict ports only", testPeerAuth("shop", "p", web, permissive, map[string]securityv1.MTLSMode{"8443": strict, "8080": strict, "9090": permissive}),
			strict, plaintext(&workloadv1.Match{DestinationPorts: []uint32{8080, 8443}}), ""},
		{"permissive ports in strict", testPeerAuth("shop", "p", web, strict, map[string]securityv1.MTLSMode{"15020": permissive, "9000": disable, "8080": strict, "7070": unset}),
			permissive, plaintext(&workloadv1.Match{NotDestinationPorts: []uint32{9000, 15020}}), "port 9000: mode DISABLE"},
		{"unset with ports inherits strict", testPeerAuth("shop", "p", web, unset, map[string]securityv1.MTLSMode{"15020": permissive}),
			strict, plaintext(&workloadv1.Match{NotDestinationPorts: []uint32{15020}}), ""},
		{"unset with ports inherits permissive", testPeerAuth("shop", "p", web, "", map[string]securityv1.MTLSMode{"5432": strict}),
			permissive, plaintext(&workloadv1.Match{DestinationPorts: []uint32{5432}}), ""},
		{"port levels need a selector", testPeerAuth("shop", "p", nil, permissive, map[string]securityv1.MTLSMode{"5432": strict}),
			permissive, nil, "portLevelMtls is ignored"},
		{"bad port key", testPeerAuth("shop", "p", web, permissive, map[string]securityv1.MTLSMode{"http": strict}),
			permissive, nil, `"http" is not a port number`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a, conds := BuildPeerAuthentication(tc.pa, tc.inherited, "")
			if tc.want == nil {
				if a != nil {
					t.Errorf("got %v, want none", a)
				}
			} else {
				want := &workloadv1.Authorization{
					Name: "converted_peer_authentication_p", Namespace: "shop",
					Scope: workloadv1.Scope_WORKLOAD_SELECTOR, Action: workloadv1.Action_DENY,
					Rules: []*workloadv1.Rule{oneMatch(tc.want)},
				}
				if tc.pa.Spec.Selector != nil {
					want.Selector = tc.pa.Spec.Selector.MatchLabels
				}
				if !Equal(a, want) {
					t.Errorf("got\n%v\nwant\n%v", a, want)
				}
			}
			c := conds[0]
			if tc.note == "" && (c.Status != metav1.ConditionTrue || c.Reason != ReasonAccepted) {
				t.Errorf("condition %+v, want Accepted", c)
			}
			if tc.note != "" && (c.Status != metav1.ConditionFalse || !strings.Contains(c.Message, tc.note)) {
				t.Errorf("condition %+v, want False with %q", c, tc.note)
			}
		})
	}
}

func TestEffectivePeerAuthentication(t *testing.T) {
	web := map[string]string{"app": "web"}
	mesh := testPeerAuth("istio-system", "mesh", nil, securityv1.MTLSModeStrict, nil)
	meshSelector := testPeerAuth("istio-system", "mesh-selector", web, securityv1.MTLSModeStrict, nil)
	ns := testPeerAuth("shop", "ns", nil, securityv1.MTLSModePermissive, nil)
	otherNS := testPeerAuth("other", "ns", nil, securityv1.MTLSModePermissive, nil)
	wl := testPeerAuth("shop", "wl", web, securityv1.MTLSModeStrict, nil)
	wlOther := testPeerAuth("shop", "api", map[string]string{"app": "api"}, securityv1.MTLSModeStrict, nil)
	older := testPeerAuth("shop", "z-older", web, securityv1.MTLSModePermissive, nil)
	older.CreationTimestamp = metav1.NewTime(time.Unix(1, 0))
	wl.CreationTimestamp = metav1.NewTime(time.Unix(2, 0))
	pod := testPod("shop", "web", web)
	sameAgeB, sameAgeA := testPeerAuth("shop", "b", web, "", nil), testPeerAuth("shop", "a", web, "", nil)

	tests := []struct {
		name string
		pas  []*securityv1.PeerAuthentication
		want *securityv1.PeerAuthentication
	}{
		{"none", nil, nil},
		{"mesh", []*securityv1.PeerAuthentication{mesh, otherNS, meshSelector}, mesh},
		{"namespace over mesh", []*securityv1.PeerAuthentication{mesh, ns}, ns},
		{"workload over namespace", []*securityv1.PeerAuthentication{mesh, ns, wl, wlOther}, wl},
		{"oldest workload policy", []*securityv1.PeerAuthentication{wl, older}, older},
		{"same age: first by name", []*securityv1.PeerAuthentication{sameAgeB, sameAgeA}, sameAgeA},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := EffectivePeerAuthentication(pod, tc.pas, ""); got != tc.want {
				t.Errorf("got %v, want %v", got.GetName(), tc.want.GetName())
			}
		})
	}
	// A selector policy in the root namespace applies to pods there.
	if got := EffectivePeerAuthentication(testPod("istio-system", "x", web), []*securityv1.PeerAuthentication{mesh, meshSelector}, ""); got != meshSelector {
		t.Errorf("root namespace pod: got %v", got)
	}
}

func TestInheritedMTLSMode(t *testing.T) {
	web := map[string]string{"app": "web"}
	mesh := testPeerAuth("istio-system", "mesh", nil, securityv1.MTLSModeStrict, nil)
	nsUnset := testPeerAuth("shop", "ns", nil, securityv1.MTLSModeUnset, nil)
	nsPermissive := testPeerAuth("shop", "ns", nil, securityv1.MTLSModePermissive, nil)
	nsDisable := testPeerAuth("shop", "ns", nil, securityv1.MTLSModeDisable, nil)
	wl := testPeerAuth("shop", "wl", web, "", nil)
	tests := []struct {
		name string
		pa   *securityv1.PeerAuthentication
		pas  []*securityv1.PeerAuthentication
		want securityv1.MTLSMode
	}{
		{"workload from namespace", wl, []*securityv1.PeerAuthentication{mesh, nsPermissive, wl}, securityv1.MTLSModePermissive},
		{"workload from namespace DISABLE", wl, []*securityv1.PeerAuthentication{mesh, nsDisable, wl}, securityv1.MTLSModePermissive},
		{"workload through unset namespace to mesh", wl, []*securityv1.PeerAuthentication{mesh, nsUnset, wl}, securityv1.MTLSModeStrict},
		{"workload from mesh", wl, []*securityv1.PeerAuthentication{mesh, wl}, securityv1.MTLSModeStrict},
		{"namespace from mesh", nsUnset, []*securityv1.PeerAuthentication{mesh, nsUnset}, securityv1.MTLSModeStrict},
		{"mesh from nothing", mesh, []*securityv1.PeerAuthentication{mesh}, securityv1.MTLSModePermissive},
		{"nothing", wl, []*securityv1.PeerAuthentication{wl}, securityv1.MTLSModePermissive},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := InheritedMTLSMode(tc.pa, tc.pas, ""); got != tc.want {
				t.Errorf("got %s, want %s", got, tc.want)
			}
		})
	}
}
