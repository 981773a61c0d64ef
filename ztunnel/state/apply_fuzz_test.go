package state

import (
	"cmp"
	"errors"
	"maps"
	"net/netip"
	"slices"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	workloadv1 "github.com/cairnmesh/cairn/apis/workload/v1"
	xdsv1 "github.com/cairnmesh/cairn/apis/xdsclient/v1"
	"github.com/cairnmesh/cairn/internal/spiffe"
	"github.com/cairnmesh/cairn/ztunnel/authz"
)

// FuzzApply feeds Store.Apply what a control plane (or anyone who can
// speak to ztunnel's xDS client) could send: two delta responses, as wire
// bytes, applied one after the other to a store that already holds a small
// mesh. Each response's type_url picks the resource type; the resources
// reach Apply as the Any values the wire carries.
//
// After each Apply it checks what the data path relies on:
//   - Apply did what its error says: every upsert it did not reject is
//     stored as sent, every rejected one kept its previous value, removed
//     names are gone, and nothing else changed;
//   - every stored resource passes validation under its name;
//   - every index (addresses, endpoints, nodes, policies by scope) equals
//     one rebuilt from scratch from the stored resources, and points at
//     the stored messages rather than at replaced ones;
//   - the data path's use of the snapshot (Policies, authz.Evaluate) does
//     not panic on anything Apply accepted.
//
// `go test` runs the seeds below and those in testdata/fuzz/FuzzApply;
// `make fuzz` explores from them.
func FuzzApply(f *testing.F) {
	for _, seed := range applySeeds() {
		f.Add(seed[0], seed[1])
	}
	f.Fuzz(func(t *testing.T, first, second []byte) {
		s := NewStore()
		for _, typeURL := range []string{AddressTypeURL, AuthorizationTypeURL} {
			if err := s.Apply(typeURL, baseMesh()[typeURL], nil); err != nil {
				t.Fatalf("the base mesh does not apply: %v", err)
			}
		}
		checkSnapshot(t, s.Snapshot())
		for _, b := range [][]byte{first, second} {
			var resp xdsv1.DeltaDiscoveryResponse
			if proto.Unmarshal(b, &resp) != nil {
				continue // the xDS client drops the stream; nothing reaches Apply
			}
			upserts := map[string]proto.Message{}
			for _, r := range resp.GetResources() {
				if r.GetResource() != nil {
					upserts[r.GetName()] = r.GetResource()
				}
			}
			before := s.Snapshot()
			err := s.Apply(resp.GetTypeUrl(), upserts, resp.GetRemovedResources())
			after := s.Snapshot()
			checkApplied(t, before, after, resp.GetTypeUrl(), upserts, resp.GetRemovedResources(), err)
			checkSnapshot(t, after)
		}
	})
}

// baseMesh is what the store holds before the fuzzed responses: workloads
// sharing an address and a service, a service, and a policy of each scope,
// so that updates and removals have indexes to move.
func baseMesh() map[string]map[string]proto.Message {
	web1 := pod("shop", "web-1", "node-a", "10.0.0.1", "fd00::1")
	web1.Services = map[string]*workloadv1.PortList{svcName("shop", "web"): {Ports: []*workloadv1.Port{{ServicePort: 80, TargetPort: 8080}}}}
	web1.AuthorizationPolicies = []string{"shop/allow-web", "shop/missing"}
	web2 := pod("shop", "web-2", "node-b", "10.0.0.2")
	web2.Services = web1.Services
	reused := pod("shop", "old", "node-a", "10.0.0.2") // an IP not yet released
	web := svc("shop", "web", "10.96.0.10")
	web.Ports = []*workloadv1.Port{{ServicePort: 80, TargetPort: 8080}}
	allow := policy("shop", "allow-web", workloadv1.Scope_WORKLOAD_SELECTOR, workloadv1.Action_ALLOW)
	allow.Rules = []*workloadv1.Rule{{Clauses: []*workloadv1.Clause{{Matches: []*workloadv1.Match{{
		Principals:       []*workloadv1.StringMatch{{MatchType: &workloadv1.StringMatch_Prefix{Prefix: "cluster.local/ns/shop/"}}},
		SourceIps:        []*workloadv1.CIDR{{Address: ip("10.0.0.0"), Length: 8}},
		DestinationPorts: []uint32{8080},
	}}}}}}
	deny := policy("shop", "deny-plaintext", workloadv1.Scope_NAMESPACE, workloadv1.Action_DENY)
	deny.Rules = []*workloadv1.Rule{{Clauses: []*workloadv1.Clause{{Matches: []*workloadv1.Match{{
		NotPrincipals: []*workloadv1.StringMatch{{MatchType: &workloadv1.StringMatch_Presence{Presence: &workloadv1.Presence{}}}},
	}}}}}}
	global := policy("istio-system", "global", workloadv1.Scope_GLOBAL, workloadv1.Action_DENY)
	global.Rules = []*workloadv1.Rule{{Clauses: []*workloadv1.Clause{{Matches: []*workloadv1.Match{{
		NotDestinationIps: []*workloadv1.CIDR{{Address: ip("fd00::"), Length: 8}},
	}}}}}}
	return map[string]map[string]proto.Message{
		AddressTypeURL:       addresses(wAddr(web1), wAddr(web2), wAddr(reused), sAddr(web)),
		AuthorizationTypeURL: authorizations(allow, deny, global),
	}
}

