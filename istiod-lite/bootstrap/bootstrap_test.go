package bootstrap

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	cav1 "github.com/cairnmesh/cairn/apis/ca/v1"
	workloadv1 "github.com/cairnmesh/cairn/apis/workload/v1"
	"github.com/cairnmesh/cairn/internal/pki"
	"github.com/cairnmesh/cairn/internal/spiffe"
	"github.com/cairnmesh/cairn/internal/testenv"
	"github.com/cairnmesh/cairn/istiod-lite/ca/kubeca"
	"github.com/cairnmesh/cairn/istiod-lite/model"
)

func TestMain(m *testing.M) { testenv.Main(m, testenv.Options{ControllerManager: true}) }

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func eventually(t *testing.T, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestIstiodLiteServesCertificatesAndWorkloads starts istiod-lite against
// a real API server and uses it the way a workload and a ztunnel do: over
// TLS that verifies against the published trust bundle, a workload gets a
// certificate for its own identity but no workload discovery (neither
// with its token nor with its mesh certificate: PermissionDenied), while
// the ztunnel service account gets, over delta xDS, the workload of a
// running pod, with its token or with its own mesh certificate.
func TestIstiodLiteServesCertificatesAndWorkloads(t *testing.T) {
	env := testenv.Get(t)
	kube := env.Client()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if _, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "cairn-system"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	shop := env.Namespace(t, map[string]string{model.DataplaneModeLabel: model.DataplaneModeAmbient})

	cfg := Config{
		Kubeconfig: env.Server().KubeconfigPath(), Namespace: "cairn-system", ServiceAccount: "istiod-lite",
		XDSAddress: freeAddr(t), MetricsAddress: freeAddr(t), DebugAddress: freeAddr(t),
		TrustDomain: "cluster.local", ClusterID: "Kubernetes", DomainSuffix: "cluster.local",
		RootNamespace: "istio-system", TokenAudience: "istio-ca", Ztunnel: "cairn-system/ztunnel",
		XDSServiceAccounts: []string{"cairn-system/ztunnel"},
		Debounce:           10 * time.Millisecond, MaxDelay: 100 * time.Millisecond,
		CertTTL: time.Hour, MaxCertTTL: time.Hour,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	eventually(t, "istiod-lite ready on the probe (metrics) port", func() error {
		resp, err := http.Get("http://" + cfg.MetricsAddress + "/ready")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%d %s", resp.StatusCode, body)
		}
		return nil
	})

	// The trust bundle is published into the enrolled namespace.
	roots := x509.NewCertPool()
	eventually(t, "trust bundle in the enrolled namespace", func() error {
		cm, err := kube.CoreV1().ConfigMaps(shop).Get(ctx, kubeca.DefaultConfigMapName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if !roots.AppendCertsFromPEM([]byte(cm.Data[kubeca.ConfigMapKey])) {
			return fmt.Errorf("no certificate in %q", cm.Data[kubeca.ConfigMapKey])
		}
		return nil
	})

	// A running pod of service account reviews, and a token bound to it.
	if _, err := kube.CoreV1().ServiceAccounts(shop).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "reviews"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod, err := kube.CoreV1().Pods(shop).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "reviews-1", Labels: map[string]string{"app": "reviews"}},
		Spec: corev1.PodSpec{NodeName: "node-a", ServiceAccountName: "reviews",
			Containers: []corev1.Container{{Name: "app", Image: "cairn/echoserver:latest"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = kube.CoreV1().Pods(shop).Delete(context.Background(), "reviews-1", metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)})
	})
	pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "198.18.1.5", PodIPs: []corev1.PodIP{{IP: "198.18.1.5"}},
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: metav1.Now()}}}
	if _, err := kube.CoreV1().Pods(shop).UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	tr, err := kube.CoreV1().ServiceAccounts(shop).CreateToken(ctx, "reviews", &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{
		Audiences:      []string{"istio-ca"},
		BoundObjectRef: &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
	}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}

	conn, err := grpc.NewClient(cfg.XDSAddress, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		RootCAs: roots, ServerName: "istiod.cairn-system.svc", MinVersion: tls.VersionTLS13,
	})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	authed := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tr.Status.Token)

	// The CA signs the caller's own identity; the chain verifies against
	// the published bundle.
	id := spiffe.Identity{TrustDomain: "cluster.local", Namespace: shop, ServiceAccount: "reviews"}
	key, err := pki.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := pki.NewCSR(key, id)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := cav1.NewCertificateServiceClient(conn).CreateCertificate(authed, &cav1.CreateCertificateRequest{Csr: string(csr)})
	if err != nil {
		t.Fatalf("CreateCertificate over TLS with the pod's token: %v", err)
	}
	chain, err := pki.ParseCertsPEM([]byte(resp.GetCertChain()[0]))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Errorf("issued certificate does not verify against the trust bundle: %v", err)
	}
	if got, err := spiffe.FromCert(chain[0]); err != nil || got != id {
		t.Errorf("issued certificate names %v (%v), want %v", got, err, id)
	}
	var meshCert tls.Certificate
	for _, pemCert := range resp.GetCertChain() {
		certs, err := pki.ParseCertsPEM([]byte(pemCert))
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range certs {
			meshCert.Certificate = append(meshCert.Certificate, c.Raw)
		}
	}
	meshCert.PrivateKey = key

	// The workload's own token: no workload discovery for it.
	if err := xdsFirstResponse(authed, conn); status.Code(err) != codes.PermissionDenied ||
		!strings.Contains(err.Error(), "--xds-service-accounts") {
		t.Errorf("xDS with a workload's token: %v, want PermissionDenied naming --xds-service-accounts", err)
	}

	// The ztunnel service account's token: the pod's workload arrives.
	if _, err := kube.CoreV1().ServiceAccounts("cairn-system").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "ztunnel"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ztr, err := kube.CoreV1().ServiceAccounts("cairn-system").CreateToken(ctx, "ztunnel", &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{
		Audiences: []string{"istio-ca"},
	}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ztunnelCtx := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+ztr.Status.Token)
	stream, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ztunnelCtx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&discoverygrpc.DeltaDiscoveryRequest{TypeUrl: model.AddressTypeURL, ResourceNamesSubscribe: []string{"*"}}); err != nil {
		t.Fatal(err)
	}
	want := model.Config{}.PodUID(shop, "reviews-1")
	eventually(t, "the pod's workload over delta xDS", func() error {
		r, err := stream.Recv()
		if err != nil {
			return err
		}
		_ = stream.Send(&discoverygrpc.DeltaDiscoveryRequest{TypeUrl: model.AddressTypeURL, ResponseNonce: r.GetNonce()})
		for _, res := range r.GetResources() {
			if res.GetName() != want {
				continue
			}
			var addr workloadv1.Address
			if err := res.GetResource().UnmarshalTo(&addr); err != nil {
				return err
			}
			if addr.GetWorkload().GetServiceAccount() != "reviews" {
				return fmt.Errorf("workload %v has the wrong service account", addr.GetWorkload())
			}
			return nil
		}
		return fmt.Errorf("response without %s", want)
	})

	// The ztunnel's own mesh certificate (the CA signs a caller's own
	// identity) also authenticates it, without a token.
	ztunnelCert := issue(ztunnelCtx, t, conn, spiffe.Identity{TrustDomain: "cluster.local", Namespace: "cairn-system", ServiceAccount: "ztunnel"})

	// No token this time: a mesh certificate authenticates the client,
	// and only the ztunnel's may read workload discovery. Without either,
	// the stream is refused.
	for _, tc := range []struct {
		name  string
		certs []tls.Certificate
		want  codes.Code
	}{
		{"ztunnel's mesh certificate", []tls.Certificate{ztunnelCert}, codes.OK},
		{"a workload's mesh certificate", []tls.Certificate{meshCert}, codes.PermissionDenied},
		{"no credential", nil, codes.Unauthenticated},
	} {
		c, err := grpc.NewClient(cfg.XDSAddress, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
			RootCAs: roots, ServerName: "istiod.cairn-system.svc", MinVersion: tls.VersionTLS13, Certificates: tc.certs,
		})))
		if err != nil {
			t.Fatal(err)
		}
		if err := xdsFirstResponse(ctx, c); status.Code(err) != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
		c.Close()
	}

	// The debug pages list the whole mesh: they are served on the debug
	// address only, not on the pod-reachable metrics and probe port.
	for _, tc := range []struct {
		addr string
		want int
	}{{cfg.DebugAddress, http.StatusOK}, {cfg.MetricsAddress, http.StatusNotFound}} {
		resp, err := http.Get("http://" + tc.addr + "/debug/model")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("GET %s/debug/model: %d, want %d", tc.addr, resp.StatusCode, tc.want)
		}
	}
}

