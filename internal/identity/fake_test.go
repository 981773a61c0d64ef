package identity

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"math"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	cav1 "github.com/cairnmesh/cairn/apis/ca/v1"
	"github.com/cairnmesh/cairn/internal/pki"
	"github.com/cairnmesh/cairn/internal/spiffe"
)

// wait bounds every wait of the tests for something that must happen. It
// is a failure deadline, never a timing target: no test expects it to
// pass.
const wait = 10 * time.Second

// fakeClock is a clock that moves only when told. Timers are deadlines,
// so one armed after the clock moved past it fires at once.
type fakeClock struct {
	mu      sync.Mutex
	now     time.Time
	waiters map[*fakeWaiter]struct{}
}

type fakeWaiter struct {
	at time.Time
	ch chan time.Time
}

func newFakeClock() *fakeClock {
	// Whole seconds, as in certificates, so that lifetimes compare exactly.
	return &fakeClock{now: time.Now().Truncate(time.Second), waiters: map[*fakeWaiter]struct{}{}}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) At(t time.Time) (<-chan time.Time, func() bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	w := &fakeWaiter{at: t, ch: make(chan time.Time, 1)}
	if !t.After(c.now) {
		w.ch <- c.now
		return w.ch, func() bool { return false }
	}
	c.waiters[w] = struct{}{}
	return w.ch, func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		_, ok := c.waiters[w]
		delete(c.waiters, w)
		return ok
	}
}

// Advance moves the clock forward by d and fires the timers now due.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	for w := range c.waiters {
		if !w.at.After(c.now) {
			w.ch <- c.now
			delete(c.waiters, w)
		}
	}
}

// fakeCA is the CA service over a pki.CA, on loopback with TLS, as
// istiod-lite serves it: a bearer token is required, the CSR is checked
// and signed. Tests change what it answers with setAnswer.
type fakeCA struct {
	cav1.UnimplementedCertificateServiceServer
	addr  string
	clock *fakeClock

	mu     sync.Mutex
	root   *pki.CA
	answer func(req signRequest) (*cav1.CreateCertificateResponse, error) // nil: sign
	tokens []string                                                       // of every request, in order
	gate   chan struct{}                                                  // if set, requests wait until it is closed
}

// signRequest is a parsed request, for answers to build on.
type signRequest struct {
	id  spiffe.Identity
	pub crypto.PublicKey
	ttl time.Duration
}

const testServerName = "istiod.cairn-system.svc"

func newFakeCA(t *testing.T, root *pki.CA, clk *fakeClock) *fakeCA {
	t.Helper()
	f := &fakeCA{root: root, clock: clk}
	key, err := pki.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	istiod := spiffe.Identity{TrustDomain: "cluster.local", Namespace: "cairn-system", ServiceAccount: "istiod"}
	// Real time: the handshake verifies it with the wall clock.
	leaf, err := root.Sign(key.Public(), istiod, pki.LeafOptions{DNSNames: []string{testServerName}})
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{{Certificate: [][]byte{leaf.Raw, root.Cert.Raw}, PrivateKey: key, Leaf: leaf}},
	})))
	cav1.RegisterCertificateServiceServer(srv, f)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.addr = lis.Addr().String()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(lis)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-done
	})
	return f
}

func (f *fakeCA) CreateCertificate(ctx context.Context, req *cav1.CreateCertificateRequest) (*cav1.CreateCertificateResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	auth := md.Get("authorization")
	token, ok := "", len(auth) == 1
	if ok {
		token, ok = strings.CutPrefix(auth[0], "Bearer ")
	}
	f.mu.Lock()
	f.tokens = append(f.tokens, token)
	gate, answer, root := f.gate, f.answer, f.root
	f.mu.Unlock()
	if !ok {
		return nil, status.Error(codes.Unauthenticated, "no bearer token")
	}
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	}
	csr, err := pki.ParseCSR([]byte(req.GetCsr()))
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	id, err := pki.CSRIdentity(csr)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	sr := signRequest{id: id, pub: csr.PublicKey, ttl: time.Duration(req.GetValiditySeconds()) * time.Second}
	if answer != nil {
		return answer(sr)
	}
	return f.sign(root, sr)
}

// sign issues what istiod-lite would: a leaf for the request, by root, at
// the fake clock's time. The clock skew is large so that NotBefore is
// clipped to the root's and the certificate is also valid for the real
// clock of TLS handshakes.
func (f *fakeCA) sign(root *pki.CA, r signRequest) (*cav1.CreateCertificateResponse, error) {
	leaf, err := root.Sign(r.pub, r.id, pki.LeafOptions{TTL: r.ttl, ClockSkew: 48 * time.Hour, Now: f.clock.Now})
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &cav1.CreateCertificateResponse{CertChain: []string{
		string(pki.EncodeCertPEM(leaf)), string(pki.EncodeCertPEM(root.Cert)),
	}}, nil
}

func (f *fakeCA) setAnswer(a func(signRequest) (*cav1.CreateCertificateResponse, error)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.answer = a
}

func (f *fakeCA) setRoot(root *pki.CA) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.root = root
}

func (f *fakeCA) setGate(g chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.gate = g
}

func (f *fakeCA) seenTokens() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.tokens...)
}

// event is one Observer call.
type event struct {
	kind     string // issued, failed, dropped
	id       spiffe.Identity
	reason   Reason
	err      error
	retryIn  time.Duration
	notAfter time.Time
}

