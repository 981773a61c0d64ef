package waypointxds

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/cairnmesh/cairn/internal/waypointcontract"
)

// Envoy's names of the filters and extensions the resources use.
const (
	hcmFilter          = "envoy.filters.network.http_connection_manager"
	tcpProxyFilter     = "envoy.filters.network.tcp_proxy"
	routerFilter       = "envoy.filters.http.router"
	httpProtocolOption = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
)

// chainSpec is one bound Service port: a filter chain of the listener.
type chainSpec struct {
	service     Service
	port        Port
	proto       protocol
	routeConfig string
}

// listener builds the waypoint's Listener, one filter chain per bound
// Service port, matched by the Service's VIPs and the port.
func (t *translator) listener(chains []chainSpec) *listenerv3.Listener {
	l := &listenerv3.Listener{
		Name: t.in.Waypoint.Namespace + "/" + t.in.Waypoint.Name,
		// The waypoint terminates HBONE itself and hands each tunnel to
		// this listener by the tunnel's destination address: an internal
		// listener, which has no address of its own.
		ListenerSpecifier: &listenerv3.Listener_InternalListener{InternalListener: &listenerv3.Listener_InternalListenerConfig{}},
	}
	for _, c := range chains {
		l.FilterChains = append(l.FilterChains, t.filterChain(c))
	}
	return l
}

func (t *translator) filterChain(c chainSpec) *listenerv3.FilterChain {
	vips := slices.Clone(c.service.VIPs)
	slices.SortFunc(vips, netip.Addr.Compare)
	var ranges []*corev3.CidrRange
	for _, ip := range slices.Compact(vips) {
		ip = ip.Unmap()
		ranges = append(ranges, &corev3.CidrRange{AddressPrefix: ip.String(), PrefixLen: wrapperspb.UInt32(uint32(ip.BitLen()))})
	}
	name := t.routeConfigName(portKey{c.service.key(), c.port.Port})
	fc := &listenerv3.FilterChain{
		Name: name,
		FilterChainMatch: &listenerv3.FilterChainMatch{
			PrefixRanges:    ranges,
			DestinationPort: wrapperspb.UInt32(uint32(c.port.Port)),
		},
		Metadata: metadata(map[string]any{
			waypointcontract.MetadataService: c.service.key().String(),
			waypointcontract.MetadataPort:    c.port.Port,
		}),
	}
	svc := c.service.key()
	if !c.proto.http() {
		fc.Filters = append(rbacFilters(t.l7, svc, false, networkRBACFilter(name)), typedFilter(tcpProxyFilter, &tcpproxyv3.TcpProxy{
			StatPrefix:       name,
			ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: t.clusterName(target{svc, c.port.Port})},
		}))
		return fc
	}
	httpFilters := append(rbacFilters(t.l7, svc, true, httpRBACFilter), &hcmv3.HttpFilter{
		Name:       routerFilter,
		ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(&routerv3.Router{})},
	})
	fc.Filters = []*listenerv3.Filter{typedFilter(hcmFilter, &hcmv3.HttpConnectionManager{
		StatPrefix: name,
		CodecType:  c.proto.codec(),
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			ConfigSource:    adsSource(),
			RouteConfigName: c.routeConfig,
		}},
		HttpFilters: httpFilters,
	})}
	return fc
}

// clusters builds a Cluster and a ClusterLoadAssignment for every Service
// port the routes and filter chains send to.
func (t *translator) clusters() ([]*clusterv3.Cluster, []*endpointv3.ClusterLoadAssignment) {
	targets := make([]target, 0, len(t.used))
	for tg := range t.used {
		targets = append(targets, tg)
	}
	slices.SortFunc(targets, func(a, b target) int {
		return cmp.Or(cmp.Compare(a.service.String(), b.service.String()), cmp.Compare(a.port, b.port))
	})
	byTarget := map[target][]Endpoint{}
	for _, e := range t.in.Endpoints {
		if e.Address.IsValid() {
			byTarget[target{e.Service, e.Port}] = append(byTarget[target{e.Service, e.Port}], e)
		}
	}
	var clusters []*clusterv3.Cluster
	var cla []*endpointv3.ClusterLoadAssignment
	for _, tg := range targets {
		name := t.clusterName(tg)
		c := &clusterv3.Cluster{
			Name:                 name,
			ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
			EdsClusterConfig:     &clusterv3.Cluster_EdsClusterConfig{EdsConfig: adsSource()},
			// Per request, the less loaded of two random endpoints: better
			// than round robin when endpoints are unevenly loaded.
			LbPolicy:       clusterv3.Cluster_LEAST_REQUEST,
			ConnectTimeout: durationpb.New(t.opts.ConnectTimeout),
			Metadata: metadata(map[string]any{
				waypointcontract.MetadataService: tg.service.String(),
				waypointcontract.MetadataPort:    tg.port,
			}),
		}
		if svc, ok := t.services[tg.service]; ok {
			if p, ok := svc.port(tg.port); ok {
				if opts := upstreamProtocol(protocolOf(p)); opts != nil {
					c.TypedExtensionProtocolOptions = map[string]*anypb.Any{httpProtocolOption: mustAny(opts)}
				}
			}
		}
		clusters = append(clusters, c)
		cla = append(cla, loadAssignment(name, byTarget[tg]))
	}
	return clusters, cla
}

