package ca

import (
	"context"
	"crypto/ed25519"
	"crypto/x509"
	"errors"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	cav1 "github.com/cairnmesh/cairn/apis/ca/v1"
	"github.com/cairnmesh/cairn/internal/pki"
	"github.com/cairnmesh/cairn/internal/spiffe"
)

// metaAuth takes the caller from the "x-caller" metadata:
// ns/sa[/pod/uid[/node]]. "bad" fails.
type metaAuth struct{}

func (metaAuth) Authenticate(ctx context.Context) (Caller, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	v := md.Get("x-caller")
	if len(v) != 1 || v[0] == "bad" {
		return Caller{}, errors.New("no valid caller")
	}
	p := append(strings.Split(v[0], "/"), "", "", "")
	return Caller{Namespace: p[0], ServiceAccount: p[1], PodName: p[2], PodUID: p[3], NodeName: p[4]}, nil
}

type fakePods struct {
	pods map[string]PodInfo // ns/name
}

func (f fakePods) Pod(ns, name string) (PodInfo, bool) { p, ok := f.pods[ns+"/"+name]; return p, ok }
func (f fakePods) HasPodOnNode(node, ns, sa string) bool {
	for k, p := range f.pods {
		if p.NodeName == node && p.ServiceAccount == sa && strings.HasPrefix(k, ns+"/") {
			return true
		}
	}
	return false
}

func TestCreateCertificate(t *testing.T) {
	pods := fakePods{pods: map[string]PodInfo{
		"cairn-system/ztunnel-a": {UID: "uid-za", ServiceAccount: "ztunnel", NodeName: "node-a"},
		"cairn-system/ztunnel-x": {UID: "uid-zx", ServiceAccount: "ztunnel"}, // not scheduled
		"app/web-1":              {UID: "u1", ServiceAccount: "web", NodeName: "node-a"},
		"app/db-1":               {UID: "u2", ServiceAccount: "db", NodeName: "node-b"},
	}}
	reg := prometheus.NewRegistry()
	srv, err := New(Config{Authenticator: metaAuth{}, Pods: pods, Registerer: reg, MaxTTL: 48 * time.Hour, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	client := serve(t, srv)

	key, _ := pki.GenerateKey()
	csr := func(ns, sa string) string {
		p, err := pki.NewCSR(key, spiffe.Identity{TrustDomain: "cluster.local", Namespace: ns, ServiceAccount: sa})
		if err != nil {
			t.Fatal(err)
		}
		return string(p)
	}
	call := func(caller, csr string, ttl int64) (*cav1.CreateCertificateResponse, error) {
		ctx := metadata.AppendToOutgoingContext(context.Background(), "x-caller", caller)
		return client.CreateCertificate(ctx, &cav1.CreateCertificateRequest{Csr: csr, ValiditySeconds: ttl})
	}

	// Before SetAuthority: Unavailable.
	if _, err := call("app/web", csr("app", "web"), 0); status.Code(err) != codes.Unavailable {
		t.Fatalf("before SetAuthority: %v", err)
	}
	root, _ := pki.NewRoot("cluster.local", 0)
	srv.SetAuthority(root)
	bundle, _ := pki.NewBundle("cluster.local", []*x509.Certificate{root.Cert})

	_, edKey, _ := ed25519.GenerateKey(nil)
	edCSR, err := pki.NewCSR(edKey, spiffe.Identity{TrustDomain: "cluster.local", Namespace: "app", ServiceAccount: "web"})
	if err != nil {
		t.Fatal(err)
	}
	foreignTD, _ := pki.NewCSR(key, spiffe.Identity{TrustDomain: "evil.org", Namespace: "app", ServiceAccount: "web"})
	tests := []struct {
		name, caller, csr string
		ttl               int64
		want              codes.Code
	}{
		{"workload own identity", "app/web", csr("app", "web"), 0, codes.OK},
		{"workload other identity", "app/web", csr("app", "db"), 0, codes.PermissionDenied},
		{"ztunnel pod on node a", "cairn-system/ztunnel/ztunnel-a/uid-za", csr("app", "web"), 0, codes.OK},
		{"ztunnel node claim consistent", "cairn-system/ztunnel/ztunnel-a/uid-za/node-a", csr("app", "web"), 3600, codes.OK},
		{"ztunnel own identity", "cairn-system/ztunnel/ztunnel-a/uid-za", csr("cairn-system", "ztunnel"), 0, codes.OK},
		{"ztunnel for node b", "cairn-system/ztunnel/ztunnel-a/uid-za", csr("app", "db"), 0, codes.PermissionDenied},
		{"ztunnel unbound token", "cairn-system/ztunnel", csr("app", "web"), 0, codes.PermissionDenied},
		{"ztunnel pod gone", "cairn-system/ztunnel/ztunnel-gone/uid", csr("app", "web"), 0, codes.PermissionDenied},
		{"ztunnel pod replaced", "cairn-system/ztunnel/ztunnel-a/old-uid", csr("app", "web"), 0, codes.PermissionDenied},
		{"ztunnel node claim differs", "cairn-system/ztunnel/ztunnel-a/uid-za/node-b", csr("app", "db"), 0, codes.PermissionDenied},
		{"ztunnel pod unscheduled", "cairn-system/ztunnel/ztunnel-x/uid-zx", csr("app", "web"), 0, codes.PermissionDenied},
		{"other SA in cairn-system", "cairn-system/other/ztunnel-a/uid-za", csr("app", "web"), 0, codes.PermissionDenied},
		{"unauthenticated", "bad", csr("app", "web"), 0, codes.Unauthenticated},
		{"garbage CSR", "app/web", "not a csr", 0, codes.InvalidArgument},
		{"foreign trust domain", "app/web", string(foreignTD), 0, codes.InvalidArgument},
		{"Ed25519 key", "app/web", string(edCSR), 0, codes.InvalidArgument},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := call(tc.caller, tc.csr, tc.ttl)
			if got := status.Code(err); got != tc.want {
				t.Fatalf("code %v (%v), want %v", got, err, tc.want)
			}
			if err != nil {
				t.Logf("refused: %v", status.Convert(err).Message())
				return
			}
			if len(resp.CertChain) != 2 {
				t.Fatalf("chain of %d", len(resp.CertChain))
			}
			var chain []*x509.Certificate
			for _, p := range resp.CertChain {
				c, err := pki.ParseCertsPEM([]byte(p))
				if err != nil {
					t.Fatal(err)
				}
				chain = append(chain, c...)
			}
			if !chain[1].Equal(root.Cert) {
				t.Error("last certificate is not the root")
			}
			id, _, err := x509svid.Verify(chain[:1], bundle)
			if err != nil {
				t.Fatal(err)
			}
			req, _ := pki.ParseCSR([]byte(tc.csr))
			if id.String() != req.URIs[0].String() {
				t.Errorf("issued for %s, asked %s", id, req.URIs[0])
			}
			want := 24 * time.Hour
			if tc.ttl > 0 {
				want = time.Duration(tc.ttl) * time.Second
			}
			if d := chain[0].NotAfter.Sub(chain[0].NotBefore) - pki.DefaultClockSkew; d < want-time.Second || d > want+time.Second {
				t.Errorf("lifetime %v, want %v", d, want)
			}
		})
	}

	// Max TTL caps what is asked.
	resp, err := call("app/web", csr("app", "web"), 1000*3600)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := pki.ParseCertsPEM([]byte(resp.CertChain[0]))
	if d := time.Until(leaf[0].NotAfter); d > 48*time.Hour {
		t.Errorf("lifetime %v above max TTL", d)
	}

	if got := counter(t, reg, "cairn_ca_csr_signed_total", ""); got != 5 {
		t.Errorf("signed = %v, want 5", got)
	}
	if got := counter(t, reg, "cairn_ca_csr_refused_total", "PermissionDenied"); got != 8 {
		t.Errorf("refused PermissionDenied = %v, want 8", got)
	}
}