// recorder is an Observer that queues what it is told.
type recorder struct{ events chan event }

func newRecorder() *recorder { return &recorder{events: make(chan event, 1000)} }

func (r *recorder) Issued(id spiffe.Identity, notAfter time.Time) {
	r.events <- event{kind: "issued", id: id, notAfter: notAfter}
}

func (r *recorder) Failed(id spiffe.Identity, reason Reason, err error, retryIn time.Duration) {
	r.events <- event{kind: "failed", id: id, reason: reason, err: err, retryIn: retryIn}
}

func (r *recorder) Dropped(id spiffe.Identity) { r.events <- event{kind: "dropped", id: id} }

// next returns the next event, failing the test if none comes in time.
func (r *recorder) next(t *testing.T) event {
	t.Helper()
	select {
	case ev := <-r.events:
		return ev
	case <-time.After(wait):
		t.Fatal("no observer event in time")
		return event{}
	}
}

// expect returns the next event and checks its kind and identity.
func (r *recorder) expect(t *testing.T, kind string, id spiffe.Identity) event {
	t.Helper()
	ev := r.next(t)
	if ev.kind != kind || ev.id != id {
		t.Fatalf("observer event = %s %s (%v), want %s %s", ev.kind, ev.id, ev.err, kind, id)
	}
	return ev
}

// harness is a Manager running against a fakeCA with a fake clock.
type harness struct {
	t         *testing.T
	dir       string
	root      *pki.CA
	clock     *fakeClock
	ca        *fakeCA
	bundle    *Bundle
	obs       *recorder
	m         *Manager
	tokenPath string
	cancel    context.CancelFunc
	done      chan error
	jitter    atomic.Uint64 // float64 bits: what the manager's jitter returns (0 unless set)
}

// newHarness starts a Manager; adjust changes its configuration first.
func newHarness(t *testing.T, adjust func(*Config)) *harness {
	t.Helper()
	h := &harness{t: t, dir: t.TempDir(), root: newRoot(t), clock: newFakeClock(), obs: newRecorder()}
	h.ca = newFakeCA(t, h.root, h.clock)
	h.tokenPath = filepath.Join(h.dir, "token")
	h.writeToken("token-1")
	h.bundle = newTestBundle(t, filepath.Join(h.dir, "root-cert.pem"), h.root.Cert)
	cfg := Config{
		Address:    h.ca.addr,
		ServerName: testServerName,
		TokenFile:  h.tokenPath,
		Bundle:     h.bundle,
		TTL:        time.Hour,
		Linger:     time.Minute,
		Observer:   h.obs,
		Logger:     testLogger(t),
	}
	if adjust != nil {
		adjust(&cfg)
	}
	m, err := newManager(cfg, h.clock, func() float64 { return math.Float64frombits(h.jitter.Load()) })
	if err != nil {
		t.Fatal(err)
	}
	h.m = m
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel, h.done = cancel, make(chan error, 1)
	go func() { h.done <- m.Run(ctx) }()
	t.Cleanup(h.stop)
	return h
}

// stop ends Run and checks that it returns, with its goroutines, in time.
func (h *harness) stop() {
	h.t.Helper()
	h.cancel()
	select {
	case err := <-h.done:
		if err != nil {
			h.t.Errorf("Run: %v", err)
		}
		h.done <- err // stop may run twice
	case <-time.After(wait):
		h.t.Error("Run did not return after its context ended")
	}
}

func (h *harness) writeToken(tok string) {
	h.t.Helper()
	if err := os.WriteFile(h.tokenPath, []byte(tok+"\n"), 0o600); err != nil {
		h.t.Fatal(err)
	}
}

// await waits for id's certificate.
func (h *harness) await(id spiffe.Identity) *x509svid.SVID {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	svid, err := h.m.Source(id).Await(ctx)
	if err != nil {
		h.t.Fatal(err)
	}
	return svid
}

// dump returns the dump of id, failing if it is not there.
func (h *harness) dump(id spiffe.Identity) CertificateDump {
	h.t.Helper()
	for _, d := range h.m.Dump() {
		if d.Identity == id.String() {
			return d
		}
	}
	h.t.Fatalf("%s not in dump %+v", id, h.m.Dump())
	return CertificateDump{}
}

func newRoot(t *testing.T) *pki.CA {
	t.Helper()
	root, err := pki.NewRoot("cluster.local", 0)
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// writeRoots writes roots as PEM to path, replacing the file atomically.
func writeRoots(t *testing.T, path string, roots ...*x509.Certificate) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, pki.EncodeCertsPEM(roots...), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func newTestBundle(t *testing.T, path string, roots ...*x509.Certificate) *Bundle {
	t.Helper()
	writeRoots(t, path, roots...)
	b, err := NewBundle(BundleConfig{Path: path, PollInterval: 5 * time.Millisecond, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// runBundle runs b until the test ends.
func runBundle(t *testing.T, b *Bundle) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Bundle.Run: %v", err)
		}
	})
}

func identity(sa string) spiffe.Identity {
	return spiffe.Identity{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: sa}
}

func serial(svid *x509svid.SVID) string { return leafOf(svid).SerialNumber.Text(16) }

func isCode(err error, c codes.Code) bool {
	var se interface{ GRPCStatus() *status.Status }
	return errors.As(err, &se) && se.GRPCStatus().Code() == c
}
