package xds

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/prometheus/client_golang/prometheus"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

const (
	typeA = "type.googleapis.com/google.protobuf.StringValue"
	typeB = "type.googleapis.com/google.protobuf.BytesValue"
)

// tokenAuth is the test double of an Authenticator: the bearer token
// "good-<name>" authenticates <name>, anything else is refused.
var tokenAuth = AuthenticatorFunc(func(ctx context.Context) (Identity, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	for _, v := range md.Get("authorization") {
		if name, ok := strings.CutPrefix(v, "Bearer good-"); ok {
			return Identity{Principal: "spiffe://cluster.local/ns/test/sa/" + name, Node: "node-1"}, nil
		}
	}
	return Identity{}, errors.New("no valid bearer token")
})

type testServer struct {
	*Server
	addr string
	reg  *prometheus.Registry
}

// startServer runs a Server on a loopback gRPC listener until the test ends.
func startServer(t testing.TB, cfg Config) *testServer {
	t.Helper()
	reg := prometheus.NewRegistry()
	if cfg.TypeURLs == nil {
		cfg.TypeURLs = []string{typeA, typeB}
	}
	if cfg.Authenticator == nil {
		cfg.Authenticator = tokenAuth
	}
	if cfg.Debounce == 0 {
		cfg.Debounce = 10 * time.Millisecond
	}
	cfg.Registerer = reg
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	s.Register(g)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = g.Serve(lis) })
	wg.Go(func() { _ = s.Run(ctx) })
	t.Cleanup(func() {
		cancel()
		g.Stop()
		wg.Wait()
	})
	return &testServer{Server: s, addr: lis.Addr().String(), reg: reg}
}

// setInitial sets the initial state of both test types.
func (ts *testServer) setInitial(t testing.TB, a, b map[string]proto.Message) {
	t.Helper()
	if err := ts.SetInitial(typeA, a); err != nil {
		t.Fatal(err)
	}
	if err := ts.SetInitial(typeB, b); err != nil {
		t.Fatal(err)
	}
}

// metric sums the samples of a counter or gauge family whose type label
// (if any) is typeLabel.
func (ts *testServer) metric(t testing.TB, name, label string) float64 {
	t.Helper()
	families, err := ts.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			match := label == ""
			for _, l := range m.GetLabel() {
				if l.GetValue() == label {
					match = true
				}
			}
			if !match {
				continue
			}
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue() + float64(m.GetHistogram().GetSampleCount())
		}
	}
	return sum
}

// adsClient is a delta ADS client using go-control-plane's generated
// client; a goroutine reads its responses into a channel.
type adsClient struct {
	stream grpc.BidiStreamingClient[discoverygrpc.DeltaDiscoveryRequest, discoverygrpc.DeltaDiscoveryResponse]
	resps  chan *discoverygrpc.DeltaDiscoveryResponse
	errc   chan error
}

func dial(t testing.TB, addr string, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	opts = append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))
	conn, err := grpc.NewClient(addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// openStream opens a delta ADS stream with the given bearer token ("" for
// none); read says whether responses are read in the background.
func openStream(t testing.TB, conn *grpc.ClientConn, token string, read bool) *adsClient {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	}
	st, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c := &adsClient{stream: st, resps: make(chan *discoverygrpc.DeltaDiscoveryResponse, 100), errc: make(chan error, 1)}
	if read {
		go func() {
			for {
				resp, err := st.Recv()
				if err != nil {
					c.errc <- err
					return
				}
				c.resps <- resp
			}
		}()
	}
	return c
}

func newClient(t testing.TB, ts *testServer, name string) *adsClient {
	return openStream(t, dial(t, ts.addr), "good-"+name, true)
}

func (c *adsClient) send(t testing.TB, req *discoverygrpc.DeltaDiscoveryRequest) {
	t.Helper()
	// io.EOF means the server ended the stream; Recv returns its status.
	if err := c.stream.Send(req); err != nil && err != io.EOF {
		t.Fatalf("sending: %v", err)
	}
}

// subscribe subscribes to every resource of typeURL (wildcard).
func (c *adsClient) subscribe(t testing.TB, node, typeURL string) {
	c.send(t, &discoverygrpc.DeltaDiscoveryRequest{
		Node:                   &core.Node{Id: node},
		TypeUrl:                typeURL,
		ResourceNamesSubscribe: []string{"*"},
	})
}

func (c *adsClient) ack(t testing.TB, resp *discoverygrpc.DeltaDiscoveryResponse) {
	c.send(t, &discoverygrpc.DeltaDiscoveryRequest{TypeUrl: resp.GetTypeUrl(), ResponseNonce: resp.GetNonce()})
}

