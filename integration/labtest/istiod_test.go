package labtest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"

	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	cav1 "github.com/cairnmesh/cairn/apis/ca/v1"
	"github.com/cairnmesh/cairn/internal/manifest"
	"github.com/cairnmesh/cairn/internal/pki"
	"github.com/cairnmesh/cairn/internal/spiffe"
)

// TestIstiodLiteFromInstallSignsPodIdentity installs istiod-lite from
// install/ exactly as a user does, waits for it to become Ready, and has a
// pod's token get a certificate for the pod's identity over TLS that
// verifies against the bundle published in the pod's namespace. A token
// asking for another identity is refused.
func TestIstiodLiteFromInstallSignsPodIdentity(t *testing.T) {
	setup(t)
	ctx := testContext(t)
	applier, err := manifest.New(restConfig, manifest.Options{FieldManager: "labtest"})
	if err != nil {
		t.Fatal(err)
	}
	crdFiles, err := filepath.Glob(filepath.Join(cfg.RepoDir, "install", "crds", "*.yaml"))
	if err != nil || len(crdFiles) == 0 {
		t.Fatalf("no CRDs in install/crds (err %v)", err)
	}
	crds, err := applier.ApplyFiles(ctx, crdFiles...)
	if err != nil {
		t.Fatal(err)
	}
	if err := applier.WaitForCRDs(ctx, manifest.CRDNames(crds)); err != nil {
		t.Fatal(err)
	}
	if _, err := applier.ApplyFiles(ctx, filepath.Join(cfg.RepoDir, "install", "manifests", "istiod-lite.yaml")); err != nil {
		t.Fatal(err)
	}
	istiod := waitPods(t, "cairn-system", "app=istiod-lite", 1)[0]

	// An enrolled namespace with a pod of service account reviews.
	ns := namespace(t)
	if _, err := client.CoreV1().Namespaces().Patch(ctx, ns, "application/merge-patch+json",
		[]byte(`{"metadata":{"labels":{"istio.io/dataplane-mode":"ambient"}}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	apply(t, ns, `
apiVersion: v1
kind: ServiceAccount
metadata: {name: reviews}
---
apiVersion: v1
kind: Pod
metadata: {name: reviews, labels: {app: reviews}}
spec:
  serviceAccountName: reviews
  terminationGracePeriodSeconds: 1
  containers:
  - name: reviews
    image: cairn/echoserver:latest
`)
	pod := waitPods(t, ns, "app=reviews", 1)[0]

	roots := x509.NewCertPool()
	eventually(t, 30*time.Second, "the trust bundle in the enrolled namespace", func() error {
		cm, err := client.CoreV1().ConfigMaps(ns).Get(ctx, "cairn-root-cert", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if !roots.AppendCertsFromPEM([]byte(cm.Data["root-cert.pem"])) {
			return fmt.Errorf("no certificate in the bundle")
		}
		return nil
	})

	tr, err := client.CoreV1().ServiceAccounts(ns).CreateToken(ctx, "reviews", &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{
		Audiences:      []string{"istio-ca"},
		BoundObjectRef: &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
	}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(net.JoinHostPort(istiod.Status.PodIP, "15012"), grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		RootCAs: roots, ServerName: "istiod.cairn-system.svc", MinVersion: tls.VersionTLS13,
	})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ca := cav1.NewCertificateServiceClient(conn)
	authed := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tr.Status.Token)

	sign := func(ctx context.Context, sa string) (*cav1.CreateCertificateResponse, spiffe.Identity, error) {
		id := spiffe.Identity{TrustDomain: "cluster.local", Namespace: ns, ServiceAccount: sa}
		key, err := pki.GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		csr, err := pki.NewCSR(key, id)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := ca.CreateCertificate(ctx, &cav1.CreateCertificateRequest{Csr: string(csr)})
		return resp, id, err
	}
	resp, id, err := sign(authed, "reviews")
	if err != nil {
		t.Fatalf("CreateCertificate for the pod's own identity: %v", err)
	}
	chain, err := pki.ParseCertsPEM([]byte(resp.GetCertChain()[0]))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Errorf("the certificate does not verify against the published bundle: %v", err)
	}
	if got, err := spiffe.FromCert(chain[0]); err != nil || got != id {
		t.Errorf("the certificate names %v (%v), want %v", got, err, id)
	}

	if _, _, err := sign(authed, "ratings"); status.Code(err) != codes.PermissionDenied {
		t.Errorf("a workload asking for another identity: %v, want PermissionDenied", err)
	}

	// Workload discovery is for the ztunnels: the pod's token is refused.
	xctx, cancel := context.WithTimeout(authed, 30*time.Second)
	defer cancel()
	stream, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(xctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&discoverygrpc.DeltaDiscoveryRequest{
		TypeUrl: "type.googleapis.com/cairn.workload.v1.Address", ResourceNamesSubscribe: []string{"*"},
	}); err != nil && err != io.EOF {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); status.Code(err) != codes.PermissionDenied {
		t.Errorf("a workload's token reading workload discovery: %v, want PermissionDenied", err)
	}
}