// applySeeds are pairs of responses: valid changes, each kind of invalid
// resource, and the mixes in between.
func applySeeds() [][2][]byte {
	resp := func(typeURL string, removed []string, msgs ...proto.Message) []byte {
		r := &xdsv1.DeltaDiscoveryResponse{TypeUrl: typeURL, RemovedResources: removed, Nonce: "1"}
		for _, m := range msgs {
			a, err := anypb.New(m)
			if err != nil {
				panic(err)
			}
			name := ""
			switch m := m.(type) {
			case *workloadv1.Address:
				name = addressName(m)
			case *workloadv1.Authorization:
				name = authorizationName(m)
			}
			r.Resources = append(r.Resources, &xdsv1.Resource{Name: name, Version: "1", Resource: a})
		}
		b, err := proto.Marshal(r)
		if err != nil {
			panic(err)
		}
		return b
	}
	moved := pod("shop", "web-1", "node-c", "10.0.0.2", "::ffff:10.0.0.9")
	moved.Services = map[string]*workloadv1.PortList{svcName("shop", "api"): {Ports: []*workloadv1.Port{{ServicePort: 443, TargetPort: 8443}}}}
	moved.Waypoint = &workloadv1.GatewayAddress{Destination: &workloadv1.GatewayAddress_Address{
		Address: &workloadv1.NetworkAddress{Address: ip("10.0.0.50")}}, HboneMtlsPort: 15008}
	api := svc("shop", "api", "10.96.0.11", "10.96.0.10")
	api.Waypoint = &workloadv1.GatewayAddress{Destination: &workloadv1.GatewayAddress_Hostname{
		Hostname: &workloadv1.NamespacedHostname{Namespace: "shop", Hostname: "waypoint.shop.svc.cluster.local"}}}
	badIP := pod("shop", "bad", "node-a", "10.0.0.7")
	badIP.Addresses = append(badIP.Addresses, []byte{1, 2, 3})
	badPort := svc("shop", "bad", "10.96.0.12")
	badPort.Ports = []*workloadv1.Port{{ServicePort: 0, TargetPort: 70000}}
	nameClash := &workloadv1.Service{Namespace: "Kubernetes", Hostname: "/Pod/shop/web-2", Addresses: []*workloadv1.NetworkAddress{{Address: ip("10.0.0.2")}}}

	scoped := policy("shop", "deny-plaintext", workloadv1.Scope_GLOBAL, workloadv1.Action_DENY)
	scoped.Rules = []*workloadv1.Rule{{}, {Clauses: []*workloadv1.Clause{{Matches: []*workloadv1.Match{{
		Namespaces:         []*workloadv1.StringMatch{{MatchType: &workloadv1.StringMatch_Suffix{Suffix: "-dev"}}},
		NotServiceAccounts: []*workloadv1.ServiceAccountMatch{{Namespace: "shop", ServiceAccount: "admin"}},
		NotSourceIps:       []*workloadv1.CIDR{{Address: ip("::ffff:10.0.0.0"), Length: 104}},
		DestinationIps:     []*workloadv1.CIDR{{Address: ip("10.0.0.1"), Length: 32}},
		NotDestinationPorts: []uint32{
			22,
		},
	}}}}}}
	emptyClause := policy("shop", "empty", workloadv1.Scope_NAMESPACE, workloadv1.Action_ALLOW)
	emptyClause.Rules = []*workloadv1.Rule{{Clauses: []*workloadv1.Clause{{}}}}
	badCIDR := policy("shop", "bad-cidr", workloadv1.Scope_NAMESPACE, workloadv1.Action_DENY)
	badCIDR.Rules = []*workloadv1.Rule{{Clauses: []*workloadv1.Clause{{Matches: []*workloadv1.Match{{
		SourceIps: []*workloadv1.CIDR{{Address: ip("10.0.0.0"), Length: 33}}}}}}}}
	unknownAction := policy("shop", "audit", workloadv1.Scope_NAMESPACE, workloadv1.Action(7))
	// The most common update: a pod's status changes, its address stays.
	unhealthy := pod("shop", "web-2", "node-b", "10.0.0.2")
	unhealthy.Status = workloadv1.WorkloadStatus_UNHEALTHY
	unhealthy.Services = baseMesh()[AddressTypeURL][podUID("shop", "web-2")].(*workloadv1.Address).GetWorkload().GetServices()

	return [][2][]byte{
		{resp(AddressTypeURL, nil, wAddr(moved), sAddr(api)), resp(AuthorizationTypeURL, []string{"istio-system/global"}, scoped)},
		{resp(AddressTypeURL, []string{podUID("shop", "web-2"), svcName("shop", "web")}), resp(AddressTypeURL, nil, wAddr(pod("shop", "web-2", "", "10.0.0.1")))},
		{resp(AddressTypeURL, nil, wAddr(badIP), sAddr(badPort), wAddr(moved)), resp(AddressTypeURL, nil, sAddr(nameClash))},
		{resp(AuthorizationTypeURL, []string{"shop/allow-web"}, emptyClause, badCIDR, unknownAction), resp(AuthorizationTypeURL, nil, scoped)},
		{resp("type.googleapis.com/cairn.workload.v1.Unknown", []string{"shop/deny-plaintext"}), resp(AuthorizationTypeURL, nil, wAddr(moved))},
		{resp(AddressTypeURL, nil, wAddr(unhealthy)), resp(AuthorizationTypeURL, nil, policy("shop", "deny-plaintext", workloadv1.Scope_NAMESPACE, workloadv1.Action_ALLOW))},
		{nil, []byte{0x12, 0x02, 0x1a, 0x00}},
	}
}

