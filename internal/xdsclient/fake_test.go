package xdsclient

import (
	"cmp"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	workloadv1 "github.com/cairnmesh/cairn/apis/workload/v1"
)

// wait bounds every wait of the tests; nothing should come near it.
const wait = 10 * time.Second

// eventually polls cond until it holds, failing the test after wait.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// fakeADS is a scripted delta ADS server: it hands each new stream to the
// test, which reads the client's requests and sends responses by hand, so
// that every nonce and version is the test's own. It is built on
// go-control-plane's generated Envoy types, so every test also checks that
// the client's own messages and Envoy's agree on the wire.
type fakeADS struct {
	discoverygrpc.UnimplementedAggregatedDiscoveryServiceServer
	streams chan *fakeStream
}

type fakeStream struct {
	md    metadata.MD
	peer  *peer.Peer
	reqs  chan *discoverygrpc.DeltaDiscoveryRequest
	resps chan *discoverygrpc.DeltaDiscoveryResponse
	end   chan error
	nonce int
}

func (f *fakeADS) DeltaAggregatedResources(s grpc.BidiStreamingServer[discoverygrpc.DeltaDiscoveryRequest, discoverygrpc.DeltaDiscoveryResponse]) error {
	ctx := s.Context()
	md, _ := metadata.FromIncomingContext(ctx)
	p, _ := peer.FromContext(ctx)
	fs := &fakeStream{
		md:    md,
		peer:  p,
		reqs:  make(chan *discoverygrpc.DeltaDiscoveryRequest, 64),
		resps: make(chan *discoverygrpc.DeltaDiscoveryResponse),
		end:   make(chan error, 1),
	}
	select {
	case f.streams <- fs:
	case <-ctx.Done():
		return ctx.Err()
	}
	recvErr := make(chan error, 1)
	go func() {
		for {
			req, err := s.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case fs.reqs <- req:
			case <-ctx.Done():
				return
			}
		}
	}()
	for {
		select {
		case resp := <-fs.resps:
			if err := s.Send(resp); err != nil {
				return err
			}
		case err := <-fs.end:
			return err
		case err := <-recvErr:
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// next returns the next stream a client opens.
func (f *fakeADS) next(t *testing.T) *fakeStream {
	t.Helper()
	select {
	case fs := <-f.streams:
		return fs
	case <-time.After(wait):
		t.Fatal("timed out waiting for the client to open a stream")
		return nil
	}
}

// recv returns the client's next request.
func (fs *fakeStream) recv(t *testing.T) *discoverygrpc.DeltaDiscoveryRequest {
	t.Helper()
	select {
	case req := <-fs.reqs:
		return req
	case <-time.After(wait):
		t.Fatal("timed out waiting for a request")
		return nil
	}
}

// send sends resp with the next nonce of the stream, and returns the nonce.
func (fs *fakeStream) send(t *testing.T, resp *discoverygrpc.DeltaDiscoveryResponse) string {
	t.Helper()
	fs.nonce++
	resp.Nonce = "nonce-" + strconv.Itoa(fs.nonce)
	select {
	case fs.resps <- resp:
		return resp.Nonce
	case <-time.After(wait):
		t.Fatal("timed out sending a response")
		return ""
	}
}

// close ends the stream with an error status; the connection stays up.
func (fs *fakeStream) close(err error) { fs.end <- err }

// expectACK reads the next request and checks that it ACKs nonce.
func (fs *fakeStream) expectACK(t *testing.T, typeURL, nonce string) {
	t.Helper()
	req := fs.recv(t)
	if req.GetTypeUrl() != typeURL || req.GetResponseNonce() != nonce || req.GetErrorDetail() != nil {
		t.Fatalf("want ACK of %s nonce %s, got type %s nonce %q error %v",
			typeURL, nonce, req.GetTypeUrl(), req.GetResponseNonce(), req.GetErrorDetail())
	}
}

// expectNACK reads the next request, checks that it NACKs nonce, and
// returns its error message.
func (fs *fakeStream) expectNACK(t *testing.T, typeURL, nonce string) string {
	t.Helper()
	req := fs.recv(t)
	if req.GetTypeUrl() != typeURL || req.GetResponseNonce() != nonce || req.GetErrorDetail() == nil {
		t.Fatalf("want NACK of %s nonce %s, got type %s nonce %q error %v",
			typeURL, nonce, req.GetTypeUrl(), req.GetResponseNonce(), req.GetErrorDetail())
	}
	if req.GetErrorDetail().GetMessage() == "" {
		t.Fatal("NACK without a message")
	}
	return req.GetErrorDetail().GetMessage()
}

// harness runs a fakeADS behind TLS on a listener that tests can replace
// (the server going away and coming back), and builds clients that dial it.
type harness struct {
	t     *testing.T
	pki   *testPKI
	ads   *fakeADS
	addr  atomic.Pointer[string]
	dials atomic.Int32

	mu  sync.Mutex
	srv *grpc.Server
}

func newHarness(t *testing.T) *harness {
	h := &harness{t: t, pki: newTestPKI(t), ads: &fakeADS{streams: make(chan *fakeStream)}}
	h.start()
	t.Cleanup(h.stop)
	return h
}

// start serves on a new listener; clients dial it from then on.
func (h *harness) start() {
	h.t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		h.t.Fatal(err)
	}
	h.mu.Lock()
	serving := h.pki
	h.mu.Unlock()
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(serving.serverTLS())))
	discoverygrpc.RegisterAggregatedDiscoveryServiceServer(srv, h.ads)
	addr := ln.Addr().String()
	h.addr.Store(&addr)
	h.mu.Lock()
	h.srv = srv
	h.mu.Unlock()
	go func() { _ = srv.Serve(ln) }()
}

