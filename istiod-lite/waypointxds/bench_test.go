package waypointxds

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"

	"k8s.io/apimachinery/pkg/types"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// BenchmarkTranslate translates a large waypoint: 100 bound Services of 4
// ports, 10 endpoints each, and 300 valid routes of 4 rules (random, fixed
// seed) with 3 AuthorizationPolicies.
func BenchmarkTranslate(b *testing.B) {
	in := largeInput()
	b.ReportAllocs()
	var routes int
	for b.Loop() {
		out := Translate(in)
		routes = len(out.Routes)
	}
	b.ReportMetric(float64(routes), "routeconfigs")
}

func largeInput() Input {
	rng := rand.New(rand.NewPCG(1, 2))
	in := fixtureInput()
	wp := waypointKey
	for i := range 100 {
		name := fmt.Sprintf("svc-%d", i)
		in.Services = append(in.Services, Service{
			Namespace: "shop", Name: name, Waypoint: &wp,
			VIPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 97, byte(i / 256), byte(i % 256)})},
			Ports: []Port{
				{Name: "http", Port: 80, AppProtocol: "http"}, {Name: "grpc", Port: 7070, AppProtocol: "grpc"},
				{Name: "web", Port: 3000}, {Name: "tcp", Port: 9090},
			},
		})
		for j := range 10 {
			in.Endpoints = append(in.Endpoints, Endpoint{
				Service: types.NamespacedName{Namespace: "shop", Name: name}, Port: 80,
				Address: netip.AddrFrom4([4]byte{10, 1, byte(i), byte(j)}), TargetPort: 8080,
				Identity: "spiffe://cluster.local/ns/shop/sa/" + name,
			})
		}
	}
	for i := range 300 {
		r := randomHTTPRoute(rng, i)
		r.Spec.ParentRefs = []gatewayv1.ParentReference{{
			Group: ptr(gatewayv1.Group("")), Kind: ptr(gatewayv1.Kind("Service")),
			Name: gatewayv1.ObjectName(fmt.Sprintf("svc-%d", i%100)),
		}}
		in.HTTPRoutes = append(in.HTTPRoutes, r)
	}
	for i := range 3 {
		in.AuthorizationPolicies = append(in.AuthorizationPolicies, randomPolicy(rng, i))
	}
	return in
}
