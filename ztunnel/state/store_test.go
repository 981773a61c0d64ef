package state

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	workloadv1 "github.com/cairnmesh/cairn/apis/workload/v1"
)

func TestLookups(t *testing.T) {
	s := NewStore()
	web1 := pod("shop", "web-1", "node-a", "10.0.0.1", "fd00::1")
	web1.Services = map[string]*workloadv1.PortList{svcName("shop", "web"): {Ports: []*workloadv1.Port{{ServicePort: 80, TargetPort: 8080}}}}
	web2 := pod("shop", "web-2", "node-b", "10.0.0.2")
	web2.Services = map[string]*workloadv1.PortList{svcName("shop", "web"): {Ports: []*workloadv1.Port{{ServicePort: 80, TargetPort: 8080}}}}
	db := pod("data", "db-0", "node-a", "10.0.0.3")
	db.Network = "east"
	web := svc("shop", "web", "10.96.0.10", "fd00:96::10")
	mustApply(t, s, AddressTypeURL, addresses(wAddr(web2), wAddr(web1), wAddr(db), sAddr(web)))

	snap := s.Snapshot()
	tests := []struct {
		name string
		got  any
		want any
	}{
		{"by uid", snap.Workload(podUID("shop", "web-1")), web1},
		{"unknown uid", snap.Workload("nope"), (*workloadv1.Workload)(nil)},
		{"by IPv4", snap.WorkloadByAddress("", netip.MustParseAddr("10.0.0.2")), web2},
		{"by IPv6", snap.WorkloadByAddress("", netip.MustParseAddr("fd00::1")), web1},
		{"by IPv4-mapped IPv6", snap.WorkloadByAddress("", netip.MustParseAddr("::ffff:10.0.0.1")), web1},
		{"other network", snap.WorkloadByAddress("east", netip.MustParseAddr("10.0.0.3")), db},
		{"not in default network", snap.WorkloadByAddress("", netip.MustParseAddr("10.0.0.3")), (*workloadv1.Workload)(nil)},
		{"service by name", snap.Service(svcName("shop", "web")), web},
		{"service by VIP", snap.ServiceByAddress("", netip.MustParseAddr("10.96.0.10")), web},
		{"service by IPv6 VIP", snap.ServiceByAddress("", netip.MustParseAddr("fd00:96::10")), web},
		{"service VIP is no workload", snap.WorkloadByAddress("", netip.MustParseAddr("10.96.0.10")), (*workloadv1.Workload)(nil)},
		{"unknown VIP", snap.ServiceByAddress("", netip.MustParseAddr("10.96.0.11")), (*workloadv1.Service)(nil)},
	}
	for _, tc := range tests {
		if tc.got != tc.want {
			t.Errorf("%s: got %v, want %v", tc.name, tc.got, tc.want)
		}
	}
	if got, want := uids(snap.Endpoints(svcName("shop", "web"))), []string{web1.Uid, web2.Uid}; !slices.Equal(got, want) {
		t.Errorf("Endpoints = %v, want %v (sorted by uid)", got, want)
	}
	if got, want := uids(snap.WorkloadsOnNode("node-a")), []string{db.Uid, web1.Uid}; !slices.Equal(got, want) {
		t.Errorf("WorkloadsOnNode(node-a) = %v, want %v", got, want)
	}
	if got := snap.WorkloadsOnNode("node-c"); len(got) != 0 {
		t.Errorf("WorkloadsOnNode(node-c) = %v, want none", uids(got))
	}
	if w, sv, p := snap.Counts(); w != 3 || sv != 1 || p != 0 {
		t.Errorf("Counts = %d, %d, %d; want 3, 1, 0", w, sv, p)
	}
}

