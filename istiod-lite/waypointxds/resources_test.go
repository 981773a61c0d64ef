package waypointxds

import (
	"net/netip"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"k8s.io/apimachinery/pkg/types"
)

func decode[M proto.Message](t *testing.T, js string, m M) M {
	t.Helper()
	if err := protojson.Unmarshal([]byte(js), m); err != nil {
		t.Fatalf("want JSON: %v\n%s", err, js)
	}
	return m
}

// TestListener: one internal listener, one filter chain per bound Service
// port keyed by the Service's VIPs and the port; HTTP ports get an
// HttpConnectionManager with the codec the port announces and routes by
// RDS, other ports a TcpProxy to the Service's own cluster.
func TestListener(t *testing.T) {
	out := translateValid(t, fixtureInput())
	l := out.Listener
	if l.GetName() != "shop/waypoint" || l.GetInternalListener() == nil || l.GetAddress() != nil || l.GetDefaultFilterChain() != nil {
		t.Errorf("listener %s: want shop/waypoint, internal, without address or default chain (no match = refused)", l.GetName())
	}
	var names []string
	for _, fc := range l.GetFilterChains() {
		names = append(names, fc.GetName())
	}
	wantNames := []string{
		"shop/web:80", "shop/web:3000", "shop/web:7070", "shop/web:8080", "shop/web:9090",
		"shop/web-v1:80", "shop/web-v1:7070", "shop/web-v2:80", "shop/web-v2:7070",
	}
	if d := diffProto(wantNames, names); d != "" {
		t.Errorf("filter chains (-want +got):\n%s", d)
	}

	want80 := decode(t, `{"name": "shop/web:80",
 "filter_chain_match": {"destination_port": 80, "prefix_ranges": [
   {"address_prefix": "10.96.0.10", "prefix_len": 32}, {"address_prefix": "fd00::10", "prefix_len": 128}]},
 "metadata": {"filter_metadata": {"cairn": {"service": "shop/web", "port": 80}}},
 "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
   "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
   "stat_prefix": "shop/web:80", "codec_type": "HTTP1",
   "rds": {"config_source": {"ads": {}, "resource_api_version": "V3"}, "route_config_name": "shop/web:80"},
   "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}`,
		&listenerv3.FilterChain{})
	if d := diffProto(want80, chainByName(t, l, "shop/web:80")); d != "" {
		t.Errorf("chain shop/web:80 (-want +got):\n%s", d)
	}
	want9090 := decode(t, `{"name": "shop/web:9090",
 "filter_chain_match": {"destination_port": 9090, "prefix_ranges": [
   {"address_prefix": "10.96.0.10", "prefix_len": 32}, {"address_prefix": "fd00::10", "prefix_len": 128}]},
 "metadata": {"filter_metadata": {"cairn": {"service": "shop/web", "port": 9090}}},
 "filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
   "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
   "stat_prefix": "shop/web:9090", "cluster": "outbound|9090||web.shop.svc.cluster.local"}}]}`,
		&listenerv3.FilterChain{})
	if d := diffProto(want9090, chainByName(t, l, "shop/web:9090")); d != "" {
		t.Errorf("chain shop/web:9090 (-want +got):\n%s", d)
	}
	for name, codec := range map[string]hcmv3.HttpConnectionManager_CodecType{
		"shop/web:8080":    hcmv3.HttpConnectionManager_HTTP1, // name http-alt
		"shop/web:7070":    hcmv3.HttpConnectionManager_HTTP2, // kubernetes.io/h2c
		"shop/web-v1:7070": hcmv3.HttpConnectionManager_HTTP2, // grpc
		"shop/web:3000":    hcmv3.HttpConnectionManager_AUTO,  // nothing announced
	} {
		hcm := &hcmv3.HttpConnectionManager{}
		if err := chainByName(t, l, name).GetFilters()[0].GetTypedConfig().UnmarshalTo(hcm); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if hcm.GetCodecType() != codec {
			t.Errorf("%s codec %v, want %v", name, hcm.GetCodecType(), codec)
		}
	}
}

