package cpconn_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	cav1 "github.com/cairnmesh/cairn/apis/ca/v1"
	"github.com/cairnmesh/cairn/internal/cpconn"
	"github.com/cairnmesh/cairn/internal/identity"
	"github.com/cairnmesh/cairn/internal/pki"
	"github.com/cairnmesh/cairn/internal/spiffe"
	"github.com/cairnmesh/cairn/internal/xdsclient"
)

// wait bounds every wait; nothing should come near it.
const wait = 30 * time.Second

// fakeIstiod serves the CA and delta ADS on one listener, as istiod-lite
// does on 15012, and records which TCP connection each call came on.
type fakeIstiod struct {
	cav1.UnimplementedCertificateServiceServer
	discoverygrpc.UnimplementedAggregatedDiscoveryServiceServer

	t    *testing.T
	addr string

	mu      sync.Mutex
	signer  *pki.CA
	srv     *grpc.Server
	done    chan struct{}
	issued  []string // client address of each certificate issued
	streams []string // client address of each ADS stream that sent a request
	badAuth []string // calls without exactly one bearer token
}

func (f *fakeIstiod) bearer(ctx context.Context, what string) bool {
	md, _ := metadata.FromIncomingContext(ctx)
	auth := md.Get("authorization")
	if len(auth) == 1 && strings.HasPrefix(auth[0], "Bearer ") {
		return true
	}
	f.mu.Lock()
	f.badAuth = append(f.badAuth, what+": "+strings.Join(auth, " | "))
	f.mu.Unlock()
	return false
}

func clientAddr(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok {
		return p.Addr.String()
	}
	return "?"
}

func (f *fakeIstiod) CreateCertificate(ctx context.Context, req *cav1.CreateCertificateRequest) (*cav1.CreateCertificateResponse, error) {
	if !f.bearer(ctx, "CreateCertificate") {
		return nil, status.Error(codes.Unauthenticated, "want exactly one bearer token")
	}
	csr, err := pki.ParseCSR([]byte(req.GetCsr()))
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	id, err := pki.CSRIdentity(csr)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	f.mu.Lock()
	signer := f.signer
	f.mu.Unlock()
	leaf, err := signer.Sign(csr.PublicKey, id, pki.LeafOptions{})
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	f.mu.Lock()
	f.issued = append(f.issued, clientAddr(ctx))
	f.mu.Unlock()
	return &cav1.CreateCertificateResponse{CertChain: []string{
		string(pki.EncodeCertPEM(leaf)), string(pki.EncodeCertPEM(signer.Cert)),
	}}, nil
}

func (f *fakeIstiod) DeltaAggregatedResources(s grpc.BidiStreamingServer[discoverygrpc.DeltaDiscoveryRequest, discoverygrpc.DeltaDiscoveryResponse]) error {
	if !f.bearer(s.Context(), "DeltaAggregatedResources") {
		return status.Error(codes.Unauthenticated, "want exactly one bearer token")
	}
	if _, err := s.Recv(); err != nil {
		return err
	}
	f.mu.Lock()
	f.streams = append(f.streams, clientAddr(s.Context()))
	f.mu.Unlock()
	for {
		if _, err := s.Recv(); err != nil {
			return err
		}
	}
}

// start serves on f.addr (a new port the first time) with a serving
// certificate for cpconn.DefaultServerName from the signer.
func (f *fakeIstiod) start(signer *pki.CA) {
	t := f.t
	t.Helper()
	key, err := pki.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	istiod := spiffe.Identity{TrustDomain: "cluster.local", Namespace: "cairn-system", ServiceAccount: "istiod"}
	leaf, err := signer.Sign(key.Public(), istiod, pki.LeafOptions{DNSNames: []string{cpconn.DefaultServerName}})
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{{Certificate: [][]byte{leaf.Raw, signer.Cert.Raw}, PrivateKey: key, Leaf: leaf}},
	})))
	cav1.RegisterCertificateServiceServer(srv, f)
	discoverygrpc.RegisterAggregatedDiscoveryServiceServer(srv, f)
	addr := f.addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	var lis net.Listener
	for deadline := time.Now().Add(wait); ; time.Sleep(10 * time.Millisecond) {
		if lis, err = net.Listen("tcp", addr); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	f.mu.Lock()
	f.addr, f.signer, f.srv, f.done = lis.Addr().String(), signer, srv, done
	f.mu.Unlock()
	go func() {
		defer close(done)
		_ = srv.Serve(lis)
	}()
}

