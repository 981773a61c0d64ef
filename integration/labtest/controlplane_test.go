package labtest

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestDenyAllNamespaceStaysRefusedAcrossZtunnelRestart: a namespace under
// a namespace-wide deny-all AuthorizationPolicy (no selector: the
// workloads do not name it). While a mesh client and a plaintext client
// outside the mesh open new connections to it without pause, every
// ztunnel is restarted: the new ztunnels serve the pods (SO_REUSEPORT)
// before or while their first workload discovery arrives, and not one
// connection may reach the app at any moment.
func TestDenyAllNamespaceStaysRefusedAcrossZtunnelRestart(t *testing.T) {
	setup(t)
	ns, echo2IP, _ := meshedApp(t)
	ctx := testContext(t)
	plain := namespace(t)
	apply(t, plain, `
apiVersion: v1
kind: Pod
metadata: {name: outsider, labels: {app: outsider}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: outsider, image: "cairn/echoserver:latest"}
`)
	waitPods(t, plain, "app=outsider", 1)
	apply(t, ns, `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-all}
spec: {}
`)
	eventually(t, 30*time.Second, "deny-all refuses the mesh client", func() error {
		if _, err := curl(t, ns, "client", "http://"+echo2IP+":8080/"); err == nil {
			return fmt.Errorf("still allowed")
		}
		return nil
	})
	if _, err := curl(t, plain, "outsider", "http://"+echo2IP+":8080/"); err == nil {
		t.Fatal("deny-all does not refuse plaintext from outside the mesh")
	}

	type outcome struct {
		who string
		out string
		err error
	}
	done := make(chan outcome, 2)
	load := func(who, namespace, pod string) {
		lctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		out, err := kubectl(lctx, "-n", namespace, "exec", pod, "--", "/cairn/bin/fortio", "load",
			"-qps", "20", "-c", "2", "-t", "40s", "-keepalive=false", "-timeout", "2s", "-allow-initial-errors",
			"-json", "-", "-quiet", "http://"+echo2IP+":8080/")
		done <- outcome{who, out, err}
	}
	go load("mesh client", ns, "client")
	go load("plaintext client", plain, "outsider")

	time.Sleep(3 * time.Second) // the load is under way; not a timing target
	if _, err := kubectl(ctx, "-n", "cairn-system", "rollout", "restart", "daemonset/ztunnel"); err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	if out, err := kubectl(rctx, "-n", "cairn-system", "rollout", "status", "daemonset/ztunnel", "--timeout=90s"); err != nil {
		t.Fatalf("rollout: %v\n%s", err, out)
	}
	for range 2 {
		res := <-done
		// fortio exits non-zero when every request failed, as here; its
		// JSON result is printed anyway.
		i := strings.Index(res.out, "{")
		if i < 0 {
			t.Fatalf("%s: no fortio result (%v)\n%s", res.who, res.err, res.out)
		}
		var r fortioResult
		if err := json.Unmarshal([]byte(res.out[i:]), &r); err != nil {
			t.Fatalf("%s: fortio's result: %v\n%s", res.who, err, res.out)
		}
		t.Logf("%s: %d connections during the restart, return codes %v", res.who, r.DurationHistogram.Count, r.RetCodes)
		if r.DurationHistogram.Count < 50 {
			t.Errorf("%s: only %d connections were tried", res.who, r.DurationHistogram.Count)
		}
		if n := r.RetCodes["200"]; n > 0 {
			t.Errorf("%s: %d of %d connections reached the app under deny-all during the ztunnel restart",
				res.who, n, r.DurationHistogram.Count)
		}
	}
}

// TestIstiodLiteDebugOnlyThroughPortForward: istiod-lite's debug pages,
// which list the whole mesh, do not answer a pod that reaches istiod-lite's
// address; its probes (on the metrics port) do, so the pod is Ready; and
// kubectl port-forward reaches the debug pages, as the README says.
func TestIstiodLiteDebugOnlyThroughPortForward(t *testing.T) {
	setup(t)
	installMesh(t)
	istiod := waitPods(t, "cairn-system", "app=istiod-lite", 1)[0]
	ns := namespace(t)
	apply(t, ns, `
apiVersion: v1
kind: Pod
metadata: {name: prober, labels: {app: prober}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: prober, image: "cairn/echoserver:latest"}
`)
	waitPods(t, ns, "app=prober", 1)
	base := "http://" + istiod.Status.PodIP
	if out, err := curl(t, ns, "prober", base+":15014/ready"); err != nil || !strings.Contains(out, "ready") {
		t.Fatalf("the probe port from a pod: %q, %v", out, err)
	}
	for _, url := range []string{base + ":8080/debug/model", base + ":15014/debug/model", base + ":15014/debug/clients"} {
		if out, err := curl(t, ns, "prober", url); err == nil {
			t.Errorf("a pod read %s: %.200q", url, out)
		}
	}

	// kubectl port-forward, as the README says.
	pctx, cancel := context.WithCancel(testContext(t))
	defer cancel()
	cmd := kubectlCmd(pctx, "-n", "cairn-system", "port-forward", "deploy/istiod-lite", ":8080")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); _ = cmd.Wait() }()
	local := make(chan string, 1)
	go func() {
		re := regexp.MustCompile(`Forwarding from 127\.0\.0\.1:(\d+) -> 8080`)
		s := bufio.NewScanner(stdout)
		for s.Scan() {
			if m := re.FindStringSubmatch(s.Text()); m != nil {
				local <- m[1]
				break
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
	}()
	var port string
	select {
	case port = <-local:
	case <-time.After(30 * time.Second):
		t.Fatal("kubectl port-forward did not start")
	}
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get("http://127.0.0.1:" + port + "/debug/model")
	if err != nil {
		t.Fatalf("/debug/model through port-forward: %v", err)
	}
	defer resp.Body.Close()
	var model struct {
		Resources map[string][]string `json:"resources"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&model); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("/debug/model through port-forward: %d, %v", resp.StatusCode, err)
	}
}
