package state

import (
	"net/netip"
	"testing"

	"google.golang.org/protobuf/proto"

	workloadv1 "github.com/cairnmesh/cairn/apis/workload/v1"
)

func ip(s string) []byte { return netip.MustParseAddr(s).AsSlice() }

func podUID(ns, name string) string { return "Kubernetes//Pod/" + ns + "/" + name }

// pod returns a workload of a pod in ns on node with the given IPs.
func pod(ns, name, node string, ips ...string) *workloadv1.Workload {
	w := &workloadv1.Workload{
		Uid:            podUID(ns, name),
		Name:           name,
		Namespace:      ns,
		Node:           node,
		ServiceAccount: "default",
		TrustDomain:    "cluster.local",
		TunnelProtocol: workloadv1.TunnelProtocol_HBONE,
	}
	for _, s := range ips {
		w.Addresses = append(w.Addresses, ip(s))
	}
	return w
}

func svc(ns, name string, vips ...string) *workloadv1.Service {
	s := &workloadv1.Service{Name: name, Namespace: ns, Hostname: name + "." + ns + ".svc.cluster.local"}
	for _, v := range vips {
		s.Addresses = append(s.Addresses, &workloadv1.NetworkAddress{Address: ip(v)})
	}
	return s
}

func svcName(ns, name string) string { return ns + "/" + name + "." + ns + ".svc.cluster.local" }

func wAddr(w *workloadv1.Workload) *workloadv1.Address {
	return &workloadv1.Address{Type: &workloadv1.Address_Workload{Workload: w}}
}

func sAddr(s *workloadv1.Service) *workloadv1.Address {
	return &workloadv1.Address{Type: &workloadv1.Address_Service{Service: s}}
}

func policy(ns, name string, scope workloadv1.Scope, action workloadv1.Action) *workloadv1.Authorization {
	return &workloadv1.Authorization{Name: name, Namespace: ns, Scope: scope, Action: action}
}

// addresses builds the upserts of an Address delta, named as istiod-lite
// names them.
func addresses(as ...*workloadv1.Address) map[string]proto.Message {
	out := map[string]proto.Message{}
	for _, a := range as {
		out[addressName(a)] = a
	}
	return out
}

func authorizations(ps ...*workloadv1.Authorization) map[string]proto.Message {
	out := map[string]proto.Message{}
	for _, p := range ps {
		out[authorizationName(p)] = p
	}
	return out
}

func mustApply(t *testing.T, s *Store, typeURL string, upserts map[string]proto.Message, removes ...string) {
	t.Helper()
	if err := s.Apply(typeURL, upserts, removes); err != nil {
		t.Fatalf("Apply: %v", err)
	}
}

func uids(ws []*workloadv1.Workload) []string {
	var out []string
	for _, w := range ws {
		out = append(out, w.GetUid())
	}
	return out
}

func policyNames(ps []*workloadv1.Authorization) []string {
	var out []string
	for _, p := range ps {
		out = append(out, authorizationName(p))
	}
	return out
}
