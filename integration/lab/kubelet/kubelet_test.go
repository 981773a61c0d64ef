package kubelet

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/tools/remotecommand"
	"k8s.io/client-go/transport/spdy"
	"k8s.io/utils/ptr"

	"github.com/cairnmesh/cairn/integration/apps/echo"
	"github.com/cairnmesh/cairn/internal/testenv"
)

// TestKubelet runs one node with a lab kubelet and the scenarios of issue
// 3 on it, one subtest each.
func TestKubelet(t *testing.T) {
	env := testenv.Get(t)
	requireRoot(t)
	bin := buildEcho(t)
	node := newTestNode(t, env, bin)
	client := env.Client()

	t.Run("EchoPodRunsAndServes", func(t *testing.T) {
		ns := env.Namespace(t, nil)
		waitForServiceAccount(t, client, ns)
		created := time.Now()
		pod := createPod(t, client, echoPod(ns, "echo"))
		pod = waitPod(t, client, pod, 20*time.Second, "Running and Ready", podReady)
		t.Logf("bound to Running+Ready: %v (pod IP %s)", time.Since(created).Round(time.Millisecond), pod.Status.PodIP)
		if pod.Status.HostIP != testNodeIP || pod.Status.PodIP == "" || pod.Status.PodIP == testNodeIP {
			t.Fatalf("hostIP %q podIP %q", pod.Status.HostIP, pod.Status.PodIP)
		}

		// HTTP on the pod IP from the node's network namespace; the echo
		// server names its pod (downward API env).
		// (No readiness probe: the server may need a moment to listen.)
		body, err := node.httpGetRetry("http://"+pod.Status.PodIP+":8080", 5*time.Second)
		if err != nil {
			t.Fatalf("GET from the node: %v", err)
		}
		_, jsonBody, _ := strings.Cut(body, "\r\n\r\n")
		var resp echo.Response
		if err := json.Unmarshal([]byte(jsonBody), &resp); err != nil {
			t.Fatalf("echo answer %q: %v", body, err)
		}
		if resp.Pod != pod.Name || resp.Namespace != ns {
			t.Errorf("echo says pod %s/%s, want %s/%s", resp.Namespace, resp.Pod, ns, pod.Name)
		}

		// The projected token authenticates as the pod's ServiceAccount.
		token := readProjected(t, node, pod, "token")
		tr, err := client.AuthenticationV1().TokenReviews().Create(context.Background(),
			&authnv1.TokenReview{Spec: authnv1.TokenReviewSpec{Token: token}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if want := "system:serviceaccount:" + ns + ":default"; !tr.Status.Authenticated || tr.Status.User.Username != want {
			t.Errorf("TokenReview: authenticated=%v user=%q, want %s (%s)", tr.Status.Authenticated, tr.Status.User.Username, want, tr.Status.Error)
		}
		if ca := readProjected(t, node, pod, "ca.crt"); !strings.Contains(ca, "BEGIN CERTIFICATE") {
			t.Errorf("ca.crt: %q", ca)
		}

		// The container's process is in the pod's cgroup and netns.
		pid := containerPID(t, node, pod, "echo")
		cg, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
		for _, h := range []string{"pids", "memory", "freezer", "name=systemd"} {
			if !cgroupHas(string(cg), h, "kubepods/besteffort/pod"+string(pod.UID)+"/") {
				t.Errorf("/proc/%d/cgroup has no %s line with pod%s:\n%s", pid, h, pod.UID, cg)
			}
		}
		rec := podRecordOf(t, node, pod)
		if got, want := nsInode(t, fmt.Sprintf("/proc/%d/ns/net", pid)), nsInode(t, rec.NetNS); got != want {
			t.Errorf("container netns %d, pod netns %d", got, want)
		}

		// Exec and logs through the API server and the kubelet API.
		out, code := execPod(t, env, ns, pod.Name, "echo", []string{"sh", "-c", "echo $POD_NAME; cat /etc/resolv.conf; hostname; ls /var/run/secrets/kubernetes.io/serviceaccount"})
		if code != 0 {
			t.Fatalf("exec: exit %d: %s", code, out)
		}
		for _, want := range []string{pod.Name, "nameserver 198.19.0.10", "search " + ns + ".svc.cluster.local svc.cluster.local cluster.local", "options ndots:5", "token"} {
			if !strings.Contains(out, want) {
				t.Errorf("exec output lacks %q:\n%s", want, out)
			}
		}
		if _, code := execPod(t, env, ns, pod.Name, "echo", []string{"sh", "-c", "exit 7"}); code != 7 {
			t.Errorf("exec exit code %d, want 7", code)
		}
		logs, err := client.CoreV1().Pods(ns).GetLogs(pod.Name, &corev1.PodLogOptions{}).DoRaw(context.Background())
		if err != nil {
			t.Fatalf("logs: %v", err)
		}
		if !bytes.Contains(logs, []byte("8080")) {
			t.Errorf("logs do not mention the HTTP port:\n%s", logs)
		}

		// A running pod's status is not rewritten when nothing changes.
		if n := statusWrites(t, client, pod, 2*time.Second); n > 0 {
			t.Errorf("%d status writes of an unchanged pod in 2s", n)
		}

		// Port-forward through the API server to the pod's localhost.
		got := portForwardGet(t, env, ns, pod.Name, 8080)
		if !strings.Contains(got, `"pod":"`+pod.Name+`"`) {
			t.Errorf("port-forward answer: %q", got)
		}

		// Deletion: graceful stop, then everything of the pod goes.
		deletePodAndWait(t, client, pod)
		if _, err := os.Stat(rec.NetNS); !os.IsNotExist(err) {
			t.Errorf("netns %s still there (%v)", rec.NetNS, err)
		}
		for _, d := range rec.Cgroups {
			if _, err := os.Stat(d); !os.IsNotExist(err) {
				t.Errorf("cgroup %s still there", d)
			}
		}
		outb, err := exec.Command("ip", "-n", testNetns, "-o", "link", "show", "type", "veth").Output()
		out = string(outb)
		if err != nil {
			t.Fatal(err)
		}
		if veths := strings.Count(out, "\n"); veths != 1 { // eth0 of the node itself
			t.Errorf("%d veths in the node's namespace, want 1 (its eth0):\n%s", veths, out)
		}
	})

	t.Run("CrashingContainerRestarts", func(t *testing.T) {
		ns := env.Namespace(t, nil)
		waitForServiceAccount(t, client, ns)
		p := echoPod(ns, "crash")
		p.Spec.Containers[0].Command = []string{"/bin/sh", "-c", "echo crashing; exit 3"}
		pod := createPod(t, client, p)
		pod = waitPod(t, client, pod, 20*time.Second, "2 restarts", func(p *corev1.Pod) bool {
			cs := p.Status.ContainerStatuses
			return len(cs) == 1 && cs[0].RestartCount >= 2 && cs[0].LastTerminationState.Terminated != nil
		})
		last := pod.Status.ContainerStatuses[0].LastTerminationState.Terminated
		if last.ExitCode != 3 || last.Reason != "Error" {
			t.Errorf("last termination: %+v", last)
		}
		pod = waitPod(t, client, pod, 20*time.Second, "CrashLoopBackOff", func(p *corev1.Pod) bool {
			w := p.Status.ContainerStatuses[0].State.Waiting
			return w != nil && w.Reason == "CrashLoopBackOff"
		})
		prev, err := client.CoreV1().Pods(ns).GetLogs(pod.Name, &corev1.PodLogOptions{Previous: true}).DoRaw(context.Background())
		if err != nil || !bytes.Contains(prev, []byte("crashing")) {
			t.Errorf("previous logs: %q %v", prev, err)
		}
		deletePodAndWait(t, client, pod)
	})

	t.Run("InitContainersAndEnv", func(t *testing.T) {
		ns := env.Namespace(t, nil)
		waitForServiceAccount(t, client, ns)
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "settings"}, Data: map[string]string{"greeting": "hello", "file.txt": "from a configmap"}}
		if _, err := client.CoreV1().ConfigMaps(ns).Create(context.Background(), cm, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		p := echoPod(ns, "init")
		p.Spec.RestartPolicy = corev1.RestartPolicyNever
		p.Spec.Volumes = append(p.Spec.Volumes,
			corev1.Volume{Name: "shared", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
			corev1.Volume{Name: "settings", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "settings"}}}},
		)
		p.Spec.InitContainers = []corev1.Container{{
			Name:         "first",
			Image:        "cairn/echoserver:test",
			Command:      []string{"/bin/sh", "-c", "echo first > /shared/order"},
			VolumeMounts: []corev1.VolumeMount{{Name: "shared", MountPath: "/shared"}},
		}, {
			Name:         "second",
			Image:        "cairn/echoserver:test",
			Command:      []string{"/bin/sh", "-c", "echo second >> /shared/order"},
			VolumeMounts: []corev1.VolumeMount{{Name: "shared", MountPath: "/shared"}},
		}}
		c := &p.Spec.Containers[0]
		c.Command = []string{"/bin/sh", "-c"}
		c.Args = []string{`cat /shared/order; echo "$(GREETING) $NODE $SA $POD_IP"; cat /config/file.txt; echo; pwd`}
		c.WorkingDir = "/shared"
		c.Env = append(c.Env,
			corev1.EnvVar{Name: "GREETING", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "settings"}, Key: "greeting"}}},
			corev1.EnvVar{Name: "NODE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"}}},
			corev1.EnvVar{Name: "SA", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.serviceAccountName"}}},
			corev1.EnvVar{Name: "POD_IP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}}},
		)
		c.VolumeMounts = []corev1.VolumeMount{{Name: "shared", MountPath: "/shared"}, {Name: "settings", MountPath: "/config", ReadOnly: true}}
		pod := createPod(t, client, p)
		pod = waitPod(t, client, pod, 20*time.Second, "Succeeded", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodSucceeded })
		logs, err := client.CoreV1().Pods(ns).GetLogs(pod.Name, &corev1.PodLogOptions{}).DoRaw(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprintf("first\nsecond\nhello %s default %s\nfrom a configmap\n/shared\n", testNodeName, pod.Status.PodIP)
		if string(logs) != want {
			t.Errorf("logs:\n%s\nwant:\n%s", logs, want)
		}
		for _, s := range pod.Status.InitContainerStatuses {
			if s.State.Terminated == nil || s.State.Terminated.ExitCode != 0 {
				t.Errorf("init container %s: %+v", s.Name, s.State)
			}
		}
		deletePodAndWait(t, client, pod)
	})

	t.Run("BadInputFailsThePodOnly", func(t *testing.T) {
		ns := env.Namespace(t, nil)
		waitForServiceAccount(t, client, ns)
		p := echoPod(ns, "nfs")
		p.Spec.Volumes = append(p.Spec.Volumes, corev1.Volume{Name: "data", VolumeSource: corev1.VolumeSource{
			NFS: &corev1.NFSVolumeSource{Server: "198.18.200.250", Path: "/export"}}})
		nfs := createPod(t, client, p)
		nfs = waitPod(t, client, nfs, 10*time.Second, "Failed", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodFailed })
		if nfs.Status.Reason != "UnsupportedVolume" || !strings.Contains(nfs.Status.Message, "nfs") {
			t.Errorf("reason %q message %q", nfs.Status.Reason, nfs.Status.Message)
		}
		waitEvent(t, client, nfs, "UnsupportedVolume")

		p = echoPod(ns, "noimage")
		p.Spec.Containers[0].Image = "example.com/nothing:1"
		noimg := createPod(t, client, p)
		noimg = waitPod(t, client, noimg, 10*time.Second, "ErrImagePull", func(p *corev1.Pod) bool {
			cs := p.Status.ContainerStatuses
			return len(cs) == 1 && cs[0].State.Waiting != nil &&
				(cs[0].State.Waiting.Reason == "ErrImagePull" || cs[0].State.Waiting.Reason == "ImagePullBackOff")
		})
		if msg := noimg.Status.ContainerStatuses[0].State.Waiting.Message; !strings.Contains(msg, "example.com/nothing:1") {
			t.Errorf("waiting message %q", msg)
		}

		// A hostNetwork pod whose port the kubelet itself holds.
		p = echoPod(ns, "hostport")
		p.Spec.HostNetwork = true
		p.Spec.Containers[0].Ports = []corev1.ContainerPort{{ContainerPort: 10250}}
		hp := createPod(t, client, p)
		hp = waitPod(t, client, hp, 10*time.Second, "Failed", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodFailed })
		if hp.Status.Reason != "HostPortConflict" {
			t.Errorf("reason %q message %q", hp.Status.Reason, hp.Status.Message)
		}

		// The kubelet goes on: a good pod still runs.
		ok := createPod(t, client, echoPod(ns, "fine"))
		waitPod(t, client, ok, 20*time.Second, "Running and Ready", podReady)
		for _, pod := range []*corev1.Pod{nfs, noimg, hp, ok} {
			deletePodAndWait(t, client, pod)
		}
	})

	t.Run("ProbesDriveReadinessAndRestarts", func(t *testing.T) {
		ns := env.Namespace(t, nil)
		waitForServiceAccount(t, client, ns)
		p := echoPod(ns, "probed")
		p.Spec.Containers[0].ReadinessProbe = &corev1.Probe{PeriodSeconds: 1, ProbeHandler: corev1.ProbeHandler{
			Exec: &corev1.ExecAction{Command: []string{"sh", "-c", "test -f /tmp/ready"}}}}
		// A slow start is not a failed liveness probe: as on a real
		// kubelet, probes start at once and three failures a second
		// apart restart the container, which on a loaded machine can
		// happen before the echo server listens (it did: the container
		// was killed under the exec below).
		p.Spec.Containers[0].LivenessProbe = &corev1.Probe{PeriodSeconds: 1, InitialDelaySeconds: 5, ProbeHandler: corev1.ProbeHandler{
			HTTPGet: &corev1.HTTPGetAction{Path: "/", Port: intstr.FromString("http")}}}
		pod := createPod(t, client, p)
		pod = waitPod(t, client, pod, 20*time.Second, "Running", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodRunning })
		time.Sleep(1500 * time.Millisecond)
		pod, _ = client.CoreV1().Pods(ns).Get(context.Background(), pod.Name, metav1.GetOptions{})
		if podReady(pod) {
			t.Fatalf("ready although its readiness probe fails")
		}
		// The exec probe and exec share the container's private /tmp.
		if out, code := execPod(t, env, ns, pod.Name, "echo", []string{"touch", "/tmp/ready"}); code != 0 {
			t.Fatalf("touch: %d %s", code, out)
		}
		pod = waitPod(t, client, pod, 10*time.Second, "Ready", podReady)
		if n := pod.Status.ContainerStatuses[0].RestartCount; n != 0 {
			t.Errorf("%d restarts with a passing liveness probe", n)
		}

		p = echoPod(ns, "dead")
		p.Spec.Containers[0].LivenessProbe = &corev1.Probe{PeriodSeconds: 1, FailureThreshold: 1, ProbeHandler: corev1.ProbeHandler{
			TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(9999)}}}
		p.Spec.TerminationGracePeriodSeconds = ptr.To(int64(1))
		dead := createPod(t, client, p)
		dead = waitPod(t, client, dead, 20*time.Second, "restarted by its liveness probe", func(p *corev1.Pod) bool {
			cs := p.Status.ContainerStatuses
			return len(cs) == 1 && cs[0].RestartCount >= 1
		})
		waitEvent(t, client, dead, "Unhealthy")
		deletePodAndWait(t, client, pod)
		deletePodAndWait(t, client, dead)
	})

	t.Run("HostNetworkPod", func(t *testing.T) {
		ns := env.Namespace(t, nil)
		waitForServiceAccount(t, client, ns)
		p := echoPod(ns, "hostnet")
		p.Spec.HostNetwork = true
		p.Spec.DNSPolicy = corev1.DNSClusterFirstWithHostNet
		p.Spec.Containers[0].Args = []string{"--http-port=18080", "--grpc-port=0", "--tcp-port=0"}
		p.Spec.Containers[0].Ports = []corev1.ContainerPort{{ContainerPort: 18080}}
		p.Spec.Volumes = []corev1.Volume{{Name: "netns", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/var/run/netns"}}}}
		p.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "netns", MountPath: "/var/run/netns",
			MountPropagation: ptr.To(corev1.MountPropagationHostToContainer)}}
		pod := createPod(t, client, p)
		pod = waitPod(t, client, pod, 20*time.Second, "Running and Ready", podReady)
		if pod.Status.PodIP != testNodeIP {
			t.Errorf("podIP %s, want the node's %s", pod.Status.PodIP, testNodeIP)
		}
		if _, err := node.httpGetRetry("http://"+testNodeIP+":18080", 5*time.Second); err != nil {
			t.Errorf("GET the hostNetwork pod: %v", err)
		}
		out, _ := execPod(t, env, ns, pod.Name, "echo", []string{"sh", "-c", "hostname; cat /etc/resolv.conf"})
		if !strings.Contains(out, testNodeName) || !strings.Contains(out, "nameserver 198.19.0.10") {
			t.Errorf("hostname and resolv.conf of a ClusterFirstWithHostNet pod:\n%s", out)
		}

		// A node agent with hostPath /var/run/netns (HostToContainer) sees
		// the network namespaces of pods created after it started.
		other := createPod(t, client, echoPod(ns, "later"))
		other = waitPod(t, client, other, 20*time.Second, "Running", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodRunning })
		netns := filepath.Base(podRecordOf(t, node, other).NetNS)
		out, code := execPod(t, env, ns, pod.Name, "echo", []string{"sh", "-c", "ls /var/run/netns; grep -c pod /proc/1/cgroup || true"})
		if code != 0 || !strings.Contains(out, netns) {
			t.Errorf("the agent does not see %s in /var/run/netns:\n%s", netns, out)
		}
		deletePodAndWait(t, client, other)
		deletePodAndWait(t, client, pod)
	})

	t.Run("SecurityContextEnforced", func(t *testing.T) { testSecurityContext(t, env, node) })

	t.Run("RestartedKubeletAdoptsPods", func(t *testing.T) {
		ns := env.Namespace(t, nil)
		waitForServiceAccount(t, client, ns)
		pod := createPod(t, client, echoPod(ns, "adopt"))
		pod = waitPod(t, client, pod, 20*time.Second, "Running and Ready", podReady)
		pid := containerPID(t, node, pod, "echo")

		node.stop(syscall.SIGKILL)
		node.start()
		node.waitNodeReady()
		time.Sleep(time.Second) // a sync or two
		pod, err := client.CoreV1().Pods(ns).Get(context.Background(), pod.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if !podReady(pod) || pod.Status.ContainerStatuses[0].RestartCount != 0 {
			t.Errorf("after the kubelet restart: phase %s ready %v restarts %d", pod.Status.Phase, podReady(pod), pod.Status.ContainerStatuses[0].RestartCount)
		}
		if got := containerPID(t, node, pod, "echo"); got != pid {
			t.Errorf("container PID %d, was %d: not adopted", got, pid)
		}
		if _, err := node.httpGetRetry("http://"+pod.Status.PodIP+":8080", 5*time.Second); err != nil {
			t.Errorf("GET after the restart: %v", err)
		}
		// A crash after adoption is still seen and restarted.
		if err := syscallKill(pid); err != nil {
			t.Fatal(err)
		}
		pod = waitPod(t, client, pod, 20*time.Second, "a restart", func(p *corev1.Pod) bool {
			return p.Status.ContainerStatuses[0].RestartCount >= 1 && podReady(p)
		})

		// While the kubelet is away: a container dies, and another pod is
		// force-deleted. The next kubelet restarts the one and cleans up
		// after the other.
		gone := createPod(t, client, echoPod(ns, "gone"))
		gone = waitPod(t, client, gone, 20*time.Second, "Running and Ready", podReady)
		goneRec := podRecordOf(t, node, gone)
		gonePID := containerPID(t, node, gone, "echo")
		pid = containerPID(t, node, pod, "echo")
		node.stop(syscall.SIGKILL)
		if err := syscallKill(pid); err != nil {
			t.Fatal(err)
		}
		if err := client.CoreV1().Pods(ns).Delete(context.Background(), gone.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To(int64(0))}); err != nil {
			t.Fatal(err)
		}
		node.start()
		node.waitNodeReady()
		pod = waitPod(t, client, pod, 20*time.Second, "restarted after the kubelet's absence", func(p *corev1.Pod) bool {
			return p.Status.ContainerStatuses[0].RestartCount >= 2 && podReady(p)
		})
		deadline := time.Now().Add(10 * time.Second)
		for procRunning(gonePID) || fileExists(goneRec.NetNS) {
			if time.Now().After(deadline) {
				t.Fatalf("the force-deleted pod's process %d or netns %s is still there", gonePID, goneRec.NetNS)
			}
			time.Sleep(50 * time.Millisecond)
		}
		deletePodAndWait(t, client, pod)
	})
}

