package state_test

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/cairnmesh/cairn/internal/xdsclient"
	"github.com/cairnmesh/cairn/waypoint/state"
	"github.com/cairnmesh/cairn/waypoint/state/envoytest"
)

var (
	vip  = netip.MustParseAddrPort("10.96.0.10:80")
	vip2 = netip.MustParseAddrPort("10.96.0.11:8080")
)

func update(ms ...proto.Message) xdsclient.Update {
	u := xdsclient.Update{TypeURL: xdsclient.TypeURLOf(ms[0]), Resources: map[string]proto.Message{}}
	for _, m := range ms {
		var name string
		switch r := m.(type) {
		case *listenerv3.Listener:
			name = r.GetName()
		case *routev3.RouteConfiguration:
			name = r.GetName()
		case *clusterv3.Cluster:
			name = r.GetName()
		}
		u.Resources[name] = m
	}
	return u
}

// TestUnsupportedFieldIsRefusedWithItsPath: every field the waypoint does
// not implement makes the resource invalid, and the error names the
// resource and the field's path, so the control plane can say which route
// the data plane refused.
func TestUnsupportedFieldIsRefusedWithItsPath(t *testing.T) {
	hashed := envoytest.Prefix("/", "c")
	hashed.GetRoute().HashPolicy = []*routev3.RouteAction_HashPolicy{{PolicySpecifier: &routev3.RouteAction_HashPolicy_Header_{
		Header: &routev3.RouteAction_HashPolicy_Header{HeaderName: "x-user"},
	}}}

	vhRetry := envoytest.Routes("r", envoytest.Prefix("/", "c"))
	vhRetry.GetVirtualHosts()[0].RetryPolicy = &routev3.RetryPolicy{RetryOn: "5xx"}

	withRBAC := envoytest.HCM("r", hcmv3.HttpConnectionManager_AUTO)
	withRBAC.HttpFilters = append([]*hcmv3.HttpFilter{{
		Name:       "envoy.filters.http.rbac",
		ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: envoytest.Any(&rbacv3.RBAC{})},
	}}, withRBAC.HttpFilters...)

	traced := envoytest.HCM("r", hcmv3.HttpConnectionManager_AUTO)
	traced.Tracing = &hcmv3.HttpConnectionManager_Tracing{}

	breakers := envoytest.Cluster("c", envoytest.HTTP1)
	breakers.CircuitBreakers = &clusterv3.CircuitBreakers{}

	formatter := envoytest.Prefix("/", "c")
	formatter.RequestHeadersToAdd = []*corev3.HeaderValueOption{envoytest.Set("x-client", "%DOWNSTREAM_REMOTE_ADDRESS%")}

	tests := []struct {
		name      string
		res       proto.Message
		resource  string
		fieldPath string
	}{
		{"route action field", envoytest.Routes("r", envoytest.Prefix("/a", "c"), hashed), "r", "virtual_hosts[0].routes[1].route.hash_policy"},
		{"virtual host field", vhRetry, "r", "virtual_hosts[0].retry_policy"},
		{"HTTP filter", envoytest.Listener("l", envoytest.Chain(vip, withRBAC)), "l",
			"filter_chains[0].filters[0].typed_config(envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager).http_filters[0].typed_config(envoy.extensions.filters.http.rbac.v3.RBAC)"},
		{"connection manager field", envoytest.Listener("l", envoytest.Chain(vip, traced)), "l",
			"filter_chains[0].filters[0].typed_config(envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager).tracing"},
		{"cluster field", breakers, "c", "circuit_breakers"},
		{"header formatter", envoytest.Routes("r", formatter), "r", "virtual_hosts[0].routes[0].request_headers_to_add[0].header.value"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := state.NewStore(state.StoreConfig{})
			err := st.Apply(update(tc.res))
			var rej *xdsclient.RejectedError
			if !errors.As(err, &rej) {
				t.Fatalf("Apply = %v, want a RejectedError", err)
			}
			if len(rej.Names) != 1 || rej.Names[0] != tc.resource {
				t.Errorf("rejected %v, want [%s]", rej.Names, tc.resource)
			}
			fes := state.FieldErrors(err)
			found := false
			for _, fe := range fes {
				if fe.Resource == tc.resource && fe.Field == tc.fieldPath {
					found = true
				}
			}
			if !found {
				t.Errorf("field errors %v do not name %s/%s", fes, tc.resource, tc.fieldPath)
			}
		})
	}
}

