package xdsclient

import (
	"crypto/tls"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/proto"
)

// synced says whether c's Synced channel is closed.
func synced(c *Client) bool {
	select {
	case <-c.Synced():
		return true
	default:
		return false
	}
}

// subscribe reads the two subscriptions that open a stream and returns
// their initial_resource_versions by type.
func subscribe(t *testing.T, fs *fakeStream, nodeID string) map[string]map[string]string {
	t.Helper()
	known := map[string]map[string]string{}
	for i, url := range []string{AddressTypeURL, AuthorizationTypeURL} {
		req := fs.recv(t)
		if req.GetTypeUrl() != url || req.GetResponseNonce() != "" || req.GetErrorDetail() != nil {
			t.Fatalf("request %d: want a subscription to %s, got %v", i, url, req)
		}
		if !slices.Equal(req.GetResourceNamesSubscribe(), []string{"*"}) || len(req.GetResourceNamesUnsubscribe()) > 0 {
			t.Fatalf("request %d: want a wildcard subscription, got subscribe %v unsubscribe %v",
				i, req.GetResourceNamesSubscribe(), req.GetResourceNamesUnsubscribe())
		}
		if i == 0 && (req.GetNode().GetId() != nodeID || req.GetNode().GetUserAgentName() != testUserAgent) {
			t.Fatalf("first request: node %v, want id %q and user agent %q", req.GetNode(), nodeID, testUserAgent)
		}
		known[url] = req.GetInitialResourceVersions()
	}
	return known
}

func bearer(t *testing.T, fs *fakeStream) string {
	t.Helper()
	v := fs.md.Get("authorization")
	if len(v) != 1 {
		t.Fatalf("want one authorization metadata entry, got %v", v)
	}
	return v[0]
}

func versionsOf(rs ...*discoverygrpc.Resource) map[string]string {
	m := map[string]string{}
	for _, r := range rs {
		m[r.GetName()] = r.GetVersion()
	}
	return m
}

func sameVersions(got, want map[string]string) bool {
	return maps.Equal(got, want) || (len(got) == 0 && len(want) == 0)
}

func TestInitialSyncThenUpdateAndRemoval(t *testing.T) {
	h := newHarness(t)
	handler, obs := newMemHandler(), &recObserver{}
	cfg := h.config(handler, obs)
	cfg.NodeMetadata = map[string]string{"NODE_NAME": "node-a"}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	run(t, c)

	fs := h.ads.next(t)
	if got := bearer(t, fs); got != "Bearer token-1" {
		t.Errorf("authorization %q, want the token file's content", got)
	}
	known := subscribe(t, fs, cfg.NodeID)
	for url, v := range known {
		if len(v) != 0 {
			t.Errorf("a new client sent initial versions for %s: %v", url, v)
		}
	}
	if synced(c) {
		t.Fatal("synced before any response")
	}

	w1, w2, s1 := workload("web-1", "198.18.1.1"), workload("web-2", "198.18.1.2"), service("web")
	n := fs.send(t, &discoverygrpc.DeltaDiscoveryResponse{
		TypeUrl: AddressTypeURL, SystemVersionInfo: "1",
		Resources: []*discoverygrpc.Resource{resource(t, "w1", w1), resource(t, "w2", w2), resource(t, "s1", s1)},
	})
	fs.expectACK(t, AddressTypeURL, n)
	if synced(c) {
		t.Fatal("synced before the first Authorization response")
	}

	// The first response to a wildcard subscription comes even when empty,
	// and it completes the sync.
	n = fs.send(t, &discoverygrpc.DeltaDiscoveryResponse{TypeUrl: AuthorizationTypeURL, SystemVersionInfo: "1"})
	fs.expectACK(t, AuthorizationTypeURL, n)
	select {
	case <-c.Synced():
	case <-time.After(wait):
		t.Fatal("Synced did not close after every type was applied")
	}
	handler.check(t, AddressTypeURL, map[string]proto.Message{"w1": w1, "w2": w2, "s1": s1})
	handler.check(t, AuthorizationTypeURL, map[string]proto.Message{})

	// A change, an addition and a removal in one response.
	w1b, p1 := workload("web-1", "198.18.1.9"), policy("allow-frontend")
	n = fs.send(t, &discoverygrpc.DeltaDiscoveryResponse{
		TypeUrl: AddressTypeURL, SystemVersionInfo: "2",
		Resources:        []*discoverygrpc.Resource{resource(t, "w1", w1b)},
		RemovedResources: []string{"w2"},
	})
	fs.expectACK(t, AddressTypeURL, n)
	n = fs.send(t, &discoverygrpc.DeltaDiscoveryResponse{
		TypeUrl: AuthorizationTypeURL, SystemVersionInfo: "2",
		Resources: []*discoverygrpc.Resource{resource(t, "shop/allow-frontend", p1)},
	})
	fs.expectACK(t, AuthorizationTypeURL, n)
	handler.check(t, AddressTypeURL, map[string]proto.Message{"w1": w1b, "s1": s1})
	handler.check(t, AuthorizationTypeURL, map[string]proto.Message{"shop/allow-frontend": p1})

	if got := obs.get(func(o *recObserver) int { return o.acks }); got != 4 {
		t.Errorf("observer saw %d ACKs, want 4", got)
	}
	if got := obs.get(func(o *recObserver) int { return len(o.nacks) + len(o.retries) }); got != 0 {
		t.Errorf("observer saw NACKs or retries on a healthy stream")
	}
}

