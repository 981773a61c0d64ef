package kubewatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/cairnmesh/cairn/internal/kubeclient"
	"github.com/cairnmesh/cairn/internal/kubeserver"
	"github.com/cairnmesh/cairn/internal/testenv"
)

// Pods are watched from etcd here (no watch cache for them), and etcd
// compacts every 2 s: an informer that stops for a few seconds then holds
// a resource version that is gone, as one does after a long outage.
func TestMain(m *testing.M) {
	testenv.Main(m, testenv.Options{Server: func(o *kubeserver.Options) {
		o.ExtraArgs = map[string][]string{kubeserver.APIServer: {"--watch-cache-sizes=pods#0", "--etcd-compaction-interval=2s"}}
	}})
}

func client(t *testing.T) *kubeclient.Client {
	t.Helper()
	cfg, err := kubeclient.LoadKubeconfig(testenv.Get(t).Server().KubeconfigPath())
	if err != nil {
		t.Fatal(err)
	}
	c, err := kubeclient.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// recorder records what a handler is told, as "add a", "update a
// old-label->new-label", "delete a".
type recorder struct {
	mu     sync.Mutex
	events []string
}

func (r *recorder) add(s string) {
	r.mu.Lock()
	r.events = append(r.events, s)
	r.mu.Unlock()
}

func (r *recorder) handler() Handler[kubeclient.Pod] {
	return Handler[kubeclient.Pod]{
		OnAdd:    func(p *kubeclient.Pod) { r.add("add " + p.Name) },
		OnUpdate: func(o, p *kubeclient.Pod) { r.add("update " + p.Name + " " + o.Labels["v"] + "->" + p.Labels["v"]) },
		OnDelete: func(p *kubeclient.Pod) { r.add("delete " + p.Name) },
	}
}

// wait waits until the recorded events end with want (in any order), and
// returns them all.
func (r *recorder) wait(t *testing.T, want ...string) []string {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		r.mu.Lock()
		got := slices.Clone(r.events)
		r.mu.Unlock()
		if len(got) >= len(want) {
			tail := slices.Clone(got[len(got)-len(want):])
			slices.Sort(tail)
			w := slices.Clone(want)
			slices.Sort(w)
			if slices.Equal(tail, w) {
				return got
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("events %q, want them to end with %q", got, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func pod(name, node string, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec: corev1.PodSpec{NodeName: node, AutomountServiceAccountToken: ptr.To(false),
			Containers: []corev1.Container{{Name: "app", Image: "cairn/echoserver"}}},
	}
}

// namespace makes a namespace with its default ServiceAccount (there is no
// controller manager to make it).
func namespace(t *testing.T) string {
	t.Helper()
	env := testenv.Get(t)
	ns := env.Namespace(t, nil)
	if _, err := env.Client().CoreV1().ServiceAccounts(ns).Create(context.Background(),
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return ns
}

// run runs in until the test ends, or until the returned stop is called.
func run[T any](t *testing.T, in *Informer[T]) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- in.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	select {
	case <-in.Synced():
	case <-time.After(15 * time.Second):
		t.Fatal("informer did not sync")
	}
	return stop
}

func testLogger(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test", t.Name())
	}
	return nil
}

func TestInformerSeesAddUpdateDelete(t *testing.T) {
	kube := testenv.Get(t).Client()
	ctx := context.Background()
	ns := namespace(t)
	if _, err := kube.CoreV1().Pods(ns).Create(ctx, pod("before", "n1", map[string]string{"v": "1"}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var rec recorder
	in, err := New(Config[kubeclient.Pod]{
		Client: client(t), Resource: kubeclient.Pods, Handler: rec.handler(), Log: testLogger(t),
		Options: kubeclient.ListOptions{Namespace: ns, FieldSelector: "spec.nodeName=n1"},
	})
	if err != nil {
		t.Fatal(err)
	}
	run(t, in)
	rec.wait(t, "add before")

	if _, err := kube.CoreV1().Pods(ns).Create(ctx, pod("other-node", "n2", nil), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	p, err := kube.CoreV1().Pods(ns).Create(ctx, pod("web", "n1", map[string]string{"v": "1"}), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rec.wait(t, "add web")
	p.Labels["v"] = "2"
	if _, err := kube.CoreV1().Pods(ns).Update(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	rec.wait(t, "update web 1->2")
	if got, ok := in.Get(ns + "/web"); !ok || got.Labels["v"] != "2" || got.Spec.NodeName != "n1" {
		t.Errorf("Get web: %+v %v", got, ok)
	}
	if err := kube.CoreV1().Pods(ns).Delete(ctx, "web", metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}); err != nil {
		t.Fatal(err)
	}
	got := rec.wait(t, "delete web")
	if _, ok := in.Get(ns + "/web"); ok {
		t.Error("web still there after its deletion")
	}
	if l := in.List(); len(l) != 1 || l[0].Name != "before" {
		t.Errorf("List: %v, want only before", l)
	}
	for _, e := range got {
		if strings.Contains(e, "other-node") {
			t.Errorf("a pod of another node was reported: %s", e)
		}
	}
}

// TestInformerResumesAfterTheServerEndsAWatch: the API server ends each
// watch after a second; the informer watches again from where it was,
// without a list, and misses nothing.
func TestInformerResumesAfterTheServerEndsAWatch(t *testing.T) {
	kube := testenv.Get(t).Client()
	ctx := context.Background()
	ns := namespace(t)
	var rec recorder
	in, err := New(Config[kubeclient.Pod]{
		Client: client(t), Resource: kubeclient.Pods, Handler: rec.handler(), Log: testLogger(t),
		Options: kubeclient.ListOptions{Namespace: ns}, WatchTimeout: time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	run(t, in)
	var want []string
	for i := range 4 {
		name := fmt.Sprintf("p%d", i)
		if _, err := kube.CoreV1().Pods(ns).Create(ctx, pod(name, "n1", nil), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		want = append(want, "add "+name)
		time.Sleep(700 * time.Millisecond) // spans several watches
	}
	got := rec.wait(t, want...)
	if len(got) != len(want) {
		t.Errorf("events %q, want %q once each", got, want)
	}
	if n := in.lists.Load(); n != 1 {
		t.Errorf("%d lists, want 1: the watches should have resumed", n)
	}
}

// TestInformerListsAgainWhenItsVersionIsGone: an informer that comes back
// with a resource version etcd has compacted away lists again, and reports
// what changed meanwhile: deletes, adds and updates.
func TestInformerListsAgainWhenItsVersionIsGone(t *testing.T) {
	kube := testenv.Get(t).Client()
	ctx := context.Background()
	ns := namespace(t)
	c := client(t)
	for _, name := range []string{"stays", "goes"} {
		if _, err := kube.CoreV1().Pods(ns).Create(ctx, pod(name, "n1", map[string]string{"v": "1"}), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	var rec recorder
	in, err := New(Config[kubeclient.Pod]{
		Client: c, Resource: kubeclient.Pods, Handler: rec.handler(), Log: testLogger(t),
		Options: kubeclient.ListOptions{Namespace: ns},
	})
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, in)
	rec.wait(t, "add stays", "add goes")
	stop()

	// While it is away: one pod changes, one goes, one comes.
	p, err := kube.CoreV1().Pods(ns).Get(ctx, "stays", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p.Labels["v"] = "2"
	if _, err := kube.CoreV1().Pods(ns).Update(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := kube.CoreV1().Pods(ns).Delete(ctx, "goes", metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}); err != nil {
		t.Fatal(err)
	}
	if _, err := kube.CoreV1().Pods(ns).Create(ctx, pod("new", "n1", nil), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitCompacted(t, c, ns, in.rv)

	run(t, in)
	rec.wait(t, "update stays 1->2", "delete goes", "add new")
	if n := in.lists.Load(); n != 2 {
		t.Errorf("%d lists, want 2", n)
	}
	if _, ok := in.Get(ns + "/goes"); ok {
		t.Error("goes is still there")
	}
}

// waitCompacted waits until a watch of ns's pods from rv fails with 410.
func waitCompacted(t *testing.T, c *kubeclient.Client, ns, rv string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		w, err := c.Watch(ctx, kubeclient.Pods, kubeclient.ListOptions{Namespace: ns}, rv, time.Second)
		if err == nil {
			_, _, err = w.Next()
			_ = w.Close()
		}
		cancel()
		if kubeclient.IsGone(err) {
			return
		}
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			t.Logf("watch from %s: %v", rv, err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("resource version %s was not compacted in 30 s", rv)
		}
		time.Sleep(500 * time.Millisecond)
	}
}
