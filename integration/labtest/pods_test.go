package labtest

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sort"
	"strings"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/cairnmesh/cairn/integration/lab"
)

// A container's output reaches `kubectl logs`, and `kubectl exec` runs a
// command inside the pod: in its network namespace (it sees the pod's IP
// on eth0), with stdin, stdout and the exit code carried.
func TestExecAndLogs(t *testing.T) {
	setup(t)
	ns := namespace(t)
	apply(t, ns, `
apiVersion: v1
kind: Pod
metadata:
  name: talker
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: talker
    image: cairn/echoserver:latest
    command: [sh, -c, 'echo "hello from $POD_NAME"; exec sleep infinity']
    env:
    - name: POD_NAME
      valueFrom: {fieldRef: {fieldPath: metadata.name}}
`)
	pod := waitPods(t, ns, "", 1)[0]

	eventually(t, 10*time.Second, "kubectl logs", func() error {
		out, err := kubectl(testContext(t), "-n", ns, "logs", "talker")
		if err != nil {
			return err
		}
		if !strings.Contains(out, "hello from talker") {
			return errors.New("logs lack the container's output: " + out)
		}
		return nil
	})

	out, err := execIn(t, ns, "talker", "ip", "-4", "-o", "addr", "show", "dev", "eth0")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, " "+pod.Status.PodIP+"/") {
		t.Errorf("exec ip addr in the pod: %q lacks the pod IP %s", out, pod.Status.PodIP)
	}

	ctx := testContext(t)
	cmd := kubectlCmd(ctx, "-n", ns, "exec", "-i", "talker", "--", "tr", "a-z", "A-Z")
	cmd.Stdin = strings.NewReader("shout\n")
	if got, err := cmd.Output(); err != nil || strings.TrimSpace(string(got)) != "SHOUT" {
		t.Errorf("exec -i with stdin: %q, %v", got, err)
	}
	if _, err := execIn(t, ns, "talker", "sh", "-c", "exit 3"); err == nil || !strings.Contains(err.Error(), "exit code 3") {
		t.Errorf("exec of a failing command: err = %v, want exit code 3", err)
	}
}

