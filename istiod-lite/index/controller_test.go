package index

import (
	"context"
	"fmt"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	cairnclient "github.com/cairnmesh/cairn/apis/client/clientset/versioned"
	securityv1 "github.com/cairnmesh/cairn/apis/security/v1"
	workloadv1 "github.com/cairnmesh/cairn/apis/workload/v1"
	"github.com/cairnmesh/cairn/internal/testenv"
	"github.com/cairnmesh/cairn/istiod-lite/model"
	"github.com/cairnmesh/cairn/istiod-lite/xds"
)

func TestMain(m *testing.M) {
	if spec := os.Getenv(benchClientsEnv); spec != "" {
		os.Exit(runBenchClients(spec)) // the child process of BenchmarkPodReadyToAllClients
	}
	testenv.Main(m, testenv.Options{ControllerManager: true})
}

// recordingSink keeps every update, as the xDS server would receive them.
type recordingSink struct {
	mu      sync.Mutex
	updates []update
}

type update struct {
	typeURL string
	upserts map[string]proto.Message
	removes []string
}

func (s *recordingSink) Update(typeURL string, upserts map[string]proto.Message, removes []string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.updates = append(s.updates, update{typeURL, upserts, removes})
	return nil
}

func (s *recordingSink) SetInitial(typeURL string, all map[string]proto.Message) error {
	return s.Update(typeURL, all, nil)
}

// since returns the updates after the first n.
func (s *recordingSink) since(n int) []update {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.updates[min(n, len(s.updates)):])
}

func (s *recordingSink) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.updates)
}

func waitFor(t *testing.T, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestControllerFollowsTheCluster runs the controller against a real API
// server: a pod that becomes ready with an IP reaches the sink as one
// workload, an IP change as one updated resource, a deletion as one removal,
// and a policy gets its status condition.
func TestControllerFollowsTheCluster(t *testing.T) {
	env := testenv.Get(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ns := env.Namespace(t, map[string]string{model.DataplaneModeLabel: model.DataplaneModeAmbient})
	kube := env.Client()
	security, err := cairnclient.NewForConfig(env.Config())
	if err != nil {
		t.Fatal(err)
	}

	sink := &recordingSink{}
	var _ Sink = (*xds.Server)(nil) // the real sink fits too
	c := New(kube, security, sink, model.Config{}, nil)
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

	p := pod(ns, "reviews-1", "198.18.1.5")
	p.Spec.ServiceAccountName = ""
	p.Spec.Containers[0].Image = "cairn/echoserver:latest"
	status := p.Status
	created, err := kube.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = kube.CoreV1().Pods(ns).Delete(context.Background(), "reviews-1", metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)})
	})
	created.Status = status
	created.Status.Conditions[0].LastTransitionTime = metav1.Now()
	if created, err = kube.CoreV1().Pods(ns).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	name := model.Config{}.PodUID(ns, "reviews-1")
	waitFor(t, "the workload reaches the sink", func() error {
		for _, u := range sink.since(0) {
			if w, ok := u.upserts[name].(*workloadv1.Address); ok && w.GetWorkload().GetTunnelProtocol() == workloadv1.TunnelProtocol_HBONE {
				return nil
			}
		}
		return fmt.Errorf("no HBONE workload %s among %d updates", name, sink.count())
	})

	// The pod's IP changes: one updated resource, nothing else.
	mark := sink.count()
	created.Status.PodIP, created.Status.PodIPs = "198.18.1.6", []corev1.PodIP{{IP: "198.18.1.6"}}
	if _, err := kube.CoreV1().Pods(ns).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the IP change reaches the sink", func() error {
		ups := sink.since(mark)
		if len(ups) == 0 {
			return fmt.Errorf("no update yet")
		}
		u := ups[0]
		if len(ups) != 1 || u.typeURL != model.AddressTypeURL || len(u.upserts) != 1 || len(u.removes) != 0 || u.upserts[name] == nil {
			return fmt.Errorf("updates %+v, want exactly one upsert of %s", ups, name)
		}
		return nil
	})

	// The pod goes: one removal.
	mark = sink.count()
	if err := kube.CoreV1().Pods(ns).Delete(ctx, "reviews-1", metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}); err != nil {
		t.Fatal(err)
	}
	// A terminating pod may first be marked unhealthy; in the end its
	// workload is removed, and nothing else is touched.
	waitFor(t, "the deletion reaches the sink", func() error {
		ups := sink.since(mark)
		for _, u := range ups {
			for n := range u.upserts {
				if n != name {
					return fmt.Errorf("the deletion also changed %s", n)
				}
			}
		}
		if len(ups) == 0 || !slices.Equal(ups[len(ups)-1].removes, []string{name}) {
			return fmt.Errorf("updates %+v, want them to end with the removal of %s", ups, name)
		}
		return nil
	})

	// A policy with an L7 field in an ALLOW rule is accepted with a
	// condition that says the rule cannot match at L4.
	_, err = security.SecurityV1().AuthorizationPolicies(ns).Create(ctx, &securityv1.AuthorizationPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "allow-get", Namespace: ns},
		Spec: securityv1.AuthorizationPolicySpec{
			Selector: &securityv1.WorkloadSelector{MatchLabels: map[string]string{"app": "reviews"}},
			Rules:    []securityv1.Rule{{To: []securityv1.To{{Operation: &securityv1.Operation{Methods: []string{"GET"}}}}}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the policy's status condition", func() error {
		p, err := security.SecurityV1().AuthorizationPolicies(ns).Get(ctx, "allow-get", metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, cond := range p.Status.Conditions {
			if cond.Reason == model.ReasonUnsupportedValue && apimeta.IsStatusConditionPresentAndEqual(p.Status.Conditions, cond.Type, cond.Status) {
				return nil
			}
		}
		return fmt.Errorf("conditions %+v, want one with reason %s", p.Status.Conditions, model.ReasonUnsupportedValue)
	})
}
