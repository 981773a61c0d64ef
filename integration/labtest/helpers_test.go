package labtest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/cairnmesh/cairn/integration/lab"
	"github.com/cairnmesh/cairn/integration/labharness"
	"github.com/cairnmesh/cairn/internal/manifest"
)

// testContext returns a context that ends with the test, or after 3
// minutes.
func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// namespace creates a namespace for the test and deletes it afterwards
// (without waiting).
func namespace(t *testing.T) string {
	t.Helper()
	ctx := testContext(t)
	ns, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "t-"},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = client.CoreV1().Namespaces().Delete(context.Background(), ns.Name, metav1.DeleteOptions{})
	})
	return ns.Name
}

// apply applies YAML to namespace ns.
func apply(t *testing.T, ns, yaml string) {
	t.Helper()
	a, err := manifest.New(restConfig, manifest.Options{FieldManager: "labtest", Namespace: ns})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Apply(testContext(t), []byte(yaml)); err != nil {
		t.Fatal(err)
	}
}

// kubectl runs the lab's kubectl (bin/k8s/kubectl) against the lab.
func kubectl(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, kubectlBin, append([]string{"--kubeconfig", cfg.KubeconfigPath()}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		return stdout.String(), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// execIn runs cmd in a pod's first container with `kubectl exec`.
func execIn(t *testing.T, ns, pod string, cmd ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(testContext(t), 30*time.Second)
	defer cancel()
	return kubectl(ctx, append([]string{"-n", ns, "exec", pod, "--"}, cmd...)...)
}

// curl fetches url from inside a pod and returns the body.
func curl(t *testing.T, ns, pod, url string) (string, error) {
	t.Helper()
	return execIn(t, ns, pod, "curl", "-sS", "--fail", "--max-time", "3", url)
}

// echoReply is the part of the echo server's JSON answer the tests read.
type echoReply struct {
	Pod        string `json:"pod"`
	Namespace  string `json:"namespace"`
	RemoteAddr string `json:"remoteAddr"`
}

// curlEcho fetches url from a pod and decodes the echo server's answer.
func curlEcho(t *testing.T, ns, pod, url string) (echoReply, error) {
	t.Helper()
	body, err := curl(t, ns, pod, url)
	if err != nil {
		return echoReply{}, err
	}
	var r echoReply
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		return r, fmt.Errorf("decoding %q: %w", body, err)
	}
	return r, nil
}

// waitPods waits until n pods match selector in ns and all are Ready, and
// returns them.
func waitPods(t *testing.T, ns, selector string, n int) []corev1.Pod {
	t.Helper()
	pods, err := labharness.WaitPods(testContext(t), client, ns, selector, n, 90*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return pods
}

var (
	podReady   = labharness.PodReady
	podSummary = labharness.PodSummary
)

// eventually retries f every 200ms until it succeeds or timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for {
		if err = f(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// echoPodYAML is a container spec running the echo server with its pod
// name and namespace from the downward API.
const echoContainer = `      - name: echo
        image: cairn/echoserver:latest
        env:
        - name: POD_NAME
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
        - name: POD_NAMESPACE
          valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
        ports:
        - {name: http, containerPort: 8080}
`

// kubectlCmd returns an unstarted kubectl command against the lab.
func kubectlCmd(ctx context.Context, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, kubectlBin, append([]string{"--kubeconfig", cfg.KubeconfigPath()}, args...)...)
}

// httpGetEcho fetches url from the test process (the root network
// namespace) and decodes the echo server's answer.
func httpGetEcho(url string) (echoReply, error) {
	c := &http.Client{Timeout: 3 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return echoReply{}, err
	}
	defer resp.Body.Close()
	var r echoReply
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return r, fmt.Errorf("decoding the answer of %s: %w", url, err)
	}
	return r, nil
}

// nodeIndex returns i for node lab-node-<i>.
func nodeIndex(t *testing.T, node string) int {
	t.Helper()
	for i := 1; i <= cfg.Nodes; i++ {
		if lab.NodeName(i) == node {
			return i
		}
	}
	t.Fatalf("pod on unknown node %q", node)
	return 0
}

// waitPod waits until the named pod satisfies cond and returns it.
func waitPod(t *testing.T, ns, name, what string, cond func(*corev1.Pod) bool) *corev1.Pod {
	t.Helper()
	var pod *corev1.Pod
	err := wait.PollUntilContextTimeout(testContext(t), 100*time.Millisecond, 90*time.Second, true, func(ctx context.Context) (bool, error) {
		p, err := client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		pod = p
		return cond(p), nil
	})
	if err != nil {
		summary := "not found"
		if pod != nil {
			summary = podSummary(pod)
		}
		t.Fatalf("waiting for pod %s/%s to be %s: %v (%s)", ns, name, what, err, summary)
	}
	return pod
}

func podRunning(p *corev1.Pod) bool {
	return p.Status.Phase == corev1.PodRunning && p.Status.PodIP != ""
}
