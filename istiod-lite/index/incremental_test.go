package index

import (
	"context"
	"fmt"
	"maps"
	"sync"
	"testing"

	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	cairnclient "github.com/cairnmesh/cairn/apis/client/clientset/versioned"
	securityv1 "github.com/cairnmesh/cairn/apis/security/v1"
	"github.com/cairnmesh/cairn/internal/testenv"
	"github.com/cairnmesh/cairn/istiod-lite/model"
)

// mirrorSink applies what it receives, as a delta xDS client would, so
// that what the controller pushed can be compared with a full build.
type mirrorSink struct {
	mu   sync.Mutex
	held Resources
}

func (s *mirrorSink) SetInitial(typeURL string, all map[string]proto.Message) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.held == nil {
		s.held = Resources{}
	}
	s.held[typeURL] = maps.Clone(all)
	return nil
}

func (s *mirrorSink) Update(typeURL string, upserts map[string]proto.Message, removes []string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for name, msg := range upserts {
		s.held[typeURL][name] = msg
	}
	for _, name := range removes {
		delete(s.held[typeURL], name)
	}
	return nil
}

func (s *mirrorSink) snapshot() Resources {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := Resources{}
	for typeURL, m := range s.held {
		out[typeURL] = maps.Clone(m)
	}
	return out
}

