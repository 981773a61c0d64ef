// Package waypointcontract names what Cairn's waypoint configuration carries
// beyond Envoy's own API: the filter-state key that holds the caller's
// identity, the metadata that tells the waypoint how to reach an endpoint
// over HBONE, and the metadata that maps an Envoy route back to the Gateway
// API rule it came from. istiod-lite's translators write these names and the
// waypoint reads them; both import them from here so that they cannot drift.
package waypointcontract

// PeerPrincipalFilterState is the filter-state key under which the waypoint
// keeps, for each HBONE tunnel, the SPIFFE ID of its peer (the source
// workload, authenticated by mutual TLS): for example
// "spiffe://cluster.local/ns/shop/sa/web". Routes that apply only to callers
// from one namespace (Gateway API consumer routes) match it with
// RouteMatch.filter_state and a prefix "spiffe://<trust domain>/ns/<ns>/sa/".
// The key is the one Istio's waypoint uses for the same value.
const PeerPrincipalFilterState = "io.istio.peer_principal"

// EndpointMetadataHBONE is the filter_metadata namespace of an LbEndpoint
// that says how the waypoint reaches the endpoint: over HBONE to HBONEPortKey
// of the endpoint's address, expecting the SPIFFE ID HBONEIdentityKey.
// An endpoint without it is not in the mesh and is reached in plain TCP.
const EndpointMetadataHBONE = "cairn.hbone"

// Keys in the EndpointMetadataHBONE namespace.
const (
	// HBONEIdentityKey (string): the SPIFFE ID the endpoint must present.
	HBONEIdentityKey = "identity"
	// HBONEPortKey (number): the HBONE port of the endpoint's address.
	HBONEPortKey = "port"
	// HBONENodeKey (string): the node the endpoint runs on, for logs.
	HBONENodeKey = "node"
)

// HBONEPort is the port on which every meshed pod's ztunnel accepts HBONE.
const HBONEPort = 15008

// Metadata is the filter_metadata namespace on Routes, FilterChains and
// Clusters that maps them back to Kubernetes objects, for NACK reasons,
// access logs and metrics.
const Metadata = "cairn"

// Keys in the Metadata namespace.
const (
	// MetadataKind (string): "HTTPRoute", "GRPCRoute", or "Service" for the
	// route a Service gets when no route applies.
	MetadataKind = "kind"
	// MetadataNamespace and MetadataName (strings) name the object.
	MetadataNamespace = "namespace"
	MetadataName      = "name"
	// MetadataRule (string): the rule's name, or its index when unnamed.
	MetadataRule = "rule"
	// MetadataMatch (number): the index of the match within the rule.
	MetadataMatch = "match"
	// MetadataService (string): "<namespace>/<name>" of a Service, on
	// FilterChains and Clusters.
	MetadataService = "service"
	// MetadataPort (number): the Service port, on FilterChains and Clusters.
	MetadataPort = "port"
)

// InvalidBackendCluster is a cluster name that is never in CDS. A route
// sends to it the share of requests that Gateway API says must fail because
// its backend could not be resolved; RouteAction.cluster_not_found_response_code
// says with which status (500 for HTTPRoute, 503 for GRPCRoute, which gRPC
// clients see as UNAVAILABLE), as in Envoy.
const InvalidBackendCluster = "cairn.invalid-backend"
