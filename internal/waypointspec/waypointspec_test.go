package waypointspec

import (
	"strings"
	"testing"

	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

func TestGatewayIsIstiosWaypoint(t *testing.T) {
	gw, err := Gateway("shop", "waypoint", ForWorkload)
	if err != nil {
		t.Fatal(err)
	}
	if gw.APIVersion != "gateway.networking.k8s.io/v1" || gw.Kind != "Gateway" || gw.Namespace != "shop" || gw.Name != "waypoint" {
		t.Errorf("type and name = %s %s %s/%s", gw.APIVersion, gw.Kind, gw.Namespace, gw.Name)
	}
	if gw.Spec.GatewayClassName != "istio-waypoint" {
		t.Errorf("class = %q, want istio-waypoint", gw.Spec.GatewayClassName)
	}
	want := []gatewayv1.Listener{{Name: "mesh", Port: 15008, Protocol: "HBONE"}}
	if len(gw.Spec.Listeners) != 1 || gw.Spec.Listeners[0].Name != want[0].Name || gw.Spec.Listeners[0].Port != want[0].Port ||
		gw.Spec.Listeners[0].Protocol != want[0].Protocol || gw.Spec.Listeners[0].AllowedRoutes != nil || gw.Spec.Listeners[0].TLS != nil {
		t.Errorf("listeners = %+v, want %+v", gw.Spec.Listeners, want)
	}
	if gw.Labels["istio.io/waypoint-for"] != "workload" || len(gw.Labels) != 1 {
		t.Errorf("labels = %v, want istio.io/waypoint-for=workload only", gw.Labels)
	}
	if !IsWaypoint(gw) || For(gw) != ForWorkload {
		t.Errorf("IsWaypoint = %v, For = %q", IsWaypoint(gw), For(gw))
	}
}

func TestGatewayRejectsBadNamesAndTypes(t *testing.T) {
	for _, tc := range []struct{ name, forValue, want string }{
		{"none", ForService, "reserved"},
		{"", ForService, "not valid"},
		{"Upper", ForService, "not valid"},
		{"1st", ForService, "not valid"}, // a Service name starts with a letter
		{strings.Repeat("a", 64), ForService, "not valid"},
		{"waypoint", "pods", `"pods" is not one of service, workload, all, none`},
		{"waypoint", "", "is not one of"},
	} {
		_, err := Gateway("shop", tc.name, tc.forValue)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Gateway(%q, %q) error = %v, want one containing %q", tc.name, tc.forValue, err, tc.want)
		}
	}
	for _, v := range ForValues() {
		if _, err := Gateway("shop", "wp-1", v); err != nil {
			t.Errorf("Gateway for %q: %v", v, err)
		}
	}
}

func TestForDefaultsToService(t *testing.T) {
	gw := &gatewayv1.Gateway{}
	if got := For(gw); got != ForService {
		t.Errorf("For(no label) = %q, want service", got)
	}
	gw.Labels = map[string]string{ForLabel: "all"}
	if got := For(gw); got != ForAll {
		t.Errorf("For(all) = %q", got)
	}
	gw.Spec.GatewayClassName = "other"
	if IsWaypoint(gw) {
		t.Error("a Gateway of class other is a waypoint")
	}
}

func TestUseWaypoint(t *testing.T) {
	for _, tc := range []struct {
		labels      map[string]string
		ref         Ref
		set, optOut bool
	}{
		{nil, Ref{}, false, false},
		{map[string]string{UseWaypointLabel: ""}, Ref{}, false, false},
		{map[string]string{UseWaypointLabel: "none"}, Ref{}, false, true},
		{map[string]string{UseWaypointLabel: "wp"}, Ref{"shop", "wp"}, true, false},
		{map[string]string{UseWaypointLabel: "wp", UseWaypointNamespaceLabel: "infra"}, Ref{"infra", "wp"}, true, false},
		{map[string]string{UseWaypointNamespaceLabel: "infra"}, Ref{}, false, false},
	} {
		ref, set, optOut := UseWaypoint(tc.labels, "shop")
		if ref != tc.ref || set != tc.set || optOut != tc.optOut {
			t.Errorf("UseWaypoint(%v) = %v %v %v, want %v %v %v", tc.labels, ref, set, optOut, tc.ref, tc.set, tc.optOut)
		}
	}
}