// TestClustersAndEndpoints: clusters are EDS over ADS with LEAST_REQUEST and
// the upstream HTTP version of their port; endpoints carry their HBONE
// identity.
func TestClustersAndEndpoints(t *testing.T) {
	out := translateValid(t, fixtureInput())
	want := decode(t, `{"name": "`+webCluster+`", "type": "EDS",
 "eds_cluster_config": {"eds_config": {"ads": {}, "resource_api_version": "V3"}},
 "lb_policy": "LEAST_REQUEST", "connect_timeout": "10s",
 "metadata": {"filter_metadata": {"cairn": {"service": "shop/web", "port": 80}}},
 "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
   "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
   "explicit_http_config": {"http_protocol_options": {}}}}}`, &clusterv3.Cluster{})
	if d := diffProto(want, clusterByName(t, out, webCluster)); d != "" {
		t.Errorf("cluster (-want +got):\n%s", d)
	}
	if c := clusterByName(t, out, "outbound|7070||web-v1.shop.svc.cluster.local"); c.GetTypedExtensionProtocolOptions() == nil {
		t.Errorf("gRPC cluster without HTTP/2 upstream options")
	}
	if c := clusterByName(t, out, "outbound|9090||web.shop.svc.cluster.local"); c.GetTypedExtensionProtocolOptions() != nil {
		t.Errorf("TCP cluster with HTTP options: %v", c.GetTypedExtensionProtocolOptions())
	}
	// One cluster per bound Service port, and nothing for Services the
	// resources do not send to.
	if len(out.Clusters) != 9 || len(out.LoadAssignments) != 9 {
		t.Errorf("%d clusters and %d load assignments, want 9 each", len(out.Clusters), len(out.LoadAssignments))
	}

	var cla *endpointv3.ClusterLoadAssignment
	for _, l := range out.LoadAssignments {
		if l.GetClusterName() == webCluster {
			cla = l
		}
	}
	wantCLA := decode(t, `{"cluster_name": "`+webCluster+`", "endpoints": [{"lb_endpoints": [
 {"endpoint": {"address": {"socket_address": {"address": "10.0.0.1", "port_value": 8080}}}, "health_status": "HEALTHY",
  "metadata": {"filter_metadata": {"cairn.hbone": {"identity": "spiffe://cluster.local/ns/shop/sa/web", "port": 15008, "node": "node-1"}}}},
 {"endpoint": {"address": {"socket_address": {"address": "10.0.0.2", "port_value": 8080}}}, "health_status": "HEALTHY",
  "metadata": {"filter_metadata": {"cairn.hbone": {"identity": "spiffe://cluster.local/ns/shop/sa/web", "port": 15008, "node": "node-1"}}}}]}]}`,
		&endpointv3.ClusterLoadAssignment{})
	if d := diffProto(wantCLA, cla); d != "" {
		t.Errorf("load assignment (-want +got):\n%s", d)
	}
}

// TestEndpointOutsideTheMesh: an endpoint without identity is reached in
// plain TCP, so it carries no HBONE metadata.
func TestEndpointOutsideTheMesh(t *testing.T) {
	in := fixtureInput()
	in.Endpoints = []Endpoint{{
		Service: types.NamespacedName{Namespace: "shop", Name: "web"}, Port: 80,
		Address: netip.MustParseAddr("10.0.0.9"),
	}}
	out := translateValid(t, in)
	for _, l := range out.LoadAssignments {
		if l.GetClusterName() != webCluster {
			continue
		}
		lb := l.GetEndpoints()[0].GetLbEndpoints()[0]
		if lb.GetMetadata() != nil {
			t.Errorf("metadata %v on an endpoint outside the mesh", lb.GetMetadata())
		}
		if p := lb.GetEndpoint().GetAddress().GetSocketAddress().GetPortValue(); p != 80 {
			t.Errorf("port %d, want the Service port when the target port is unknown", p)
		}
	}
}