// TestValidateRunsFirst: a resource that fails its generated Validate()
// (an empty cluster name) is refused before anything else reads it.
func TestValidateRunsFirst(t *testing.T) {
	r := envoytest.Prefix("/", "c")
	r.GetRoute().ClusterSpecifier = &routev3.RouteAction_Cluster{Cluster: ""}
	st := state.NewStore(state.StoreConfig{})
	err := st.Apply(update(envoytest.Routes("r", r)))
	if err == nil || !strings.Contains(err.Error(), "invalid") {
		t.Fatalf("Apply = %v, want a validation error", err)
	}
}

// TestRejectedResourceKeepsLastGood: a refused new version leaves the old
// one in place, and the other resources of the same update still apply.
func TestRejectedResourceKeepsLastGood(t *testing.T) {
	st := state.NewStore(state.StoreConfig{})
	if err := st.Apply(update(envoytest.Routes("a", envoytest.Prefix("/old", "c")))); err != nil {
		t.Fatal(err)
	}
	bad := envoytest.Routes("a", envoytest.Prefix("/new", "c"))
	bad.GetVirtualHosts()[0].RequireTls = routev3.VirtualHost_ALL
	err := st.Apply(update(bad, envoytest.Routes("b", envoytest.Prefix("/b", "c"))))
	var rej *xdsclient.RejectedError
	if !errors.As(err, &rej) || len(rej.Names) != 1 || rej.Names[0] != "a" {
		t.Fatalf("Apply = %v, want a rejection of a only", err)
	}
	snap := st.Load()
	a := snap.RouteTable(&state.HTTPChain{RouteConfig: "a"})
	if a == nil || a.VirtualHosts[0].Routes[0].Match.Path != "/old" {
		t.Errorf("a = %+v, want the old version (/old)", a)
	}
	if snap.RouteTable(&state.HTTPChain{RouteConfig: "b"}) == nil {
		t.Error("b was not applied")
	}
	// A resource whose name is not the one the control plane gave it is
	// refused too (an Envoy rule: the name is the resource's identity).
	err = st.Apply(xdsclient.Update{TypeURL: xdsclient.TypeURLOf(bad), Resources: map[string]proto.Message{
		"c": envoytest.Routes("not-c", envoytest.Prefix("/", "c")),
	}})
	if !errors.As(err, &rej) || len(rej.Names) != 1 || rej.Names[0] != "c" {
		t.Errorf("a resource under another name: %v, want c rejected", err)
	}
	// A removal of a rejected-then-fixed resource works as usual.
	if err := st.Apply(xdsclient.Update{TypeURL: xdsclient.TypeURLOf(bad), Removed: []string{"a"}}); err != nil {
		t.Fatal(err)
	}
	if st.Load().RouteTable(&state.HTTPChain{RouteConfig: "a"}) != nil {
		t.Error("a is still there after its removal")
	}
}

// TestChainLookup: Envoy's filter chain order — the destination port's
// chains before any port's, the longest prefix, then a chain without
// prefixes, then the default chain.
func TestChainLookup(t *testing.T) {
	subnet := envoytest.TCPChain(vip, "subnet")
	subnet.FilterChainMatch.PrefixRanges[0] = &corev3.CidrRange{AddressPrefix: "10.96.0.0", PrefixLen: wrapperspb.UInt32(16)}
	anyPort := envoytest.TCPChain(vip, "any-port")
	anyPort.FilterChainMatch.DestinationPort = nil
	anyPort.FilterChainMatch.PrefixRanges[0] = &corev3.CidrRange{AddressPrefix: "10.0.0.0", PrefixLen: wrapperspb.UInt32(8)}
	l := envoytest.Listener("l",
		envoytest.HTTPChain(vip, "r", hcmv3.HttpConnectionManager_HTTP1),
		envoytest.TCPChain(vip2, "vip2"),
		subnet,
		anyPort,
	)
	l.DefaultFilterChain = envoytest.TCPChain(vip, "default")
	l.DefaultFilterChain.FilterChainMatch = nil
	snap, err := state.NewSnapshot(state.Options{}, l)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		dst  string
		want string
	}{
		{"10.96.0.10:80", "http"},
		{"10.96.0.11:8080", "vip2"},
		{"10.96.5.5:80", "subnet"},
		{"10.96.0.11:80", "subnet"},
		{"10.1.2.3:9090", "any-port"},
		{"10.96.0.10:9090", "any-port"},
		{"192.168.0.1:80", "default"},
		{"[::ffff:10.96.0.10]:80", "http"},
	}
	for _, tc := range tests {
		c := snap.Chain(netip.MustParseAddrPort(tc.dst))
		got := "none"
		switch {
		case c == nil:
		case c.HTTP != nil:
			got = "http"
		default:
			got = c.TCPCluster
		}
		if got != tc.want {
			t.Errorf("Chain(%s) = %s, want %s", tc.dst, got, tc.want)
		}
	}
}

