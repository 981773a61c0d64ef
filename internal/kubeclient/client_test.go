package kubeclient

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/cairnmesh/cairn/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m, testenv.Options{}) }

// adminClient loads the admin kubeconfig that kubeserver writes (inline CA
// and client certificate), as ztunnel loads --kubeconfig.
func adminClient(t *testing.T) *Client {
	t.Helper()
	env := testenv.Get(t)
	cfg, err := LoadKubeconfig(env.Server().KubeconfigPath())
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(cfg, WithUserAgent("kubeclient-test"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func TestGetNodeAndDaemonSet(t *testing.T) {
	env := testenv.Get(t)
	kube := env.Client()
	ctx := context.Background()
	c := adminClient(t)

	name := "kubeclient-" + strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-"))
	if _, err := kube.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{
		Name: name, Annotations: map[string]string{"lab.cairn.dev/host-path-root": "/srv/node-a"}, Labels: map[string]string{"zone": "a"},
	}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = kube.CoreV1().Nodes().Delete(context.Background(), name, metav1.DeleteOptions{}) })
	var node Node
	if err := c.Get(ctx, Nodes, "", name, &node); err != nil {
		t.Fatal(err)
	}
	if node.Name != name || node.Annotations["lab.cairn.dev/host-path-root"] != "/srv/node-a" || node.Labels["zone"] != "a" || node.UID == "" || node.ResourceVersion == "" {
		t.Errorf("node %+v", node)
	}
	err := c.Get(ctx, Nodes, "", "no-such-node", &node)
	if !IsNotFound(err) {
		t.Errorf("missing node: %v, want NotFound", err)
	}
	var se *StatusError
	if !errors.As(err, &se) || se.Reason != "NotFound" || !strings.Contains(se.Message, "no-such-node") {
		t.Errorf("missing node: %#v, want the API server's status", se)
	}

	ns := env.Namespace(t, nil)
	var ds DaemonSet
	if err := c.Get(ctx, DaemonSets, ns, "ztunnel", &ds); !IsNotFound(err) {
		t.Fatalf("missing DaemonSet: %v, want NotFound", err)
	}
	labels := map[string]string{"app": "ztunnel"}
	if _, err := kube.AppsV1().DaemonSets(ns).Create(ctx, &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: "ztunnel", Finalizers: []string{"cairn.dev/test"}},
		Spec: appsv1.DaemonSetSpec{Selector: &metav1.LabelSelector{MatchLabels: labels}, Template: corev1.PodTemplateSpec{
			ObjectMeta: metav1.ObjectMeta{Labels: labels},
			Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "z", Image: "cairn/ztunnel"}}},
		}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := c.Get(ctx, DaemonSets, ns, "ztunnel", &ds); err != nil || ds.DeletionTimestamp != nil || ds.Namespace != ns {
		t.Fatalf("DaemonSet %+v %v, want it, not being deleted", ds, err)
	}
	// The finalizer keeps it, being deleted, as an uninstall in progress.
	if err := kube.AppsV1().DaemonSets(ns).Delete(ctx, "ztunnel", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = kube.AppsV1().DaemonSets(ns).Patch(context.Background(), "ztunnel", "application/merge-patch+json",
			[]byte(`{"metadata":{"finalizers":null}}`), metav1.PatchOptions{})
	})
	if err := c.Get(ctx, DaemonSets, ns, "ztunnel", &ds); err != nil || ds.DeletionTimestamp == nil {
		t.Fatalf("DaemonSet %+v %v, want its deletion timestamp", ds, err)
	}
}