func TestUpdateMovesIndexesAndKeepsOldSnapshot(t *testing.T) {
	s := NewStore()
	old := pod("shop", "web-1", "node-a", "10.0.0.1")
	old.Services = map[string]*workloadv1.PortList{svcName("shop", "web"): {}}
	mustApply(t, s, AddressTypeURL, addresses(wAddr(old), sAddr(svc("shop", "web", "10.96.0.10"))))
	before := s.Snapshot()

	moved := pod("shop", "web-1", "node-b", "10.0.0.9")
	moved.Services = map[string]*workloadv1.PortList{svcName("shop", "api"): {}}
	mustApply(t, s, AddressTypeURL, addresses(wAddr(moved), sAddr(svc("shop", "web", "10.96.0.20"))))
	after := s.Snapshot()

	select {
	case <-before.Replaced():
	default:
		t.Error("the old snapshot's Replaced channel is still open")
	}
	// The new snapshot sees only the new values ...
	if after.WorkloadByAddress("", netip.MustParseAddr("10.0.0.1")) != nil ||
		after.WorkloadByAddress("", netip.MustParseAddr("10.0.0.9")) != moved {
		t.Error("new snapshot: address index not moved")
	}
	if len(after.Endpoints(svcName("shop", "web"))) != 0 || !slices.Equal(uids(after.Endpoints(svcName("shop", "api"))), []string{moved.Uid}) {
		t.Error("new snapshot: endpoint index not moved")
	}
	if len(after.WorkloadsOnNode("node-a")) != 0 || len(after.WorkloadsOnNode("node-b")) != 1 {
		t.Error("new snapshot: node index not moved")
	}
	if after.ServiceByAddress("", netip.MustParseAddr("10.96.0.10")) != nil || after.ServiceByAddress("", netip.MustParseAddr("10.96.0.20")) == nil {
		t.Error("new snapshot: VIP index not moved")
	}
	// ... and the old one is untouched (copy-on-write).
	if before.WorkloadByAddress("", netip.MustParseAddr("10.0.0.1")) != old || before.Workload(old.Uid) != old {
		t.Error("old snapshot changed: address or uid index")
	}
	if !slices.Equal(uids(before.Endpoints(svcName("shop", "web"))), []string{old.Uid}) || len(before.Endpoints(svcName("shop", "api"))) != 0 {
		t.Error("old snapshot changed: endpoints")
	}
	if len(before.WorkloadsOnNode("node-a")) != 1 || before.ServiceByAddress("", netip.MustParseAddr("10.96.0.10")) == nil {
		t.Error("old snapshot changed: node or VIP index")
	}
}

func TestRemove(t *testing.T) {
	s := NewStore()
	w := pod("shop", "web-1", "node-a", "10.0.0.1")
	w.Services = map[string]*workloadv1.PortList{svcName("shop", "web"): {}}
	mustApply(t, s, AddressTypeURL, addresses(wAddr(w), sAddr(svc("shop", "web", "10.96.0.10"))))
	mustApply(t, s, AuthorizationTypeURL, authorizations(policy("shop", "p", workloadv1.Scope_NAMESPACE, workloadv1.Action_DENY)))

	mustApply(t, s, AddressTypeURL, nil, w.Uid, svcName("shop", "web"), "never/seen")
	mustApply(t, s, AuthorizationTypeURL, nil, "shop/p")
	snap := s.Snapshot()
	if snap.Workload(w.Uid) != nil || snap.WorkloadByAddress("", netip.MustParseAddr("10.0.0.1")) != nil ||
		len(snap.Endpoints(svcName("shop", "web"))) != 0 || len(snap.WorkloadsOnNode("node-a")) != 0 {
		t.Error("workload still indexed after removal")
	}
	if snap.Service(svcName("shop", "web")) != nil || snap.ServiceByAddress("", netip.MustParseAddr("10.96.0.10")) != nil {
		t.Error("service still indexed after removal")
	}
	if p, _ := snap.Policies(w); len(p) != 0 || snap.Authorization("shop/p") != nil {
		t.Error("policy still indexed after removal")
	}
	// The emptied lists leave no keys behind.
	if len(snap.workloadsByAddress)+len(snap.servicesByAddress)+len(snap.endpoints)+len(snap.byNode)+len(snap.namespacePolicies) != 0 {
		t.Errorf("empty index entries remain: %+v", snap)
	}

	// Removing only unknown names publishes nothing.
	mustApply(t, s, AddressTypeURL, nil, "never/seen")
	if s.Snapshot() != snap {
		t.Error("a no-op delta published a new snapshot")
	}
}

