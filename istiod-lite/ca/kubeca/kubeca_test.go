package kubeca

import (
	"context"
	"crypto/x509"
	"log/slog"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"

	cav1 "github.com/cairnmesh/cairn/apis/ca/v1"
	"github.com/cairnmesh/cairn/internal/pki"
	"github.com/cairnmesh/cairn/internal/spiffe"
	"github.com/cairnmesh/cairn/internal/testenv"
	"github.com/cairnmesh/cairn/istiod-lite/ca"
)

func TestMain(m *testing.M) { testenv.Main(m, testenv.Options{ControllerManager: true}) }

const td = "cluster.local"

// fixture is a running CA: root controller, pod index, gRPC service.
type fixture struct {
	client   kubernetes.Interface
	caNS     string // namespace of the CA Secret and of the node agent
	ctrl     *Controller
	index    *PodIndex
	server   *ca.Server
	grpc     cav1.CertificateServiceClient
	stopRoot context.CancelFunc
	rootDone chan error
}

func quiet() *slog.Logger { return slog.New(slog.DiscardHandler) }

// startCA starts a CA whose Secret lives in caNS and whose node agent is
// caNS/ztunnel.
func startCA(t *testing.T, client kubernetes.Interface, caNS string) *fixture {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	f := &fixture{client: client, caNS: caNS}
	factory := informers.NewSharedInformerFactory(client, 0)
	var err error
	f.index, err = NewPodIndex(factory.Core().V1().Pods().Informer())
	if err != nil {
		t.Fatal(err)
	}
	factory.Start(ctx.Done())
	t.Cleanup(func() { cancel(); factory.Shutdown() })
	f.server, err = ca.New(ca.Config{
		TrustDomain:   td,
		NodeAgents:    []ca.ServiceAccountRef{{Namespace: caNS, Name: "ztunnel"}},
		Authenticator: &TokenReviewer{Client: client},
		Pods:          f.index,
		Logger:        quiet(),
	})
	if err != nil {
		t.Fatal(err)
	}
	f.startRoot(t)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	f.server.Register(gs)
	go func() { _ = gs.Serve(ln) }()
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	f.grpc = cav1.NewCertificateServiceClient(conn)

	eventually(t, "CA ready", func() bool { return f.index.HasSynced() && f.ctrl.Ready() })
	return f
}

// startRoot (re)starts the root controller.
func (f *fixture) startRoot(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	f.ctrl = &Controller{Client: f.client, Namespace: f.caNS, TrustDomain: td, Sink: f.server, Logger: quiet()}
	f.stopRoot, f.rootDone = cancel, make(chan error, 1)
	go func() { f.rootDone <- f.ctrl.Run(ctx) }()
	t.Cleanup(func() { f.stop(t) })
}

func (f *fixture) stop(t *testing.T) {
	if f.stopRoot == nil {
		return
	}
	f.stopRoot()
	if err := <-f.rootDone; err != nil {
		t.Errorf("root controller: %v", err)
	}
	f.stopRoot = nil
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func node(t *testing.T, client kubernetes.Interface, name string) {
	t.Helper()
	ctx := context.Background()
	if _, err := client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.CoreV1().Nodes().Delete(context.Background(), name, metav1.DeleteOptions{}) })
}