// syncStream subscribes and sends the given initial state on fs.
func syncStream(t *testing.T, fs *fakeStream, nodeID string, addrs, authz []*discoverygrpc.Resource) {
	t.Helper()
	subscribe(t, fs, nodeID)
	n := fs.send(t, &discoverygrpc.DeltaDiscoveryResponse{TypeUrl: AddressTypeURL, SystemVersionInfo: "1", Resources: addrs})
	fs.expectACK(t, AddressTypeURL, n)
	n = fs.send(t, &discoverygrpc.DeltaDiscoveryResponse{TypeUrl: AuthorizationTypeURL, SystemVersionInfo: "1", Resources: authz})
	fs.expectACK(t, AuthorizationTypeURL, n)
}

func TestHandlerErrorIsNACKedAndStateKept(t *testing.T) {
	h := newHarness(t)
	handler, obs := newMemHandler(), &recObserver{}
	cfg := h.config(handler, obs)
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	run(t, c)

	w1 := workload("web-1", "198.18.1.1")
	r1 := resource(t, "w1", w1)
	fs := h.ads.next(t)
	syncStream(t, fs, cfg.NodeID, []*discoverygrpc.Resource{r1}, nil)

	handler.setReject(func(u Update) error {
		if _, ok := u.Resources["bad"]; ok {
			return errBadWorkload
		}
		return nil
	})
	calls := handler.callCount()
	n := fs.send(t, &discoverygrpc.DeltaDiscoveryResponse{
		TypeUrl: AddressTypeURL, SystemVersionInfo: "2",
		Resources:        []*discoverygrpc.Resource{resource(t, "w1", workload("web-1", "198.18.1.7")), resource(t, "bad", workload("bad", "198.18.1.8"))},
		RemovedResources: []string{"gone"},
	})
	msg := fs.expectNACK(t, AddressTypeURL, n)
	if !strings.Contains(msg, errBadWorkload.Error()) {
		t.Errorf("NACK message %q does not carry the handler's error", msg)
	}
	if handler.callCount() != calls+1 {
		t.Errorf("handler called %d times for one response", handler.callCount()-calls)
	}
	handler.check(t, AddressTypeURL, map[string]proto.Message{"w1": w1})
	if got := obs.get(func(o *recObserver) int { return len(o.nacks) }); got != 1 {
		t.Errorf("observer saw %d NACKs, want 1", got)
	}

	// The stream goes on: the next good response is ACKed.
	w3 := workload("web-3", "198.18.1.3")
	r3 := resource(t, "w3", w3)
	n = fs.send(t, &discoverygrpc.DeltaDiscoveryResponse{TypeUrl: AddressTypeURL, SystemVersionInfo: "3", Resources: []*discoverygrpc.Resource{r3}})
	fs.expectACK(t, AddressTypeURL, n)
	handler.check(t, AddressTypeURL, map[string]proto.Message{"w1": w1, "w3": w3})

	// On the next stream (same connection: the server ends only the
	// stream), the client claims the versions it accepted, not the
	// rejected ones, and presents the rotated token.
	writeFile(t, cfg.TokenFile, "token-2")
	dials := h.dials.Load()
	fs.close(unavailable())
	fs = h.ads.next(t)
	if got := bearer(t, fs); got != "Bearer token-2" {
		t.Errorf("authorization on the new stream %q, want the rotated token", got)
	}
	if h.dials.Load() != dials {
		t.Errorf("the client dialled again; want the new stream on the same connection, to show the token is read per stream")
	}
	known := subscribe(t, fs, cfg.NodeID)
	if want := versionsOf(r1, r3); !sameVersions(known[AddressTypeURL], want) {
		t.Errorf("initial versions of Address %v, want the accepted %v", known[AddressTypeURL], want)
	}
	if len(known[AuthorizationTypeURL]) != 0 {
		t.Errorf("initial versions of Authorization %v, want none", known[AuthorizationTypeURL])
	}
}

