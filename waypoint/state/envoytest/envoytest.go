// Package envoytest builds the Envoy resources a waypoint receives, in the
// shape istiod-lite's translator sends them, for the waypoint's tests.
package envoytest

import (
	"net/netip"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Any packs m, panicking on the impossible error.
func Any(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		panic(err)
	}
	return a
}

// Listener is a listener with the given chains.
func Listener(name string, chains ...*listenerv3.FilterChain) *listenerv3.Listener {
	return &listenerv3.Listener{Name: name, FilterChains: chains}
}

func match(dst netip.AddrPort) *listenerv3.FilterChainMatch {
	return &listenerv3.FilterChainMatch{
		DestinationPort: wrapperspb.UInt32(uint32(dst.Port())),
		PrefixRanges: []*corev3.CidrRange{{
			AddressPrefix: dst.Addr().String(),
			PrefixLen:     wrapperspb.UInt32(uint32(dst.Addr().BitLen())),
		}},
	}
}

// HCM is an HttpConnectionManager with RDS and the router filter.
func HCM(routeConfig string, codec hcmv3.HttpConnectionManager_CodecType, upgrades ...string) *hcmv3.HttpConnectionManager {
	h := &hcmv3.HttpConnectionManager{
		StatPrefix: routeConfig,
		CodecType:  codec,
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			RouteConfigName: routeConfig,
			ConfigSource: &corev3.ConfigSource{
				ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
				ResourceApiVersion:    corev3.ApiVersion_V3,
			},
		}},
		HttpFilters: []*hcmv3.HttpFilter{{
			Name:       "envoy.filters.http.router",
			ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: Any(&routerv3.Router{})},
		}},
	}
	for _, u := range upgrades {
		h.UpgradeConfigs = append(h.UpgradeConfigs, &hcmv3.HttpConnectionManager_UpgradeConfig{UpgradeType: u})
	}
	return h
}

// Chain is a filter chain for one destination with one network filter.
func Chain(dst netip.AddrPort, filter proto.Message) *listenerv3.FilterChain {
	name := "envoy.filters.network.http_connection_manager"
	if _, ok := filter.(*tcpv3.TcpProxy); ok {
		name = "envoy.filters.network.tcp_proxy"
	}
	return &listenerv3.FilterChain{
		Name:             dst.String(),
		FilterChainMatch: match(dst),
		Filters: []*listenerv3.Filter{{
			Name:       name,
			ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: Any(filter)},
		}},
	}
}

// HTTPChain is an HTTP filter chain for dst using RouteConfiguration
// routeConfig.
func HTTPChain(dst netip.AddrPort, routeConfig string, codec hcmv3.HttpConnectionManager_CodecType, upgrades ...string) *listenerv3.FilterChain {
	return Chain(dst, HCM(routeConfig, codec, upgrades...))
}

// TCPChain is a TCP filter chain for dst to cluster.
func TCPChain(dst netip.AddrPort, cluster string) *listenerv3.FilterChain {
	return Chain(dst, &tcpv3.TcpProxy{StatPrefix: cluster, ClusterSpecifier: &tcpv3.TcpProxy_Cluster{Cluster: cluster}})
}

// Routes is a RouteConfiguration with one virtual host for every domain.
func Routes(name string, routes ...*routev3.Route) *routev3.RouteConfiguration {
	return &routev3.RouteConfiguration{
		Name:         name,
		VirtualHosts: []*routev3.VirtualHost{{Name: name, Domains: []string{"*"}, Routes: routes}},
	}
}

// Prefix is a route for a path prefix to a cluster, with no timeout.
func Prefix(prefix, cluster string) *routev3.Route {
	return &routev3.Route{
		Name:  prefix + "->" + cluster,
		Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: prefix}},
		Action: &routev3.Route_Route{Route: &routev3.RouteAction{
			ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: cluster},
			Timeout:          durationpb.New(0),
		}},
	}
}

// Action returns the RouteAction of a forwarding route.
func Action(r *routev3.Route) *routev3.RouteAction { return r.GetRoute() }

