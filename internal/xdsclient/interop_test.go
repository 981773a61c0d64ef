package xdsclient

import (
	"context"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
)

// sentResponse is what go-control-plane sent on one stream.
type sentResponse struct {
	typeURL string
	names   []string
	removed []string
}

// TestGoControlPlaneServer runs the client against go-control-plane's own
// delta server and LinearCache (the reference implementation of the
// protocol's server side), in plaintext: initial sync, changes, and a
// reconnect to a new server over the same caches, which must send only what
// changed while the client was away.
func TestGoControlPlaneServer(t *testing.T) {
	w1, w2, s1, p1 := workload("web-1", "198.18.1.1"), workload("web-2", "198.18.1.2"), service("web"), policy("allow")
	addrs := cache.NewLinearCache(AddressTypeURL, cache.WithInitialResources(map[string]types.Resource{"w1": w1, "s1": s1}))
	authz := cache.NewLinearCache(AuthorizationTypeURL)
	mux := &cache.MuxCache{
		Classify:      func(r *cache.Request) string { return r.GetTypeUrl() },
		ClassifyDelta: func(r *cache.DeltaRequest) string { return r.GetTypeUrl() },
		Caches:        map[string]cache.Cache{AddressTypeURL: addrs, AuthorizationTypeURL: authz},
	}

	var mu sync.Mutex
	sent := map[int][]sentResponse{} // by server generation
	var addr atomic.Pointer[string]
	var srv *grpc.Server
	start := func(gen int) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		callbacks := server.CallbackFuncs{
			StreamDeltaResponseFunc: func(_ int64, _ *discoverygrpc.DeltaDiscoveryRequest, resp *discoverygrpc.DeltaDiscoveryResponse) {
				r := sentResponse{typeURL: resp.GetTypeUrl(), removed: slices.Clone(resp.GetRemovedResources())}
				for _, res := range resp.GetResources() {
					r.names = append(r.names, res.GetName())
				}
				mu.Lock()
				sent[gen] = append(sent[gen], r)
				mu.Unlock()
			},
		}
		srv = grpc.NewServer()
		discoverygrpc.RegisterAggregatedDiscoveryServiceServer(srv, server.NewServer(t.Context(), mux, callbacks))
		a := ln.Addr().String()
		addr.Store(&a)
		go func() { _ = srv.Serve(ln) }()
	}
	start(1)
	t.Cleanup(func() { srv.Stop() })

	handler, obs := newMemHandler(), &recObserver{}
	c, err := New(Config{
		Address:     "passthrough:///xds",
		TypeURLs:    []string{AddressTypeURL, AuthorizationTypeURL},
		Handler:     handler,
		NodeID:      NodeID("node-a", "ztunnel-x", "cairn-system"),
		UserAgent:   testUserAgent,
		Registry:    WorkloadRegistry(),
		Insecure:    true,
		BackoffBase: time.Millisecond,
		BackoffMax:  20 * time.Millisecond,
		Observer:    obs,
		Logger:      testLogger(t),
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "tcp", *addr.Load())
		})},
	})
	if err != nil {
		t.Fatal(err)
	}
	run(t, c)

	eventually(t, "Synced", func() bool { return synced(c) })
	handler.check(t, AddressTypeURL, map[string]proto.Message{"w1": w1, "s1": s1})
	handler.check(t, AuthorizationTypeURL, map[string]proto.Message{})

	holds := func(want map[string]proto.Message) func() bool {
		return func() bool {
			handler.mu.Lock()
			defer handler.mu.Unlock()
			got := handler.state[AddressTypeURL]
			if len(got) != len(want) {
				return false
			}
			for name, w := range want {
				if !proto.Equal(got[name], w) {
					return false
				}
			}
			return true
		}
	}
	if err := addrs.UpdateResource("w2", w2); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the added workload", holds(map[string]proto.Message{"w1": w1, "w2": w2, "s1": s1}))
	if err := addrs.DeleteResource("s1"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the removed service", holds(map[string]proto.Message{"w1": w1, "w2": w2}))

	// The server goes away; while it is away, w2 goes and p1 comes.
	srv.Stop()
	eventually(t, "the client to notice", func() bool { return obs.get(func(o *recObserver) int { return o.disconnected }) == 1 })
	if err := addrs.DeleteResource("w2"); err != nil {
		t.Fatal(err)
	}
	if err := authz.UpdateResource("shop/allow", p1); err != nil {
		t.Fatal(err)
	}
	start(2)
	eventually(t, "the change made while away", holds(map[string]proto.Message{"w1": w1}))
	eventually(t, "the policy made while away", func() bool {
		handler.mu.Lock()
		defer handler.mu.Unlock()
		return proto.Equal(handler.state[AuthorizationTypeURL]["shop/allow"], p1)
	})

	mu.Lock()
	defer mu.Unlock()
	for _, r := range sent[2] {
		switch r.typeURL {
		case AddressTypeURL:
			if len(r.names) != 0 || !slices.Equal(r.removed, []string{"w2"}) {
				t.Errorf("after reconnecting, Address response sent %v and removed %v; want only w2 removed", r.names, r.removed)
			}
		case AuthorizationTypeURL:
			if !slices.Equal(r.names, []string{"shop/allow"}) || len(r.removed) != 0 {
				t.Errorf("after reconnecting, Authorization response sent %v and removed %v; want only shop/allow", r.names, r.removed)
			}
		}
	}
	if len(sent[2]) != 2 {
		t.Errorf("after reconnecting the server sent %d responses, want one per type: %v", len(sent[2]), sent[2])
	}
}