func TestAddressConflictNewcomerWins(t *testing.T) {
	s := NewStore()
	old := pod("shop", "old", "node-a", "10.0.0.1")
	mustApply(t, s, AddressTypeURL, addresses(wAddr(old)))
	newer := pod("shop", "new", "node-a", "10.0.0.1")
	mustApply(t, s, AddressTypeURL, addresses(wAddr(newer)))
	lookup := func() string {
		return s.Snapshot().WorkloadByAddress("", netip.MustParseAddr("10.0.0.1")).GetUid()
	}
	if got := lookup(); got != newer.Uid {
		t.Fatalf("after newcomer: %s, want %s", got, newer.Uid)
	}
	// An update of the old workload (say, it turns UNHEALTHY while
	// terminating) must not take the address back.
	oldUpdated := proto.CloneOf(old)
	oldUpdated.Status = workloadv1.WorkloadStatus_UNHEALTHY
	mustApply(t, s, AddressTypeURL, addresses(wAddr(oldUpdated)))
	if got := lookup(); got != newer.Uid {
		t.Errorf("after update of the old one: %s, want %s", got, newer.Uid)
	}
	mustApply(t, s, AddressTypeURL, nil, newer.Uid)
	if got := lookup(); got != old.Uid {
		t.Errorf("after the newcomer left: %s, want %s back", got, old.Uid)
	}
}

func TestApplyRejectsInvalidResources(t *testing.T) {
	good := pod("shop", "good", "n", "10.0.0.1")
	prev := pod("shop", "prev", "n", "10.0.0.2")
	badPrev := pod("shop", "prev", "n", "10.0.0.3")
	badPrev.Addresses = append(badPrev.Addresses, []byte{1, 2, 3})
	noUID := pod("shop", "x", "n", "10.0.0.4")
	noUID.Uid = ""
	badWaypoint := pod("shop", "wp", "n", "10.0.0.5")
	badWaypoint.Waypoint = &workloadv1.GatewayAddress{}
	badPort := svc("shop", "bad", "10.96.0.1")
	badPort.Ports = []*workloadv1.Port{{ServicePort: 70000}}
	badVIP := svc("shop", "badvip")
	badVIP.Addresses = []*workloadv1.NetworkAddress{{Address: []byte{10, 0, 0}}}
	badEnum := pod("shop", "enum", "n", "10.0.0.6")
	badEnum.TunnelProtocol = 7

	s := NewStore()
	mustApply(t, s, AddressTypeURL, addresses(wAddr(prev)))
	upserts := map[string]proto.Message{
		good.Uid:                  wAddr(good),
		prev.Uid:                  wAddr(badPrev),
		"no-uid":                  wAddr(noUID),
		"mismatch":                wAddr(pod("shop", "other", "n", "10.0.0.7")),
		"empty":                   &workloadv1.Address{},
		"wrong-message":           policy("shop", "p", 0, 0),
		badWaypoint.Uid:           wAddr(badWaypoint),
		svcName("shop", "bad"):    sAddr(badPort),
		svcName("shop", "badvip"): sAddr(badVIP),
		badEnum.Uid:               wAddr(badEnum),
	}
	err := s.Apply(AddressTypeURL, upserts, nil)
	var applyErr *ApplyError
	if !errors.As(err, &applyErr) {
		t.Fatalf("Apply error = %v, want an *ApplyError", err)
	}
	var rejected []string
	for _, r := range applyErr.Rejected {
		rejected = append(rejected, r.Name)
		if !strings.Contains(r.Error(), r.Name) {
			t.Errorf("error %q does not name the resource %q", r, r.Name)
		}
	}
	want := []string{badEnum.Uid, prev.Uid, badWaypoint.Uid, "empty", "mismatch", "no-uid", svcName("shop", "bad"), svcName("shop", "badvip"), "wrong-message"}
	slices.Sort(want)
	if !slices.Equal(rejected, want) {
		t.Errorf("rejected %v, want %v", rejected, want)
	}
	if !errors.Is(err, ErrInvalid) || !errors.Is(err, ErrWrongMessage) {
		t.Errorf("errors.Is does not see ErrInvalid and ErrWrongMessage in %v", err)
	}
	snap := s.Snapshot()
	if snap.Workload(good.Uid) != good {
		t.Error("the valid resource of the delta was not applied")
	}
	if snap.Workload(prev.Uid) != prev || snap.WorkloadByAddress("", netip.MustParseAddr("10.0.0.3")) != nil {
		t.Error("a rejected update replaced the previous value")
	}
	if w, sv, _ := snap.Counts(); w != 2 || sv != 0 {
		t.Errorf("Counts = %d workloads, %d services; want 2, 0", w, sv)
	}
}

