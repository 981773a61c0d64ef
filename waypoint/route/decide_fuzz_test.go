package route_test

import (
	"net/http/httptest"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/proto"

	"github.com/cairnmesh/cairn/waypoint/route"
	"github.com/cairnmesh/cairn/waypoint/state"
	"github.com/cairnmesh/cairn/waypoint/state/envoytest"
)

// FuzzRouteConfiguration feeds arbitrary RouteConfigurations (as the
// control plane could send them) to the compiler and the accepted ones to
// the decision. Oracles: nothing panics; an accepted resource passed its
// generated Validate(); a decision on an accepted table names a route of
// it or none.
func FuzzRouteConfiguration(f *testing.F) {
	rr := envoytest.Prefix("/strip", "c")
	rr.GetRoute().RegexRewrite = &matcherv3.RegexMatchAndSubstitute{Pattern: &matcherv3.RegexMatcher{Regex: `^/strip/*`}, Substitution: `/\1`}
	rd := envoytest.Prefix("/r", "c")
	rd.Action = &routev3.Route_Redirect{Redirect: &routev3.RedirectAction{HostRedirect: "x", PortRedirect: 8080}}
	h := withHeader(withQuery(envoytest.Prefix("/h", "c"), "a", "b"), ":method", exactString("GET"))
	h.RequestHeadersToAdd = []*corev3.HeaderValueOption{envoytest.Set("x", "100%%")}
	for _, rc := range []*routev3.RouteConfiguration{
		envoytest.Routes("r", envoytest.Prefix("/", "c")),
		envoytest.Routes("r", exact("/a", "a"), sep("/b", "b"), regex("/c/[0-9]+", "c"), rr, rd, h),
		envoytest.Routes("r", envoytest.Weighted("/", "a", 1, "b", 0)),
	} {
		b, err := proto.Marshal(rc)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, "/strip/x?a=b")
	}
	f.Fuzz(func(t *testing.T, data []byte, target string) {
		var rc routev3.RouteConfiguration
		if proto.Unmarshal(data, &rc) != nil {
			return
		}
		if _, err := state.CompileRouteConfiguration(&rc, state.Options{}); err != nil {
			return
		}
		if verr := rc.Validate(); verr != nil {
			t.Fatalf("accepted a resource that fails Validate(): %v", verr)
		}
		snap, err := state.NewSnapshot(state.Options{}, envoytest.Listener("l", envoytest.HTTPChain(vip, rc.GetName(), 0)), &rc)
		if err != nil || len(target) == 0 || target[0] != '/' || len(target) > 1024 {
			return
		}
		table := snap.RouteTable(&state.HTTPChain{RouteConfig: rc.GetName()})
		r := httptest.NewRequest("GET", "/", nil)
		r.RequestURI = target
		r.Host = "echo"
		d := route.Decide(snap, route.Input{Dst: vip}, r, seeded())
		if d.Route == nil {
			return
		}
		for _, vh := range table.VirtualHosts {
			for _, rt := range vh.Routes {
				if rt == d.Route {
					return
				}
			}
		}
		t.Fatalf("decision names route %q, not in the table", d.Route.Name)
	})
}
