package labtest

import (
	"context"
	"fmt"
	"net"
	"os"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/cairnmesh/cairn/integration/lab"
	"github.com/cairnmesh/cairn/integration/lab/hostos"
)

// A pod whose readiness probe fails is not Ready, its EndpointSlice
// endpoint says so, and the Service sends only to the Ready pod. A probe
// that starts failing takes a Ready pod out the same way.
func TestReadinessFailureTakesPodOutOfEndpointSlice(t *testing.T) {
	setup(t)
	ns := namespace(t)
	pod := func(name, probe string) string {
		return `apiVersion: v1
kind: Pod
metadata:
  name: ` + name + `
  labels: {app: web}
spec:
  terminationGracePeriodSeconds: 1
  containers:
` + echoContainer + `        readinessProbe:
          ` + probe + `
          periodSeconds: 1
          failureThreshold: 1
`
	}
	apply(t, ns, `apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 8080}
---
`+pod("good", "httpGet: {path: /, port: 8080}")+`---
`+pod("bad", `httpGet: {path: "/?status=503", port: 8080}`)+`---
`+pod("flip", "exec: {command: [test, -f, /tmp/ready]}")+`---
apiVersion: v1
kind: Pod
metadata:
  name: client
spec:
  terminationGracePeriodSeconds: 1
  containers:
`+echoContainer)
	waitPod(t, ns, "client", "Ready", podReady)
	waitPod(t, ns, "good", "Ready", podReady)
	waitPod(t, ns, "bad", "Running", podRunning)
	waitPod(t, ns, "flip", "Running", podRunning)

	waitEndpoints(t, ns, "web", map[string]bool{"good": true, "bad": false, "flip": false})
	for i := 0; i < 10; i++ {
		r, err := curlEcho(t, ns, "client", "http://web/")
		if err != nil {
			t.Fatal(err)
		}
		if r.Pod != "good" {
			t.Fatalf("the web Service sent a request to %q, which is not Ready", r.Pod)
		}
	}

	if _, err := execIn(t, ns, "flip", "touch", "/tmp/ready"); err != nil {
		t.Fatal(err)
	}
	waitEndpoints(t, ns, "web", map[string]bool{"good": true, "bad": false, "flip": true})
	if _, err := execIn(t, ns, "flip", "rm", "/tmp/ready"); err != nil {
		t.Fatal(err)
	}
	waitEndpoints(t, ns, "web", map[string]bool{"good": true, "bad": false, "flip": false})
	waitPod(t, ns, "flip", "not Ready", func(p *corev1.Pod) bool { return !podReady(p) })
}

// waitEndpoints waits until the Service's EndpointSlices have exactly the
// given pods, each with the given ready condition.
func waitEndpoints(t *testing.T, ns, svc string, want map[string]bool) {
	t.Helper()
	var got map[string]bool
	eventually(t, 20*time.Second, "EndpointSlices of "+svc, func() error {
		slices, err := client.DiscoveryV1().EndpointSlices(ns).List(testContext(t), metav1.ListOptions{
			LabelSelector: discoveryv1.LabelServiceName + "=" + svc,
		})
		if err != nil {
			return err
		}
		got = map[string]bool{}
		for _, s := range slices.Items {
			for _, e := range s.Endpoints {
				if e.TargetRef != nil {
					got[e.TargetRef.Name] = e.Conditions.Ready != nil && *e.Conditions.Ready
				}
			}
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			return fmt.Errorf("endpoints (pod: ready) %v, want %v", got, want)
		}
		return nil
	})
}

// Deleting a pod stops its processes and removes its network namespace,
// its veth on the node's CNI bridge and its cgroups.
func TestDeletedPodLeavesNothingBehind(t *testing.T) {
	setup(t)
	ns := namespace(t)
	netnsBefore := map[int][]string{}
	vethsBefore := map[int][]string{}
	for i := 1; i <= cfg.Nodes; i++ {
		netnsBefore[i] = cfg.PodNetns(i)
		vethsBefore[i] = bridgePorts(t, i)
	}
	apply(t, ns, `apiVersion: v1
kind: Pod
metadata:
  name: victim
spec:
  terminationGracePeriodSeconds: 2
  containers:
`+echoContainer)
	pod := waitPod(t, ns, "victim", "Ready", podReady)
	i := nodeIndex(t, pod.Spec.NodeName)

	newNetns := difference(cfg.PodNetns(i), netnsBefore[i])
	newVeths := difference(bridgePorts(t, i), vethsBefore[i])
	cgroups := cfg.PodCgroups(string(pod.UID))
	if len(newNetns) != 1 || len(newVeths) != 1 || len(cgroups) == 0 {
		t.Fatalf("pod %s on %s: new netns %v, new veths on %s %v, cgroups %v; want one netns, one veth, cgroups",
			pod.Name, pod.Spec.NodeName, newNetns, "cni0", newVeths, cgroups)
	}
	pids := hostos.CgroupPIDs(cgroups...)
	if len(pids) == 0 {
		t.Fatalf("no process in the pod's cgroups %v", cgroups)
	}

	if err := client.CoreV1().Pods(ns).Delete(testContext(t), "victim", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "pod deletion", func() error {
		_, err := client.CoreV1().Pods(ns).Get(testContext(t), "victim", metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("still there (%v)", err)
	})
	eventually(t, 10*time.Second, "pod clean-up", func() error {
		var left []string
		if _, err := os.Stat(newNetns[0]); err == nil {
			left = append(left, "netns "+newNetns[0])
		}
		if slices.Contains(bridgePorts(t, i), newVeths[0]) {
			left = append(left, "veth "+newVeths[0])
		}
		for _, cg := range cgroups {
			if _, err := os.Stat(cg); err == nil {
				left = append(left, "cgroup "+cg)
			}
		}
		for _, pid := range pids {
			if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
				left = append(left, fmt.Sprintf("process %d", pid))
			}
		}
		if len(left) > 0 {
			return fmt.Errorf("left behind: %s", strings.Join(left, ", "))
		}
		return nil
	})
}

