// Package state turns the Envoy resources a waypoint receives over xDS
// (Listener, RouteConfiguration, Cluster, ClusterLoadAssignment, as
// go-control-plane's types) into an immutable Snapshot that the request
// path reads without locks.
//
// Only the subset of Envoy's API that the waypoint implements is
// accepted. A resource that sets any other field, or fails its generated
// Validate(), is rejected with the resource's name and the field's path,
// and the waypoint keeps the last good version of that resource (or none);
// every other resource of the update still applies. The Store is the
// xdsclient.Handler that does this; Compile checks and compiles one
// resource and is what the tests and the Store share.
package state