func TestNewValidates(t *testing.T) {
	if _, err := New(Config{}); err == nil {
		t.Error("New without Authenticator succeeded")
	}
	if _, err := New(Config{Authenticator: metaAuth{}, Pods: fakePods{}, TrustDomain: "Bad Domain"}); err == nil {
		t.Error("bad trust domain accepted")
	}
	if _, err := New(Config{Authenticator: metaAuth{}, Pods: fakePods{}, DefaultTTL: time.Hour, MaxTTL: time.Minute}); err == nil {
		t.Error("default above max accepted")
	}
}

// serve runs srv on a loopback listener and returns a client.
func serve(t testing.TB, srv *Server) cav1.CertificateServiceClient {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	srv.Register(gs)
	go func() { _ = gs.Serve(ln) }()
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return cav1.NewCertificateServiceClient(conn)
}

// counter reads a counter from reg; code selects the "code" label if set.
func counter(t *testing.T, reg *prometheus.Registry, name, code string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			match := code == ""
			for _, l := range m.GetLabel() {
				if l.GetName() == "code" && l.GetValue() == code {
					match = true
				}
			}
			if match {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// BenchmarkCreateCertificate: one CSR over a loopback gRPC connection,
// authenticated by a fake (no TokenReview), parsed, authorized and signed.
func BenchmarkCreateCertificate(b *testing.B) {
	srv, err := New(Config{Authenticator: metaAuth{}, Pods: fakePods{}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	root, _ := pki.NewRoot("cluster.local", 0)
	srv.SetAuthority(root)
	client := serve(b, srv)
	key, _ := pki.GenerateKey()
	csr, _ := pki.NewCSR(key, spiffe.Identity{TrustDomain: "cluster.local", Namespace: "app", ServiceAccount: "web"})
	ctx := metadata.AppendToOutgoingContext(context.Background(), "x-caller", "app/web")
	req := &cav1.CreateCertificateRequest{Csr: string(csr)}
	for b.Loop() {
		if _, err := client.CreateCertificate(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
}
