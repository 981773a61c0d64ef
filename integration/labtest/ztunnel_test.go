package labtest

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/cairnmesh/cairn/integration/lab"
	"github.com/cairnmesh/cairn/internal/manifest"
)

var meshOnce sync.Once

// installMesh installs the CRDs, istiod-lite and ztunnel from install/ as
// a user does, once per lab, and waits until istiod-lite and a ztunnel on
// every node are Ready.
func installMesh(t *testing.T) {
	t.Helper()
	ctx := testContext(t)
	meshOnce.Do(func() {
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
		for _, f := range []string{"istiod-lite.yaml", "ztunnel.yaml"} {
			if _, err := applier.ApplyFiles(ctx, filepath.Join(cfg.RepoDir, "install", "manifests", f)); err != nil {
				t.Fatal(err)
			}
		}
	})
	waitPods(t, "cairn-system", "app=istiod-lite", 1)
	waitPods(t, "cairn-system", "app=ztunnel", cfg.Nodes)
}

// ztunnelOn returns the ztunnel pod of a node.
func ztunnelOn(t *testing.T, node string) corev1.Pod {
	t.Helper()
	for _, p := range waitPods(t, "cairn-system", "app=ztunnel", cfg.Nodes) {
		if p.Spec.NodeName == node {
			return p
		}
	}
	t.Fatalf("no ztunnel on %s", node)
	return corev1.Pod{}
}

// meshApp deploys, in ns, an echo pod on each of the first two nodes, a
// Service in front of them, and a client pod on node 1.
func meshApp(t *testing.T, ns string) (client, echo1, echo2 corev1.Pod) {
	t.Helper()
	apply(t, ns, fmt.Sprintf(`
apiVersion: v1
kind: Pod
metadata: {name: echo-1, labels: {app: echo}}
spec:
  nodeName: %[1]s
  terminationGracePeriodSeconds: 1
  containers:
  - {name: echo, image: "cairn/echoserver:latest", ports: [{name: http, containerPort: 8080}]}
---
apiVersion: v1
kind: Pod
metadata: {name: echo-2, labels: {app: echo}}
spec:
  nodeName: %[2]s
  terminationGracePeriodSeconds: 1
  containers:
  - {name: echo, image: "cairn/echoserver:latest", ports: [{name: http, containerPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: echo}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, labels: {app: client}}
spec:
  nodeName: %[1]s
  terminationGracePeriodSeconds: 1
  containers:
  - {name: client, image: "cairn/echoserver:latest"}
`, lab.NodeName(1), lab.NodeName(2)))
	echoes := waitPods(t, ns, "app=echo", 2)
	for _, p := range echoes {
		switch p.Name {
		case "echo-1":
			echo1 = p
		case "echo-2":
			echo2 = p
		}
	}
	return waitPods(t, ns, "app=client", 1)[0], echo1, echo2
}