// checkApplied compares two snapshots around one Apply with what Apply
// returned.
func checkApplied(t *testing.T, before, after *Snapshot, typeURL string, upserts map[string]proto.Message, removes []string, err error) {
	t.Helper()
	if typeURL != AddressTypeURL && typeURL != AuthorizationTypeURL {
		if !errors.Is(err, ErrUnknownType) || after != before {
			t.Fatalf("Apply(%q) = %v and replaced the snapshot: want ErrUnknownType and no change", typeURL, err)
		}
		return
	}
	rejected := map[string]bool{}
	if err != nil {
		var ae *ApplyError
		if !errors.As(err, &ae) || len(ae.Rejected) == 0 {
			t.Fatalf("Apply returned %v, want nil or an *ApplyError", err)
		}
		for _, r := range ae.Rejected {
			if _, ok := upserts[r.Name]; !ok || rejected[r.Name] {
				t.Fatalf("Apply rejected %q, which is not an upsert or is rejected twice", r.Name)
			}
			if !errors.Is(r, ErrInvalid) && !errors.Is(r, ErrWrongMessage) {
				t.Fatalf("rejection of %q wraps neither ErrInvalid nor ErrWrongMessage: %v", r.Name, r)
			}
			rejected[r.Name] = true
		}
	}

	type lookup func(*Snapshot, string) proto.Message
	var get lookup
	var names func(*Snapshot) []string
	switch typeURL {
	case AddressTypeURL:
		get = func(s *Snapshot, name string) proto.Message {
			if w := s.workloads[name]; w != nil {
				return w
			}
			if sv := s.services[name]; sv != nil {
				return sv
			}
			return nil
		}
		names = func(s *Snapshot) []string {
			return slices.Concat(slices.Collect(maps.Keys(s.workloads)), slices.Collect(maps.Keys(s.services)))
		}
	case AuthorizationTypeURL:
		get = func(s *Snapshot, name string) proto.Message {
			if p := s.authorizations[name]; p != nil {
				return p
			}
			return nil
		}
		names = func(s *Snapshot) []string { return slices.Collect(maps.Keys(s.authorizations)) }
	}

	touched := map[string]bool{}
	for _, name := range removes {
		touched[name] = true
		if _, up := upserts[name]; !up && get(after, name) != nil {
			t.Errorf("%q was removed but is still there", name)
		}
	}
	for name, m := range upserts {
		touched[name] = true
		got := get(after, name)
		if rejected[name] {
			// Also when removed in the same delta (which delta xDS forbids):
			// the upsert wins over the removal, and a rejected one keeps
			// the previous value.
			if want := get(before, name); got != want {
				t.Errorf("rejected %q changed from %v to %v", name, want, got)
			}
			continue
		}
		var sent proto.Message
		switch typeURL {
		case AddressTypeURL:
			a := &workloadv1.Address{}
			if e := m.(*anypb.Any).UnmarshalTo(a); e != nil {
				t.Fatalf("Apply accepted %q, which does not decode: %v", name, e)
			}
			if a.GetWorkload() != nil {
				sent = a.GetWorkload()
			} else {
				sent = a.GetService()
			}
			if err := validateAddress(name, a); err != nil {
				t.Errorf("Apply accepted %q, which is invalid: %v", name, err)
			}
		case AuthorizationTypeURL:
			a := &workloadv1.Authorization{}
			if e := m.(*anypb.Any).UnmarshalTo(a); e != nil {
				t.Fatalf("Apply accepted %q, which does not decode: %v", name, e)
			}
			sent = a
		}
		if got == nil || !proto.Equal(got, sent) {
			t.Errorf("accepted %q is stored as %v, want %v", name, got, sent)
		}
	}
	for _, name := range names(before) {
		if !touched[name] && get(after, name) != get(before, name) {
			t.Errorf("%q was not in the delta but changed", name)
		}
	}
	for _, name := range names(after) {
		if !touched[name] && get(before, name) == nil {
			t.Errorf("%q was not in the delta but appeared", name)
		}
	}
	// The other type's maps are untouched: readers of policies see the same
	// addresses, and the other way round.
	if typeURL == AddressTypeURL && !maps.Equal(after.authorizations, before.authorizations) ||
		typeURL == AuthorizationTypeURL && !maps.Equal(after.workloads, before.workloads) {
		t.Errorf("an Apply of %s changed resources of the other type", typeURL)
	}
	changed := len(upserts) > len(rejected) || slices.ContainsFunc(removes, func(n string) bool {
		_, up := upserts[n]
		return !up && get(before, n) != nil
	})
	if changed != (after != before) {
		t.Errorf("Apply changed something: %v, published a new snapshot: %v", changed, after != before)
	}
}

