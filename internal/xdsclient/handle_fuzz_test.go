package xdsclient

import (
	"errors"
	"maps"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	workloadv1 "github.com/cairnmesh/cairn/apis/workload/v1"
	xdsv1 "github.com/cairnmesh/cairn/apis/xdsclient/v1"
)

// fuzzHandler holds the resources it accepts by type and name, and refuses
// one by one those that are not valid (refusesValue), as ztunnel's state
// store does: the property checked below is about the client, whatever
// the handler refuses. (ztunnel's store itself is fuzzed by FuzzApply in
// ztunnel/state and by integration/policyfuzz.)
type fuzzHandler struct {
	held map[string]map[string]proto.Message
}

func newFuzzHandler() *fuzzHandler {
	return &fuzzHandler{held: map[string]map[string]proto.Message{AddressTypeURL: {}, AuthorizationTypeURL: {}}}
}

// refusesValue: a workload without a namespace, a service without a
// hostname, an authorization of an unknown scope or action.
func refusesValue(m proto.Message) bool {
	switch v := m.(type) {
	case *workloadv1.Address:
		if w := v.GetWorkload(); w != nil {
			return w.GetNamespace() == "" || w.GetUid() == ""
		}
		if svc := v.GetService(); svc != nil {
			return svc.GetHostname() == ""
		}
		return true
	case *workloadv1.Authorization:
		_, scope := workloadv1.Scope_name[int32(v.GetScope())]
		_, action := workloadv1.Action_name[int32(v.GetAction())]
		return !scope || !action
	}
	return true
}

func (h *fuzzHandler) Apply(u Update) error {
	held, ok := h.held[u.TypeURL]
	if !ok {
		return errors.New("unknown type " + u.TypeURL)
	}
	var refused []string
	for name, m := range u.Resources {
		if refusesValue(m) {
			refused = append(refused, name)
			continue
		}
		held[name] = m
	}
	for _, name := range u.Removed {
		delete(held, name)
	}
	if len(refused) > 0 {
		slices.Sort(refused)
		return &RejectedError{Names: refused, Err: errors.New("refused " + strings.Join(refused, ", "))}
	}
	return nil
}

// FuzzHandle feeds the xDS client up to three delta responses as wire bytes,
// handled one after the other as they would arrive on one stream, with a
// handler behind it that refuses some resources one by one. After each one
// it checks:
//   - no panic;
//   - the reply names the response's type and nonce, and is a NACK exactly
//     when something of the response was refused;
//   - the resources the client would report as held on a reconnect
//     (initial_resource_versions) are exactly those the store holds, each
//     with the version of the response that brought the value the handler
//     has: a resource the handler refused must never be reported as held,
//     or the control plane would not send it again (a DENY policy that
//     never applies), and one it holds must be reported.
func FuzzHandle(f *testing.F) {
	for _, seed := range handleSeeds() {
		f.Add(seed[0], seed[1], seed[2])
	}
	f.Fuzz(func(t *testing.T, first, second, third []byte) {
		store := newFuzzHandler()
		c, err := New(Config{
			TypeURLs:  []string{AddressTypeURL, AuthorizationTypeURL},
			Handler:   store,
			NodeID:    "node",
			UserAgent: testUserAgent,
			Registry:  WorkloadRegistry(),
			Insecure:  true,
		})
		if err != nil {
			t.Fatal(err)
		}
		// held[type][name] is the version of the value the store holds.
		held := map[string]map[string]string{AddressTypeURL: {}, AuthorizationTypeURL: {}}
		for _, b := range [][]byte{first, second, third} {
			var resp xdsv1.DeltaDiscoveryResponse
			if proto.Unmarshal(b, &resp) != nil {
				continue // gRPC fails the stream; nothing reaches handle
			}
			before := store.snapshot()
			reply := c.handle(&resp)
			if reply.GetTypeUrl() != resp.GetTypeUrl() || reply.GetResponseNonce() != resp.GetNonce() {
				t.Fatalf("reply for %q nonce %q names %q nonce %q", resp.GetTypeUrl(), resp.GetNonce(), reply.GetTypeUrl(), reply.GetResponseNonce())
			}
			nack := reply.GetErrorDetail() != nil
			url := resp.GetTypeUrl()
			h, subscribed := held[url]
			if !subscribed {
				if !nack || !store.equal(before) {
					t.Fatalf("a response of the unsubscribed type %q was ACKed or changed the store", url)
				}
				continue
			}
			// What the store holds now, by name, and which names changed.
			after := store.snapshot()
			for _, r := range resp.GetResources() {
				name := r.GetName()
				old, now := lookup(before, url, name), lookup(after, url, name)
				switch {
				case now == nil:
				case now != old:
					h[name] = r.GetVersion()
				}
			}
			for _, name := range resp.GetRemovedResources() {
				if lookup(after, url, name) == nil {
					delete(h, name)
				}
			}
			if got := c.types[url].versions; !maps.Equal(got, h) {
				t.Fatalf("after a response of %s the client reports holding %v; the store holds %v", url, sorted(got), sorted(h))
			}
			// A NACK exactly when something was refused: then some
			// resource of the response is not held as sent.
			refused := false
			for _, r := range resp.GetResources() {
				now := lookup(after, url, r.GetName())
				sent, err := decodeAs(url, r.GetResource())
				refused = refused || err != nil || now == nil || !proto.Equal(now, sent)
			}
			if !refused && nack && !hasDuplicateOrBoth(&resp) {
				t.Fatalf("NACK (%s) for a response whose every resource is held as sent", reply.GetErrorDetail().GetMessage())
			}
			if refused && !nack {
				t.Fatalf("ACK for a response with a resource the store does not hold as sent")
			}
		}
	})
}