// bridgePorts lists the links attached to node i's CNI bridge (the pods'
// veths), inside the node's network namespace.
func bridgePorts(t *testing.T, i int) []string {
	t.Helper()
	ns, err := netns.GetFromPath(cfg.NetnsPath(i))
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	bridge := -1
	for _, l := range links {
		if l.Attrs().Name == "cni0" {
			bridge = l.Attrs().Index
		}
	}
	var ports []string
	for _, l := range links {
		if bridge > 0 && l.Attrs().MasterIndex == bridge {
			ports = append(ports, l.Attrs().Name)
		}
	}
	return ports
}

func difference(a, b []string) []string {
	var out []string
	for _, x := range a {
		if !slices.Contains(b, x) {
			out = append(out, x)
		}
	}
	return out
}

// Measures (and prints, without a time limit) how long a pod takes from
// being scheduled to Ready: the target is 2s.
func TestPodReadyLatency(t *testing.T) {
	setup(t)
	ns := namespace(t)
	const n = 6
	var took []time.Duration
	for k := range n {
		name := fmt.Sprintf("p%d", k)
		ctx, cancel := context.WithTimeout(testContext(t), time.Minute)
		w, err := client.CoreV1().Pods(ns).Watch(ctx, metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("metadata.name", name).String()})
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		apply(t, ns, fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: %s
spec:
  terminationGracePeriodSeconds: 1
  containers:
%s        readinessProbe:
          httpGet: {path: /, port: 8080}
          periodSeconds: 1
`, name, echoContainer))
		var scheduled time.Time
		for ev := range w.ResultChan() {
			if ev.Type == watch.Error {
				break
			}
			p, ok := ev.Object.(*corev1.Pod)
			if !ok {
				continue
			}
			if scheduled.IsZero() && p.Spec.NodeName != "" {
				scheduled = time.Now()
			}
			if podReady(p) {
				took = append(took, time.Since(scheduled))
				t.Logf("%s on %s: Ready %v after it was scheduled", name, p.Spec.NodeName, time.Since(scheduled).Round(time.Millisecond))
				break
			}
		}
		w.Stop()
		cancel()
		if len(took) != k+1 {
			t.Fatalf("%s did not become Ready", name)
		}
	}
	sorted := slices.Clone(took)
	sort.Slice(sorted, func(a, b int) bool { return sorted[a] < sorted[b] })
	fmt.Fprintf(os.Stderr, "labtest: pod Ready after scheduling: median %v, max %v over %d pods (target 2s)\n",
		sorted[n/2].Round(time.Millisecond), sorted[n-1].Round(time.Millisecond), n)
}

// The supervisor starts a kubelet that died again, and the new kubelet
// adopts the pods the old one ran: they keep running, unrestarted.
func TestSupervisorRestartsKilledKubelet(t *testing.T) {
	setup(t)
	ns := namespace(t)
	node := lab.NodeName(1)
	apply(t, ns, `apiVersion: v1
kind: Pod
metadata:
  name: survivor
spec:
  nodeName: `+node+`
  terminationGracePeriodSeconds: 1
  containers:
`+echoContainer)
	before := waitPod(t, ns, "survivor", "Ready", podReady)

	old := kubeletProc(t, node)
	if err := unix.Kill(old.PID, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	var restarted lab.Proc
	eventually(t, 20*time.Second, "kubelet restart", func() error {
		restarted = kubeletProc(t, node)
		if restarted.PID == old.PID || !restarted.Alive() {
			return fmt.Errorf("kubelet of %s: pid %d (was %d), alive %v", node, restarted.PID, old.PID, restarted.Alive())
		}
		return nil
	})
	if restarted.Restarts != old.Restarts+1 {
		t.Errorf("kubelet restarts = %d, want %d", restarted.Restarts, old.Restarts+1)
	}

	// The new kubelet runs new pods and still reports the old one, which
	// kept running.
	apply(t, ns, `apiVersion: v1
kind: Pod
metadata:
  name: newcomer
spec:
  nodeName: `+node+`
  terminationGracePeriodSeconds: 1
  containers:
`+echoContainer)
	waitPod(t, ns, "newcomer", "Ready", podReady)
	after := waitPod(t, ns, "survivor", "Ready", podReady)
	if after.Status.PodIP != before.Status.PodIP || restartCount(after) != restartCount(before) {
		t.Errorf("survivor after the kubelet restart: %s (before: %s)", podSummary(after), podSummary(before))
	}
	r, err := httpGetEcho("http://" + net.JoinHostPort(after.Status.PodIP, "8080") + "/")
	if err != nil || r.Pod != "survivor" {
		t.Errorf("survivor after the kubelet restart: %+v, %v", r, err)
	}
}

func kubeletProc(t *testing.T, node string) lab.Proc {
	t.Helper()
	st, err := lab.ReadState(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range st.Processes {
		if p.Name == "kubelet" && p.Node == node {
			return p
		}
	}
	t.Fatalf("no kubelet of %s in the lab state", node)
	return lab.Proc{}
}

func restartCount(p *corev1.Pod) int32 {
	var n int32
	for _, cs := range p.Status.ContainerStatuses {
		n += cs.RestartCount
	}
	return n
}
