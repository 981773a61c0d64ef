// Package waypointxds translates the Gateway API routes of the Services bound
// to one waypoint into the Envoy resources that configure it (Listener,
// RouteConfiguration, Cluster, ClusterLoadAssignment, go-control-plane
// types), and says per route and parentRef whether it was accepted and its
// references resolved.
//
// Translate is pure: it reads only its Input, calls no API server, starts
// no goroutine, and gives byte-for-byte equal output for equal input (every
// list is sorted). The index fills Input from informers; the status writer
// turns Outcomes into route status once the waypoint has acknowledged the
// resources.
//
// # Shape
//
// One Listener named "<gateway namespace>/<gateway name>", an internal
// listener (the waypoint terminates HBONE itself and hands each tunnel to
// it), with one filter chain per bound (Service, port) matched by the
// Service's VIPs and the port: routing is keyed by the address the client
// dialled, never by the Host header. A connection that matches no chain is
// refused (there is no default chain). HTTP ports get an
// HttpConnectionManager whose routes come over ADS from the
// RouteConfiguration "<ns>/<service>:<port>", with the codec the port's
// appProtocol or name announces; other ports a TcpProxy to the Service's
// own cluster.
//
// Each RouteConfiguration has one VirtualHost with domains ["*"]. Its routes
// are, in order: for each namespace with consumer routes (routes in another
// namespace than the Service), those routes, restricted to callers from that
// namespace; then the producer routes (routes in the Service's namespace),
// which apply to every caller; each group in Gateway API precedence order.
// A request none of them matches gets 404, as Gateway API requires. If no
// producer route applies to the port, a 404 follows each consumer
// namespace's routes (for that namespace's other requests), and a last
// route sends everything else to the Service's own cluster, as without a
// waypoint.
//
// L7 AuthorizationPolicies attached to the waypoint's Gateway, or to a bound
// Service, become Envoy RBAC filters in the chains they apply to (HTTP
// filters before the router, network filters before the TcpProxy), in
// Istio's order: AUDIT (LOG), DENY, ALLOW.
//
// Clusters are named as Istio names them, "outbound|<port>||<service
// FQDN>", discovered by EDS over ADS and balanced per request with
// LEAST_REQUEST. Their ClusterLoadAssignments list the ready endpoints,
// each with its HBONE identity in metadata (see internal/waypointcontract).
package waypointxds

import (
	"net/netip"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/proto"
	"k8s.io/apimachinery/pkg/types"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	securityv1 "github.com/cairnmesh/cairn/apis/security/v1"
)

// Type URLs of the resources Translate returns.
const (
	ListenerType              = "type.googleapis.com/envoy.config.listener.v3.Listener"
	RouteConfigurationType    = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
	ClusterType               = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	ClusterLoadAssignmentType = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
)

// Values of the istio.io/waypoint-for label: which traffic a waypoint
// handles.
const (
	ForService  = "service"
	ForWorkload = "workload"
	ForAll      = "all"
	ForNone     = "none"
)

// Input is everything the translation of one waypoint reads.
type Input struct {
	// Waypoint is the waypoint's Gateway.
	Waypoint Waypoint
	// Services are every Service bound to this waypoint (Waypoint is this
	// waypoint; each gets its filter chains even without routes), and the
	// other Services the routes name, as parent or as backend.
	Services []Service
	// Endpoints are the ready endpoints of those Services, one per
	// (Service, port, address).
	Endpoints []Endpoint
	// HTTPRoutes and GRPCRoutes are the routes whose parentRefs may name a
	// bound Service; routes naming none are ignored.
	HTTPRoutes []*gatewayv1.HTTPRoute
	GRPCRoutes []*gatewayv1.GRPCRoute
	// ReferenceGrants are those of the namespaces of cross-namespace
	// backends.
	ReferenceGrants []*gatewayv1.ReferenceGrant
	// AuthorizationPolicies may target the waypoint's Gateway, the
	// istio-waypoint GatewayClass (from the root namespace) or a bound
	// Service; others are ignored.
	AuthorizationPolicies []*securityv1.AuthorizationPolicy
	// Options are the mesh-wide settings.
	Options Options
}

// Options are mesh-wide settings. The zero value is ready to use: every
// empty field takes the default in its comment.
type Options struct {
	// TrustDomain is the SPIFFE trust domain. Default "cluster.local".
	TrustDomain string
	// DomainSuffix is the cluster's DNS domain. Default "cluster.local".
	DomainSuffix string
	// ConnectTimeout bounds each connection the waypoint opens to an
	// endpoint. Default 10s.
	ConnectTimeout time.Duration
	// RootNamespace holds mesh-wide policies. Default "istio-system".
	RootNamespace string
	// MaxRoutesPerPort bounds the routes (matches) of one Service port:
	// producer routes first, then consumer routes, the oldest first.
	// Default 2048.
	MaxRoutesPerPort int
}