// TestIncrementalModelMatchesFullBuild changes every kind of object the
// model depends on, in a real API server, and checks after each step that
// what the controller pushed (applied like a client would) equals a full
// Build of the same objects: the incremental rebuild misses no dependent.
func TestIncrementalModelMatchesFullBuild(t *testing.T) {
	env := testenv.Get(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	kube := env.Client()
	security, err := cairnclient.NewForConfig(env.Config())
	if err != nil {
		t.Fatal(err)
	}
	ambient := map[string]string{model.DataplaneModeLabel: model.DataplaneModeAmbient}
	ns := env.Namespace(t, ambient)
	root := env.Namespace(t, nil)
	cfg := model.Config{RootNamespace: root}

	sink := &mirrorSink{}
	c := New(kube, security, sink, cfg, nil)
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	waitFor(t, "controller ready", func() error {
		if !c.Ready() {
			return fmt.Errorf("not ready")
		}
		return nil
	})

	// converged compares the pushed model with a full build of what the
	// informers hold, for the test's namespace (other tests share the
	// API server).
	converged := func(step string) {
		t.Helper()
		waitFor(t, step+": pushed model equals a full build", func() error {
			in, err := c.inputs()
			if err != nil {
				return err
			}
			want := Build(in, cfg).Resources
			got := sink.snapshot()
			for _, typeURL := range []string{model.AddressTypeURL, model.AuthorizationTypeURL} {
				for name, msg := range want[typeURL] {
					if g, ok := got[typeURL][name]; !ok || !proto.Equal(g, msg) {
						return fmt.Errorf("%s: pushed %v, full build %v", name, g, msg)
					}
				}
				for name := range got[typeURL] {
					if _, ok := want[typeURL][name]; !ok {
						return fmt.Errorf("%s was pushed but is not in a full build", name)
					}
				}
			}
			return nil
		})
	}
	must := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	mkPod := func(name, ip string, labels map[string]string) {
		t.Helper()
		p := pod(ns, name, ip)
		p.UID = ""
		p.Labels = labels
		p.Spec.ServiceAccountName = "" // the default one
		p.Spec.Containers[0].Image = "cairn/echoserver:latest"
		status := p.Status
		created, err := kube.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		created.Status = status
		created.Status.Conditions[0].LastTransitionTime = metav1.Now()
		must(kube.CoreV1().Pods(ns).UpdateStatus(ctx, created, metav1.UpdateOptions{}))
	}

	mkPod("reviews-1", "198.18.1.5", map[string]string{"app": "reviews"})
	mkPod("ratings-1", "198.18.1.6", map[string]string{"app": "ratings"})
	converged("pods")

	svc := service(ns, "reviews")
	svc.Spec.ClusterIP, svc.Spec.ClusterIPs = "", nil
	must(kube.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}))
	converged("a service selecting one pod")

	cur, err := kube.CoreV1().Services(ns).Get(ctx, "reviews", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cur.Spec.Selector = map[string]string{"app": "ratings"}
	must(kube.CoreV1().Services(ns).Update(ctx, cur, metav1.UpdateOptions{}))
	converged("the service selecting the other pod")

	allowFrom := func(namespace, name string, sel map[string]string) *securityv1.AuthorizationPolicy {
		return &securityv1.AuthorizationPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
			Spec: securityv1.AuthorizationPolicySpec{
				Selector: &securityv1.WorkloadSelector{MatchLabels: sel},
				Rules: []securityv1.Rule{{From: []securityv1.From{{Source: &securityv1.Source{
					Namespaces: []string{"frontend"},
				}}}}},
			},
		}
	}
	must(security.SecurityV1().AuthorizationPolicies(ns).Create(ctx, allowFrom(ns, "allow", map[string]string{"app": "reviews"}), metav1.CreateOptions{}))
	converged("a namespace policy")
	must(security.SecurityV1().AuthorizationPolicies(root).Create(ctx, allowFrom(root, "mesh-wide", map[string]string{"app": "ratings"}), metav1.CreateOptions{}))
	converged("a root-namespace policy")

	must(security.SecurityV1().PeerAuthentications(root).Create(ctx, &securityv1.PeerAuthentication{
		ObjectMeta: metav1.ObjectMeta{Namespace: root, Name: "default"},
		Spec:       securityv1.PeerAuthenticationSpec{Mtls: &securityv1.MutualTLS{Mode: securityv1.MTLSModeStrict}},
	}, metav1.CreateOptions{}))
	converged("a mesh-wide STRICT PeerAuthentication")
	must(security.SecurityV1().PeerAuthentications(ns).Create(ctx, &securityv1.PeerAuthentication{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "ports"},
		Spec: securityv1.PeerAuthenticationSpec{
			Selector:      &securityv1.WorkloadSelector{MatchLabels: map[string]string{"app": "reviews"}},
			PortLevelMtls: map[string]securityv1.MutualTLS{"8080": {Mode: securityv1.MTLSModePermissive}},
		},
	}, metav1.CreateOptions{}))
	converged("a workload PeerAuthentication that inherits STRICT")
	if err := security.SecurityV1().PeerAuthentications(root).Delete(ctx, "default", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	converged("the mesh-wide PeerAuthentication deleted")

	nsObj, err := kube.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	delete(nsObj.Labels, model.DataplaneModeLabel)
	must(kube.CoreV1().Namespaces().Update(ctx, nsObj, metav1.UpdateOptions{}))
	converged("the namespace unenrolled")

	if err := security.SecurityV1().AuthorizationPolicies(root).Delete(ctx, "mesh-wide", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := kube.CoreV1().Services(ns).Delete(ctx, "reviews", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := kube.CoreV1().Pods(ns).Delete(ctx, "ratings-1", metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}); err != nil {
		t.Fatal(err)
	}
	converged("a policy, the service and a pod deleted")

	// The pod informer keeps only what the model and the CA read.
	obj, ok, err := c.PodInformer().GetIndexer().GetByKey(ns + "/reviews-1")
	if err != nil || !ok {
		t.Fatalf("reviews-1 not in the pod informer: %v", err)
	}
	p := obj.(*corev1.Pod)
	if len(p.ManagedFields) != 0 || p.Spec.Containers[0].Image != "" || p.UID == types.UID("") || p.Spec.NodeName == "" {
		t.Errorf("cached pod not trimmed as expected: managedFields %d, image %q, uid %q, node %q",
			len(p.ManagedFields), p.Spec.Containers[0].Image, p.UID, p.Spec.NodeName)
	}
}