var errBadWorkload = errorString("workload bad has no address family ztunnel supports")

type errorString string

func (e errorString) Error() string { return string(e) }

func TestUndecodableResponsesAreNACKed(t *testing.T) {
	h := newHarness(t)
	handler, obs := newMemHandler(), &recObserver{}
	cfg := h.config(handler, obs)
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	run(t, c)
	fs := h.ads.next(t)
	w1 := workload("web-1", "198.18.1.1")
	syncStream(t, fs, cfg.NodeID, []*discoverygrpc.Resource{resource(t, "w1", w1)}, nil)
	calls := handler.callCount()

	good := resource(t, "w2", workload("web-2", "198.18.1.2"))
	garbage := resource(t, "w9", workload("web-9", "198.18.1.9"))
	garbage.Resource.Value = []byte{0x0a, 0x05, 0x01} // a length-delimited field cut short
	wrongType := resource(t, "w8", policy("p"))
	noBody := &discoverygrpc.Resource{Name: "w7", Version: "1"}
	noName := resource(t, "", workload("x", "198.18.1.10"))

	tests := []struct {
		name     string
		resp     *discoverygrpc.DeltaDiscoveryResponse
		nackType string
		want     string
	}{
		{"garbage bytes", &discoverygrpc.DeltaDiscoveryResponse{TypeUrl: AddressTypeURL,
			Resources: []*discoverygrpc.Resource{good, garbage}}, AddressTypeURL, `resource "w9": decoding`},
		{"body of another type", &discoverygrpc.DeltaDiscoveryResponse{TypeUrl: AddressTypeURL,
			Resources: []*discoverygrpc.Resource{good, wrongType}}, AddressTypeURL, "cairn.workload.v1.Authorization, not a"},
		{"no body", &discoverygrpc.DeltaDiscoveryResponse{TypeUrl: AddressTypeURL,
			Resources: []*discoverygrpc.Resource{noBody}}, AddressTypeURL, `resource "w7": no body`},
		{"no name", &discoverygrpc.DeltaDiscoveryResponse{TypeUrl: AddressTypeURL,
			Resources: []*discoverygrpc.Resource{noName}}, AddressTypeURL, "has no name"},
		{"sent twice", &discoverygrpc.DeltaDiscoveryResponse{TypeUrl: AddressTypeURL,
			Resources: []*discoverygrpc.Resource{good, good}}, AddressTypeURL, "sent twice"},
		{"updated and removed", &discoverygrpc.DeltaDiscoveryResponse{TypeUrl: AddressTypeURL,
			Resources: []*discoverygrpc.Resource{good}, RemovedResources: []string{"w2"}}, AddressTypeURL, "both updated and removed"},
		{"type not subscribed", &discoverygrpc.DeltaDiscoveryResponse{TypeUrl: "type.googleapis.com/cairn.workload.v1.Other"},
			"type.googleapis.com/cairn.workload.v1.Other", "not subscribed"},
	}
	for _, tc := range tests {
		n := fs.send(t, tc.resp)
		if msg := fs.expectNACK(t, tc.nackType, n); !strings.Contains(msg, tc.want) {
			t.Errorf("%s: NACK message %q, want it to contain %q", tc.name, msg, tc.want)
		}
	}
	if got := handler.callCount(); got != calls {
		t.Errorf("the handler was called %d times with undecodable responses", got-calls)
	}
	handler.check(t, AddressTypeURL, map[string]proto.Message{"w1": w1})
	if got := obs.get(func(o *recObserver) int { return len(o.nacks) }); got != len(tests) {
		t.Errorf("observer saw %d NACKs, want %d", got, len(tests))
	}

	// A NACK names a bounded number of resources.
	var many []*discoverygrpc.Resource
	for i := range 20 {
		r := resource(t, "bad-"+string(rune('a'+i)), w1)
		r.Resource.Value = []byte{0xff}
		many = append(many, r)
	}
	n := fs.send(t, &discoverygrpc.DeltaDiscoveryResponse{TypeUrl: AddressTypeURL, Resources: many})
	msg := fs.expectNACK(t, AddressTypeURL, n)
	if !strings.Contains(msg, "and 15 more bad resources") {
		t.Errorf("NACK of 20 bad resources: %q", msg)
	}
}