func TestApplyAcceptsAny(t *testing.T) {
	w := pod("shop", "web-1", "n", "10.0.0.1")
	a, err := anypb.New(wAddr(w))
	if err != nil {
		t.Fatal(err)
	}
	p := policy("shop", "p", workloadv1.Scope_GLOBAL, workloadv1.Action_ALLOW)
	pa, err := anypb.New(p)
	if err != nil {
		t.Fatal(err)
	}
	s := NewStore()
	mustApply(t, s, AddressTypeURL, map[string]proto.Message{w.Uid: a})
	mustApply(t, s, AuthorizationTypeURL, map[string]proto.Message{"shop/p": pa})
	if got := s.Snapshot().Workload(w.Uid); !proto.Equal(got, w) {
		t.Errorf("workload from Any = %v", got)
	}
	if got := s.Snapshot().Authorization("shop/p"); !proto.Equal(got, p) {
		t.Errorf("policy from Any = %v", got)
	}

	// An Any of the other type is rejected by name.
	err = s.Apply(AddressTypeURL, map[string]proto.Message{"shop/p": pa}, nil)
	if !errors.Is(err, ErrWrongMessage) || !strings.Contains(err.Error(), `"shop/p"`) {
		t.Errorf("Any of the wrong type: %v", err)
	}
	// So is an Any that does not decode.
	broken := &anypb.Any{TypeUrl: AddressTypeURL, Value: []byte{0xff, 0xff}}
	if err := s.Apply(AddressTypeURL, map[string]proto.Message{"x": broken}, nil); !errors.Is(err, ErrInvalid) {
		t.Errorf("undecodable Any: %v", err)
	}
}

func TestApplyUnknownType(t *testing.T) {
	s := NewStore()
	before := s.Snapshot()
	err := s.Apply("type.googleapis.com/envoy.config.cluster.v3.Cluster", addresses(wAddr(pod("a", "b", "n", "10.0.0.1"))), nil)
	if !errors.Is(err, ErrUnknownType) {
		t.Errorf("err = %v, want ErrUnknownType", err)
	}
	if s.Snapshot() != before {
		t.Error("an unknown type changed the snapshot")
	}
}

func TestAuthorizationValidation(t *testing.T) {
	withMatch := func(m *workloadv1.Match) *workloadv1.Authorization {
		p := policy("shop", "p", workloadv1.Scope_WORKLOAD_SELECTOR, workloadv1.Action_DENY)
		p.Rules = []*workloadv1.Rule{{Clauses: []*workloadv1.Clause{{Matches: []*workloadv1.Match{m}}}}}
		return p
	}
	emptyClause := policy("shop", "p", 0, 0)
	emptyClause.Rules = []*workloadv1.Rule{{Clauses: []*workloadv1.Clause{{}}}}
	tests := []struct {
		name string
		p    *workloadv1.Authorization
		ok   bool
	}{
		{"valid, rule without clauses", func() *workloadv1.Authorization {
			p := policy("shop", "p", 0, 0)
			p.Rules = []*workloadv1.Rule{{}}
			return p
		}(), true},
		{"valid match", withMatch(&workloadv1.Match{
			SourceIps:        []*workloadv1.CIDR{{Address: ip("10.0.0.0"), Length: 8}},
			DestinationPorts: []uint32{443},
			Principals:       []*workloadv1.StringMatch{{MatchType: &workloadv1.StringMatch_Prefix{Prefix: "cluster.local/"}}},
		}), true},
		{"no namespace", policy("", "p", 0, 0), false},
		{"unknown action", policy("shop", "p", 0, 9), false},
		{"unknown scope", policy("shop", "p", 9, 0), false},
		{"clause without matches", emptyClause, false},
		{"string match without pattern", withMatch(&workloadv1.Match{NotPrincipals: []*workloadv1.StringMatch{{}}}), false},
		{"CIDR of 5 bytes", withMatch(&workloadv1.Match{SourceIps: []*workloadv1.CIDR{{Address: []byte{1, 2, 3, 4, 5}, Length: 8}}}), false},
		{"CIDR too long", withMatch(&workloadv1.Match{NotDestinationIps: []*workloadv1.CIDR{{Address: ip("10.0.0.0"), Length: 33}}}), false},
		{"port 0", withMatch(&workloadv1.Match{NotDestinationPorts: []uint32{0}}), false},
		{"port too big", withMatch(&workloadv1.Match{DestinationPorts: []uint32{65536}}), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := NewStore()
			err := s.Apply(AuthorizationTypeURL, map[string]proto.Message{"shop/p": tc.p}, nil)
			if (err == nil) != tc.ok {
				t.Fatalf("Apply = %v, want ok=%v", err, tc.ok)
			}
			if (s.Snapshot().Authorization("shop/p") != nil) != tc.ok {
				t.Errorf("stored = %v, want %v", !tc.ok, tc.ok)
			}
		})
	}
	// A name that does not match the content is rejected.
	s := NewStore()
	if err := s.Apply(AuthorizationTypeURL, map[string]proto.Message{"shop/q": policy("shop", "p", 0, 0)}, nil); !errors.Is(err, ErrInvalid) {
		t.Errorf("mismatched name: %v", err)
	}
}

