// Package state holds the mesh as ztunnel sees it through workload
// discovery: the Workloads, Services and Authorizations of
// apis/workload/v1, indexed for the lookups of the data path.
//
// The xDS client is the only writer; it calls Store.Apply with each delta
// it receives. Every connection is a reader: it takes the current Snapshot
// once and asks it what it needs. A Snapshot never changes after it is
// published, so readers take no lock and see one consistent mesh for the
// whole decision, even while the writer applies the next delta. Apply
// builds the next Snapshot from the current one, copying only the index
// maps and the index lists that the delta touches, and swaps it in with an
// atomic pointer.
//
// The protobuf values a Snapshot returns are shared by every reader and by
// later snapshots: callers must treat them, and the slices that hold them,
// as read-only.
package state
