package nodeagent

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/cairnmesh/cairn/internal/ambient"
	"github.com/cairnmesh/cairn/internal/kubeclient"
	"github.com/cairnmesh/cairn/internal/testenv"
	"github.com/cairnmesh/cairn/ztunnel/cni"
)

func TestMain(m *testing.M) { testenv.Main(m, testenv.Options{ControllerManager: true}) }

// fakeCapturer records which pods are captured.
type fakeCapturer struct {
	mu       sync.Mutex
	captured map[string]Pod
	events   []string
	// refuse, if set, may refuse a capture (it is called under mu).
	refuse func(Pod) error
}

func (f *fakeCapturer) Capture(_ context.Context, p Pod) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.refuse != nil {
		if err := f.refuse(p); err != nil {
			return err
		}
	}
	if f.captured == nil {
		f.captured = map[string]Pod{}
	}
	if _, dup := f.captured[p.String()]; dup {
		return fmt.Errorf("%s captured twice", p)
	}
	f.captured[p.String()] = p
	f.events = append(f.events, "capture "+p.String()+" "+p.Netns)
	return nil
}

func (f *fakeCapturer) Release(_ context.Context, p Pod) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.captured, p.String())
	f.events = append(f.events, "release "+p.String())
	return nil
}

func (f *fakeCapturer) has(key string) (Pod, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p, ok := f.captured[key]
	return p, ok
}