// checkSnapshot checks every index of s against one rebuilt from its
// resources.
func checkSnapshot(t *testing.T, s *Snapshot) {
	t.Helper()
	for name, w := range s.workloads {
		if err := validateAddress(name, &workloadv1.Address{Type: &workloadv1.Address_Workload{Workload: w}}); err != nil {
			t.Errorf("stored workload %q is invalid: %v", name, err)
		}
		if s.services[name] != nil {
			t.Errorf("%q is both a workload and a service", name)
		}
	}
	for name, sv := range s.services {
		if err := validateAddress(name, &workloadv1.Address{Type: &workloadv1.Address_Service{Service: sv}}); err != nil {
			t.Errorf("stored service %q is invalid: %v", name, err)
		}
	}
	for name, p := range s.authorizations {
		if err := validateAuthorization(name, p); err != nil {
			t.Errorf("stored authorization %q is invalid: %v", name, err)
		}
	}

	// Address indexes: the same members, each the stored message, once.
	wantW := map[NetworkAddress][]*workloadv1.Workload{}
	for _, w := range s.workloads {
		for _, a := range workloadAddresses(w) {
			wantW[a] = append(wantW[a], w)
		}
	}
	checkAddressIndex(t, "workloadsByAddress", s.workloadsByAddress, wantW, workloadKey)
	wantS := map[NetworkAddress][]*workloadv1.Service{}
	for _, sv := range s.services {
		for _, a := range serviceAddresses(sv) {
			wantS[a] = append(wantS[a], sv)
		}
	}
	checkAddressIndex(t, "servicesByAddress", s.servicesByAddress, wantS, serviceKey)
	for a, list := range s.workloadsByAddress {
		if got := s.WorkloadByAddress(a.Network, a.IP); got != list[len(list)-1] {
			t.Errorf("WorkloadByAddress(%v) = %v, want the last of its list", a, got)
		}
	}

	// Sorted indexes: exactly the rebuilt lists, in order.
	wantEndpoints := map[string][]*workloadv1.Workload{}
	wantNodes := map[string][]*workloadv1.Workload{}
	for _, w := range s.workloads {
		for key := range w.GetServices() {
			wantEndpoints[key] = append(wantEndpoints[key], w)
		}
		if w.GetNode() != "" {
			wantNodes[w.GetNode()] = append(wantNodes[w.GetNode()], w)
		}
	}
	checkSortedIndex(t, "endpoints", s.endpoints, wantEndpoints, workloadKey)
	checkSortedIndex(t, "byNode", s.byNode, wantNodes, workloadKey)
	var wantGlobal []*workloadv1.Authorization
	wantNS := map[string][]*workloadv1.Authorization{}
	for _, p := range s.authorizations {
		switch p.GetScope() {
		case workloadv1.Scope_GLOBAL:
			wantGlobal = append(wantGlobal, p)
		case workloadv1.Scope_NAMESPACE:
			wantNS[p.GetNamespace()] = append(wantNS[p.GetNamespace()], p)
		}
	}
	checkSortedIndex(t, "globalPolicies", map[string][]*workloadv1.Authorization{"": s.globalPolicies},
		map[string][]*workloadv1.Authorization{"": wantGlobal}, authorizationKey)
	checkSortedIndex(t, "namespacePolicies", s.namespacePolicies, wantNS, authorizationKey)

	// The data path: every workload's policies, evaluated for a mesh and a
	// plaintext connection to each of its addresses.
	peer := spiffe.Identity{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: "web"}
	for _, w := range s.workloads {
		policies, missing := s.Policies(w)
		for _, name := range missing {
			if s.authorizations[name] != nil {
				t.Errorf("Policies(%s) says %q is missing, but the snapshot holds it", w.GetUid(), name)
			}
		}
		for i, p := range policies {
			if s.authorizations[authorizationName(p)] != p || slices.Index(policies, p) != i {
				t.Errorf("Policies(%s) returns %s, which is not stored or is there twice", w.GetUid(), authorizationName(p))
			}
		}
		for _, a := range workloadAddresses(w) {
			for _, c := range []authz.Conn{
				{SourceIdentity: peer, Mesh: true, SourceIP: netip.MustParseAddr("10.0.0.2"), DestinationIP: a.IP, DestinationPort: 8080},
				{SourceIP: netip.MustParseAddr("fd00::2"), DestinationIP: a.IP, DestinationPort: 22},
			} {
				authz.Evaluate(policies, c)
			}
		}
	}
}

