// Package xdsinterop runs ztunnel's xDS client against istiod-lite's xDS
// server, in process, over loopback gRPC. The two are separate components
// that may not import each other, so the test that joins them lives here.
//
// ztunnel's client speaks Envoy's delta ADS with messages of its own
// (apis/xdsclient/v1) while istiod-lite serves with go-control-plane's
// Envoy types: this is where a disagreement between the two on the wire
// would show, as a request or response field the other side reads wrong.
package xdsinterop

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	workloadv1 "github.com/cairnmesh/cairn/apis/workload/v1"
	"github.com/cairnmesh/cairn/internal/xdsclient"
	"github.com/cairnmesh/cairn/istiod-lite/xds"
)

// wait bounds every wait; nothing should come near it.
const wait = 10 * time.Second

func eventually(t *testing.T, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s: %v", what, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// control is one run of istiod-lite's xDS server on its own listener, as
// after a start or a restart of istiod-lite.
type control struct {
	xds  *xds.Server
	grpc *grpc.Server
	stop context.CancelFunc
	done sync.WaitGroup
}

// startControl serves state (resources by type URL) and points addr at the
// new listener.
func startControl(t *testing.T, addr *atomic.Pointer[string], state map[string]map[string]proto.Message) *control {
	t.Helper()
	s, err := xds.New(xds.Config{
		TypeURLs: []string{xdsclient.AddressTypeURL, xdsclient.AuthorizationTypeURL},
		Debounce: time.Millisecond,
		MaxDelay: 10 * time.Millisecond,
		Authenticator: xds.AuthenticatorFunc(func(context.Context) (xds.Identity, error) {
			return xds.Identity{Principal: "spiffe://cluster.local/ns/cairn-system/sa/ztunnel", Node: "node-a"}, nil
		}),
		Logger: slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})).With("side", "istiod-lite"),
	})
	if err != nil {
		t.Fatal(err)
	}
	for url, resources := range state {
		if err := s.SetInitial(url, resources); err != nil {
			t.Fatal(err)
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// WaitForHandlers: Stop returns only once every stream handler (which
	// logs to t.Output when it ends) has returned.
	c := &control{xds: s, grpc: grpc.NewServer(grpc.WaitForHandlers(true))}
	s.Register(c.grpc)
	ctx, cancel := context.WithCancel(context.Background())
	c.stop = func() {
		cancel()
		c.grpc.Stop()
		c.done.Wait()
	}
	c.done.Go(func() { _ = c.grpc.Serve(ln) })
	c.done.Go(func() { _ = s.Run(ctx) })
	a := ln.Addr().String()
	addr.Store(&a)
	return c
}

// streamType is what istiod-lite's /debug/clients says of one type of one
// stream.
type streamType struct {
	Subscribed      []string `json:"subscribed"`
	LastNonceSent   string   `json:"lastNonceSent"`
	LastAckedNonce  string   `json:"lastAckedNonce"`
	LastNackedNonce string   `json:"lastNackedNonce"`
	LastNackError   string   `json:"lastNackError"`
	Responses       uint64   `json:"responses"`
	ResourcesSent   uint64   `json:"resourcesSent"`
	RemovalsSent    uint64   `json:"removalsSent"`
	Acks            uint64   `json:"acks"`
	Nacks           uint64   `json:"nacks"`
}

type stream struct {
	Node  string                `json:"node"`
	Types map[string]streamType `json:"types"`
}

// client reads istiod-lite's view of its one connected client.
func (c *control) client() (stream, error) {
	rec := httptest.NewRecorder()
	c.xds.DebugHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/debug/clients", nil))
	var page struct {
		Clients []stream `json:"clients"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &page); err != nil {
		return stream{}, fmt.Errorf("decoding /debug/clients: %w", err)
	}
	if len(page.Clients) != 1 {
		return stream{}, fmt.Errorf("%d clients connected, want 1", len(page.Clients))
	}
	return page.Clients[0], nil
}

// settled checks istiod-lite's view of a type once the client has answered
// every response: the last nonce sent is the one last ACKed or, with
// nacked, NACKed.
func (c *control) settled(url string, nacked bool) (streamType, error) {
	cl, err := c.client()
	if err != nil {
		return streamType{}, err
	}
	st, ok := cl.Types[url]
	switch {
	case !ok:
		return st, fmt.Errorf("no subscription to %s", url)
	case st.LastNonceSent == "":
		return st, errors.New("nothing sent yet")
	case nacked && st.LastNackedNonce != st.LastNonceSent:
		return st, fmt.Errorf("last nonce sent %q, last NACKed %q", st.LastNonceSent, st.LastNackedNonce)
	case !nacked && st.LastAckedNonce != st.LastNonceSent:
		return st, fmt.Errorf("last nonce sent %q, last ACKed %q", st.LastNonceSent, st.LastAckedNonce)
	}
	return st, nil
}

// store stands for ztunnel's state: it holds what it is given, and rejects
// the resources named in reject, applying the rest, as ztunnel does with a
// workload it cannot use.
type store struct {
	mu     sync.Mutex
	held   map[string]map[string]proto.Message
	reject map[string]bool
}

var errBad = errors.New("workload bad has no address ztunnel can use")

func (s *store) Apply(u xdsclient.Update) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.held[u.TypeURL]
	if m == nil {
		m = map[string]proto.Message{}
		s.held[u.TypeURL] = m
	}
	var rejected []string
	for name, msg := range u.Resources {
		if s.reject[name] {
			rejected = append(rejected, name)
			continue
		}
		m[name] = msg
	}
	for _, name := range u.Removed {
		delete(m, name)
	}
	if len(rejected) > 0 {
		return &xdsclient.RejectedError{Names: rejected, Err: errBad}
	}
	return nil
}

// holds checks what the store holds of url.
func (s *store) holds(url string, want map[string]proto.Message) func() error {
	return func() error {
		s.mu.Lock()
		defer s.mu.Unlock()
		got := s.held[url]
		if len(got) != len(want) || !maps.EqualFunc(got, want, proto.Equal) {
			return fmt.Errorf("holds %v, want %v", slices.Sorted(maps.Keys(got)), slices.Sorted(maps.Keys(want)))
		}
		return nil
	}
}

func workload(name, ip string) *workloadv1.Address {
	return &workloadv1.Address{Type: &workloadv1.Address_Workload{Workload: &workloadv1.Workload{
		Uid: "Kubernetes//Pod/shop/" + name, Name: name, Namespace: "shop", Addresses: [][]byte{net.ParseIP(ip).To4()},
	}}}
}

func service(host string) *workloadv1.Address {
	return &workloadv1.Address{Type: &workloadv1.Address_Service{Service: &workloadv1.Service{
		Name: host, Namespace: "shop", Hostname: host + ".shop.svc.cluster.local",
	}}}
}

func policy(name string) *workloadv1.Authorization {
	return &workloadv1.Authorization{Name: name, Namespace: "shop", Action: workloadv1.Action_ALLOW}
}

// TestZtunnelClientWithIstiodLite: initial sync, an update ACKed, a
// resource rejected and NACKed with its reason, a removal, and a reconnect
// to a restarted istiod-lite that sends only what the client's
// initial_resource_versions say it lacks.
func TestZtunnelClientWithIstiodLite(t *testing.T) {
	const addrURL, authzURL = xdsclient.AddressTypeURL, xdsclient.AuthorizationTypeURL
	w1, w2, bad, s1 := workload("web-1", "198.18.1.1"), workload("web-2", "198.18.1.2"), workload("bad", "198.18.1.9"), service("web")
	p1, p2 := policy("allow"), policy("deny")
	state := map[string]map[string]proto.Message{
		addrURL:  {"w1": w1, "s1": s1},
		authzURL: {"shop/allow": p1},
	}
	var addr atomic.Pointer[string]
	ctl := startControl(t, &addr, state)
	t.Cleanup(func() { ctl.stop() })

	st := &store{held: map[string]map[string]proto.Message{}, reject: map[string]bool{"bad": true}}
	nodeID := xdsclient.NodeID("node-a", "ztunnel-x", "cairn-system")
	c, err := xdsclient.New(xdsclient.Config{
		Address:      "passthrough:///istiod",
		TypeURLs:     []string{addrURL, authzURL},
		Handler:      st,
		NodeID:       nodeID,
		UserAgent:    "cairn-ztunnel",
		Registry:     xdsclient.WorkloadRegistry(),
		NodeMetadata: map[string]string{"NODE_NAME": "node-a"},
		Insecure:     true,
		BackoffBase:  time.Millisecond,
		BackoffMax:   20 * time.Millisecond,
		Logger:       slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})).With("side", "ztunnel"),
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "tcp", *addr.Load())
		})},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-ran; err != nil {
			t.Errorf("Run: %v", err)
		}
	})

	// Subscribe: the full state arrives, and istiod-lite sees the node and
	// a wildcard subscription to each type, each response ACKed.
	select {
	case <-c.Synced():
	case <-time.After(wait):
		t.Fatal("the client did not sync")
	}
	eventually(t, "the initial Addresses", st.holds(addrURL, map[string]proto.Message{"w1": w1, "s1": s1}))
	eventually(t, "the initial Authorizations", st.holds(authzURL, map[string]proto.Message{"shop/allow": p1}))
	for _, url := range []string{addrURL, authzURL} {
		eventually(t, "the ACK of the first "+url, func() error {
			got, err := ctl.settled(url, false)
			if err != nil {
				return err
			}
			if !slices.Equal(got.Subscribed, []string{"*"}) || got.Nacks != 0 || got.ResourcesSent != uint64(len(state[url])) {
				return fmt.Errorf("istiod-lite's view: %+v", got)
			}
			return nil
		})
	}
	if cl, err := ctl.client(); err != nil || cl.Node != nodeID {
		t.Errorf("istiod-lite knows the client as node %q (%v), want %q", cl.Node, err, nodeID)
	}

	// An update is applied and ACKed.
	update := func(url string, upserts map[string]proto.Message, removes ...string) {
		t.Helper()
		if err := ctl.xds.Update(url, upserts, removes); err != nil {
			t.Fatal(err)
		}
	}
	update(addrURL, map[string]proto.Message{"w2": w2})
	eventually(t, "the added workload", st.holds(addrURL, map[string]proto.Message{"w1": w1, "w2": w2, "s1": s1}))
	eventually(t, "the ACK of the update", func() error {
		got, err := ctl.settled(addrURL, false)
		if err == nil && got.Acks != 2 {
			err = fmt.Errorf("%d ACKs, want 2", got.Acks)
		}
		return err
	})

	// A resource the store rejects: NACKed with the store's reason, which
	// istiod-lite reads from error_detail.
	update(addrURL, map[string]proto.Message{"bad": bad})
	eventually(t, "the NACK", func() error {
		got, err := ctl.settled(addrURL, true)
		switch {
		case err != nil:
			return err
		case got.Nacks != 1:
			return fmt.Errorf("%d NACKs, want 1", got.Nacks)
		case !strings.Contains(got.LastNackError, errBad.Error()):
			return fmt.Errorf("NACK error %q does not give the store's reason", got.LastNackError)
		}
		return nil
	})

	// A removal.
	update(addrURL, nil, "s1")
	eventually(t, "the removed service", st.holds(addrURL, map[string]proto.Message{"w1": w1, "w2": w2}))
	eventually(t, "the ACK of the removal", func() error {
		got, err := ctl.settled(addrURL, false)
		if err == nil && got.RemovalsSent != 1 {
			err = fmt.Errorf("%d removals sent, want 1", got.RemovalsSent)
		}
		return err
	})

	// istiod-lite restarts; meanwhile w2 goes and a policy comes. The client
	// claims the versions it holds, w1 and p1 (not bad, which it rejected),
	// so the new istiod-lite sends w2's removal, bad again, and p2: nothing
	// the client already has.
	ctl.stop()
	state = map[string]map[string]proto.Message{
		addrURL:  {"w1": w1, "bad": bad},
		authzURL: {"shop/allow": p1, "shop/deny": p2},
	}
	ctl = startControl(t, &addr, state)
	eventually(t, "the removal made while away", st.holds(addrURL, map[string]proto.Message{"w1": w1}))
	eventually(t, "the policy made while away", st.holds(authzURL, map[string]proto.Message{"shop/allow": p1, "shop/deny": p2}))
	eventually(t, "the answers after reconnecting", func() error {
		a, err := ctl.settled(addrURL, true)
		if err != nil {
			return fmt.Errorf("Address: %w", err)
		}
		z, err := ctl.settled(authzURL, false)
		if err != nil {
			return fmt.Errorf("Authorization: %w", err)
		}
		if a.Responses != 1 || a.ResourcesSent != 1 || a.RemovalsSent != 1 || a.Nacks != 1 {
			return fmt.Errorf("Address: want one response with bad and w2's removal, NACKed; istiod-lite's view: %+v", a)
		}
		if z.Responses != 1 || z.ResourcesSent != 1 || z.RemovalsSent != 0 || z.Acks != 1 {
			return fmt.Errorf("Authorization: want one response with only p2, ACKed; istiod-lite's view: %+v", z)
		}
		return nil
	})
}