// handlerSnapshot is what the handler held at one moment, by type and name
// (the messages are never modified once held).
type handlerSnapshot map[string]map[string]proto.Message

func (h *fuzzHandler) snapshot() handlerSnapshot {
	s := make(handlerSnapshot, len(h.held))
	for url, m := range h.held {
		s[url] = maps.Clone(m)
	}
	return s
}

// equal reports whether h holds exactly the messages of s.
func (h *fuzzHandler) equal(s handlerSnapshot) bool {
	return maps.EqualFunc(h.held, s, func(a, b map[string]proto.Message) bool {
		return maps.EqualFunc(a, b, func(x, y proto.Message) bool { return x == y })
	})
}

// lookup returns the message the snapshot holds under name, or nil.
func lookup(s handlerSnapshot, url, name string) proto.Message {
	if m, ok := s[url][name]; ok {
		return m
	}
	return nil
}

// decodeAs decodes a resource as the handler keeps it.
func decodeAs(url string, a *anypb.Any) (proto.Message, error) {
	if a.GetTypeUrl() != url {
		return nil, errors.New("another type")
	}
	var m proto.Message
	switch url {
	case AddressTypeURL:
		m = &workloadv1.Address{}
	default:
		m = &workloadv1.Authorization{}
	}
	err := proto.Unmarshal(a.GetValue(), m)
	return m, err
}

// hasDuplicateOrBoth reports a response that delta xDS forbids even when
// every value in it is good: a name sent twice, or both updated and
// removed. The client refuses it whole.
func hasDuplicateOrBoth(resp *xdsv1.DeltaDiscoveryResponse) bool {
	seen := map[string]bool{}
	for _, r := range resp.GetResources() {
		if seen[r.GetName()] || r.GetName() == "" {
			return true
		}
		seen[r.GetName()] = true
	}
	return slices.ContainsFunc(resp.GetRemovedResources(), func(n string) bool { return seen[n] })
}

func sorted(m map[string]string) []string {
	var out []string
	for k, v := range m {
		out = append(out, k+"@"+v)
	}
	slices.Sort(out)
	return out
}