func checkAddressIndex[T proto.Message](t *testing.T, what string, got, want map[NetworkAddress][]T, key func(T) string) {
	t.Helper()
	for a, list := range got {
		if len(list) == 0 {
			t.Errorf("%s keeps an empty list for %v", what, a)
		}
		w := want[a]
		keys := func(l []T) []string {
			var out []string
			for _, v := range l {
				out = append(out, key(v))
			}
			slices.Sort(out)
			return out
		}
		if !slices.Equal(keys(list), keys(w)) {
			t.Errorf("%s[%v] = %v, want %v", what, a, keys(list), keys(w))
			continue
		}
		for _, v := range list {
			if !slices.ContainsFunc(w, func(x T) bool { return any(x) == any(v) }) {
				t.Errorf("%s[%v] holds a replaced message for %q", what, a, key(v))
			}
		}
	}
	for a := range want {
		if _, ok := got[a]; !ok {
			t.Errorf("%s lacks %v", what, a)
		}
	}
}

func checkSortedIndex[T proto.Message](t *testing.T, what string, got, want map[string][]T, key func(T) string) {
	t.Helper()
	for k, list := range want {
		slices.SortFunc(list, func(a, b T) int { return cmp.Compare(key(a), key(b)) })
		if !slices.EqualFunc(got[k], list, func(a, b T) bool { return any(a) == any(b) }) {
			t.Errorf("%s[%q] is not the sorted list of stored messages", what, k)
		}
	}
	for k, list := range got {
		if _, ok := want[k]; !ok && (len(list) > 0 || k != "") {
			t.Errorf("%s keeps %q, which nothing has", what, k)
		}
	}
}