// TestWaypointForWorkloadHasNoServiceChains: a waypoint for workload
// traffic only applies no routes and serves no Service chains.
func TestWaypointForWorkloadHasNoServiceChains(t *testing.T) {
	in := fixtureInput()
	in.Waypoint.For = ForWorkload
	in.HTTPRoutes = append(in.HTTPRoutes, rulesOnWeb80(t, `- backendRefs: [{name: web-v1, port: 80}]`))
	out := translateValid(t, in)
	if out.Listener != nil || len(out.Routes) != 0 || len(out.Clusters) != 0 {
		t.Errorf("resources for a workload-only waypoint: %v %v %v", out.Listener, out.Routes, out.Clusters)
	}
	o := outcomeFor(t, out.Outcomes, "HTTPRoute", "shop/r", 0)
	if c := o.Condition("Accepted"); c.Reason != "NoMatchingParent" {
		t.Errorf("Accepted %+v, want NoMatchingParent naming istio.io/waypoint-for", c)
	}
}

// TestResourcesByType: the shape the xDS server takes, every resource
// under its type URL and name.
func TestResourcesByType(t *testing.T) {
	out := translateValid(t, fixtureInput())
	res := out.Resources()
	for typeURL, want := range map[string]int{
		ListenerType: 1, RouteConfigurationType: len(out.Routes), ClusterType: 9, ClusterLoadAssignmentType: 9,
	} {
		if got := len(res[typeURL]); got != want {
			t.Errorf("%s: %d resources, want %d", typeURL, got, want)
		}
		for name, m := range res[typeURL] {
			if got := "type.googleapis.com/" + string(m.ProtoReflect().Descriptor().FullName()); got != typeURL {
				t.Errorf("%s is a %s under %s", name, got, typeURL)
			}
		}
	}
	if res[ListenerType]["shop/waypoint"] == nil || res[ClusterLoadAssignmentType][webCluster] == nil {
		t.Errorf("resources not under their names: %v", res)
	}
}

// TestProtocolOfPort: appProtocol first, else the name's prefix; unknown
// is detected, never assumed to be TCP (which would skip L7 policy).
func TestProtocolOfPort(t *testing.T) {
	for _, tc := range []struct {
		port Port
		want protocol
	}{
		{Port{Name: "x", AppProtocol: "http"}, protoHTTP1},
		{Port{Name: "x", AppProtocol: "kubernetes.io/h2c"}, protoHTTP2},
		{Port{Name: "x", AppProtocol: "grpc"}, protoHTTP2},
		{Port{Name: "x", AppProtocol: "HTTP2"}, protoHTTP2},
		{Port{Name: "x", AppProtocol: "kubernetes.io/ws"}, protoHTTP1},
		{Port{Name: "http", AppProtocol: "tcp"}, protoTCP},
		{Port{Name: "https"}, protoTCP},
		{Port{Name: "grpc-web"}, protoHTTP2},
		{Port{Name: "http-alt"}, protoHTTP1},
		{Port{Name: "tcp-db"}, protoTCP},
		{Port{Name: "web"}, protoAuto},
		{Port{Name: "x", AppProtocol: "example.com/custom"}, protoAuto},
	} {
		if got := protocolOf(tc.port); got != tc.want {
			t.Errorf("%+v: %v, want %v", tc.port, got, tc.want)
		}
	}
}

// TestHeadlessServiceIsNoParent: a headless Service has no address to bind
// routes to.
func TestHeadlessServiceIsNoParent(t *testing.T) {
	in := fixtureInput()
	wp := waypointKey
	in.Services = append(in.Services, Service{Namespace: "shop", Name: "db", Waypoint: &wp, Ports: []Port{{Name: "http", Port: 80}}})
	in.HTTPRoutes = append(in.HTTPRoutes, httpRoute(t, 0, `
metadata: {name: r}
spec:
  parentRefs: [{group: "", kind: Service, name: db}]
  rules: [{backendRefs: [{name: db, port: 80}]}]`))
	out := translateValid(t, in)
	if c := outcomeFor(t, out.Outcomes, "HTTPRoute", "shop/r", 0).Condition("Accepted"); c.Reason != "NoMatchingParent" || !strings.Contains(c.Message, "headless") {
		t.Errorf("Accepted %+v, want NoMatchingParent saying the Service is headless", c)
	}
	for _, fc := range out.Listener.GetFilterChains() {
		if strings.HasPrefix(fc.GetName(), "shop/db:") {
			t.Errorf("filter chain %s for a headless Service", fc.GetName())
		}
	}
}
