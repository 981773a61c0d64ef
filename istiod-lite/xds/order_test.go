package xds

import (
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// bothTypes starts a server whose delivery order is typeA then typeB (as
// Authorization then Address), and a client subscribed to both that has
// ACKed both initial responses.
func bothTypes(t *testing.T, cfg Config) (*testServer, *adsClient) {
	t.Helper()
	ts := startServer(t, cfg)
	ts.setInitial(t, strs("a", "1"), map[string]proto.Message{"x": wrapperspb.Bytes([]byte("x"))})
	c := newClient(t, ts, "ztunnel")
	c.subscribe(t, "node-1/ztunnel", typeA)
	c.subscribe(t, "node-1/ztunnel", typeB)
	for _, want := range []string{typeA, typeB} {
		resp := c.recv(t, 5*time.Second)
		if resp.GetTypeUrl() != want {
			t.Fatalf("initial response of %s, want %s first", resp.GetTypeUrl(), want)
		}
		c.ack(t, resp)
	}
	return ts, c
}

// TestBatchDeliversEarlierTypeFirst: changes of both types queued in one
// debounce window (typeB's first) reach the client as typeA's response,
// then typeB's: Authorizations before the Addresses pushed with them.
func TestBatchDeliversEarlierTypeFirst(t *testing.T) {
	ts, c := bothTypes(t, Config{Debounce: 50 * time.Millisecond})
	for i := range 20 { // map order made either type first; every round must hold
		v := []byte{byte('a' + i)}
		if err := ts.Update(typeB, map[string]proto.Message{"x": wrapperspb.Bytes(v)}, nil); err != nil {
			t.Fatal(err)
		}
		if err := ts.Update(typeA, strs("a", string(v)), nil); err != nil {
			t.Fatal(err)
		}
		first := c.recv(t, 5*time.Second)
		if first.GetTypeUrl() != typeA {
			t.Fatalf("round %d: %s arrived before %s of the same batch", i, first.GetTypeUrl(), typeA)
		}
		c.ack(t, first)
		second := c.recv(t, 5*time.Second)
		if second.GetTypeUrl() != typeB {
			t.Fatalf("round %d: second response is %s", i, second.GetTypeUrl())
		}
		c.ack(t, second)
	}
}

// TestLaterTypeWaitsForEarlierTypeInFlight: while the client has not
// ACKed a typeA response, a further typeA change waits for that ACK (one
// response per type in flight); a typeB change pushed after it must not
// overtake it. It goes out right after the typeA change, once the client
// ACKs.
func TestLaterTypeWaitsForEarlierTypeInFlight(t *testing.T) {
	ts, c := bothTypes(t, Config{Debounce: time.Millisecond})
	if err := ts.Update(typeA, strs("a", "2"), nil); err != nil {
		t.Fatal(err)
	}
	inFlight := c.recv(t, 5*time.Second) // not ACKed yet
	if err := ts.Update(typeA, strs("a", "3"), nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return ts.metric(t, "cairn_xds_pushes_total", "google.protobuf.StringValue") >= 2 })
	if err := ts.Update(typeB, map[string]proto.Message{"x": wrapperspb.Bytes([]byte("y"))}, nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return ts.metric(t, "cairn_xds_pushes_total", "google.protobuf.BytesValue") >= 1 })
	c.recvNone(t, 300*time.Millisecond) // typeB is held back behind a=3
	c.ack(t, inFlight)
	next := c.recv(t, 5*time.Second)
	if next.GetTypeUrl() != typeA || values(t, next)["a"] != "3" {
		t.Fatalf("after the ACK got %s %v, want typeA a=3 first", next.GetTypeUrl(), names(next))
	}
	last := c.recv(t, 5*time.Second)
	if last.GetTypeUrl() != typeB || !equalNames(names(last), "x") {
		t.Fatalf("then got %s %v, want typeB x", last.GetTypeUrl(), names(last))
	}
	c.ack(t, next)
	c.ack(t, last)
	c.recvNone(t, 200*time.Millisecond)

	// A client that subscribed only to the later type is never held back.
	only := newClient(t, ts, "only-b")
	only.subscribe(t, "node-2/only-b", typeB)
	only.ack(t, only.recv(t, 5*time.Second))
	if err := ts.Update(typeB, map[string]proto.Message{"x": wrapperspb.Bytes([]byte("z"))}, nil); err != nil {
		t.Fatal(err)
	}
	if resp := only.recv(t, 5*time.Second); resp.GetTypeUrl() != typeB {
		t.Fatalf("typeB-only client got %s", resp.GetTypeUrl())
	}
}

func equalNames(got []string, want ...string) bool {
	if len(got) != len(want) {
		return false
	}
	for i := range got {
		if got[i] != want[i] {
			return false
		}
	}
	return true
}