func TestPolicies(t *testing.T) {
	s := NewStore()
	global := policy("istio-system", "mesh", workloadv1.Scope_GLOBAL, workloadv1.Action_DENY)
	nsShop := policy("shop", "ns-wide", workloadv1.Scope_NAMESPACE, workloadv1.Action_ALLOW)
	nsOther := policy("other", "ns-wide", workloadv1.Scope_NAMESPACE, workloadv1.Action_ALLOW)
	selected := policy("shop", "web-only", workloadv1.Scope_WORKLOAD_SELECTOR, workloadv1.Action_ALLOW)
	pa := policy("shop", "converted_peer_authentication_strict", workloadv1.Scope_WORKLOAD_SELECTOR, workloadv1.Action_DENY)
	notListed := policy("shop", "api-only", workloadv1.Scope_WORKLOAD_SELECTOR, workloadv1.Action_ALLOW)
	mustApply(t, s, AuthorizationTypeURL, authorizations(global, nsShop, nsOther, selected, pa, notListed))

	web := pod("shop", "web-1", "n", "10.0.0.1")
	// Listed: two selector policies, one not received yet, and (oddly) one
	// that applies by scope anyway, which must not appear twice.
	web.AuthorizationPolicies = []string{"shop/converted_peer_authentication_strict", "shop/missing", "shop/ns-wide", "shop/web-only"}
	got, missing := s.Snapshot().Policies(web)
	want := []string{"istio-system/mesh", "shop/ns-wide", "shop/converted_peer_authentication_strict", "shop/web-only"}
	if !slices.Equal(policyNames(got), want) {
		t.Errorf("Policies = %v, want %v", policyNames(got), want)
	}
	if !slices.Equal(missing, []string{"shop/missing"}) {
		t.Errorf("missing = %v, want [shop/missing]", missing)
	}

	// A scope change moves the policy between the indexes.
	widened := policy("shop", "web-only", workloadv1.Scope_GLOBAL, workloadv1.Action_ALLOW)
	narrowed := policy("istio-system", "mesh", workloadv1.Scope_WORKLOAD_SELECTOR, workloadv1.Action_DENY)
	mustApply(t, s, AuthorizationTypeURL, authorizations(widened, narrowed))
	api := pod("shop", "api-1", "n", "10.0.0.2")
	got, _ = s.Snapshot().Policies(api)
	if want := []string{"shop/web-only", "shop/ns-wide"}; !slices.Equal(policyNames(got), want) {
		t.Errorf("after scope change: Policies(api) = %v, want %v", policyNames(got), want)
	}
	if got, _ := s.Snapshot().Policies(nil); got != nil {
		t.Errorf("Policies(nil) = %v", got)
	}
}

// TestSyncedAfterBothTypes: a store is Synced only once each type has been
// applied at least once, an empty first response included, and turning
// Synced publishes a snapshot (waiters wake up).
func TestSyncedAfterBothTypes(t *testing.T) {
	s := NewStore()
	if s.Snapshot().Synced() {
		t.Fatal("a new store is Synced")
	}
	if err := s.Apply(AddressTypeURL, nil, nil); err != nil {
		t.Fatal(err)
	}
	before := s.Snapshot()
	if before.Synced() {
		t.Fatal("Synced with Addresses only: the namespace-wide and mesh-wide policies may not be there yet")
	}
	if err := s.Apply(AuthorizationTypeURL, nil, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case <-before.Replaced():
	default:
		t.Fatal("becoming Synced published no snapshot")
	}
	if !s.Snapshot().Synced() {
		t.Fatal("not Synced after both types were applied")
	}
	if err := s.Apply("type.googleapis.com/nope", nil, nil); err == nil {
		t.Fatal("unknown type accepted")
	}
}