func TestServerGoneThenBack(t *testing.T) {
	h := newHarness(t)
	handler, obs := newMemHandler(), &recObserver{}
	cfg := h.config(handler, obs)
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	run(t, c)
	fs := h.ads.next(t)
	w1, s1, p1 := workload("web-1", "198.18.1.1"), service("web"), policy("allow")
	rw1, rs1, rp1 := resource(t, "w1", w1), resource(t, "s1", s1), resource(t, "shop/allow", p1)
	syncStream(t, fs, cfg.NodeID, []*discoverygrpc.Resource{rw1, rs1}, []*discoverygrpc.Resource{rp1})
	calls := handler.callCount()

	// The control plane goes away: listener and connections close.
	h.stop()
	eventually(t, "the client to see the stream end", func() bool {
		return obs.get(func(o *recObserver) int { return o.disconnected }) == 1
	})
	// It keeps retrying, backing off, while nothing answers.
	eventually(t, "three failed attempts", func() bool {
		return obs.get(func(o *recObserver) int { return len(o.retries) }) >= 3
	})
	obs.mu.Lock()
	for i, d := range obs.retries {
		if d <= 0 || d > cfg.BackoffMax {
			t.Errorf("retry %d waits %v, want within (0, %v]", i, d, cfg.BackoffMax)
		}
		if obs.failures[i] != i+1 {
			t.Errorf("retry %d counts %d consecutive failures, want %d", i, obs.failures[i], i+1)
		}
	}
	obs.mu.Unlock()
	if h.dials.Load() < 2 {
		t.Errorf("the client dialled %d times, want it to retry", h.dials.Load())
	}
	if handler.callCount() != calls {
		t.Fatal("the handler was called while the control plane was away")
	}
	handler.check(t, AddressTypeURL, map[string]proto.Message{"w1": w1, "s1": s1})
	handler.check(t, AuthorizationTypeURL, map[string]proto.Message{"shop/allow": p1})

	// The token rotates meanwhile, and the control plane comes back.
	writeFile(t, cfg.TokenFile, "token-3")
	h.start()
	fs = h.ads.next(t)
	if got := bearer(t, fs); got != "Bearer token-3" {
		t.Errorf("authorization after reconnecting %q, want the rotated token", got)
	}
	known := subscribe(t, fs, cfg.NodeID)
	if want := versionsOf(rw1, rs1); !sameVersions(known[AddressTypeURL], want) {
		t.Errorf("initial versions of Address %v, want %v", known[AddressTypeURL], want)
	}
	if want := versionsOf(rp1); !sameVersions(known[AuthorizationTypeURL], want) {
		t.Errorf("initial versions of Authorization %v, want %v", known[AuthorizationTypeURL], want)
	}

	// The control plane answers with the differences only.
	n := fs.send(t, &discoverygrpc.DeltaDiscoveryResponse{TypeUrl: AddressTypeURL, RemovedResources: []string{"s1"}})
	fs.expectACK(t, AddressTypeURL, n)
	n = fs.send(t, &discoverygrpc.DeltaDiscoveryResponse{TypeUrl: AuthorizationTypeURL})
	fs.expectACK(t, AuthorizationTypeURL, n)
	handler.check(t, AddressTypeURL, map[string]proto.Message{"w1": w1})
	handler.check(t, AuthorizationTypeURL, map[string]proto.Message{"shop/allow": p1})
	if !synced(c) {
		t.Error("Synced reopened")
	}
	if got := obs.get(func(o *recObserver) int { return o.connected }); got != 2 {
		t.Errorf("observer saw %d connections, want 2", got)
	}
}