// handleSeeds are triples of responses: a mesh arriving, then updates
// with good, bad and forbidden parts, and removals.
func handleSeeds() [][3][]byte {
	res := func(name, version string, m proto.Message) *xdsv1.Resource {
		a, err := anypb.New(m)
		if err != nil {
			panic(err)
		}
		return &xdsv1.Resource{Name: name, Version: version, Resource: a}
	}
	resp := func(url, nonce string, removed []string, rs ...*xdsv1.Resource) []byte {
		b, err := proto.Marshal(&xdsv1.DeltaDiscoveryResponse{TypeUrl: url, Nonce: nonce, SystemVersionInfo: "v" + nonce, Resources: rs, RemovedResources: removed})
		if err != nil {
			panic(err)
		}
		return b
	}
	pod := func(uid, ns string, ip ...byte) *workloadv1.Address {
		return &workloadv1.Address{Type: &workloadv1.Address_Workload{Workload: &workloadv1.Workload{
			Uid: uid, Namespace: ns, Name: uid, Addresses: [][]byte{ip}, ServiceAccount: "default", TrustDomain: "cluster.local",
		}}}
	}
	svc := &workloadv1.Address{Type: &workloadv1.Address_Service{Service: &workloadv1.Service{
		Namespace: "shop", Hostname: "web.shop.svc.cluster.local", Addresses: []*workloadv1.NetworkAddress{{Address: []byte{10, 96, 0, 1}}},
		Ports: []*workloadv1.Port{{ServicePort: 80, TargetPort: 8080}},
	}}}
	deny := &workloadv1.Authorization{Name: "deny", Namespace: "shop", Scope: workloadv1.Scope_NAMESPACE, Action: workloadv1.Action_DENY,
		Rules: []*workloadv1.Rule{{Clauses: []*workloadv1.Clause{{Matches: []*workloadv1.Match{{DestinationPorts: []uint32{22}}}}}}}}
	badPolicy := &workloadv1.Authorization{Name: "bad", Namespace: "shop", Rules: []*workloadv1.Rule{{Clauses: []*workloadv1.Clause{{}}}}}
	newer := proto.Clone(deny).(*workloadv1.Authorization)
	newer.Rules = nil
	newerBad := proto.Clone(deny).(*workloadv1.Authorization)
	newerBad.Scope = workloadv1.Scope(9)

	return [][3][]byte{
		{
			resp(AddressTypeURL, "1", nil, res("a", "1", pod("a", "shop", 10, 0, 0, 1)), res("shop/web.shop.svc.cluster.local", "1", svc)),
			resp(AuthorizationTypeURL, "2", nil, res("shop/deny", "1", deny), res("shop/bad", "1", badPolicy)),
			resp(AuthorizationTypeURL, "3", []string{"shop/bad"}, res("shop/deny", "2", newerBad)),
		},
		{
			resp(AuthorizationTypeURL, "1", nil, res("shop/deny", "1", deny)),
			resp(AuthorizationTypeURL, "2", nil, res("shop/deny", "2", newer), res("shop/deny", "3", deny)),
			resp(AuthorizationTypeURL, "3", []string{"shop/deny"}, res("shop/deny", "4", newer)),
		},
		{
			resp(AddressTypeURL, "1", nil, res("a", "1", pod("a", "shop", 10, 0, 0, 1)), res("b", "1", pod("b", "", 10, 0, 0, 2)), res("c", "1", pod("x", "shop", 1, 2, 3))),
			resp(AddressTypeURL, "2", []string{"a", "nothing"}, res("", "1", svc), res("d", "1", deny)),
			resp("type.googleapis.com/cairn.workload.v1.Other", "3", nil, res("a", "1", pod("a", "shop", 10, 0, 0, 1))),
		},
		{
			resp(AddressTypeURL, "1", nil, &xdsv1.Resource{Name: "a", Version: "1"}, &xdsv1.Resource{Name: "e", Resource: &anypb.Any{TypeUrl: AddressTypeURL, Value: []byte{0xff}}}),
			resp(AuthorizationTypeURL, "1", nil),
			nil,
		},
	}
}