// TestCredentialsFromFiles: a kubeconfig that names its CA, client
// certificate and token in files next to it, as kubectl and the lab write
// them; the API server sees the user each one stands for.
func TestCredentialsFromFiles(t *testing.T) {
	env := testenv.Get(t)
	ctx := context.Background()
	dir := t.TempDir()
	write := func(name string, data []byte) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ca, err := os.ReadFile(filepath.Join(env.Server().CertDir(), "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	write("ca.crt", ca)
	alice, err := env.Server().ClientConfig("alice", "cairn:testers")
	if err != nil {
		t.Fatal(err)
	}
	write("alice.crt", alice.CertData)
	write("alice.key", alice.KeyData)
	write("kubeconfig", []byte(`apiVersion: v1
kind: Config
current-context: alice
contexts:
- {name: alice, context: {cluster: test, user: alice}}
- {name: robot, context: {cluster: test, user: robot}}
clusters:
- {name: test, cluster: {server: "`+env.Server().URL()+`", certificate-authority: ca.crt}}
users:
- {name: alice, user: {client-certificate: alice.crt, client-key: alice.key}}
- {name: robot, user: {tokenFile: robot.token}}
`))
	cfg, err := LoadKubeconfig(filepath.Join(dir, "kubeconfig"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// alice may do nothing: the refusal names her.
	var node Node
	err = c.Get(ctx, Nodes, "", "any", &node)
	if !hasCode(err, 403) || !strings.Contains(err.Error(), `"alice"`) {
		t.Errorf("as alice: %v, want 403 for alice", err)
	}

	ns := env.Namespace(t, nil)
	write("robot.token", []byte(serviceAccountToken(t, ns, "robot")))
	kc, err := os.ReadFile(filepath.Join(dir, "kubeconfig"))
	if err != nil {
		t.Fatal(err)
	}
	write("kubeconfig", []byte(strings.Replace(string(kc), "current-context: alice", "current-context: robot", 1)))
	if cfg, err = LoadKubeconfig(filepath.Join(dir, "kubeconfig")); err != nil {
		t.Fatal(err)
	}
	rc, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	err = rc.Get(ctx, Nodes, "", "any", &node)
	if want := "system:serviceaccount:" + ns + ":robot"; !hasCode(err, 403) || !strings.Contains(err.Error(), want) {
		t.Errorf("as robot: %v, want 403 for %s", err, want)
	}
}

// serviceAccountToken creates a ServiceAccount and returns a token for it.
func serviceAccountToken(t *testing.T, ns, name string) string {
	t.Helper()
	kube := testenv.Get(t).Client()
	ctx := context.Background()
	if _, err := kube.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	tr, err := kube.CoreV1().ServiceAccounts(ns).CreateToken(ctx, name, &authnv1.TokenRequest{
		Spec: authnv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](3600)},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return tr.Status.Token
}

// TestInClusterTokenRotation: the in-cluster configuration reads the
// pod's token file; when the kubelet replaces the token, the client uses
// the new one (here at once, since the server refused the old one).
func TestInClusterTokenRotation(t *testing.T) {
	env := testenv.Get(t)
	ctx := context.Background()
	u, err := url.Parse(env.Server().URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv(hostEnv, u.Hostname())
	t.Setenv(portEnv, u.Port())
	dir := t.TempDir()
	ca, err := os.ReadFile(filepath.Join(env.Server().CertDir(), "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ca.crt"), ca, 0o600); err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte("expired-token"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := inCluster(dir)
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var node Node
	if err := c.Get(ctx, Nodes, "", "any", &node); !IsUnauthorized(err) {
		t.Fatalf("with a bad token: %v, want 401", err)
	}
	ns := env.Namespace(t, nil)
	if err := os.WriteFile(tokenFile, []byte(serviceAccountToken(t, ns, "ztunnel")), 0o600); err != nil {
		t.Fatal(err)
	}
	err = c.Get(ctx, Nodes, "", "any", &node)
	if want := "system:serviceaccount:" + ns + ":ztunnel"; !hasCode(err, 403) || !strings.Contains(err.Error(), want) {
		t.Errorf("after the rotation: %v, want 403 for %s", err, want)
	}
}

// TestListPagesAndWatch: a list in pages of 2 returns every object and a
// resource version that a watch continues from; the watch reports the
// changes after it, and the server's end of the watch is io.EOF.
func TestListPagesAndWatch(t *testing.T) {
	env := testenv.Get(t)
	kube := env.Client()
	ctx := context.Background()
	ns := env.Namespace(t, nil)
	c := adminClient(t)
	// No controller manager here to make the default ServiceAccount.
	if _, err := kube.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"a", "b", "c", "d", "e"} {
		node := "n1"
		if name == "e" {
			node = "n2"
		}
		if _, err := kube.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: corev1.PodSpec{NodeName: node, HostNetwork: name == "a", ServiceAccountName: "default", AutomountServiceAccountToken: ptr.To(false),
				Containers: []corev1.Container{{Name: "app", Image: "cairn/echoserver"}}},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	opts := ListOptions{Namespace: ns, FieldSelector: "spec.nodeName=n1"}
	pods, rv, err := list[Pod](ctx, c, Pods, opts, 2)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range pods {
		names = append(names, p.Name)
	}
	if strings.Join(names, ",") != "a,b,c,d" || rv == "" {
		t.Fatalf("listed %v at %q, want a..d (not e, of n2)", names, rv)
	}
	if !pods[0].Spec.HostNetwork || pods[1].Spec.HostNetwork || pods[1].Spec.NodeName != "n1" || pods[1].Namespace != ns {
		t.Errorf("decoded %+v", pods[:2])
	}

	w, err := c.Watch(ctx, Pods, opts, rv, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if err := kube.CoreV1().Pods(ns).Delete(ctx, "b", metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}); err != nil {
		t.Fatal(err)
	}
	var seen []string
	for {
		typ, raw, err := w.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		var p Pod
		if err := json.Unmarshal(raw, &p); err != nil {
			t.Fatal(err)
		}
		switch {
		case typ == Bookmark:
		case p.DeletionTimestamp != nil:
			seen = append(seen, string(typ)+" "+p.Name+" (being deleted)")
		default:
			seen = append(seen, string(typ)+" "+p.Name)
		}
	}
	// A bound pod is marked for deletion first, even with no grace period.
	if got := strings.Join(seen, ","); got != "MODIFIED b (being deleted),DELETED b (being deleted)" {
		t.Errorf("watch saw %v, want the deletion of b only", seen)
	}
}

// TestCreateEvent: Create posts an Event that the API server stores as
// written (what `kubectl describe pod` then shows), and an object the API
// server refuses comes back as a StatusError.
func TestCreateEvent(t *testing.T) {
	env := testenv.Get(t)
	kube := env.Client()
	ctx := context.Background()
	ns := env.Namespace(t, nil)
	c := adminClient(t)

	now := time.Now().UTC().Truncate(time.Second)
	ev := Event{
		ObjectMeta:     ObjectMeta{Name: "web.1", Namespace: ns},
		InvolvedObject: ObjectReference{Kind: "Pod", APIVersion: "v1", Namespace: ns, Name: "web", UID: "0f6e1c2a-3b4d-4e5f-8a9b-0c1d2e3f4a5b"},
		Reason:         "NetnsAmbiguous", Message: "two namespaces", Type: EventWarning,
		Source:         EventSource{Component: "ztunnel", Host: "node-a"},
		FirstTimestamp: now, LastTimestamp: now, Count: 1,
		ReportingController: "cairn.dev/ztunnel", ReportingInstance: "ztunnel-x",
	}
	if err := c.Create(ctx, Events, ns, &ev); err != nil {
		t.Fatal(err)
	}
	got, err := kube.CoreV1().Events(ns).Get(ctx, "web.1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.InvolvedObject.Name != "web" || got.InvolvedObject.UID != "0f6e1c2a-3b4d-4e5f-8a9b-0c1d2e3f4a5b" || got.Reason != "NetnsAmbiguous" ||
		got.Type != "Warning" || got.Source.Component != "ztunnel" || got.Source.Host != "node-a" || got.Count != 1 ||
		!got.LastTimestamp.Time.Equal(now) || got.ReportingController != "cairn.dev/ztunnel" {
		t.Errorf("stored event %+v", got)
	}
	err = c.Create(ctx, Events, ns, &ev) // the same name again
	var se *StatusError
	if !errors.As(err, &se) || se.Code != 409 || !strings.Contains(err.Error(), "POST") {
		t.Errorf("creating a duplicate: %v, want a 409 StatusError naming the POST", err)
	}
}