// DefaultMaxRoutesPerPort is the default of Options.MaxRoutesPerPort.
const DefaultMaxRoutesPerPort = 2048

func (o Options) withDefaults() Options {
	if o.TrustDomain == "" {
		o.TrustDomain = "cluster.local"
	}
	if o.DomainSuffix == "" {
		o.DomainSuffix = "cluster.local"
	}
	if o.RootNamespace == "" {
		o.RootNamespace = "istio-system"
	}
	if o.MaxRoutesPerPort <= 0 {
		o.MaxRoutesPerPort = DefaultMaxRoutesPerPort
	}
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = 10 * time.Second
	}
	return o
}

// Waypoint is a waypoint's Gateway.
type Waypoint struct {
	Namespace, Name string
	// For is its istio.io/waypoint-for: ForService (also when empty),
	// ForWorkload, ForAll or ForNone. Only ForService and ForAll waypoints
	// handle Service traffic, and so apply routes.
	For string
}

func (w Waypoint) key() types.NamespacedName {
	return types.NamespacedName{Namespace: w.Namespace, Name: w.Name}
}

func (w Waypoint) servesServices() bool {
	return w.For == "" || w.For == ForService || w.For == ForAll
}

// Service is a Kubernetes Service as the translation needs it.
type Service struct {
	Namespace, Name string
	// VIPs are its cluster IPs; none for a headless Service.
	VIPs []netip.Addr
	// Ports are its TCP ports.
	Ports []Port
	// Waypoint is the waypoint its traffic goes through (istio.io/use-waypoint
	// on the Service or its namespace), nil if none.
	Waypoint *types.NamespacedName
}

func (s Service) key() types.NamespacedName {
	return types.NamespacedName{Namespace: s.Namespace, Name: s.Name}
}

func (s Service) port(p int32) (Port, bool) {
	for _, sp := range s.Ports {
		if sp.Port == p {
			return sp, true
		}
	}
	return Port{}, false
}

// Port is a Service port.
type Port struct {
	Name string
	Port int32
	// AppProtocol is the port's appProtocol, "" if unset; the port name's
	// prefix ("http-web" is http) is read when it is empty.
	AppProtocol string
}

// Endpoint is one ready endpoint of a Service port.
type Endpoint struct {
	Service types.NamespacedName
	// Port is the Service port.
	Port int32
	// Address and TargetPort are where the endpoint listens; TargetPort 0
	// means the Service port.
	Address    netip.Addr
	TargetPort int32
	// Identity is the endpoint's SPIFFE ID, "" if it is not in the mesh (the
	// waypoint then connects in plain TCP).
	Identity string
	// Node runs the endpoint.
	Node string
}

// Output is the translation of one waypoint.
type Output struct {
	// Listener is nil when the waypoint handles no Service traffic.
	Listener        *listenerv3.Listener
	Routes          []*routev3.RouteConfiguration
	Clusters        []*clusterv3.Cluster
	LoadAssignments []*endpointv3.ClusterLoadAssignment
	// Outcomes say, per route and Service parentRef bound to this
	// waypoint, whether the route is accepted and its references resolved.
	Outcomes []Outcome
	// Policies say, per AuthorizationPolicy attached to this waypoint, how
	// it is enforced.
	Policies []PolicyOutcome
}

// Resources returns the resources by type URL, then by name, the shape the
// xDS server takes.
func (o Output) Resources() map[string]map[string]proto.Message {
	out := map[string]map[string]proto.Message{
		ListenerType:              {},
		RouteConfigurationType:    {},
		ClusterType:               {},
		ClusterLoadAssignmentType: {},
	}
	if o.Listener != nil {
		out[ListenerType][o.Listener.GetName()] = o.Listener
	}
	for _, r := range o.Routes {
		out[RouteConfigurationType][r.GetName()] = r
	}
	for _, c := range o.Clusters {
		out[ClusterType][c.GetName()] = c
	}
	for _, l := range o.LoadAssignments {
		out[ClusterLoadAssignmentType][l.GetClusterName()] = l
	}
	return out
}

// Translate builds the resources and route outcomes of one waypoint.
func Translate(in Input) Output {
	t := newTranslator(in)
	return t.run()
}