func (c *adsClient) nack(t testing.TB, resp *discoverygrpc.DeltaDiscoveryResponse, msg string) {
	c.send(t, &discoverygrpc.DeltaDiscoveryRequest{
		TypeUrl: resp.GetTypeUrl(), ResponseNonce: resp.GetNonce(),
		ErrorDetail: &statuspb.Status{Code: int32(codes.InvalidArgument), Message: msg},
	})
}

func (c *adsClient) recv(t testing.TB, timeout time.Duration) *discoverygrpc.DeltaDiscoveryResponse {
	t.Helper()
	select {
	case resp := <-c.resps:
		return resp
	case err := <-c.errc:
		t.Fatalf("stream ended: %v", err)
	case <-time.After(timeout):
		t.Fatalf("no response within %v", timeout)
	}
	return nil
}

// recvNone checks that nothing arrives within window: a bounded check,
// not a timing target.
func (c *adsClient) recvNone(t testing.TB, window time.Duration) {
	t.Helper()
	select {
	case resp := <-c.resps:
		t.Fatalf("unexpected response: %v resources %v, removed %v", resp.GetTypeUrl(), names(resp), resp.GetRemovedResources())
	case err := <-c.errc:
		t.Fatalf("stream ended: %v", err)
	case <-time.After(window):
	}
}

// recvErr waits for the stream to end and returns its error.
func (c *adsClient) recvErr(t testing.TB) error {
	t.Helper()
	select {
	case resp := <-c.resps:
		t.Fatalf("unexpected response %v", resp)
	case err := <-c.errc:
		return err
	case <-time.After(5 * time.Second):
		t.Fatal("stream did not end")
	}
	return nil
}

func names(resp *discoverygrpc.DeltaDiscoveryResponse) []string {
	var out []string
	for _, r := range resp.GetResources() {
		out = append(out, r.GetName())
	}
	slices.Sort(out)
	return out
}

// values decodes StringValue resources by name.
func values(t testing.TB, resp *discoverygrpc.DeltaDiscoveryResponse) map[string]string {
	t.Helper()
	out := make(map[string]string)
	for _, r := range resp.GetResources() {
		if r.GetVersion() == "" {
			t.Errorf("resource %s has no version", r.GetName())
		}
		v := &wrapperspb.StringValue{}
		if err := r.GetResource().UnmarshalTo(v); err != nil {
			t.Fatalf("resource %s: %v", r.GetName(), err)
		}
		out[r.GetName()] = v.GetValue()
	}
	return out
}

func strs(kv ...string) map[string]proto.Message {
	out := make(map[string]proto.Message)
	for i := 0; i+1 < len(kv); i += 2 {
		out[kv[i]] = wrapperspb.String(kv[i+1])
	}
	return out
}

// connected starts a server with a:1, b:2 of typeA and x of typeB, and a
// client that subscribed to typeA and ACKed its initial response.
func connected(t *testing.T, cfg Config) (*testServer, *adsClient) {
	t.Helper()
	ts := startServer(t, cfg)
	ts.setInitial(t, strs("a", "1", "b", "2"), map[string]proto.Message{"x": wrapperspb.Bytes([]byte("x"))})
	c := newClient(t, ts, "ztunnel")
	c.subscribe(t, "node-1/ztunnel", typeA)
	first := c.recv(t, 5*time.Second)
	if got := values(t, first); len(got) != 2 {
		t.Fatalf("initial response holds %v, want a and b", got)
	}
	c.ack(t, first)
	return ts, c
}

func TestInitialResponseHoldsFullState(t *testing.T) {
	ts := startServer(t, Config{})
	ts.setInitial(t, strs("a", "1", "b", "2", "c", "3"), map[string]proto.Message{"x": wrapperspb.Bytes([]byte("x"))})
	c := newClient(t, ts, "ztunnel")
	c.subscribe(t, "node-1/ztunnel", typeA)
	c.subscribe(t, "node-1/ztunnel", typeB)
	got := map[string]*discoverygrpc.DeltaDiscoveryResponse{}
	for range 2 {
		resp := c.recv(t, 5*time.Second)
		got[resp.GetTypeUrl()] = resp
	}
	if v := values(t, got[typeA]); fmt.Sprint(v) != "map[a:1 b:2 c:3]" {
		t.Errorf("typeA initial state = %v", v)
	}
	if n := names(got[typeB]); !slices.Equal(n, []string{"x"}) {
		t.Errorf("typeB initial state = %v", n)
	}
	if len(got[typeA].GetRemovedResources()) != 0 {
		t.Errorf("initial response removes %v", got[typeA].GetRemovedResources())
	}
}