// Two echo replicas, one per node, and a client pod reach each other by
// pod IP, by ClusterIP and by DNS names, short and fully qualified. One
// replica shares the client's node (same CNI bridge, which needs
// bridge-nf-call-iptables for the ClusterIP) and one does not (routed over
// the lab bridge).
func TestPodsReachEachOtherAcrossNodes(t *testing.T) {
	setup(t)
	ns := namespace(t)
	apply(t, ns, fmt.Sprintf(`
apiVersion: apps/v1
kind: Deployment
metadata:
  name: echo
spec:
  replicas: 2
  selector:
    matchLabels: {app: echo}
  template:
    metadata:
      labels: {app: echo}
    spec:
      terminationGracePeriodSeconds: 1
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
          - topologyKey: kubernetes.io/hostname
            labelSelector:
              matchLabels: {app: echo}
      containers:
%s        readinessProbe:
          httpGet: {path: /, port: 8080}
          periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata:
  name: echo
spec:
  selector: {app: echo}
  ports:
  - {name: http, port: 80, targetPort: 8080}
---
apiVersion: v1
kind: Pod
metadata:
  name: client
  labels: {app: client}
spec:
  terminationGracePeriodSeconds: 1
  containers:
%s`, echoContainer, echoContainer))
	echoes := waitPods(t, ns, "app=echo", 2)
	cli := waitPods(t, ns, "app=client", 1)[0]
	if echoes[0].Spec.NodeName == echoes[1].Spec.NodeName {
		t.Fatalf("both echo replicas run on %s", echoes[0].Spec.NodeName)
	}
	t.Logf("client on %s (%s); echo %s on %s (%s), %s on %s (%s)", cli.Spec.NodeName, cli.Status.PodIP,
		echoes[0].Name, echoes[0].Spec.NodeName, echoes[0].Status.PodIP, echoes[1].Name, echoes[1].Spec.NodeName, echoes[1].Status.PodIP)

	t.Run("pod IP", func(t *testing.T) {
		for _, e := range echoes {
			r, err := curlEcho(t, ns, cli.Name, "http://"+net.JoinHostPort(e.Status.PodIP, "8080"))
			if err != nil {
				t.Fatalf("client -> %s: %v", e.Name, err)
			}
			if r.Pod != e.Name {
				t.Errorf("client -> %s (%s): answered by %q", e.Name, e.Status.PodIP, r.Pod)
			}
			// Pod to pod, nothing rewrites the source address.
			if host, _, _ := net.SplitHostPort(r.RemoteAddr); host != cli.Status.PodIP {
				t.Errorf("client -> %s: the server saw the request from %s, want the client's %s", e.Name, r.RemoteAddr, cli.Status.PodIP)
			}
			back, err := curlEcho(t, ns, e.Name, "http://"+net.JoinHostPort(cli.Status.PodIP, "8080"))
			if err != nil {
				t.Fatalf("%s -> client: %v", e.Name, err)
			}
			if back.Pod != cli.Name {
				t.Errorf("%s -> client: answered by %q", e.Name, back.Pod)
			}
		}
	})

	t.Run("localhost", func(t *testing.T) {
		r, err := curlEcho(t, ns, cli.Name, "http://127.0.0.1:8080/")
		if err != nil || r.Pod != cli.Name {
			t.Errorf("client -> its own localhost:8080: %+v, %v", r, err)
		}
	})

	svc, err := client.CoreV1().Services(ns).Get(testContext(t), "echo", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// A pod reaches itself through its Service (the CNI bridge's hairpin
	// mode and kube-proxy's masquerading of hairpin traffic).
	t.Run("hairpin", func(t *testing.T) {
		self := echoes[0].Name
		for range 40 {
			r, err := curlEcho(t, ns, self, "http://"+svc.Spec.ClusterIP+"/")
			if err != nil {
				t.Fatalf("%s -> its Service: %v", self, err)
			}
			if r.Pod == self {
				return
			}
		}
		t.Errorf("%s never reached itself through its Service", self)
	})
	// Both replicas answer through the Service, whichever way it is named.
	for _, target := range []string{
		svc.Spec.ClusterIP,
		"echo",
		"echo." + ns,
		"echo." + ns + ".svc",
		"echo." + ns + ".svc." + lab.ClusterDomain,
	} {
		t.Run(target, func(t *testing.T) {
			seen := map[string]bool{}
			for i := 0; i < 40 && len(seen) < 2; i++ {
				r, err := curlEcho(t, ns, cli.Name, "http://"+target+"/")
				if err != nil {
					t.Fatalf("client -> %s: %v", target, err)
				}
				seen[r.Pod] = true
			}
			if !seen[echoes[0].Name] || !seen[echoes[1].Name] {
				t.Errorf("client -> %s reached %v, want both %s and %s", target, keys(seen), echoes[0].Name, echoes[1].Name)
			}
		})
	}
}

// A hostNetwork DaemonSet runs one pod per node, in the node's network
// namespace: its pod IP is the node's, and it answers on the node's
// address.
func TestDaemonSetRunsOnEveryNodeInNodeNetns(t *testing.T) {
	setup(t)
	ns := namespace(t)
	apply(t, ns, `
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: agent
spec:
  selector:
    matchLabels: {app: agent}
  template:
    metadata:
      labels: {app: agent}
    spec:
      hostNetwork: true
      terminationGracePeriodSeconds: 1
      containers:
      - name: agent
        image: cairn/echoserver:latest
        args: [--http-port=18080, --grpc-port=0, --tcp-port=0]
        env:
        - name: POD_NAME
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
        readinessProbe:
          tcpSocket: {port: 18080}
          periodSeconds: 1
`)
	pods := waitPods(t, ns, "app=agent", cfg.Nodes)
	nodesSeen := map[string]bool{}
	for _, p := range pods {
		nodesSeen[p.Spec.NodeName] = true
		i := nodeIndex(t, p.Spec.NodeName)
		nodeIP := cfg.NodeAddr(i).Addr().String()
		if p.Status.PodIP != nodeIP || p.Status.HostIP != nodeIP {
			t.Errorf("%s on %s: podIP %s hostIP %s, want the node IP %s", p.Name, p.Spec.NodeName, p.Status.PodIP, p.Status.HostIP, nodeIP)
		}
		out, err := execIn(t, ns, p.Name, "ip", "-4", "-o", "addr", "show", "dev", "eth0")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out, " "+nodeIP+"/") {
			t.Errorf("%s: eth0 in the pod is %q, want the node's %s", p.Name, out, nodeIP)
		}
		// The host reaches it on the node's address.
		r, err := httpGetEcho("http://" + net.JoinHostPort(nodeIP, "18080") + "/")
		if err != nil {
			t.Fatalf("host -> %s:18080: %v", nodeIP, err)
		}
		if r.Pod != p.Name {
			t.Errorf("%s:18080 answered by %q, want %s", nodeIP, r.Pod, p.Name)
		}
	}
	if len(nodesSeen) != cfg.Nodes {
		t.Errorf("DaemonSet pods on %v, want one on each of %d nodes", keys(nodesSeen), cfg.Nodes)
	}
}