// stop takes the server away: listener and connections close.
func (h *harness) stop() {
	h.mu.Lock()
	srv := h.srv
	h.srv = nil
	h.mu.Unlock()
	if srv != nil {
		srv.Stop()
	}
}

// rotate makes the server present a certificate from a new root of its
// own from its next start on (istiod-lite restarted after its CA switched
// to a new root), and returns the old root and the new one.
func (h *harness) rotate() (old, next *x509.Certificate) {
	h.t.Helper()
	p := newTestPKI(h.t)
	h.mu.Lock()
	defer h.mu.Unlock()
	old = h.pki.root
	h.pki = p
	return old, p.root
}

// testRoots is a Roots whose pool the test replaces, as a trust bundle
// file reloaded after the kubelet updated its ConfigMap.
type testRoots struct {
	mu      sync.Mutex
	pool    *x509.CertPool
	changed chan struct{}
}

func newTestRoots(pool *x509.CertPool) *testRoots {
	return &testRoots{pool: pool, changed: make(chan struct{})}
}

func (r *testRoots) Pool() *x509.CertPool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.pool
}

func (r *testRoots) Changed() <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.changed
}

// set makes roots the trusted roots.
func (r *testRoots) set(roots ...*x509.Certificate) {
	pool := x509.NewCertPool()
	for _, c := range roots {
		pool.AddCert(c)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pool = pool
	close(r.changed)
	r.changed = make(chan struct{})
}

// config is a client configuration for the harness: TLS with the test root,
// a token file holding "token-1", fast back-off.
func (h *harness) config(handler Handler, obs Observer) Config {
	dir := h.t.TempDir()
	token := filepath.Join(dir, "token")
	writeFile(h.t, token, "token-1\n")
	h.mu.Lock()
	roots := newTestRoots(h.pki.roots)
	h.mu.Unlock()
	return Config{
		Address:     "passthrough:///" + DefaultAddress,
		TypeURLs:    []string{AddressTypeURL, AuthorizationTypeURL},
		Handler:     handler,
		NodeID:      NodeID("node-a", "ztunnel-x", "cairn-system"),
		UserAgent:   testUserAgent,
		Registry:    WorkloadRegistry(),
		Roots:       roots,
		TokenFile:   token,
		BackoffBase: time.Millisecond,
		BackoffMax:  20 * time.Millisecond,
		Observer:    obs,
		Logger:      testLogger(h.t),
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			h.dials.Add(1)
			return (&net.Dialer{}).DialContext(ctx, "tcp", *h.addr.Load())
		})},
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	// Write then rename, as the kubelet does, so a reader never sees half.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// run starts c.Run and, at cleanup, stops it and checks that it returned.
func run(t *testing.T, c *Client) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run returned %v", err)
				}
			case <-time.After(wait):
				t.Error("Run did not return after its context ended")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// testPKI is a root with a serving certificate for the control plane's name
// and a client certificate with ztunnel's SPIFFE ID.
type testPKI struct {
	root   *x509.Certificate
	roots  *x509.CertPool
	server tls.Certificate
	client tls.Certificate
}