func enroll(t *testing.T, ns string) {
	t.Helper()
	if _, err := client.CoreV1().Namespaces().Patch(testContext(t), ns, "application/merge-patch+json",
		[]byte(`{"metadata":{"labels":{"istio.io/dataplane-mode":"ambient"}}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
}

// captured says whether a pod's network namespace has Cairn's rules.
// The test reads them from the node, in the pod's namespace: the pod
// itself has no NET_ADMIN to run iptables-save with.
func captured(t *testing.T, ns, pod string) bool {
	t.Helper()
	p, err := client.CoreV1().Pods(ns).Get(testContext(t), pod, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var out []byte
	if err := podNetns(t, *p).Do(func() error {
		out, err = exec.CommandContext(testContext(t), "iptables-save", "-t", "nat").Output()
		return err
	}); err != nil {
		t.Fatalf("iptables-save in %s/%s: %v", ns, pod, err)
	}
	return strings.Contains(string(out), "CAIRN_")
}

// ztunnelLogs returns a ztunnel pod's standard output (access log) and
// error (its own log).
func ztunnelLogs(t *testing.T, p corev1.Pod) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(testContext(t), 20*time.Second)
	defer cancel()
	out, err := kubectl(ctx, "-n", p.Namespace, "logs", p.Name)
	if err != nil {
		t.Fatalf("logs of %s: %v", p.Name, err)
	}
	return out
}

// TestAmbientNamespaceTrafficIsMeshed: labelling a namespace ambient puts
// its running pods in the mesh without a restart; the client then reaches
// echo pods by pod IP on its own node and across nodes, by Service name and
// by ClusterIP, and the destination ztunnel's access log names the client's
// SPIFFE identity. A namespace that is not labelled is not captured.
func TestAmbientNamespaceTrafficIsMeshed(t *testing.T) {
	setup(t)
	installMesh(t)
	ns := namespace(t)
	plain := namespace(t)
	cl, echo1, echo2 := meshApp(t, ns)
	plainClient, _, _ := meshApp(t, plain)

	if captured(t, ns, "client") {
		t.Fatal("pods are captured before their namespace is enrolled")
	}
	enroll(t, ns)
	for _, p := range []string{"client", "echo-1", "echo-2"} {
		eventually(t, 30*time.Second, p+" captured after enrolment", func() error {
			if !captured(t, ns, p) {
				return fmt.Errorf("no CAIRN_ rules in %s", p)
			}
			return nil
		})
	}

	svc, err := client.CoreV1().Services(ns).Get(testContext(t), "echo", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, target := range []struct{ what, url, want string }{
		{"pod IP, same node", "http://" + echo1.Status.PodIP + ":8080/", "echo-1"},
		{"pod IP, other node", "http://" + echo2.Status.PodIP + ":8080/", "echo-2"},
		{"Service name", "http://echo/", ""},
		{"ClusterIP", "http://" + svc.Spec.ClusterIP + "/", ""},
	} {
		eventually(t, 30*time.Second, "client reaches echo by "+target.what, func() error {
			r, err := curlEcho(t, ns, cl.Name, target.url)
			if err != nil {
				return err
			}
			if target.want != "" && r.Pod != target.want {
				return fmt.Errorf("answered by %q, want %q", r.Pod, target.want)
			}
			// ztunnel connects to the app from the client's address.
			if host, _, _ := net.SplitHostPort(r.RemoteAddr); host != cl.Status.PodIP {
				return fmt.Errorf("the server saw the request come from %s, want the client's %s", r.RemoteAddr, cl.Status.PodIP)
			}
			return nil
		})
	}

	id := fmt.Sprintf(`"src.identity":"spiffe://cluster.local/ns/%s/sa/default"`, ns)
	eventually(t, 20*time.Second, "echo-2's ztunnel logs the client's identity", func() error {
		if logs := ztunnelLogs(t, ztunnelOn(t, echo2.Spec.NodeName)); !strings.Contains(logs, id) {
			return fmt.Errorf("no access-log line with %s", id)
		}
		return nil
	})

	if captured(t, plain, plainClient.Name) {
		t.Error("a pod of a namespace that is not enrolled was captured")
	}
	if _, err := curlEcho(t, plain, plainClient.Name, "http://echo/"); err != nil {
		t.Errorf("plain namespace traffic: %v", err)
	}
}

// TestControlPlaneDownKeepsTheMeshServing: with istiod-lite scaled to zero,
// the ztunnels keep their last configuration and certificates: new
// connections by pod IP and by Service name still work, across nodes.
func TestControlPlaneDownKeepsTheMeshServing(t *testing.T) {
	setup(t)
	ns, echo2IP, _ := meshedApp(t)
	ctx := testContext(t)
	scale := func(n int) {
		t.Helper()
		if _, err := kubectl(ctx, "-n", "cairn-system", "scale", "deployment/istiod-lite", fmt.Sprintf("--replicas=%d", n)); err != nil {
			t.Fatal(err)
		}
	}
	scale(0)
	t.Cleanup(func() {
		scale(1)
		waitPods(t, "cairn-system", "app=istiod-lite", 1)
	})
	eventually(t, 60*time.Second, "istiod-lite gone", func() error {
		pods, err := client.CoreV1().Pods("cairn-system").List(ctx, metav1.ListOptions{LabelSelector: "app=istiod-lite"})
		if err != nil {
			return err
		}
		if len(pods.Items) > 0 {
			return fmt.Errorf("%d istiod-lite pods left", len(pods.Items))
		}
		return nil
	})
	for _, url := range []string{"http://" + echo2IP + ":8080/", "http://echo/"} {
		for range 3 {
			if _, err := curlEcho(t, ns, "client", url); err != nil {
				t.Fatalf("%s with the control plane down: %v", url, err)
			}
		}
	}
}