// TestDuplicateChainMatchIsRefused: two chains for the same destination
// make the listener invalid, as in Envoy.
func TestDuplicateChainMatchIsRefused(t *testing.T) {
	_, err := state.NewSnapshot(state.Options{}, envoytest.Listener("l", envoytest.TCPChain(vip, "a"), envoytest.TCPChain(vip, "b")))
	if err == nil || !strings.Contains(err.Error(), "filter_chains[1].filter_chain_match") {
		t.Fatalf("err = %v, want the second chain's match named", err)
	}
}

// TestRouteCompile covers the fields a translator sets and what the
// compiled route holds.
func TestRouteCompile(t *testing.T) {
	r := envoytest.Prefix("/api", "c")
	a := r.GetRoute()
	a.Timeout = durationpb.New(0)
	a.RetryPolicy = &routev3.RetryPolicy{
		RetryOn:              "5xx,retriable-status-codes",
		NumRetries:           wrapperspb.UInt32(3),
		RetriableStatusCodes: []uint32{409},
		PerTryTimeout:        durationpb.New(2e9),
	}
	a.RegexRewrite = nil
	a.PrefixRewrite = "/v2"
	snap, err := state.NewSnapshot(state.Options{}, envoytest.Routes("r", r))
	if err != nil {
		t.Fatal(err)
	}
	f := snap.RouteTable(&state.HTTPChain{RouteConfig: "r"}).VirtualHosts[0].Routes[0].Forward
	if f.Timeout != 0 || f.Retry.NumRetries != 3 || f.Retry.PerTryTimeout != 2e9 || f.PrefixRewrite != "/v2" ||
		f.Retry.On&state.Retry5xx == 0 || len(f.Retry.StatusCodes) != 1 {
		t.Errorf("compiled %+v retry %+v", f, f.Retry)
	}
	// Unset timeout is Envoy's 15 s.
	r2 := envoytest.Prefix("/", "c")
	r2.GetRoute().Timeout = nil
	snap, err = state.NewSnapshot(state.Options{}, envoytest.Routes("r", r2))
	if err != nil {
		t.Fatal(err)
	}
	if got := snap.RouteTable(&state.HTTPChain{RouteConfig: "r"}).VirtualHosts[0].Routes[0].Forward.Timeout; got.Seconds() != 15 {
		t.Errorf("default timeout %v, want 15s", got)
	}
	// Too many retries is refused, not clamped silently.
	a.RetryPolicy.NumRetries = wrapperspb.UInt32(50)
	if _, err := state.NewSnapshot(state.Options{MaxRetries: 5}, envoytest.Routes("r", r)); err == nil ||
		!strings.Contains(err.Error(), "retry_policy.num_retries") {
		t.Errorf("50 retries: err = %v", err)
	}
}

// TestEndpointMetadata: the HBONE identity and port of each endpoint come
// from its cairn.hbone metadata; an endpoint that is not healthy is left
// out.
func TestEndpointMetadata(t *testing.T) {
	la := envoytest.Assignment("c",
		envoytest.Endpoint{Addr: netip.MustParseAddrPort("10.0.0.1:8080"), Identity: "spiffe://cluster.local/ns/a/sa/b"},
		envoytest.Endpoint{Addr: netip.MustParseAddrPort("10.0.0.2:8080"), Identity: "spiffe://cluster.local/ns/a/sa/b"},
	)
	la.Endpoints[0].LbEndpoints[1].HealthStatus = corev3.HealthStatus_DRAINING
	a, err := state.CompileAssignment(la)
	if err != nil {
		t.Fatal(err)
	}
	if len(a.Endpoints) != 1 {
		t.Fatalf("endpoints %+v, want the healthy one only", a.Endpoints)
	}
	e := a.Endpoints[0]
	if e.Identity != "spiffe://cluster.local/ns/a/sa/b" || e.TunnelPort != 15008 || e.Address.String() != "10.0.0.1:8080" {
		t.Errorf("endpoint %+v", e)
	}
	bad := envoytest.Assignment("c", envoytest.Endpoint{Addr: netip.MustParseAddrPort("10.0.0.1:8080"), Identity: "spiffe://cluster.local/ns/a/sa/b"})
	bad.Endpoints[0].LbEndpoints[0].Metadata.FilterMetadata["cairn.hbone"].Fields["identity"].Kind = nil
	if _, err := state.CompileAssignment(bad); err == nil {
		t.Error("an endpoint without a usable identity was accepted")
	}
}
