package labtest

import (
	"context"
	"crypto/x509"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/cairnmesh/cairn/integration/lab"
	"github.com/cairnmesh/cairn/internal/pki"
	"github.com/cairnmesh/cairn/istiod-lite/ca/kubeca"
)

// load is a loop of requests from a pod, each on a new connection, that
// counts the answers that are not 200 until it is stopped.
type load struct {
	t       *testing.T
	ns, pod string
	done    chan loadResult
}

type loadResult struct {
	out string
	err error
}

var loadCounts = regexp.MustCompile(`ok=(\d+) fail=(\d+)`)

func startLoad(t *testing.T, ctx context.Context, ns, pod string, urls ...string) *load {
	t.Helper()
	script := `rm -f /tmp/stop-load; ok=0; fail=0
while [ ! -e /tmp/stop-load ]; do
  for u in ` + strings.Join(urls, " ") + `; do
    code=$(curl -s -o /dev/null --max-time 5 -w '%{http_code}' "$u")
    if [ "$code" = 200 ]; then ok=$((ok+1)); else fail=$((fail+1)); echo "FAIL $(date +%H:%M:%S.%N) $u $code"; fi
  done
  sleep 0.1
done
echo "ok=$ok fail=$fail"`
	l := &load{t: t, ns: ns, pod: pod, done: make(chan loadResult, 1)}
	go func() {
		out, err := kubectl(ctx, "-n", ns, "exec", pod, "--", "sh", "-c", script)
		l.done <- loadResult{out, err}
	}()
	return l
}

// stop ends the loop and returns how many requests succeeded and failed,
// with the failures' lines.
func (l *load) stop() (ok, failed int, failures string) {
	l.t.Helper()
	if _, err := execIn(l.t, l.ns, l.pod, "touch", "/tmp/stop-load"); err != nil {
		l.t.Fatal(err)
	}
	var r loadResult
	select {
	case r = <-l.done:
	case <-time.After(time.Minute):
		l.t.Fatal("the load loop did not stop")
	}
	if r.err != nil {
		l.t.Fatalf("load loop: %v\n%s", r.err, r.out)
	}
	m := loadCounts.FindStringSubmatch(r.out)
	if m == nil {
		l.t.Fatalf("load loop: no counts in %q", r.out)
	}
	ok, _ = strconv.Atoi(m[1])
	failed, _ = strconv.Atoi(m[2])
	return ok, failed, strings.TrimSpace(loadCounts.ReplaceAllString(r.out, ""))
}

// ztunnels returns the ztunnel of every node.
func ztunnels(t *testing.T) []corev1.Pod {
	t.Helper()
	var out []corev1.Pod
	for i := 1; i <= cfg.Nodes; i++ {
		out = append(out, ztunnelOn(t, lab.NodeName(i)))
	}
	return out
}

// bundleSerials returns the serial numbers of a ztunnel's trust bundle, in
// order.
func bundleSerials(t *testing.T, zt corev1.Pod) ([]string, error) {
	var b struct{ Roots []struct{ Serial string } }
	if err := ztunnelDump(t, zt, "bundle", &b); err != nil {
		return nil, err
	}
	var out []string
	for _, r := range b.Roots {
		out = append(out, r.Serial)
	}
	return out, nil
}

func serialOf(c *x509.Certificate) string { return c.SerialNumber.Text(16) }