func (f *fakeIstiod) stop() {
	f.mu.Lock()
	srv, done := f.srv, f.done
	f.mu.Unlock()
	srv.Stop()
	<-done
}

// calls returns the client addresses of the certificates issued and of
// the ADS streams opened, from the given indexes on.
func (f *fakeIstiod) calls(fromIssued, fromStreams int) (issued, streams []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.issued[min(fromIssued, len(f.issued)):]...),
		append([]string(nil), f.streams[min(fromStreams, len(f.streams)):]...)
}

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

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(wait); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// TestOneConnectionSurvivesRootRotation: a proxy's CA client and xDS client
// share one connection to istiod-lite. istiod-lite restarts with a serving
// certificate from a new root; once the trust bundle has that root, a new
// certificate is issued and a new ADS stream opens without a restart of
// the proxy, both over one TCP connection, each call with exactly one
// bearer token, although gRPC's own back-off would wait an hour.
func TestOneConnectionSurvivesRootRotation(t *testing.T) {
	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	oldRoot, err := pki.NewRoot("cluster.local", 0)
	if err != nil {
		t.Fatal(err)
	}
	newRoot, err := pki.NewRoot("cluster.local", 0)
	if err != nil {
		t.Fatal(err)
	}
	ist := &fakeIstiod{t: t}
	ist.start(oldRoot)
	t.Cleanup(ist.stop)

	dir := t.TempDir()
	token, rootsPath := filepath.Join(dir, "token"), filepath.Join(dir, "root-cert.pem")
	if err := os.WriteFile(token, []byte("waypoint-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	writeRoots(t, rootsPath, oldRoot.Cert)
	bundle, err := identity.NewBundle(identity.BundleConfig{Path: rootsPath, PollInterval: 5 * time.Millisecond, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	var dials sync.Map
	conn, err := cpconn.Dial(cpconn.Config{
		Address: "passthrough:///" + cpconn.DefaultAddress, Roots: bundle, TokenFile: token,
		// Only a change of the roots can make gRPC dial again in time.
		BackoffBase: time.Hour, BackoffMax: time.Hour,
		Logger: log,
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			ist.mu.Lock()
			addr := ist.addr
			ist.mu.Unlock()
			c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
			if err == nil {
				dials.Store(c.LocalAddr().String(), true)
			}
			return c, err
		})},
	})
	if err != nil {
		t.Fatal(err)
	}
	id := spiffe.Identity{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: "waypoint"}
	mgr, src, err := identity.Single(identity.Config{
		Conn: conn, TokenFile: token, Bundle: bundle, RotationSpread: 10 * time.Millisecond, Logger: log,
	}, id)
	if err != nil {
		t.Fatal(err)
	}
	xds, err := xdsclient.New(xdsclient.Config{
		Conn:     conn,
		TypeURLs: []string{xdsclient.AddressTypeURL}, Registry: xdsclient.WorkloadRegistry(),
		Handler: xdsclient.HandlerFunc(func(xdsclient.Update) error { return nil }),
		NodeID:  "node-a~waypoint.shop", UserAgent: "cairn-test",
		BackoffBase: time.Hour, BackoffMax: time.Hour,
		Logger: log,
	})
	if err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, run := range []func(context.Context) error{bundle.Run, conn.Run, mgr.Run, xds.Run} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := run(ctx); err != nil {
				t.Errorf("Run: %v", err)
			}
		}()
	}
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		if err := conn.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})

	// oneConnection waits for a certificate and an ADS stream after the
	// given indexes, and checks they came on the same TCP connection, one
	// that the proxy's connection dialled.
	oneConnection := func(what string, fromIssued, fromStreams int) {
		t.Helper()
		var issued, streams []string
		eventually(t, what+": a certificate issued and an ADS stream open", func() bool {
			issued, streams = ist.calls(fromIssued, fromStreams)
			return len(issued) > 0 && len(streams) > 0
		})
		if issued[0] != streams[0] {
			t.Errorf("%s: the CA call came from %s, the ADS stream from %s: want one connection", what, issued[0], streams[0])
		}
		if _, ok := dials.Load(issued[0]); !ok {
			t.Errorf("%s: calls from %s, which the shared connection did not dial", what, issued[0])
		}
	}
	oneConnection("at start", 0, 0)
	aw, acancel := context.WithTimeout(ctx, wait)
	first, err := src.Await(aw)
	acancel()
	if err != nil {
		t.Fatal(err)
	}

	// istiod-lite's CA switched to a new root and it restarts with a
	// serving certificate from it: the proxy does not trust it yet.
	issuedBefore, streamsBefore := ist.calls(0, 0)
	ist.stop()
	ist.start(newRoot)
	// The kubelet updates the bundle: the new root first, as istiod-lite
	// lists the root it signs under.
	writeRoots(t, rootsPath, newRoot.Cert, oldRoot.Cert)
	oneConnection("after the rotation", len(issuedBefore), len(streamsBefore))
	eventually(t, "a certificate under the new root", func() bool {
		svid, err := src.GetX509SVID()
		return err == nil && svid.Certificates[0].CheckSignatureFrom(newRoot.Cert) == nil
	})
	if svid, _ := src.GetX509SVID(); svid.Certificates[0].SerialNumber.Cmp(first.Certificates[0].SerialNumber) == 0 {
		t.Error("the certificate was not renewed")
	}
	ist.mu.Lock()
	bad := append([]string(nil), ist.badAuth...)
	ist.mu.Unlock()
	if len(bad) > 0 {
		t.Errorf("calls without exactly one bearer token: %q", bad)
	}
}

