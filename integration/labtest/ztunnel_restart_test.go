package labtest

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// fortioResult is the part of fortio's JSON result the test reads.
type fortioResult struct {
	RetCodes                map[string]int64
	DurationHistogram       struct{ Count int64 }
	ErrorsDurationHistogram struct{ Count int64 }
}

// TestZtunnelRollingRestartFailsNoConnection: while the client opens new
// connections to the other node's echo pod at a steady rate (fortio,
// keep-alive off), every ztunnel is replaced by a rolling restart. The new
// ztunnel takes each pod's listeners over (SO_REUSEPORT) before the old
// one drains, so no connection fails; and the new ztunnels capture the
// pods created afterwards.
func TestZtunnelRollingRestartFailsNoConnection(t *testing.T) {
	setup(t)
	ns, echo2IP, _ := meshedApp(t)
	ctx := testContext(t)

	type outcome struct {
		out string
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		lctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		out, err := kubectl(lctx, "-n", ns, "exec", "client", "--", "/cairn/bin/fortio", "load",
			"-qps", "40", "-c", "4", "-t", "35s", "-keepalive=false", "-json", "-", "-quiet",
			"http://"+echo2IP+":8080/")
		done <- outcome{out, err}
	}()

	time.Sleep(3 * time.Second) // the load is under way; not a timing target
	before := waitPods(t, "cairn-system", "app=ztunnel", cfg.Nodes)
	if _, err := kubectl(ctx, "-n", "cairn-system", "rollout", "restart", "daemonset/ztunnel"); err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	if out, err := kubectl(rctx, "-n", "cairn-system", "rollout", "status", "daemonset/ztunnel", "--timeout=90s"); err != nil {
		t.Fatalf("rollout: %v\n%s", err, out)
	}
	after := waitPods(t, "cairn-system", "app=ztunnel", cfg.Nodes)
	for _, a := range after {
		for _, b := range before {
			if a.Name == b.Name {
				t.Fatalf("ztunnel %s was not replaced", a.Name)
			}
		}
	}

	// The new ztunnels answer cairn-cni: a pod created now starts, captured.
	apply(t, ns, `
apiVersion: v1
kind: Pod
metadata: {name: late, labels: {app: late}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: late, image: "cairn/echoserver:latest"}
`)
	waitPods(t, ns, "app=late", 1)
	if !captured(t, ns, "late") {
		t.Error("a pod created after the rolling restart was not captured")
	}

	res := <-done
	if res.err != nil {
		t.Fatalf("fortio: %v\n%s", res.err, res.out)
	}
	// fortio prints its JSON after its own log lines.
	out := res.out[strings.Index(res.out, "{"):]
	var r fortioResult
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("fortio's result: %v\n%s", err, res.out)
	}
	t.Logf("connections: %d, return codes %v, errors %d", r.DurationHistogram.Count, r.RetCodes, r.ErrorsDurationHistogram.Count)
	if r.DurationHistogram.Count < 100 {
		t.Fatalf("only %d connections were made", r.DurationHistogram.Count)
	}
	if ok := r.RetCodes["200"]; ok != r.DurationHistogram.Count || r.ErrorsDurationHistogram.Count != 0 {
		t.Errorf("%d of %d connections failed during the rolling restart (codes %v)",
			r.DurationHistogram.Count-ok, r.DurationHistogram.Count, r.RetCodes)
	}
}