func TestChangedResourceArrivesAlone(t *testing.T) {
	ts, c := connected(t, Config{})
	if err := ts.Update(typeA, strs("b", "2-new"), nil); err != nil {
		t.Fatal(err)
	}
	resp := c.recv(t, 5*time.Second)
	if v := values(t, resp); fmt.Sprint(v) != "map[b:2-new]" || len(resp.GetRemovedResources()) != 0 {
		t.Fatalf("got resources %v removed %v, want only b", v, resp.GetRemovedResources())
	}
}

func TestRemovedResourceArrivesInRemovedResources(t *testing.T) {
	ts, c := connected(t, Config{})
	if err := ts.Update(typeA, nil, []string{"a", "never-existed"}); err != nil {
		t.Fatal(err)
	}
	resp := c.recv(t, 5*time.Second)
	if len(resp.GetResources()) != 0 || !slices.Equal(resp.GetRemovedResources(), []string{"a"}) {
		t.Fatalf("got resources %v removed %v, want removed [a]", names(resp), resp.GetRemovedResources())
	}
}

func TestUnchangedUpdatePushesNothing(t *testing.T) {
	ts, c := connected(t, Config{})
	pushes := ts.metric(t, "cairn_xds_pushes_total", "google.protobuf.StringValue")
	// Equal value in a new message, and a removal of something absent.
	if err := ts.Update(typeA, strs("a", "1"), []string{"zzz"}); err != nil {
		t.Fatal(err)
	}
	c.recvNone(t, 300*time.Millisecond)
	if got := ts.metric(t, "cairn_xds_pushes_total", "google.protobuf.StringValue"); got != pushes {
		t.Errorf("pushes went from %v to %v", pushes, got)
	}
	if got := ts.metric(t, "cairn_xds_unchanged_upserts_total", "google.protobuf.StringValue"); got != 1 {
		t.Errorf("unchanged upserts = %v, want 1", got)
	}
	// An update then its revert inside one debounce window also pushes nothing.
	_ = ts.Update(typeA, strs("a", "changed"), nil)
	_ = ts.Update(typeA, strs("a", "1"), nil)
	c.recvNone(t, 300*time.Millisecond)
}

func TestDebounceMergesRapidUpdates(t *testing.T) {
	ts, c := connected(t, Config{Debounce: 200 * time.Millisecond, MaxDelay: 5 * time.Second})
	before := ts.metric(t, "cairn_xds_pushes_total", "google.protobuf.StringValue")
	const n = 20
	for i := range n {
		if err := ts.Update(typeA, strs(fmt.Sprintf("r%02d", i), "v"), nil); err != nil {
			t.Fatal(err)
		}
	}
	resp := c.recv(t, 5*time.Second)
	if len(resp.GetResources()) != n {
		t.Fatalf("one push holds %d resources, want %d", len(resp.GetResources()), n)
	}
	c.ack(t, resp)
	c.recvNone(t, 300*time.Millisecond)
	if got := ts.metric(t, "cairn_xds_pushes_total", "google.protobuf.StringValue") - before; got != 1 {
		t.Errorf("%d rapid updates made %v pushes, want 1", n, got)
	}
	if got := ts.metric(t, "cairn_xds_push_latency_seconds", "google.protobuf.StringValue"); got != 1 {
		t.Errorf("push latency observations = %v, want 1", got)
	}
}

func TestMaxDelayBoundsDebounce(t *testing.T) {
	// Changes every 20 ms never leave a 200 ms quiet period; the max delay
	// still pushes them.
	ts, c := connected(t, Config{Debounce: 200 * time.Millisecond, MaxDelay: 300 * time.Millisecond})
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
				_ = ts.Update(typeA, strs("a", fmt.Sprint("v", i)), nil)
			}
		}
	}()
	defer func() { close(stop); <-done }()
	resp := c.recv(t, 3*time.Second) // bounded: arrives while changes keep coming
	if !slices.Equal(names(resp), []string{"a"}) {
		t.Fatalf("got %v", names(resp))
	}
}