func newServiceAccount(t *testing.T, client kubernetes.Interface, ns, name string) {
	t.Helper()
	_, err := client.CoreV1().ServiceAccounts(ns).Create(context.Background(),
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
}

func pod(t *testing.T, client kubernetes.Interface, ns, name, sa, nodeName string) *corev1.Pod {
	t.Helper()
	automount := false
	p, err := client.CoreV1().Pods(ns).Create(context.Background(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{
			ServiceAccountName:           sa,
			AutomountServiceAccountToken: &automount,
			NodeName:                     nodeName,
			Containers:                   []corev1.Container{{Name: "app", Image: "cairn/none:1"}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// token returns a token of ns/sa for audience, bound to p if not nil.
func token(t *testing.T, client kubernetes.Interface, ns, sa, audience string, p *corev1.Pod) string {
	t.Helper()
	exp := int64(600)
	req := &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{Audiences: []string{audience}, ExpirationSeconds: &exp}}
	if p != nil {
		req.Spec.BoundObjectRef = &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: p.Name, UID: p.UID}
	}
	tr, err := client.CoreV1().ServiceAccounts(ns).CreateToken(context.Background(), sa, req, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return tr.Status.Token
}

func csrFor(t *testing.T, tdName, ns, sa string) string {
	t.Helper()
	key, err := pki.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	p, err := pki.NewCSR(key, spiffe.Identity{TrustDomain: tdName, Namespace: ns, ServiceAccount: sa})
	if err != nil {
		t.Fatal(err)
	}
	return string(p)
}

func (f *fixture) call(tok, csr string) (*cav1.CreateCertificateResponse, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
	return f.grpc.CreateCertificate(ctx, &cav1.CreateCertificateRequest{Csr: csr})
}

func wantCode(t *testing.T, what string, err error, want codes.Code) {
	t.Helper()
	if got := status.Code(err); got != want {
		t.Errorf("%s: got %v (%v), want %v", what, got, err, want)
		return
	}
	if err != nil {
		t.Logf("%s: %v: %s", what, want, status.Convert(err).Message())
	}
}

func chainOf(t *testing.T, resp *cav1.CreateCertificateResponse) []*x509.Certificate {
	t.Helper()
	var chain []*x509.Certificate
	for _, p := range resp.CertChain {
		c, err := pki.ParseCertsPEM([]byte(p))
		if err != nil {
			t.Fatal(err)
		}
		chain = append(chain, c...)
	}
	return chain
}

func TestNodeAuthorization(t *testing.T) {
	env := testenv.Get(t)
	client := env.Client()
	caNS := env.Namespace(t, nil)
	app := env.Namespace(t, map[string]string{"istio.io/dataplane-mode": "ambient"})
	f := startCA(t, client, caNS)

	nodeA, nodeB := caNS+"-a", caNS+"-b"
	node(t, client, nodeA)
	node(t, client, nodeB)
	newServiceAccount(t, client, caNS, "ztunnel")
	newServiceAccount(t, client, app, "web")
	newServiceAccount(t, client, app, "db")
	zA := pod(t, client, caNS, "ztunnel-a", "ztunnel", nodeA)
	web := pod(t, client, app, "web-1", "web", nodeA)
	pod(t, client, app, "db-1", "db", nodeB)
	eventually(t, "pods in the index", func() bool {
		return f.index.HasPodOnNode(nodeA, app, "web") && f.index.HasPodOnNode(nodeB, app, "db")
	})

	ztok := token(t, client, caNS, "ztunnel", DefaultAudience, zA)

	// What v1.37 puts in the user extra of a pod-bound token.
	review, err := client.AuthenticationV1().TokenReviews().Create(context.Background(),
		&authnv1.TokenReview{Spec: authnv1.TokenReviewSpec{Token: ztok, Audiences: []string{DefaultAudience}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	keys := make([]string, 0, len(review.Status.User.Extra))
	for k, v := range review.Status.User.Extra {
		keys = append(keys, k+"="+strings.Join(v, ","))
	}
	slices.Sort(keys)
	t.Logf("TokenReview user %s extra:\n  %s", review.Status.User.Username, strings.Join(keys, "\n  "))
	extra := review.Status.User.Extra
	if got := extra[ExtraPodName]; len(got) != 1 || got[0] != zA.Name {
		t.Errorf("%s = %v", ExtraPodName, got)
	}
	if got := extra[ExtraPodUID]; len(got) != 1 || got[0] != string(zA.UID) {
		t.Errorf("%s = %v", ExtraPodUID, got)
	}
	if got := extra[ExtraNodeName]; len(got) != 1 || got[0] != nodeA {
		t.Errorf("%s = %v (want the bound pod's node)", ExtraNodeName, got)
	}

	t.Run("ztunnel gets identity with a pod on its node", func(t *testing.T) {
		resp, err := f.call(ztok, csrFor(t, td, app, "web"))
		if err != nil {
			t.Fatal(err)
		}
		chain := chainOf(t, resp)
		id, err := spiffe.FromCert(chain[0])
		if err != nil || id != (spiffe.Identity{TrustDomain: td, Namespace: app, ServiceAccount: "web"}) {
			t.Fatalf("issued %v, %v", id, err)
		}
	})
	t.Run("latency with TokenReview", func(t *testing.T) {
		csr := csrFor(t, td, app, "web")
		const n = 50
		start := time.Now()
		for range n {
			if _, err := f.call(ztok, csr); err != nil {
				t.Fatal(err)
			}
		}
		t.Logf("CreateCertificate with TokenReview and node authorization: %v per call (mean of %d, sequential, -race build: %v)",
			time.Since(start)/n, n, raceEnabled)
	})
	t.Run("ztunnel refused identity with pods only on another node", func(t *testing.T) {
		_, err := f.call(ztok, csrFor(t, td, app, "db"))
		wantCode(t, "db from node A", err, codes.PermissionDenied)
	})
	t.Run("workload gets only its own identity", func(t *testing.T) {
		wtok := token(t, client, app, "web", DefaultAudience, web)
		if _, err := f.call(wtok, csrFor(t, td, app, "web")); err != nil {
			t.Errorf("own identity: %v", err)
		}
		_, err := f.call(wtok, csrFor(t, td, app, "db"))
		wantCode(t, "other identity", err, codes.PermissionDenied)
		unbound := token(t, client, app, "web", DefaultAudience, nil)
		if _, err := f.call(unbound, csrFor(t, td, app, "web")); err != nil {
			t.Errorf("own identity, unbound token: %v", err)
		}
	})
	t.Run("ztunnel token not bound to a pod", func(t *testing.T) {
		tok := token(t, client, caNS, "ztunnel", DefaultAudience, nil)
		_, err := f.call(tok, csrFor(t, td, app, "web"))
		wantCode(t, "unbound ztunnel", err, codes.PermissionDenied)
	})
	t.Run("bad tokens", func(t *testing.T) {
		_, err := f.call("garbage", csrFor(t, td, app, "web"))
		wantCode(t, "garbage token", err, codes.Unauthenticated)
		_, err = f.call(token(t, client, caNS, "ztunnel", "some-other-audience", zA), csrFor(t, td, app, "web"))
		wantCode(t, "wrong audience", err, codes.Unauthenticated)
		ctx := context.Background() // no authorization metadata at all
		_, err = f.grpc.CreateCertificate(ctx, &cav1.CreateCertificateRequest{Csr: csrFor(t, td, app, "web")})
		wantCode(t, "no token", err, codes.Unauthenticated)
	})
	t.Run("token of a deleted pod", func(t *testing.T) {
		zGone := pod(t, client, caNS, "ztunnel-gone", "ztunnel", nodeA)
		tok := token(t, client, caNS, "ztunnel", DefaultAudience, zGone)
		zero := int64(0)
		if err := client.CoreV1().Pods(caNS).Delete(context.Background(), zGone.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
			t.Fatal(err)
		}
		eventually(t, "pod gone from the index", func() bool { _, ok := f.index.Pod(caNS, zGone.Name); return !ok })
		_, err := f.call(tok, csrFor(t, td, app, "web"))
		wantCode(t, "token bound to a deleted pod", err, codes.Unauthenticated)
	})
	t.Run("bad CSRs", func(t *testing.T) {
		_, err := f.call(ztok, "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n")
		wantCode(t, "malformed CSR", err, codes.InvalidArgument)
		_, err = f.call(ztok, csrFor(t, "evil.example", app, "web"))
		wantCode(t, "foreign trust domain", err, codes.InvalidArgument)
	})
	t.Run("bundle verifies issued certificates, rejects a foreign CA", func(t *testing.T) {
		var cm *corev1.ConfigMap
		eventually(t, "bundle ConfigMap in the enrolled namespace", func() bool {
			cm, err = client.CoreV1().ConfigMaps(app).Get(context.Background(), DefaultConfigMapName, metav1.GetOptions{})
			return err == nil
		})
		roots, err := pki.ParseCertsPEM([]byte(cm.Data[ConfigMapKey]))
		if err != nil {
			t.Fatal(err)
		}
		bundle, err := pki.NewBundle(td, roots)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := f.call(ztok, csrFor(t, td, app, "web"))
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := x509svid.Verify(chainOf(t, resp), bundle); err != nil {
			t.Errorf("issued chain does not verify with the published bundle: %v", err)
		}
		foreign, _ := pki.NewRoot(td, 0)
		key, _ := pki.GenerateKey()
		leaf, err := foreign.Sign(key.Public(), spiffe.Identity{TrustDomain: td, Namespace: app, ServiceAccount: "web"}, pki.LeafOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := x509svid.Verify([]*x509.Certificate{leaf, foreign.Cert}, bundle); err == nil {
			t.Error("a certificate of a foreign CA verifies with the bundle")
		}
	})
}

func TestRootSecretAndBundle(t *testing.T) {
	env := testenv.Get(t)
	client := env.Client()
	ctx := context.Background()
	caNS := env.Namespace(t, nil)
	enrolled := env.Namespace(t, map[string]string{"istio.io/dataplane-mode": "ambient"})
	plain := env.Namespace(t, nil)
	f := startCA(t, client, caNS)

	secret, err := client.CoreV1().Secrets(caNS).Get(ctx, DefaultSecretName, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("CA secret not created: %v", err)
	}
	first := f.ctrl.Bundle()
	bundleIn := func(ns string) string {
		cm, err := client.CoreV1().ConfigMaps(ns).Get(ctx, DefaultConfigMapName, metav1.GetOptions{})
		if err != nil {
			return ""
		}
		return cm.Data[ConfigMapKey]
	}
	eventually(t, "bundle in the enrolled namespace", func() bool { return bundleIn(enrolled) == first })
	eventually(t, "bundle in the control plane's namespace (for ztunnel)", func() bool { return bundleIn(caNS) == first })
	if bundleIn(plain) != "" {
		t.Error("bundle published in a namespace that is not enrolled")
	}

	// Kept up to date: a deleted ConfigMap comes back, an edited one is fixed,
	// a namespace enrolled later gets one.
	if err := client.CoreV1().ConfigMaps(enrolled).Delete(ctx, DefaultConfigMapName, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "deleted bundle restored", func() bool { return bundleIn(enrolled) == first })
	nsObj, err := client.CoreV1().Namespaces().Get(ctx, plain, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	nsObj.Labels = map[string]string{"istio.io/dataplane-mode": "ambient"}
	if _, err := client.CoreV1().Namespaces().Update(ctx, nsObj, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "bundle in a namespace enrolled later", func() bool { return bundleIn(plain) == first })

	// A second start reuses the Secret.
	f.stop(t)
	f.startRoot(t)
	eventually(t, "restarted controller ready", f.ctrl.Ready)
	if f.ctrl.Bundle() != first {
		t.Error("second start made a new root instead of reusing the Secret")
	}
	again, err := client.CoreV1().Secrets(caNS).Get(ctx, DefaultSecretName, metav1.GetOptions{})
	if err != nil || again.ResourceVersion != secret.ResourceVersion {
		t.Errorf("secret changed on restart: %v", err)
	}

	// Rotation in three steps, with a restart of the controller (istiod-lite)
	// after each. The root the CA signs under is always listed first: that
	// is how proxies learn that the signer switched.
	oldCA, _, err := LoadSecret(again)
	if err != nil {
		t.Fatal(err)
	}
	newRoot, _ := pki.NewRoot(td, 0)
	keyPEM, _ := pki.EncodeKeyPEM(newRoot.Key)
	newServiceAccount(t, client, enrolled, "web")
	tok := token(t, client, enrolled, "web", DefaultAudience, nil)
	update := func(mutate func(*corev1.Secret)) {
		t.Helper()
		s, err := client.CoreV1().Secrets(caNS).Get(ctx, DefaultSecretName, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		mutate(s)
		if _, err := client.CoreV1().Secrets(caNS).Update(ctx, s, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	step := func(what string, published []*x509.Certificate, signer *x509.Certificate) {
		t.Helper()
		want := string(pki.EncodeCertsPEM(published...))
		eventually(t, what+": bundle published", func() bool { return bundleIn(enrolled) == want && bundleIn(plain) == want })
		f.stop(t)
		f.startRoot(t)
		eventually(t, what+": restarted controller ready", f.ctrl.Ready)
		if got := f.ctrl.Bundle(); got != want {
			t.Fatalf("%s: after a restart the bundle is\n%s\nwant\n%s", what, got, want)
		}
		var resp *cav1.CreateCertificateResponse
		eventually(t, what+": certificates from the signer", func() bool {
			resp, err = f.call(tok, csrFor(t, td, enrolled, "web"))
			return err == nil && chainOf(t, resp)[1].Equal(signer)
		})
		bundle, _ := pki.NewBundle(td, published)
		if _, _, err := x509svid.Verify(chainOf(t, resp), bundle); err != nil {
			t.Errorf("%s: a new certificate does not verify with the bundle: %v", what, err)
		}
	}

	// 1. Add the new root; the old one still signs.
	update(func(s *corev1.Secret) { s.Data[SecretBundle] = pki.EncodeCertsPEM(newRoot.Cert, oldCA.Cert) })
	step("root added", []*x509.Certificate{oldCA.Cert, newRoot.Cert}, oldCA.Cert)
	// 2. Switch the signer: the new root comes first.
	update(func(s *corev1.Secret) {
		s.Data[SecretCert], s.Data[SecretKey] = pki.EncodeCertPEM(newRoot.Cert), keyPEM
	})
	step("signer switched", []*x509.Certificate{newRoot.Cert, oldCA.Cert}, newRoot.Cert)
	key, _ := pki.GenerateKey()
	oldLeaf, _ := oldCA.Sign(key.Public(), spiffe.Identity{TrustDomain: td, Namespace: enrolled, ServiceAccount: "web"}, pki.LeafOptions{})
	both, _ := pki.NewBundle(td, []*x509.Certificate{newRoot.Cert, oldCA.Cert})
	if _, _, err := x509svid.Verify([]*x509.Certificate{oldLeaf, oldCA.Cert}, both); err != nil {
		t.Errorf("a certificate of the old root no longer verifies before the old root is removed: %v", err)
	}
	// 3. Remove the old root.
	update(func(s *corev1.Secret) { s.Data[SecretBundle] = pki.EncodeCertPEM(newRoot.Cert) })
	step("old root removed", []*x509.Certificate{newRoot.Cert}, newRoot.Cert)
}

func TestUserCA(t *testing.T) {
	env := testenv.Get(t)
	client := env.Client()
	caNS := env.Namespace(t, nil)
	root, _ := pki.NewRoot(td, 0)
	keyPEM, _ := pki.EncodeKeyPEM(root.Key)
	_, err := client.CoreV1().Secrets(caNS).Create(context.Background(), &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: DefaultSecretName},
		Data:       map[string][]byte{SecretCert: pki.EncodeCertPEM(root.Cert), SecretKey: keyPEM},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	f := startCA(t, client, caNS)
	if f.ctrl.Bundle() != string(pki.EncodeCertPEM(root.Cert)) {
		t.Error("user's CA not used")
	}
}