func TestDialChecksConfig(t *testing.T) {
	if _, err := cpconn.Dial(cpconn.Config{}); err == nil || !strings.Contains(err.Error(), "no Roots") {
		t.Errorf("Dial without roots: %v", err)
	}
	if _, err := cpconn.Dial(cpconn.Config{Insecure: true, TokenFile: "/token"}); err == nil || !strings.Contains(err.Error(), "plaintext") {
		t.Errorf("Dial sending a token in plaintext: %v", err)
	}
	if _, err := cpconn.Dial(cpconn.Config{Insecure: true, BackoffBase: time.Second, BackoffMax: time.Millisecond}); err == nil {
		t.Error("Dial accepted a back-off max below its base")
	}
	c, err := cpconn.Dial(cpconn.Config{Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	if c.Address() != cpconn.DefaultAddress || c.Changed() != nil {
		t.Errorf("insecure conn: address %q, changed %v", c.Address(), c.Changed())
	}
	if err := c.Close(); err != nil {
		t.Error(err)
	}
}

func TestReadToken(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "token")
	if _, err := cpconn.ReadToken(p); err == nil {
		t.Error("a missing token read")
	}
	if err := os.WriteFile(p, []byte(" \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := cpconn.ReadToken(p); err == nil || !strings.Contains(err.Error(), "empty") {
		t.Errorf("an empty token: %v", err)
	}
	if err := os.WriteFile(p, []byte("abc\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if tok, err := cpconn.ReadToken(p); err != nil || tok != "abc" {
		t.Errorf("token %q, %v", tok, err)
	}
}