func TestNACKIsCountedAndShown(t *testing.T) {
	ts, c := connected(t, Config{})
	_ = ts.Update(typeA, strs("b", "bad"), nil)
	resp := c.recv(t, 5*time.Second)
	c.nack(t, resp, "cannot parse b")
	waitFor(t, func() bool { return ts.metric(t, "cairn_xds_nacks_total", "google.protobuf.StringValue") == 1 })
	if got := ts.metric(t, "cairn_xds_acks_total", "google.protobuf.StringValue"); got != 1 {
		t.Errorf("acks = %v, want 1 (the initial response)", got)
	}
	var out struct {
		Clients []debugClient `json:"clients"`
	}
	getJSON(t, ts.DebugHandler(), "/debug/clients", &out)
	if len(out.Clients) != 1 {
		t.Fatalf("clients = %+v", out.Clients)
	}
	ct := out.Clients[0].Types[typeA]
	if ct.LastNackError != "cannot parse b" || ct.LastNackedNonce != resp.GetNonce() || ct.Nacks != 1 {
		t.Errorf("client state after NACK = %+v", ct)
	}
	// The server keeps serving after a NACK.
	_ = ts.Update(typeA, strs("b", "good"), nil)
	if v := values(t, c.recv(t, 5*time.Second)); v["b"] != "good" {
		t.Errorf("after NACK got %v", v)
	}
}

func TestRefusals(t *testing.T) {
	ts := startServer(t, Config{})
	conn := dial(t, ts.addr)

	// Before the initial state: Unavailable.
	early := openStream(t, conn, "good-early", true)
	early.subscribe(t, "n", typeA)
	if code := status.Code(early.recvErr(t)); code != codes.Unavailable {
		t.Errorf("before SetInitial: code %v, want Unavailable", code)
	}
	ts.setInitial(t, strs("a", "1"), nil)
	select {
	case <-ts.Ready():
	default:
		t.Fatal("Ready not closed after SetInitial of every type")
	}

	for _, tc := range []struct {
		name, token, typeURL string
		want                 codes.Code
	}{
		{"no token", "", typeA, codes.Unauthenticated},
		{"bad token", "forged", typeA, codes.Unauthenticated},
		{"unknown type", "good-z", "type.googleapis.com/google.protobuf.Int64Value", codes.InvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := openStream(t, conn, tc.token, true)
			c.subscribe(t, "n", tc.typeURL)
			err := c.recvErr(t)
			if status.Code(err) != tc.want {
				t.Errorf("got %v, want %v", err, tc.want)
			}
		})
	}
	if got := ts.metric(t, "cairn_xds_refused_streams_total", "unauthenticated"); got != 2 {
		t.Errorf("refused unauthenticated = %v, want 2", got)
	}

	t.Run("state of the world", func(t *testing.T) {
		ctx := metadata.AppendToOutgoingContext(t.Context(), "authorization", "Bearer good-sotw")
		st, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Send(&discoverygrpc.DiscoveryRequest{TypeUrl: typeA}); err != nil {
			t.Fatal(err)
		}
		_, err = st.Recv()
		if status.Code(err) != codes.Unimplemented || !strings.Contains(err.Error(), "delta") {
			t.Errorf("SotW got %v, want Unimplemented naming delta", err)
		}
	})
	if got := ts.metric(t, "cairn_xds_connected_clients", ""); got != 0 {
		t.Errorf("connected clients = %v after refusals", got)
	}
}

func TestUpdateValidation(t *testing.T) {
	ts := startServer(t, Config{})
	if err := ts.Update("type.googleapis.com/nope", strs("a", "1"), nil); !errors.Is(err, ErrUnknownType) {
		t.Errorf("unknown type: %v", err)
	}
	if err := ts.Update(typeA, map[string]proto.Message{"a": (*wrapperspb.StringValue)(nil)}, nil); err == nil {
		t.Error("nil message accepted")
	}
	if _, err := New(Config{TypeURLs: []string{typeA}}); err == nil {
		t.Error("New without Authenticator succeeded")
	}
}