// The projected ServiceAccount token a pod gets authenticates as its
// ServiceAccount: in a TokenReview, and from inside the pod through the
// kubernetes Service with the projected CA.
func TestProjectedTokenAuthenticatesAsServiceAccount(t *testing.T) {
	setup(t)
	ns := namespace(t)
	apply(t, ns, fmt.Sprintf(`
apiVersion: v1
kind: ServiceAccount
metadata:
  name: reader
---
apiVersion: v1
kind: Pod
metadata:
  name: tokens
spec:
  serviceAccountName: reader
  terminationGracePeriodSeconds: 1
  containers:
%s`, echoContainer))
	waitPods(t, ns, "", 1)
	const sa = "/var/run/secrets/kubernetes.io/serviceaccount"
	token, err := execIn(t, ns, "tokens", "cat", sa+"/token")
	if err != nil {
		t.Fatal(err)
	}
	want := "system:serviceaccount:" + ns + ":reader"
	review, err := client.AuthenticationV1().TokenReviews().Create(testContext(t), &authnv1.TokenReview{
		Spec: authnv1.TokenReviewSpec{Token: strings.TrimSpace(token)},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !review.Status.Authenticated || review.Status.User.Username != want {
		t.Errorf("TokenReview: authenticated=%v user=%q error=%q, want %s", review.Status.Authenticated,
			review.Status.User.Username, review.Status.Error, want)
	}
	if ns2, err := execIn(t, ns, "tokens", "cat", sa+"/namespace"); err != nil || ns2 != ns {
		t.Errorf("projected namespace file: %q, %v", ns2, err)
	}
	// From the pod: the API server through the kubernetes Service, by name.
	out, err := execIn(t, ns, "tokens", "sh", "-c", `curl -sS --fail --max-time 5 --cacert `+sa+`/ca.crt \
  -H "Authorization: Bearer $(cat `+sa+`/token)" -H 'Content-Type: application/json' \
  -d '{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}' \
  https://kubernetes.default.svc/apis/authentication.k8s.io/v1/selfsubjectreviews`)
	if err != nil {
		t.Fatal(err)
	}
	var ssr authnv1.SelfSubjectReview
	if err := json.Unmarshal([]byte(out), &ssr); err != nil {
		t.Fatalf("SelfSubjectReview from the pod: %v: %s", err, out)
	}
	if got := ssr.Status.UserInfo.Username; got != want {
		t.Errorf("SelfSubjectReview from the pod: username %q, want %s", got, want)
	}
}

func keys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
