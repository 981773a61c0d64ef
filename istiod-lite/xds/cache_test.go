package xds

import (
	"fmt"
	"slices"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"
)

// TestRestartedServerSendsOnlyDifferences: versions are a hash of the
// content, so a client that reconnects to a new istiod-lite process (whose
// push count started again from zero) with the versions it holds is sent
// only what really differs.
func TestRestartedServerSendsOnlyDifferences(t *testing.T) {
	before := startServer(t, Config{})
	before.setInitial(t, strs("a", "1", "b", "2", "c", "3"), nil)
	c := newClient(t, before, "ztunnel")
	c.subscribe(t, "node-1/ztunnel", typeA)
	held := make(map[string]string)
	for _, r := range c.recv(t, 5*time.Second).GetResources() {
		held[r.GetName()] = r.GetVersion()
	}

	after := startServer(t, Config{})
	after.setInitial(t, strs("a", "1", "b", "2-new", "c", "3"), nil)
	again := newClient(t, after, "ztunnel")
	again.send(t, &discoverygrpc.DeltaDiscoveryRequest{
		Node: &core.Node{Id: "node-1/ztunnel"}, TypeUrl: typeA,
		ResourceNamesSubscribe: []string{"*"}, InitialResourceVersions: held,
	})
	resp := again.recv(t, 5*time.Second)
	if v := values(t, resp); fmt.Sprint(v) != "map[b:2-new]" {
		t.Errorf("after reconnecting to a new server got %v, want only b", v)
	}
	if len(resp.GetRemovedResources()) != 0 {
		t.Errorf("removed %v, want none", resp.GetRemovedResources())
	}
}

// TestNamedSubscription: a client that subscribes to names (no wildcard)
// gets those that exist, later changes of those only, a removal when one
// goes away, and what it subscribes to later.
func TestNamedSubscription(t *testing.T) {
	ts := startServer(t, Config{})
	ts.setInitial(t, strs("a", "1", "b", "2", "c", "3"), nil)
	c := newClient(t, ts, "ztunnel")
	c.send(t, &discoverygrpc.DeltaDiscoveryRequest{
		Node: &core.Node{Id: "n"}, TypeUrl: typeA, ResourceNamesSubscribe: []string{"a", "missing"},
	})
	resp := c.recv(t, 5*time.Second)
	if v := values(t, resp); fmt.Sprint(v) != "map[a:1]" {
		t.Fatalf("first response %v, want only a", v)
	}
	c.ack(t, resp)

	if err := ts.Update(typeA, strs("b", "2-new"), nil); err != nil {
		t.Fatal(err)
	}
	if err := ts.Update(typeA, strs("a", "1-new"), nil); err != nil {
		t.Fatal(err)
	}
	resp = c.recv(t, 5*time.Second)
	if v := values(t, resp); fmt.Sprint(v) != "map[a:1-new]" {
		t.Fatalf("after changes of a and b got %v, want only a", v)
	}
	c.ack(t, resp)

	c.send(t, &discoverygrpc.DeltaDiscoveryRequest{TypeUrl: typeA, ResourceNamesSubscribe: []string{"c"}})
	resp = c.recv(t, 5*time.Second)
	if v := values(t, resp); fmt.Sprint(v) != "map[c:3]" {
		t.Fatalf("after subscribing to c got %v", v)
	}
	c.ack(t, resp)

	if err := ts.Update(typeA, nil, []string{"c"}); err != nil {
		t.Fatal(err)
	}
	resp = c.recv(t, 5*time.Second)
	if len(resp.GetResources()) != 0 || !slices.Equal(resp.GetRemovedResources(), []string{"c"}) {
		t.Fatalf("after removing c got %v removed %v, want removal of c", names(resp), resp.GetRemovedResources())
	}
	c.ack(t, resp)

	c.send(t, &discoverygrpc.DeltaDiscoveryRequest{TypeUrl: typeA, ResourceNamesUnsubscribe: []string{"a"}})
	if err := ts.Update(typeA, strs("a", "1-newer"), nil); err != nil {
		t.Fatal(err)
	}
	c.recvNone(t, 200*time.Millisecond)
}