// TestStalledClientDoesNotSlowOthers: one client never ACKs, another ACKs
// once and then stops reading its stream (so the server's sends to it block
// on flow control); a live client still gets every update promptly.
func TestStalledClientDoesNotSlowOthers(t *testing.T) {
	ts := startServer(t, Config{Debounce: time.Millisecond})
	big := func(tag string) map[string]proto.Message {
		// 256 KiB per update: more than a stalled stream's flow-control window.
		return map[string]proto.Message{"blob": wrapperspb.Bytes([]byte(strings.Repeat(tag, 256<<10)))}
	}
	ts.setInitial(t, strs("a", "0"), big("0"))

	// Client 1 reads its first responses and never ACKs.
	noAck := newClient(t, ts, "no-ack")
	noAck.subscribe(t, "node-1/no-ack", typeA)
	noAck.subscribe(t, "node-1/no-ack", typeB)
	noAck.recv(t, 5*time.Second)
	noAck.recv(t, 5*time.Second)

	// Client 2 ACKs, then never reads again. A small fixed window (no BDP
	// growth) makes its stream fill up fast.
	conn := dial(t, ts.addr, grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
	noRead := openStream(t, conn, "good-no-read", false)
	noRead.subscribe(t, "node-2/no-read", typeB)
	first, err := noRead.stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	noRead.ack(t, first)

	live := newClient(t, ts, "live")
	live.subscribe(t, "node-3/live", typeA)
	live.subscribe(t, "node-3/live", typeB)
	for range 2 {
		live.ack(t, live.recv(t, 5*time.Second))
	}

	var worst time.Duration
	for i := 1; i <= 10; i++ {
		tag := fmt.Sprint(i % 10)
		start := time.Now()
		if err := ts.Update(typeB, big(tag), nil); err != nil {
			t.Fatal(err)
		}
		if err := ts.Update(typeA, strs("a", tag), nil); err != nil {
			t.Fatal(err)
		}
		for got := 0; got < 2; got++ {
			resp := live.recv(t, 5*time.Second)
			if len(resp.GetResources()) != 1 {
				t.Fatalf("update %d: got %v", i, names(resp))
			}
			live.ack(t, resp)
		}
		worst = max(worst, time.Since(start))
	}
	t.Logf("live client: slowest of 10 updates took %v with two stalled clients", worst)
	if worst > 2*time.Second {
		t.Errorf("live client slowed down: slowest update %v", worst)
	}
	if got := ts.metric(t, "cairn_xds_connected_clients", ""); got != 3 {
		t.Errorf("connected clients = %v, want 3", got)
	}
}

func TestDebugResources(t *testing.T) {
	ts, c := connected(t, Config{})
	_ = ts.Update(typeA, strs("c", "3"), []string{"a"})
	resp := c.recv(t, 5*time.Second)
	var out struct {
		Types []debugType `json:"types"`
	}
	getJSON(t, ts.DebugHandler(), "/debug/resources?type="+typeA, &out)
	if len(out.Types) != 1 || out.Types[0].TypeURL != typeA || !out.Types[0].Initialized {
		t.Fatalf("types = %+v", out.Types)
	}
	var got []string
	for _, r := range out.Types[0].Resources {
		got = append(got, r.Name)
		if r.Name == "c" && r.Version != resp.GetResources()[0].GetVersion() {
			t.Errorf("debug version of c %q, client got %q", r.Version, resp.GetResources()[0].GetVersion())
		}
	}
	if !slices.Equal(got, []string{"b", "c"}) {
		t.Errorf("resources = %v, want [b c]", got)
	}
	rec := httptest.NewRecorder()
	ts.DebugHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/debug/resources?type=nope", nil))
	if rec.Code != http.StatusNotFound {
		t.Errorf("unknown type: status %d", rec.Code)
	}
}

func getJSON(t testing.TB, h http.Handler, path string, v any) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	body, _ := io.ReadAll(rec.Body)
	if rec.Code != http.StatusOK {
		t.Fatalf("GET %s: %d %s", path, rec.Code, body)
	}
	if err := json.Unmarshal(body, v); err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
}

func waitFor(t testing.TB, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestReconnectSendsOnlyDifferences: a client that reconnects with the
// versions it holds (initial_resource_versions) gets only what changed
// while it was away, and removals of what is gone.
func TestReconnectSendsOnlyDifferences(t *testing.T) {
	ts := startServer(t, Config{})
	ts.setInitial(t, strs("a", "1", "b", "2", "c", "3"), nil)
	c := newClient(t, ts, "ztunnel")
	c.subscribe(t, "node-1/ztunnel", typeA)
	first := c.recv(t, 5*time.Second)
	held := make(map[string]string)
	for _, r := range first.GetResources() {
		held[r.GetName()] = r.GetVersion()
	}
	if err := ts.SetInitial(typeA, strs("b", "2", "c", "3-new", "d", "4")); err != nil {
		t.Fatal(err)
	}

	again := newClient(t, ts, "ztunnel")
	again.send(t, &discoverygrpc.DeltaDiscoveryRequest{
		Node: &core.Node{Id: "node-1/ztunnel"}, TypeUrl: typeA,
		ResourceNamesSubscribe: []string{"*"}, InitialResourceVersions: held,
	})
	resp := again.recv(t, 5*time.Second)
	if v := values(t, resp); fmt.Sprint(v) != "map[c:3-new d:4]" {
		t.Errorf("after reconnect got %v, want only c and d", v)
	}
	if !slices.Equal(resp.GetRemovedResources(), []string{"a"}) {
		t.Errorf("after reconnect removed %v, want [a]", resp.GetRemovedResources())
	}
}