// TestCARootRotationUnderTrafficLeavesNoZtunnelStale: the CA's root is
// rotated in the three steps an operator takes (add the new root to
// ca.crt; switch the signing certificate to it; remove the old root),
// waiting each time until every ztunnel has the new bundle and restarting
// istiod-lite after each step, while a client sends a steady stream of
// requests, each on a new connection, to echo pods on its own node and on
// the other. No request fails; after the signer switch every ztunnel's
// certificates move to the new root; every ztunnel's workload discovery
// reconnects to each restarted istiod-lite; a pod with a new identity
// started at the end reaches the other node; and a DENY policy applied at
// the end is enforced on both nodes.
func TestCARootRotationUnderTrafficLeavesNoZtunnelStale(t *testing.T) {
	setup(t)
	ns, echo2IP, echo1IP := meshedApp(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()

	secrets := client.CoreV1().Secrets("cairn-system")
	secret, err := secrets.Get(ctx, kubeca.DefaultSecretName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	oldCA, _, err := kubeca.LoadSecret(secret)
	if err != nil {
		t.Fatal(err)
	}
	newCA, err := pki.NewRoot("cluster.local", 0)
	if err != nil {
		t.Fatal(err)
	}
	newKey, err := pki.EncodeKeyPEM(newCA.Key)
	if err != nil {
		t.Fatal(err)
	}
	oldRoot, newRoot := serialOf(oldCA.Root()), serialOf(newCA.Cert)
	update := func(mutate func(*corev1.Secret)) {
		t.Helper()
		s, err := secrets.Get(ctx, kubeca.DefaultSecretName, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		mutate(s)
		if _, err := secrets.Update(ctx, s, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// Every ztunnel's bundle is want, in order (the kubelet refreshes the
	// ConfigMap volume within a minute; ztunnel looks every 5 s).
	awaitBundle := func(what string, want ...string) {
		t.Helper()
		for _, zt := range ztunnels(t) {
			eventually(t, 3*time.Minute, what+": "+zt.Name+"'s trust bundle", func() error {
				got, err := bundleSerials(t, zt)
				if err != nil {
					return err
				}
				if !slices.Equal(got, want) {
					return fmt.Errorf("roots %v, want %v", got, want)
				}
				return nil
			})
		}
	}
	restartIstiod := func(what string) {
		t.Helper()
		before, err := client.CoreV1().Pods("cairn-system").List(ctx, metav1.ListOptions{LabelSelector: "app=istiod-lite"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := kubectl(ctx, "-n", "cairn-system", "rollout", "restart", "deployment/istiod-lite"); err != nil {
			t.Fatal(err)
		}
		if out, err := kubectl(ctx, "-n", "cairn-system", "rollout", "status", "deployment/istiod-lite", "--timeout=150s"); err != nil {
			t.Fatalf("%s: istiod-lite rollout: %v\n%s", what, err, out)
		}
		for _, old := range before.Items {
			eventually(t, 2*time.Minute, what+": old istiod-lite "+old.Name+" gone", func() error {
				_, err := client.CoreV1().Pods("cairn-system").Get(ctx, old.Name, metav1.GetOptions{})
				if err == nil {
					return fmt.Errorf("still there")
				}
				return nil
			})
		}
		// Every ztunnel's workload discovery is back: this is what failed
		// for good when the xDS client trusted only the roots it started
		// with.
		for _, zt := range ztunnels(t) {
			eventually(t, 2*time.Minute, what+": "+zt.Name+" back on istiod-lite", func() error {
				v, err := ztunnelMetric(t, zt, "cairn_ztunnel_xds_disconnected_seconds")
				if err != nil {
					return err
				}
				if v != 0 {
					return fmt.Errorf("without istiod-lite for %gs", v)
				}
				return nil
			})
		}
	}

	urls := []string{"http://" + echo2IP + ":8080/", "http://" + echo1IP + ":8080/"}
	l := startLoad(t, ctx, ns, "client", urls...)
	time.Sleep(3 * time.Second) // the load is under way; not a timing target

	// 1. Add the new root; the old one still signs.
	update(func(s *corev1.Secret) {
		s.Data[kubeca.SecretBundle] = pki.EncodeCertsPEM(oldCA.Root(), newCA.Cert)
	})
	awaitBundle("root added", oldRoot, newRoot)
	restartIstiod("root added")

	// 2. Switch the signer. istiod-lite lists the new root first, and every
	// ztunnel moves its certificates to it.
	update(func(s *corev1.Secret) {
		s.Data[kubeca.SecretCert], s.Data[kubeca.SecretKey] = pki.EncodeCertPEM(newCA.Cert), newKey
	})
	awaitBundle("signer switched", newRoot, oldRoot)
	for _, zt := range ztunnels(t) {
		eventually(t, 2*time.Minute, "signer switched: "+zt.Name+"'s certificates under the new root", func() error {
			var certs []struct {
				Identity, RootSerial string
				Pods                 int
			}
			if err := ztunnelDump(t, zt, "certificates", &certs); err != nil {
				return err
			}
			if len(certs) == 0 {
				return fmt.Errorf("no certificates")
			}
			for _, c := range certs {
				// One that no pod holds any more lingers unrenewed until
				// it is dropped; it serves no one.
				if c.Pods > 0 && c.RootSerial != newRoot {
					return fmt.Errorf("%s still under root %q", c.Identity, c.RootSerial)
				}
			}
			return nil
		})
	}
	restartIstiod("signer switched")

	// 3. Remove the old root.
	update(func(s *corev1.Secret) { s.Data[kubeca.SecretBundle] = pki.EncodeCertPEM(newCA.Cert) })
	awaitBundle("old root removed", newRoot)
	restartIstiod("old root removed")

	ok, failed, failures := l.stop()
	t.Logf("requests during the rotation: %d answered 200, %d failed", ok, failed)
	if failed > 0 {
		t.Errorf("%d of %d requests failed during the rotation:\n%s", failed, ok+failed, failures)
	}
	if ok < 100 {
		t.Errorf("only %d requests were made during the rotation", ok)
	}

	// A new identity, issued under the new root only, reaches the other node.
	apply(t, ns, fmt.Sprintf(`
apiVersion: v1
kind: ServiceAccount
metadata: {name: late}
---
apiVersion: v1
kind: Pod
metadata: {name: late, labels: {app: late}}
spec:
  nodeName: %s
  serviceAccountName: late
  terminationGracePeriodSeconds: 1
  containers:
  - {name: late, image: "cairn/echoserver:latest"}
`, lab.NodeName(2)))
	waitPods(t, ns, "app=late", 1)
	eventually(t, 60*time.Second, "a pod with a new identity reaches echo-1 on the other node", func() error {
		_, err := curlEcho(t, ns, "late", "http://"+echo1IP+":8080/")
		return err
	})

	// No ztunnel is stale: a DENY policy applied now is enforced at both
	// echo pods, by both nodes' ztunnels.
	apply(t, ns, fmt.Sprintf(`
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-client}
spec:
  selector: {matchLabels: {app: echo}}
  action: DENY
  rules:
  - from: [{source: {principals: ["cluster.local/ns/%s/sa/default"]}}]
`, ns))
	for _, url := range urls {
		eventually(t, 60*time.Second, "the DENY policy enforced for "+url, func() error {
			if _, err := curl(t, ns, "client", url); err == nil {
				return fmt.Errorf("still allowed")
			}
			return nil
		})
	}
	if _, err := curlEcho(t, ns, "late", "http://"+echo1IP+":8080/"); err != nil {
		t.Errorf("the DENY policy for the client also refused another identity: %v", err)
	}
	for _, zt := range ztunnels(t) {
		body, err := ztunnelGet(t, zt, 15021, "/healthz/ready")
		if err != nil || body != "ready\n" {
			t.Errorf("%s readiness: %q, %v; want plain ready", zt.Name, body, err)
		}
	}
}