func eventually(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// netnsByUID is a FindNetns for tests: every pod's namespace is named
// after its UID.
func netnsByUID(p Pod) (string, error) { return "/var/run/netns/of-" + p.UID, nil }

func startAgent(t *testing.T, node string) (*Agent, *fakeCapturer) {
	t.Helper()
	return startAgentFinding(t, node, netnsByUID)
}

func startAgentFinding(t *testing.T, node string, find func(Pod) (string, error)) (*Agent, *fakeCapturer) {
	t.Helper()
	env := testenv.Get(t)
	// The admin kubeconfig, read as ztunnel reads --kubeconfig.
	kcfg, err := kubeclient.LoadKubeconfig(env.Server().KubeconfigPath())
	if err != nil {
		t.Fatal(err)
	}
	kube, err := kubeclient.New(kcfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(kube.Close)
	fc := &fakeCapturer{}
	a, err := New(Config{
		Node: node, Kube: kube, Capturer: fc, CNIWait: 500 * time.Millisecond,
		Instance: "ztunnel-test", FindNetns: find,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	eventually(t, "agent synced", a.Synced)
	return a, fc
}

// runningPod creates a pod bound to node and gives it a running status
// with ip, as a kubelet would.
func runningPod(t *testing.T, ns, name, node, ip string, labels map[string]string) *corev1.Pod {
	t.Helper()
	kube := testenv.Get(t).Client()
	ctx := context.Background()
	p, err := kube.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec: corev1.PodSpec{NodeName: node, AutomountServiceAccountToken: ptr.To(false),
			Containers: []corev1.Container{{Name: "app", Image: "cairn/echoserver:latest"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if ip != "" {
		p.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}}
		if p, err = kube.CoreV1().Pods(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

// TestRunningPodsFollowTheNamespaceLabel: pods that already run are
// captured when their namespace is enrolled (netns from FindNetns), without a
// restart, and released when it is unlabelled; pods of other nodes and
// pods that opt out are left alone.
func TestRunningPodsFollowTheNamespaceLabel(t *testing.T) {
	env := testenv.Get(t)
	kube := env.Client()
	ctx := context.Background()
	ns := env.Namespace(t, nil)
	_, fc := startAgent(t, "node-a")

	web := runningPod(t, ns, "web", "node-a", "198.18.1.10", nil)
	runningPod(t, ns, "opted-out", "node-a", "198.18.1.11", map[string]string{ambient.DataplaneModeLabel: ambient.DataplaneModeNone})
	runningPod(t, ns, "elsewhere", "node-b", "198.18.2.10", nil)
	time.Sleep(200 * time.Millisecond) // a bounded look for a wrong capture, not a timing target
	if _, ok := fc.has(ns + "/web"); ok {
		t.Fatal("a pod of an unenrolled namespace was captured")
	}

	nsObj, err := kube.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	nsObj.Labels[ambient.DataplaneModeLabel] = ambient.DataplaneModeAmbient
	if _, err := kube.CoreV1().Namespaces().Update(ctx, nsObj, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "web captured after the namespace is enrolled", func() bool { _, ok := fc.has(ns + "/web"); return ok })
	if p, _ := fc.has(ns + "/web"); p.Netns != "/var/run/netns/of-"+string(web.UID) || p.ServiceAccount != "default" {
		t.Errorf("captured %+v, want the netns FindNetns named and the default service account", p)
	}
	if _, ok := fc.has(ns + "/opted-out"); ok {
		t.Error("a pod labelled dataplane-mode=none was captured")
	}
	if _, ok := fc.has(ns + "/elsewhere"); ok {
		t.Error("a pod of another node was captured")
	}

	nsObj, err = kube.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	delete(nsObj.Labels, ambient.DataplaneModeLabel)
	if _, err := kube.CoreV1().Namespaces().Update(ctx, nsObj, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "web released after unlabelling", func() bool { _, ok := fc.has(ns + "/web"); return !ok })
}

// TestCNIAddCapturesBeforeReturning: a new pod of an enrolled namespace is
// captured during cairn-cni's ADD with the netns and IPs the runtime gives,
// before it has a status; a DEL releases it; a pod that is not enrolled is
// answered "not captured"; a deleted pod is released by the watch.
func TestCNIAddCapturesBeforeReturning(t *testing.T) {
	env := testenv.Get(t)
	kube := env.Client()
	ns := env.Namespace(t, map[string]string{ambient.DataplaneModeLabel: ambient.DataplaneModeAmbient})
	plain := env.Namespace(t, nil)
	a, fc := startAgent(t, "node-c")
	ctx := context.Background()

	p := runningPod(t, ns, "new", "node-c", "", nil)
	reply, err := a.Add(ctx, cni.Pod{Namespace: ns, Name: "new", UID: string(p.UID), Netns: "/var/run/netns/cni-1", IPs: []string{"198.18.3.4"}})
	if err != nil || !reply.Captured {
		t.Fatalf("ADD: %+v %v, want captured", reply, err)
	}
	got, ok := fc.has(ns + "/new")
	if !ok || got.Netns != "/var/run/netns/cni-1" || !slices.Equal(got.IPs, []netip.Addr{netip.MustParseAddr("198.18.3.4")}) {
		t.Fatalf("captured %+v %v", got, ok)
	}
	// The status arrives later: nothing is captured twice.
	p.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "198.18.3.4", PodIPs: []corev1.PodIP{{IP: "198.18.3.4"}}}
	if _, err := kube.CoreV1().Pods(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := a.Del(ctx, cni.Pod{Namespace: ns, Name: "new", UID: string(p.UID), Netns: "/var/run/netns/cni-1"}); err != nil {
		t.Fatal(err)
	}
	if _, ok := fc.has(ns + "/new"); ok {
		t.Error("still captured after DEL")
	}

	q := runningPod(t, plain, "plain", "node-c", "", nil)
	reply, err = a.Add(ctx, cni.Pod{Namespace: plain, Name: "plain", UID: string(q.UID), Netns: "/var/run/netns/cni-2", IPs: []string{"198.18.3.5"}})
	if err != nil || reply.Captured {
		t.Fatalf("ADD of an unenrolled pod: %+v %v, want not captured", reply, err)
	}
	if _, err := a.Add(ctx, cni.Pod{Namespace: ns, Name: "no-such-pod", Netns: "/x"}); err == nil {
		t.Error("ADD of a pod the API server does not have succeeded")
	}

	r := runningPod(t, ns, "short-lived", "node-c", "198.18.3.6", nil)
	eventually(t, "short-lived captured by the watch", func() bool { _, ok := fc.has(ns + "/short-lived"); return ok })
	if err := kube.CoreV1().Pods(ns).Delete(ctx, r.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "short-lived released after deletion", func() bool { _, ok := fc.has(ns + "/short-lived"); return !ok })
	fc.mu.Lock()
	defer fc.mu.Unlock()
	for _, e := range fc.events {
		t.Log(e)
	}
}

// TestRefusedNetnsLeavesPodOutWithAnEvent: while FindNetns refuses to name
// a running pod's namespace, the pod is not captured, and one Warning
// Event on the pod says why, however often the agent retries; once the
// namespace can be told, the pod is captured.
func TestRefusedNetnsLeavesPodOutWithAnEvent(t *testing.T) {
	env := testenv.Get(t)
	kube := env.Client()
	ctx := context.Background()
	ns := env.Namespace(t, map[string]string{ambient.DataplaneModeLabel: ambient.DataplaneModeAmbient})

	var mu sync.Mutex
	refuse, calls := true, 0
	find := func(p Pod) (string, error) {
		mu.Lock()
		defer mu.Unlock()
		if p.Name != "victim" {
			return netnsByUID(p)
		}
		calls++
		if refuse {
			return "", &RefusedError{Reason: "NetnsAmbiguous", Message: "the processes of pod " + p.String() + " are in 2 network namespaces"}
		}
		return netnsByUID(p)
	}
	_, fc := startAgentFinding(t, "node-d", find)
	victim := runningPod(t, ns, "victim", "node-d", "198.18.4.2", nil)

	eventually(t, "several attempts at the victim", func() bool { mu.Lock(); defer mu.Unlock(); return calls >= 4 })
	if _, ok := fc.has(ns + "/victim"); ok {
		t.Fatal("a pod whose namespace was refused was captured")
	}
	var events []corev1.Event
	eventually(t, "a Warning event on the victim", func() bool {
		list, err := kube.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=victim"})
		if err != nil {
			t.Fatal(err)
		}
		events = list.Items
		return len(events) > 0
	})
	mu.Lock()
	n := calls
	mu.Unlock()
	if len(events) != 1 {
		t.Errorf("%d events after %d refusals, want 1", len(events), n)
	}
	e := events[0]
	if e.Type != corev1.EventTypeWarning || e.Reason != "NetnsAmbiguous" || e.InvolvedObject.UID != victim.UID ||
		e.Source.Component != "ztunnel" || e.Source.Host != "node-d" || !strings.Contains(e.Message, "2 network namespaces") {
		t.Errorf("event %+v", e)
	}

	mu.Lock()
	refuse = false
	mu.Unlock()
	eventually(t, "the victim captured once its namespace is told", func() bool { _, ok := fc.has(ns + "/victim"); return ok })
}

// TestRefusedCaptureLeavesPodOutWithAnEvent: when the capturer refuses a
// pod (it cannot turn off conntrack's loose pickup there, say), the pod
// is not captured, a Warning Event on it says why, and it is captured
// once the capturer can.
func TestRefusedCaptureLeavesPodOutWithAnEvent(t *testing.T) {
	env := testenv.Get(t)
	kube := env.Client()
	ctx := context.Background()
	ns := env.Namespace(t, map[string]string{ambient.DataplaneModeLabel: ambient.DataplaneModeAmbient})

	_, fc := startAgentFinding(t, "node-e", netnsByUID)
	calls := 0
	fc.mu.Lock()
	fc.refuse = func(p Pod) error {
		calls++
		return fmt.Errorf("capture rules: %w", &RefusedError{Reason: "ConntrackLoosePickup", Message: "read-only file system"})
	}
	fc.mu.Unlock()
	pod := runningPod(t, ns, "sysctl", "node-e", "198.18.4.3", nil)

	eventually(t, "several attempts", func() bool { fc.mu.Lock(); defer fc.mu.Unlock(); return calls >= 2 })
	if _, ok := fc.has(ns + "/sysctl"); ok {
		t.Fatal("a refused pod was captured")
	}
	var events []corev1.Event
	eventually(t, "a Warning event on the pod", func() bool {
		list, err := kube.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=sysctl"})
		if err != nil {
			t.Fatal(err)
		}
		events = list.Items
		return len(events) > 0
	})
	if e := events[0]; e.Type != corev1.EventTypeWarning || e.Reason != "ConntrackLoosePickup" || e.InvolvedObject.UID != pod.UID ||
		!strings.Contains(e.Message, "read-only file system") {
		t.Errorf("event %+v", e)
	}
	fc.mu.Lock()
	fc.refuse = nil
	fc.mu.Unlock()
	eventually(t, "the pod captured once it can be", func() bool { _, ok := fc.has(ns + "/sysctl"); return ok })
}
