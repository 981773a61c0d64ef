// Package xdsclient is the proxies' side of xDS: a delta ADS client
// (DeltaAggregatedResources) that keeps a Handler current with the
// resources istiod-lite serves, of the types its caller registers: for
// ztunnel, cairn.workload.v1.Address and cairn.workload.v1.Authorization
// (WorkloadRegistry); for the waypoint, Envoy's types, registered in
// waypoint/ so that this package links no Envoy API.
//
// # Protocol
//
// On each stream the client subscribes to every configured type with an
// explicit wildcard ("*"), and sends, as initial_resource_versions, the
// versions of every resource it holds. The control plane's versions are
// content hashes, so a reconnect, even to a restarted control plane, costs
// only what changed while the client was away: changed resources, and
// removed_resources for what no longer exists.
//
// Each response is decoded (a Registry maps type URLs to message types) and
// handed to the Handler as one Update. The client ACKs it when the Handler
// accepts it, and NACKs it (error_detail carries the reason) when a resource
// does not decode or the Handler returns an error. After a NACK the client
// keeps the versions it last accepted: the Handler's state and the versions
// sent on the next reconnect stay consistent with each other.
//
// # Messages
//
// The stream is Envoy's (envoy.service.discovery.v3), but its messages are
// those of apis/xdsclient/v1: the subset of Envoy's that the client uses,
// with Envoy's field numbers. Linking go-control-plane's generated types
// instead would register the descriptors of some 70 proto files (about 280
// messages) when ztunnel starts, for a few fields. The tests run the client
// against servers built on go-control-plane, and check the two sets of
// messages field by field.
//
// # Node identity
//
// The first request of each stream carries a Node whose id the control plane
// uses in its logs and debug pages only; authentication is by the bearer
// token or client certificate. NodeID builds the recommended form,
// "<node-name>~<pod-name>.<pod-namespace>".
//
// # Failure
//
// Run reconnects forever, with exponential back-off and jitter, until its
// context ends. The control plane's certificate is verified against Roots
// as they are at each handshake, and a change of the roots ends the wait at
// once: after a CA root rotation the client reconnects without a restart.
// The Handler is never cleared: while the control plane is unreachable a
// proxy keeps forwarding with the last configuration it
// accepted, which is safer than forgetting every workload and policy.
package xdsclient