// Weighted is a route for a prefix split between clusters by weight
// (name, weight, name, weight...).
func Weighted(prefix string, split ...any) *routev3.Route {
	r := Prefix(prefix, "unused")
	var cs []*routev3.WeightedCluster_ClusterWeight
	for i := 0; i+1 < len(split); i += 2 {
		cs = append(cs, &routev3.WeightedCluster_ClusterWeight{
			Name:   split[i].(string),
			Weight: wrapperspb.UInt32(uint32(split[i+1].(int))),
		})
	}
	r.GetRoute().ClusterSpecifier = &routev3.RouteAction_WeightedClusters{WeightedClusters: &routev3.WeightedCluster{Clusters: cs}}
	return r
}

// Set is a HeaderValueOption that sets (overwrites) a header.
func Set(name, value string) *corev3.HeaderValueOption {
	return &corev3.HeaderValueOption{
		Header:       &corev3.HeaderValue{Key: name, Value: value},
		AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
	}
}

// Add is a HeaderValueOption that adds a value to a header.
func Add(name, value string) *corev3.HeaderValueOption {
	return &corev3.HeaderValueOption{
		Header:       &corev3.HeaderValue{Key: name, Value: value},
		AppendAction: corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD,
	}
}

// Protocol is an upstream HTTP protocol for Cluster.
type Protocol int

// The upstream protocols.
const (
	HTTP1 Protocol = iota
	HTTP2
	Downstream
)

// Cluster is an EDS cluster with LEAST_REQUEST, speaking proto.
func Cluster(name string, proto Protocol) *clusterv3.Cluster {
	c := &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig: &clusterv3.Cluster_EdsClusterConfig{EdsConfig: &corev3.ConfigSource{
			ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
			ResourceApiVersion:    corev3.ApiVersion_V3,
		}},
		ConnectTimeout: durationpb.New(5e9),
		LbPolicy:       clusterv3.Cluster_LEAST_REQUEST,
	}
	var opts *httpv3.HttpProtocolOptions
	switch proto {
	case HTTP2:
		opts = &httpv3.HttpProtocolOptions{UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{
			ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
				ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &corev3.Http2ProtocolOptions{}},
			},
		}}
	case Downstream:
		opts = &httpv3.HttpProtocolOptions{UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_UseDownstreamProtocolConfig{
			UseDownstreamProtocolConfig: &httpv3.HttpProtocolOptions_UseDownstreamHttpConfig{
				HttpProtocolOptions:  &corev3.Http1ProtocolOptions{},
				Http2ProtocolOptions: &corev3.Http2ProtocolOptions{},
			},
		}}
	}
	if opts != nil {
		c.TypedExtensionProtocolOptions = map[string]*anypb.Any{"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": Any(opts)}
	}
	return c
}

// Endpoint is one endpoint of an Assignment.
type Endpoint struct {
	Addr     netip.AddrPort
	Identity string // SPIFFE ID; "" leaves the HBONE metadata out
}

// Assignment is a ClusterLoadAssignment with the endpoints, each with its
// HBONE metadata (port 15008).
func Assignment(cluster string, eps ...Endpoint) *endpointv3.ClusterLoadAssignment {
	var lbs []*endpointv3.LbEndpoint
	for _, e := range eps {
		lb := &endpointv3.LbEndpoint{
			HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
				Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
					Address:       e.Addr.Addr().String(),
					PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(e.Addr.Port())},
				}}},
			}},
			HealthStatus: corev3.HealthStatus_HEALTHY,
		}
		if e.Identity != "" {
			md, err := structpb.NewStruct(map[string]any{"identity": e.Identity, "port": 15008})
			if err != nil {
				panic(err)
			}
			lb.Metadata = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"cairn.hbone": md}}
		}
		lbs = append(lbs, lb)
	}
	return &endpointv3.ClusterLoadAssignment{
		ClusterName: cluster,
		Endpoints:   []*endpointv3.LocalityLbEndpoints{{LbEndpoints: lbs}},
	}
}