// Helpers.

func echoPod(ns, name string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{"app": name}},
		Spec: corev1.PodSpec{
			NodeName:                      testNodeName,
			TerminationGracePeriodSeconds: ptr.To(int64(5)),
			Containers: []corev1.Container{{
				Name:  "echo",
				Image: "cairn/echoserver:test",
				Env: []corev1.EnvVar{
					{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
					{Name: "POD_NAMESPACE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}},
				},
				Ports: []corev1.ContainerPort{{ContainerPort: 8080, Name: "http"}},
			}},
		},
	}
}

func createPod(t testing.TB, client kubernetes.Interface, pod *corev1.Pod) *corev1.Pod {
	t.Helper()
	p, err := client.CoreV1().Pods(pod.Namespace).Create(context.Background(), pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating pod: %v", err)
	}
	return p
}

func podReady(p *corev1.Pod) bool {
	if p.Status.Phase != corev1.PodRunning {
		return false
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// waitPod watches pod until cond holds.
func waitPod(t testing.TB, client kubernetes.Interface, pod *corev1.Pod, timeout time.Duration, what string, cond func(*corev1.Pod) bool) *corev1.Pod {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	w, err := client.CoreV1().Pods(pod.Namespace).Watch(ctx, metav1.ListOptions{
		FieldSelector: fields.OneTermEqualSelector("metadata.name", pod.Name).String(),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	last := pod
	if cur, err := client.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{}); err == nil {
		last = cur
		if cond(cur) {
			return cur
		}
	}
	for {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				t.Fatalf("pod %s: watch ended before %s; last status:\n%s", pod.Name, what, statusJSON(last))
			}
			if ev.Type == watch.Error {
				continue
			}
			p, ok := ev.Object.(*corev1.Pod)
			if !ok {
				continue
			}
			last = p
			if cond(p) {
				return p
			}
		case <-ctx.Done():
			t.Fatalf("pod %s: not %s within %v; last status:\n%s", pod.Name, what, timeout, statusJSON(last))
		}
	}
}

func statusJSON(p *corev1.Pod) string {
	data, _ := json.MarshalIndent(p.Status, "", "  ")
	return string(data)
}

func deletePodAndWait(t testing.TB, client kubernetes.Interface, pod *corev1.Pod) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
	for {
		_, err := client.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("pod %s was not deleted by the kubelet", pod.Name)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func waitForServiceAccount(t testing.TB, client kubernetes.Interface, ns string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		_, err1 := client.CoreV1().ServiceAccounts(ns).Get(context.Background(), "default", metav1.GetOptions{})
		_, err2 := client.CoreV1().ConfigMaps(ns).Get(context.Background(), "kube-root-ca.crt", metav1.GetOptions{})
		if err1 == nil && err2 == nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("namespace %s got no default ServiceAccount or kube-root-ca.crt", ns)
}

func waitEvent(t testing.TB, client kubernetes.Interface, pod *corev1.Pod, reason string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		evs, err := client.CoreV1().Events(pod.Namespace).List(context.Background(), metav1.ListOptions{
			FieldSelector: fields.OneTermEqualSelector("involvedObject.uid", string(pod.UID)).String(),
		})
		if err == nil {
			for _, e := range evs.Items {
				if e.Reason == reason {
					return
				}
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Errorf("no event %s for pod %s", reason, pod.Name)
}

func podRecordOf(t testing.TB, n *testNode, pod *corev1.Pod) *podRecord {
	t.Helper()
	var rec podRecord
	if err := readJSON(filepath.Join(n.root, "var/lib/cairn-kubelet/pods", string(pod.UID), "pod.json"), &rec); err != nil {
		t.Fatal(err)
	}
	return &rec
}

func containerPID(t testing.TB, n *testNode, pod *corev1.Pod, container string) int {
	t.Helper()
	rec := podRecordOf(t, n, pod)
	insts := rec.Containers[container]
	if len(insts) == 0 || insts[len(insts)-1].Started == nil {
		t.Fatalf("no running instance of %s in the pod's record", container)
	}
	return insts[len(insts)-1].Started.PID
}

func readProjected(t testing.TB, n *testNode, pod *corev1.Pod, file string) string {
	t.Helper()
	matches, _ := filepath.Glob(filepath.Join(n.root, "var/lib/kubelet/pods", string(pod.UID), "volumes/kubernetes.io~projected/kube-api-access-*", file))
	if len(matches) != 1 {
		t.Fatalf("projected %s: found %v", file, matches)
	}
	data, err := os.ReadFile(matches[0])
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func cgroupHas(procCgroup, hierarchy, want string) bool {
	for _, line := range strings.Split(procCgroup, "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) == 3 && strings.Contains(","+parts[1]+",", ","+hierarchy+",") && strings.Contains(parts[2]+"/", want) {
			return true
		}
	}
	return false
}

func nsInode(t testing.TB, path string) uint64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

func syscallKill(pid int) error { return syscall.Kill(pid, syscall.SIGKILL) }

// execPod runs cmd in a container through the API server (and so through
// the kubelet API) and returns its combined output and exit code.
func execPod(t testing.TB, env *testenv.Env, ns, pod, container string, cmd []string) (string, int) {
	t.Helper()
	req := env.Client().CoreV1().RESTClient().Post().Resource("pods").Namespace(ns).Name(pod).SubResource("exec").
		VersionedParams(&corev1.PodExecOptions{Container: container, Command: cmd, Stdout: true, Stderr: true}, scheme.ParameterCodec)
	ex, err := remotecommand.NewSPDYExecutor(env.Config(), "POST", req.URL())
	if err != nil {
		t.Fatal(err)
	}
	var out lockedBuffer
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err = ex.StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: &out, Stderr: &out})
	if err == nil {
		return out.String(), 0
	}
	var ce interface{ ExitStatus() int }
	if errors.As(err, &ce) {
		return out.String(), ce.ExitStatus()
	}
	t.Fatalf("exec %v: %v\n%s", cmd, err, out.String())
	return "", -1
}

// lockedBuffer takes stdout and stderr from two goroutines.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// statusWrites counts the updates of pod during d.
func statusWrites(t testing.TB, client kubernetes.Interface, pod *corev1.Pod, d time.Duration) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	cur, err := client.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	w, err := client.CoreV1().Pods(pod.Namespace).Watch(ctx, metav1.ListOptions{
		FieldSelector:   fields.OneTermEqualSelector("metadata.name", pod.Name).String(),
		ResourceVersion: cur.ResourceVersion,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	n := 0
	for ev := range w.ResultChan() {
		if ev.Type == watch.Modified {
			n++
			t.Logf("status write: %s", statusJSON(ev.Object.(*corev1.Pod)))
		}
	}
	return n
}

// portForwardGet forwards a local port to the pod's port through the API
// server and GETs / over it.
func portForwardGet(t testing.TB, env *testenv.Env, ns, pod string, port int) string {
	t.Helper()
	cfg := env.Config()
	transport, upgrader, err := spdy.RoundTripperFor(cfg)
	if err != nil {
		t.Fatal(err)
	}
	req := env.Client().CoreV1().RESTClient().Post().Resource("pods").Namespace(ns).Name(pod).SubResource("portforward")
	dialer := spdy.NewDialer(upgrader, &http.Client{Transport: transport}, "POST", req.URL())
	stop, ready := make(chan struct{}), make(chan struct{})
	fw, err := portforward.NewOnAddresses(dialer, []string{"127.0.0.1"}, []string{fmt.Sprintf("0:%d", port)}, stop, ready, io.Discard, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- fw.ForwardPorts() }()
	defer func() {
		close(stop)
		<-errc
	}()
	select {
	case <-ready:
	case err := <-errc:
		t.Fatalf("port-forward: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("port-forward not ready in 10s")
	}
	ports, err := fw.GetPorts()
	if err != nil {
		t.Fatal(err)
	}
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get(fmt.Sprintf("http://127.0.0.1:%d/", ports[0].Local))
	if err != nil {
		t.Fatalf("GET over port-forward: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return string(body)
}

// BenchmarkPodStartup measures the time from creating a pod bound to the
// node (as the scheduler's binding would) to seeing it Running and Ready:
//
//	go test -run '^$' -bench PodStartup -benchtime 10x ./integration/lab/kubelet/
func BenchmarkPodStartup(b *testing.B) {
	env := testenv.Get(b)
	requireRoot(b)
	bin := buildEcho(b)
	newTestNode(b, env, bin)
	client := env.Client()
	ns := env.Namespace(b, nil)
	waitForServiceAccount(b, client, ns)
	var total, worst time.Duration
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		p := echoPod(ns, fmt.Sprintf("bench-%d", i))
		b.StartTimer()
		start := time.Now()
		pod := createPod(b, client, p)
		waitPod(b, client, pod, 20*time.Second, "Running and Ready", podReady)
		d := time.Since(start)
		b.StopTimer()
		total += d
		worst = max(worst, d)
		deletePodAndWait(b, client, pod)
		b.StartTimer()
	}
	b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms-to-ready/pod")
	b.ReportMetric(float64(worst.Milliseconds()), "ms-to-ready-max")
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func procRunning(pid int) bool {
	st := procState(pid)
	return st != "" && st != "Z" && st != "X"
}