func TestMissingTokenIsRetried(t *testing.T) {
	h := newHarness(t)
	handler, obs := newMemHandler(), &recObserver{}
	cfg := h.config(handler, obs)
	cfg.TokenFile = filepath.Join(t.TempDir(), "not-yet")
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	run(t, c)
	eventually(t, "a failed attempt", func() bool {
		return obs.get(func(o *recObserver) int { return len(o.retries) }) >= 1
	})
	obs.mu.Lock()
	retryErr := obs.lastRetryErr
	obs.mu.Unlock()
	if retryErr == nil || !strings.Contains(retryErr.Error(), "reading token") {
		t.Errorf("failed attempt: %v, want it to say the token could not be read", retryErr)
	}
	writeFile(t, cfg.TokenFile, "late-token")
	fs := h.ads.next(t)
	if got := bearer(t, fs); got != "Bearer late-token" {
		t.Errorf("authorization %q", got)
	}
}

func TestClientCertificate(t *testing.T) {
	h := newHarness(t)
	cfg := h.config(newMemHandler(), nil)
	cfg.TokenFile = ""
	cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		return &h.pki.client, nil
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	run(t, c)
	fs := h.ads.next(t)
	if v := fs.md.Get("authorization"); len(v) != 0 {
		t.Errorf("authorization metadata %v without a token file", v)
	}
	ti, ok := fs.peer.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.PeerCertificates) == 0 {
		t.Fatalf("server saw no client certificate: %v", fs.peer.AuthInfo)
	}
	if got := ti.State.PeerCertificates[0].URIs; len(got) != 1 || got[0].String() != "spiffe://cluster.local/ns/cairn-system/sa/ztunnel" {
		t.Errorf("client certificate URIs %v", got)
	}
}

// TestPartlyRejectedFirstResponse: a handler that rejects one resource of
// the first response (a *RejectedError) still makes the type synced and
// keeps the rest; the response is NACKed with the reason, and a reconnect
// claims only the accepted versions.
func TestPartlyRejectedFirstResponse(t *testing.T) {
	h := newHarness(t)
	handler := newMemHandler()
	cfg := h.config(handler, &recObserver{})
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	run(t, c)
	handler.setReject(func(u Update) error {
		if _, ok := u.Resources["bad"]; ok {
			return &RejectedError{Names: []string{"bad"}, Err: errBadWorkload}
		}
		return nil
	})

	fs := h.ads.next(t)
	subscribe(t, fs, cfg.NodeID)
	w1 := workload("web-1", "198.18.1.1")
	r1 := resource(t, "w1", w1)
	n := fs.send(t, &discoverygrpc.DeltaDiscoveryResponse{TypeUrl: AddressTypeURL, SystemVersionInfo: "1",
		Resources: []*discoverygrpc.Resource{r1, resource(t, "bad", workload("bad", "198.18.1.8"))}})
	if msg := fs.expectNACK(t, AddressTypeURL, n); !strings.Contains(msg, errBadWorkload.Error()) {
		t.Errorf("NACK message %q does not say why", msg)
	}
	n = fs.send(t, &discoverygrpc.DeltaDiscoveryResponse{TypeUrl: AuthorizationTypeURL, SystemVersionInfo: "1"})
	fs.expectACK(t, AuthorizationTypeURL, n)
	select {
	case <-c.Synced():
	case <-time.After(wait):
		t.Fatal("one rejected resource kept the client from syncing")
	}
	handler.check(t, AddressTypeURL, map[string]proto.Message{"w1": w1})

	fs.close(unavailable())
	fs = h.ads.next(t)
	known := subscribe(t, fs, cfg.NodeID)
	if want := versionsOf(r1); !sameVersions(known[AddressTypeURL], want) {
		t.Errorf("initial versions after a partial rejection %v, want only the accepted %v", known[AddressTypeURL], want)
	}
}
