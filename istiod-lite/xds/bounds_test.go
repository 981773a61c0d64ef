package xds

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cairnmesh/cairn/internal/lograte"
)

// TestSubscriptionsAreBounded: a stream may hold at most MaxSubscriptions
// names per type and names of at most MaxResourceNameLength bytes; beyond
// either, the stream ends with a status that says which limit and which
// flag, and nothing of the request is kept.
func TestSubscriptionsAreBounded(t *testing.T) {
	ts := startServer(t, Config{MaxSubscriptions: 3, MaxResourceNameLength: 16})
	ts.setInitial(t, strs("a", "1", "b", "2", "c", "3", "d", "4"), nil)

	c := newClient(t, ts, "named")
	c.send(t, &discoverygrpc.DeltaDiscoveryRequest{TypeUrl: typeA, ResourceNamesSubscribe: []string{"a", "b"}})
	c.ack(t, c.recv(t, 5*time.Second))
	// Swapping a name for another stays within the limit.
	c.send(t, &discoverygrpc.DeltaDiscoveryRequest{TypeUrl: typeA, ResourceNamesSubscribe: []string{"c"}, ResourceNamesUnsubscribe: []string{"a"}})
	c.ack(t, c.recv(t, 5*time.Second))
	c.send(t, &discoverygrpc.DeltaDiscoveryRequest{TypeUrl: typeA, ResourceNamesSubscribe: []string{"b", "c"}}) // already held
	c.send(t, &discoverygrpc.DeltaDiscoveryRequest{TypeUrl: typeA, ResourceNamesSubscribe: []string{"a"}})
	c.recv(t, 5*time.Second)
	c.send(t, &discoverygrpc.DeltaDiscoveryRequest{TypeUrl: typeA, ResourceNamesSubscribe: []string{"d"}})
	err := c.recvErr(t)
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "--xds-max-subscriptions") {
		t.Errorf("a 4th name: %v, want ResourceExhausted naming --xds-max-subscriptions", err)
	}

	long := newClient(t, ts, "long")
	long.send(t, &discoverygrpc.DeltaDiscoveryRequest{TypeUrl: typeA, ResourceNamesSubscribe: []string{strings.Repeat("n", 17)}})
	err = long.recvErr(t)
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "--xds-max-resource-name-length") {
		t.Errorf("a 17-byte name: %v, want InvalidArgument naming --xds-max-resource-name-length", err)
	}

	// One request with more names than the limit is refused as a whole.
	many := newClient(t, ts, "many")
	many.send(t, &discoverygrpc.DeltaDiscoveryRequest{TypeUrl: typeA, ResourceNamesSubscribe: []string{"a", "b", "c", "d", "e"}})
	if err := many.recvErr(t); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("5 names at once: %v, want ResourceExhausted", err)
	}
	if got := ts.metric(t, "cairn_xds_refused_streams_total", "too_many_subscriptions"); got != 2 {
		t.Errorf("too_many_subscriptions refusals = %v, want 2", got)
	}
	if got := ts.metric(t, "cairn_xds_refused_streams_total", "name_too_long"); got != 1 {
		t.Errorf("name_too_long refusals = %v, want 1", got)
	}
}

// syncBuffer is a bytes.Buffer safe for the server's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestRefusalsAreLoggedAtABoundedRate: 40 unauthenticated streams give 40
// counted refusals but only the limiter's burst of warning lines.
func TestRefusalsAreLoggedAtABoundedRate(t *testing.T) {
	var logs syncBuffer
	ts := startServer(t, Config{
		Logger:     slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn})),
		RefusalLog: lograte.New(time.Hour, 3),
	})
	ts.setInitial(t, strs("a", "1"), nil)
	conn := dial(t, ts.addr)
	const n = 40
	for range n {
		c := openStream(t, conn, "forged", true)
		c.subscribe(t, "n", typeA)
		if err := c.recvErr(t); status.Code(err) != codes.Unauthenticated {
			t.Fatalf("forged token: %v", err)
		}
	}
	if got := ts.metric(t, "cairn_xds_refused_streams_total", "unauthenticated"); got != n {
		t.Errorf("counted %v refusals, want %d", got, n)
	}
	if lines := strings.Count(logs.String(), "refusing xDS client"); lines != 3 {
		t.Errorf("%d warning lines for %d refusals, want the burst of 3:\n%s", lines, n, logs.String())
	}
}