func newTestPKI(t *testing.T) *testPKI {
	t.Helper()
	rootKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rootTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{Organization: []string{"cluster.local"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	rootDER, err := x509.CreateCertificate(rand.Reader, rootTmpl, rootTmpl, &rootKey.PublicKey, rootKey)
	if err != nil {
		t.Fatal(err)
	}
	root, err := x509.ParseCertificate(rootDER)
	if err != nil {
		t.Fatal(err)
	}
	leaf := func(serial int64, tmpl *x509.Certificate) tls.Certificate {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.SerialNumber = big.NewInt(serial)
		tmpl.NotBefore, tmpl.NotAfter = root.NotBefore, root.NotAfter
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		der, err := x509.CreateCertificate(rand.Reader, tmpl, root, &key.PublicKey, rootKey)
		if err != nil {
			t.Fatal(err)
		}
		return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	}
	spiffeID, _ := url.Parse("spiffe://cluster.local/ns/cairn-system/sa/ztunnel")
	pool := x509.NewCertPool()
	pool.AddCert(root)
	return &testPKI{
		root:   root,
		roots:  pool,
		server: leaf(2, &x509.Certificate{DNSNames: []string{DefaultServerName}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}),
		client: leaf(3, &x509.Certificate{URIs: []*url.URL{spiffeID}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}),
	}
}

// serverTLS is istiod-lite's TLS setup: TLS 1.3, a client certificate
// verified if given.
func (p *testPKI) serverTLS() *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{p.server},
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    p.roots,
	}
}

// memHandler holds what it is given, like ztunnel's state would, and
// rejects updates that reject says to.
type memHandler struct {
	mu     sync.Mutex
	state  map[string]map[string]proto.Message
	calls  int
	reject func(Update) error
}

func newMemHandler() *memHandler {
	return &memHandler{state: map[string]map[string]proto.Message{}}
}

func (h *memHandler) Apply(u Update) (err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.calls++
	var partial error
	if h.reject != nil {
		err := h.reject(u)
		var rejected *RejectedError
		if !errors.As(err, &rejected) && err != nil {
			return err
		}
		if rejected != nil { // apply the rest, as state.Store does
			partial = err
			u.Resources = maps.Clone(u.Resources)
			for _, name := range rejected.Names {
				delete(u.Resources, name)
			}
		}
	}
	defer func() { err = cmp.Or(err, partial) }()
	m := h.state[u.TypeURL]
	if m == nil {
		m = map[string]proto.Message{}
		h.state[u.TypeURL] = m
	}
	for name, msg := range u.Resources {
		m[name] = msg
	}
	for _, name := range u.Removed {
		delete(m, name)
	}
	return nil
}

func (h *memHandler) setReject(f func(Update) error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.reject = f
}

func (h *memHandler) callCount() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.calls
}

// check compares what the handler holds of typeURL with want.
func (h *memHandler) check(t *testing.T, typeURL string, want map[string]proto.Message) {
	t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	got := h.state[typeURL]
	if len(got) != len(want) {
		t.Fatalf("handler holds %d %s, want %d: %v", len(got), typeURL, len(want), got)
	}
	for name, w := range want {
		if g, ok := got[name]; !ok || !proto.Equal(g, w) {
			t.Fatalf("handler holds %s %q = %v, want %v", typeURL, name, g, w)
		}
	}
}

// recObserver counts what the client reports.
type recObserver struct {
	mu                            sync.Mutex
	connected, disconnected, acks int
	nacks                         []string
	retries                       []time.Duration
	lastRetryErr                  error
	failures                      []int
}

func (o *recObserver) Connected() { o.mu.Lock(); o.connected++; o.mu.Unlock() }
func (o *recObserver) Disconnected(error, time.Duration) {
	o.mu.Lock()
	o.disconnected++
	o.mu.Unlock()
}
func (o *recObserver) Retrying(failures int, delay time.Duration, err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.retries = append(o.retries, delay)
	o.failures = append(o.failures, failures)
	o.lastRetryErr = err
}
func (o *recObserver) ACK(string, int, int) { o.mu.Lock(); o.acks++; o.mu.Unlock() }
func (o *recObserver) NACK(_ string, err error) {
	o.mu.Lock()
	o.nacks = append(o.nacks, err.Error())
	o.mu.Unlock()
}

func (o *recObserver) get(f func(o *recObserver) int) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return f(o)
}

// Resources of the tests.

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

// resource is a resource on the wire, versioned by content as istiod-lite
// does (any distinct string would do).
func resource(t *testing.T, name string, msg proto.Message) *discoverygrpc.Resource {
	t.Helper()
	a, err := anypb.New(msg)
	if err != nil {
		t.Fatal(err)
	}
	return &discoverygrpc.Resource{Name: name, Version: fmt.Sprintf("v%x", sumBytes(a.GetValue())), Resource: a}
}

func sumBytes(b []byte) uint32 {
	var s uint32 = 2166136261
	for _, c := range b {
		s = (s ^ uint32(c)) * 16777619
	}
	return s
}

func unavailable() error { return status.Error(codes.Unavailable, "test: stream ended") }

// testLogger writes the client's logs into the test's output.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}