// upstreamProtocol says which HTTP version the waypoint speaks to a
// cluster's endpoints: the one the Service port announces, or the client's
// when it announces none. TCP ports get none.
func upstreamProtocol(p protocol) *upstreamhttpv3.HttpProtocolOptions {
	switch p {
	case protoHTTP1:
		return &upstreamhttpv3.HttpProtocolOptions{UpstreamProtocolOptions: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_{
			ExplicitHttpConfig: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig{
				ProtocolConfig: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_HttpProtocolOptions{HttpProtocolOptions: &corev3.Http1ProtocolOptions{}},
			},
		}}
	case protoHTTP2:
		return &upstreamhttpv3.HttpProtocolOptions{UpstreamProtocolOptions: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_{
			ExplicitHttpConfig: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig{
				ProtocolConfig: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &corev3.Http2ProtocolOptions{}},
			},
		}}
	case protoAuto:
		return &upstreamhttpv3.HttpProtocolOptions{UpstreamProtocolOptions: &upstreamhttpv3.HttpProtocolOptions_UseDownstreamProtocolConfig{
			UseDownstreamProtocolConfig: &upstreamhttpv3.HttpProtocolOptions_UseDownstreamHttpConfig{
				HttpProtocolOptions:  &corev3.Http1ProtocolOptions{},
				Http2ProtocolOptions: &corev3.Http2ProtocolOptions{},
			},
		}}
	}
	return nil
}

// loadAssignment lists a cluster's endpoints, sorted by address and port,
// each with the HBONE identity the waypoint must see when it connects.
func loadAssignment(name string, eps []Endpoint) *endpointv3.ClusterLoadAssignment {
	type hostPort struct {
		addr netip.Addr
		port int32
	}
	seen := map[hostPort]bool{}
	var lbs []*endpointv3.LbEndpoint
	eps = slices.Clone(eps)
	slices.SortFunc(eps, func(a, b Endpoint) int {
		return cmp.Or(a.Address.Compare(b.Address), cmp.Compare(a.port(), b.port()), cmp.Compare(a.Identity, b.Identity))
	})
	for _, e := range eps {
		hp := hostPort{e.Address.Unmap(), e.port()}
		if seen[hp] {
			continue
		}
		seen[hp] = true
		lb := &endpointv3.LbEndpoint{
			HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
				Address: socketAddress(hp.addr, hp.port),
			}},
			HealthStatus: corev3.HealthStatus_HEALTHY,
		}
		if e.Identity != "" {
			fields := map[string]any{
				waypointcontract.HBONEIdentityKey: e.Identity,
				waypointcontract.HBONEPortKey:     waypointcontract.HBONEPort,
			}
			if e.Node != "" {
				fields[waypointcontract.HBONENodeKey] = e.Node
			}
			lb.Metadata = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{
				waypointcontract.EndpointMetadataHBONE: mustStruct(fields),
			}}
		}
		lbs = append(lbs, lb)
	}
	out := &endpointv3.ClusterLoadAssignment{ClusterName: name}
	if len(lbs) > 0 {
		out.Endpoints = []*endpointv3.LocalityLbEndpoints{{LbEndpoints: lbs}}
	}
	return out
}

func (e Endpoint) port() int32 {
	if e.TargetPort > 0 {
		return e.TargetPort
	}
	return e.Port
}

func socketAddress(ip netip.Addr, port int32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address:       ip.String(),
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(port)},
	}}}
}

// adsSource says a resource comes over the same ADS stream.
func adsSource() *corev3.ConfigSource {
	return &corev3.ConfigSource{
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
		ResourceApiVersion:    corev3.ApiVersion_V3,
	}
}

func typedFilter(name string, m proto.Message) *listenerv3.Filter {
	return &listenerv3.Filter{Name: name, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(m)}}
}

// mustAny packs a message deterministically, so that equal inputs give
// equal bytes. Packing a well-formed message cannot fail.
func mustAny(m proto.Message) *anypb.Any {
	a := &anypb.Any{}
	if err := anypb.MarshalFrom(a, m, proto.MarshalOptions{Deterministic: true}); err != nil {
		panic(fmt.Sprintf("packing %T: %v", m, err))
	}
	return a
}

// metadata is filter metadata in Cairn's namespace.
func metadata(fields map[string]any) *corev3.Metadata {
	return &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{waypointcontract.Metadata: mustStruct(fields)}}
}

// mustStruct converts strings and integers; other values are a bug here.
func mustStruct(fields map[string]any) *structpb.Struct {
	conv := make(map[string]any, len(fields))
	for k, v := range fields {
		switch n := v.(type) {
		case int:
			conv[k] = float64(n)
		case int32:
			conv[k] = float64(n)
		default:
			conv[k] = v
		}
	}
	s, err := structpb.NewStruct(conv)
	if err != nil {
		panic(fmt.Sprintf("metadata %v: %v", fields, err))
	}
	return s
}

func zeroDuration() *durationpb.Duration { return durationpb.New(0) }