// xdsFirstResponse opens a delta ADS stream on conn with callCtx's credentials
// and waits for the first response to a wildcard Address subscription: nil
// if it came with resources, else the stream's error.
func xdsFirstResponse(callCtx context.Context, conn *grpc.ClientConn) error {
	ctx, cancel := context.WithTimeout(callCtx, 10*time.Second)
	defer cancel()
	s, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		return err
	}
	if err := s.Send(&discoverygrpc.DeltaDiscoveryRequest{TypeUrl: model.AddressTypeURL, ResourceNamesSubscribe: []string{"*"}}); err != nil && err != io.EOF {
		return err
	}
	r, err := s.Recv()
	if err != nil {
		return err
	}
	if len(r.GetResources()) == 0 {
		return fmt.Errorf("empty first response")
	}
	return nil
}

// issue gets a certificate for id from the CA with ctx's token.
func issue(ctx context.Context, t *testing.T, conn *grpc.ClientConn, id spiffe.Identity) tls.Certificate {
	t.Helper()
	key, err := pki.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := pki.NewCSR(key, id)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := cav1.NewCertificateServiceClient(conn).CreateCertificate(ctx, &cav1.CreateCertificateRequest{Csr: string(csr)})
	if err != nil {
		t.Fatalf("CreateCertificate for %s: %v", id, err)
	}
	var cert tls.Certificate
	for _, pemCert := range resp.GetCertChain() {
		certs, err := pki.ParseCertsPEM([]byte(pemCert))
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range certs {
			cert.Certificate = append(cert.Certificate, c.Raw)
		}
	}
	cert.PrivateKey = key
	return cert
}