// TestChangesBeforeACKAreNotLost: pushes that happen while a client has not
// ACKed its last response reach it, merged, once it ACKs.
func TestChangesBeforeACKAreNotLost(t *testing.T) {
	ts, c := connected(t, Config{})
	if err := ts.SetInitial(typeA, strs("a", "1-new", "b", "2")); err != nil {
		t.Fatal(err)
	}
	first := c.recv(t, 5*time.Second)
	if v := values(t, first); fmt.Sprint(v) != "map[a:1-new]" {
		t.Fatalf("first push %v", v)
	}
	// Not ACKed yet: these must wait for the ACK.
	if err := ts.SetInitial(typeA, strs("a", "1-new", "b", "2-new", "c", "3")); err != nil {
		t.Fatal(err)
	}
	if err := ts.SetInitial(typeA, strs("b", "2-new", "c", "3-new")); err != nil {
		t.Fatal(err)
	}
	c.recvNone(t, 100*time.Millisecond)
	c.ack(t, first)
	resp := c.recv(t, 5*time.Second)
	if v := values(t, resp); fmt.Sprint(v) != "map[b:2-new c:3-new]" {
		t.Errorf("after the ACK got %v, want b and c at their last values", v)
	}
	if !slices.Equal(resp.GetRemovedResources(), []string{"a"}) {
		t.Errorf("after the ACK removed %v, want [a]", resp.GetRemovedResources())
	}
}

// TestClientBehindTheChangeLogCatchesUp: a client that does not ACK while
// more pushes happen than the change log keeps gets, once it ACKs, exactly
// the difference between what it holds and the current state.
func TestClientBehindTheChangeLogCatchesUp(t *testing.T) {
	ts, c := connected(t, Config{})
	// a:1, b:2 held. Push more often than the log remembers, ending with
	// a removed, b unchanged in the end, and new resources.
	var last map[string]proto.Message
	for i := range changeLogPushes + 10 {
		last = strs("b", "2", fmt.Sprintf("n%d", i%7), fmt.Sprint(i))
		if err := ts.SetInitial(typeA, last); err != nil {
			t.Fatal(err)
		}
	}
	first := c.recv(t, 5*time.Second) // the first push, sent before any ACK
	c.ack(t, first)
	resp := c.recv(t, 5*time.Second)
	held := map[string]bool{"a": true, "b": true}
	for _, n := range names(first) {
		held[n] = true
	}
	for _, n := range first.GetRemovedResources() {
		delete(held, n)
	}
	for _, n := range names(resp) {
		held[n] = true
	}
	for _, n := range resp.GetRemovedResources() {
		delete(held, n)
	}
	var got []string
	for n := range held {
		got = append(got, n)
	}
	slices.Sort(got)
	if want := []string{"b", fmt.Sprintf("n%d", (changeLogPushes+9)%7)}; !slices.Equal(got, want) {
		t.Errorf("client holds %v after catching up, want %v", got, want)
	}
	if slices.Contains(names(resp), "b") {
		t.Error("b was resent although the client holds its current version")
	}
}

// TestSendBudgetSmallerThanAResponse: with a send budget smaller than one
// response, responses take turns and every client still gets everything.
func TestSendBudgetSmallerThanAResponse(t *testing.T) {
	ts := startServer(t, Config{SendBudget: 16})
	ts.setInitial(t, strs("a", "1", "b", "2", "c", "3"), nil)
	var clients []*adsClient
	for i := range 5 {
		c := newClient(t, ts, fmt.Sprintf("ztunnel-%d", i))
		c.subscribe(t, fmt.Sprintf("node-%d", i), typeA)
		clients = append(clients, c)
	}
	for _, c := range clients {
		resp := c.recv(t, 5*time.Second)
		if v := values(t, resp); fmt.Sprint(v) != "map[a:1 b:2 c:3]" {
			t.Fatalf("initial response %v", v)
		}
		c.ack(t, resp)
	}
	if err := ts.Update(typeA, strs("a", "1-new"), nil); err != nil {
		t.Fatal(err)
	}
	for _, c := range clients {
		if v := values(t, c.recv(t, 5*time.Second)); fmt.Sprint(v) != "map[a:1-new]" {
			t.Fatalf("push %v", v)
		}
	}
}
