package state

import (
	"net/netip"
	"slices"

	workloadv1 "github.com/cairnmesh/cairn/apis/workload/v1"
)

// NetworkAddress is an IP in a network, the key of address lookups:
// addresses are unique only within one network. The empty network is the
// default one.
type NetworkAddress struct {
	Network string
	IP      netip.Addr
}

func networkAddress(network string, ip netip.Addr) NetworkAddress {
	return NetworkAddress{Network: network, IP: ip.Unmap()}
}

// Snapshot is the mesh at one point in time. It never changes once
// published; every method is safe for concurrent use and takes no lock.
type Snapshot struct {
	// The resources by xDS name.
	workloads      map[string]*workloadv1.Workload      // uid
	services       map[string]*workloadv1.Service       // "<namespace>/<hostname>"
	authorizations map[string]*workloadv1.Authorization // "<namespace>/<name>"

	// Address indexes. Two resources may claim one address for a while (a
	// pod's IP reused before the old pod's workload is removed): the list
	// keeps them in arrival order and the last one wins, so the newcomer
	// takes the address and the older one gets it back if the newcomer goes
	// first. An update keeps a resource's place.
	workloadsByAddress map[NetworkAddress][]*workloadv1.Workload
	servicesByAddress  map[NetworkAddress][]*workloadv1.Service

	// endpoints lists, per Service name, the workloads whose services map
	// has that key, sorted by uid so that a Picker's index is stable.
	endpoints map[string][]*workloadv1.Workload
	// byNode lists the workloads of each node, sorted by uid.
	byNode map[string][]*workloadv1.Workload

	// Policies that apply by scope rather than by name, sorted by name.
	globalPolicies    []*workloadv1.Authorization
	namespacePolicies map[string][]*workloadv1.Authorization

	// synced: every type has been applied at least once (see Synced).
	synced bool

	// replaced is closed when the next snapshot is published.
	replaced chan struct{}
}

func emptySnapshot() *Snapshot {
	return &Snapshot{
		workloads:          map[string]*workloadv1.Workload{},
		services:           map[string]*workloadv1.Service{},
		authorizations:     map[string]*workloadv1.Authorization{},
		workloadsByAddress: map[NetworkAddress][]*workloadv1.Workload{},
		servicesByAddress:  map[NetworkAddress][]*workloadv1.Service{},
		endpoints:          map[string][]*workloadv1.Workload{},
		byNode:             map[string][]*workloadv1.Workload{},
		namespacePolicies:  map[string][]*workloadv1.Authorization{},
		replaced:           make(chan struct{}),
	}
}

// Replaced returns a channel that is closed once a newer snapshot has been
// published. A connection that must wait for its pod's workload (it may
// arrive before the config does) checks the snapshot, and if the workload
// is missing waits on this channel and takes the store's new snapshot.
func (s *Snapshot) Replaced() <-chan struct{} { return s.replaced }

// Synced reports whether the snapshot holds the initial state of both
// types of workload discovery: each has been applied at least once (the
// control plane's first response of a type holds all of it). Before that a
// workload may be known without the namespace-wide and mesh-wide
// Authorizations that apply to it, which it does not name: a proxy must
// decide nothing on such a snapshot.
func (s *Snapshot) Synced() bool { return s.synced }

// Workload returns the workload with the given uid, or nil.
func (s *Snapshot) Workload(uid string) *workloadv1.Workload { return s.workloads[uid] }

// WorkloadByAddress returns the workload that has ip in network, or nil.
func (s *Snapshot) WorkloadByAddress(network string, ip netip.Addr) *workloadv1.Workload {
	if l := s.workloadsByAddress[networkAddress(network, ip)]; len(l) > 0 {
		return l[len(l)-1]
	}
	return nil
}

// Service returns the Service named "<namespace>/<hostname>", or nil.
func (s *Snapshot) Service(name string) *workloadv1.Service { return s.services[name] }

// ServiceByAddress returns the Service whose VIP in network is ip, or nil.
func (s *Snapshot) ServiceByAddress(network string, ip netip.Addr) *workloadv1.Service {
	if l := s.servicesByAddress[networkAddress(network, ip)]; len(l) > 0 {
		return l[len(l)-1]
	}
	return nil
}

// Endpoints returns the workloads whose services map has the key service
// ("<namespace>/<hostname>"), healthy or not, sorted by uid. The Service
// itself need not be known yet. The slice is read-only.
func (s *Snapshot) Endpoints(service string) []*workloadv1.Workload {
	return slices.Clip(s.endpoints[service])
}

// WorkloadsOnNode returns the workloads whose node is node, sorted by uid.
// The slice is read-only.
func (s *Snapshot) WorkloadsOnNode(node string) []*workloadv1.Workload {
	return slices.Clip(s.byNode[node])
}

// Authorization returns the Authorization named "<namespace>/<name>", or
// nil.
func (s *Snapshot) Authorization(name string) *workloadv1.Authorization {
	return s.authorizations[name]
}

// Policies returns the Authorizations that apply to w: the GLOBAL ones,
// the NAMESPACE ones of w's namespace, then those w lists by name, each
// once. missing lists the names w lists that the snapshot does not hold
// (yet): xDS may deliver a workload before a policy it names, and the
// caller decides whether to wait or fail closed rather than silently
// enforce less, which for a converted STRICT PeerAuthentication would
// admit plaintext.
func (s *Snapshot) Policies(w *workloadv1.Workload) (policies []*workloadv1.Authorization, missing []string) {
	if w == nil {
		return nil, nil
	}
	ns := s.namespacePolicies[w.GetNamespace()]
	policies = make([]*workloadv1.Authorization, 0, len(s.globalPolicies)+len(ns)+len(w.GetAuthorizationPolicies()))
	policies = append(policies, s.globalPolicies...)
	policies = append(policies, ns...)
	for _, name := range w.GetAuthorizationPolicies() {
		p := s.authorizations[name]
		switch {
		case p == nil:
			missing = append(missing, name)
		case p.GetScope() == workloadv1.Scope_GLOBAL,
			p.GetScope() == workloadv1.Scope_NAMESPACE && p.GetNamespace() == w.GetNamespace():
			// Already in by scope.
		case !slices.Contains(policies, p):
			policies = append(policies, p)
		}
	}
	return policies, missing
}

// Counts returns how many workloads, services and authorizations the
// snapshot holds, for metrics and readiness.
func (s *Snapshot) Counts() (workloads, services, authorizations int) {
	return len(s.workloads), len(s.services), len(s.authorizations)
}
