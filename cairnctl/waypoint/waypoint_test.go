package waypoint

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"
	"sigs.k8s.io/yaml"

	"github.com/cairnmesh/cairn/cairnctl/kube"
	"github.com/cairnmesh/cairn/internal/testenv"
	"github.com/cairnmesh/cairn/internal/waypointspec"
)

func TestMain(m *testing.M) { testenv.Main(m, testenv.Options{}) }

// result is what one cairnctl invocation printed and returned.
type result struct {
	out, errOut string
	err         error
}

// cairnctl runs `cairnctl --kubeconfig <kubeconfig> waypoint args...` as
// the binary does, with the same flags.
func cairnctl(t *testing.T, kubeconfig string, args ...string) result {
	t.Helper()
	var kf kube.Flags
	root := &cobra.Command{Use: "cairnctl", SilenceUsage: true, SilenceErrors: true}
	kf.AddFlags(root.PersistentFlags())
	root.AddCommand(Command(&kf))
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(append([]string{"--kubeconfig", kubeconfig, "waypoint"}, args...))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	err := root.ExecuteContext(ctx)
	return result{out: out.String(), errOut: errOut.String(), err: err}
}

// setup returns the test cluster's kubeconfig and clients.
func setup(t *testing.T) (*testenv.Env, string, gatewayclient.Interface) {
	t.Helper()
	env := testenv.Get(t)
	gc, err := gatewayclient.NewForConfig(env.Config())
	if err != nil {
		t.Fatal(err)
	}
	return env, env.Server().KubeconfigPath(), gc
}

var ambientNS = map[string]string{"istio.io/dataplane-mode": "ambient"}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return c
}

func mustOK(t *testing.T, r result) {
	t.Helper()
	if r.err != nil {
		t.Fatalf("cairnctl failed: %v\nstdout:\n%s\nstderr:\n%s", r.err, r.out, r.errOut)
	}
}

func mustFail(t *testing.T, r result) string {
	t.Helper()
	if r.err == nil {
		t.Fatalf("cairnctl succeeded, want an error\nstdout:\n%s\nstderr:\n%s", r.out, r.errOut)
	}
	return r.err.Error()
}

func nsLabels(t *testing.T, env *testenv.Env, ns string) map[string]string {
	t.Helper()
	obj, err := env.Client().CoreV1().Namespaces().Get(ctx(t), ns, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return obj.Labels
}

func getGateway(t *testing.T, gc gatewayclient.Interface, ns, name string) *gatewayv1.Gateway {
	t.Helper()
	gw, err := gc.GatewayV1().Gateways(ns).Get(ctx(t), name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("reading Gateway %s/%s: %v", ns, name, err)
	}
	return gw
}

// writeStatus writes what a controller would: conditions (at the current
// generation) and addresses.
func writeStatus(t *testing.T, gc gatewayclient.Interface, ns, name string, programmed metav1.ConditionStatus, reason, message string, addrs ...string) {
	t.Helper()
	gw := getGateway(t, gc, ns, name)
	now := metav1.Now()
	gw.Status.Conditions = []metav1.Condition{
		{Type: "Accepted", Status: metav1.ConditionTrue, Reason: "Accepted", Message: "", ObservedGeneration: gw.Generation, LastTransitionTime: now},
		{Type: "Programmed", Status: programmed, Reason: reason, Message: message, ObservedGeneration: gw.Generation, LastTransitionTime: now},
	}
	gw.Status.Addresses = nil
	ip := gatewayv1.IPAddressType
	for _, a := range addrs {
		gw.Status.Addresses = append(gw.Status.Addresses, gatewayv1.GatewayStatusAddress{Type: &ip, Value: a})
	}
	if _, err := gc.GatewayV1().Gateways(ns).UpdateStatus(ctx(t), gw, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("writing status of %s/%s: %v", ns, name, err)
	}
}

func TestApplyCreatesWaypointAndEnrollsNamespace(t *testing.T) {
	env, kc, gc := setup(t)
	ns := env.Namespace(t, ambientNS)

	r := cairnctl(t, kc, "apply", "-n", ns, "--enroll-namespace")
	mustOK(t, r)
	want := fmt.Sprintf("waypoint %[1]s/waypoint created (for service)\n"+
		"namespace %[1]s labelled istio.io/use-waypoint=waypoint: its traffic now goes through waypoint waypoint\n", ns)
	if r.out != want {
		t.Errorf("stdout:\n%s\nwant:\n%s", r.out, want)
	}
	if strings.Contains(r.errOut, "not enrolled") {
		t.Errorf("warned that an ambient namespace is not enrolled:\n%s", r.errOut)
	}

	gw := getGateway(t, gc, ns, "waypoint")
	if gw.Spec.GatewayClassName != "istio-waypoint" || len(gw.Spec.Listeners) != 1 {
		t.Fatalf("Gateway spec = %+v, want class istio-waypoint with one listener", gw.Spec)
	}
	if l := gw.Spec.Listeners[0]; l.Name != "mesh" || l.Port != 15008 || l.Protocol != "HBONE" {
		t.Errorf("listener = %s %d %s, want mesh 15008 HBONE", l.Name, l.Port, l.Protocol)
	}
	if got := gw.Labels["istio.io/waypoint-for"]; got != "service" {
		t.Errorf("istio.io/waypoint-for = %q, want service", got)
	}
	if got := nsLabels(t, env, ns)["istio.io/use-waypoint"]; got != "waypoint" {
		t.Errorf("namespace istio.io/use-waypoint = %q, want waypoint", got)
	}

	// Applying again changes nothing and says so.
	r = cairnctl(t, kc, "apply", "-n", ns, "--enroll-namespace")
	mustOK(t, r)
	want = fmt.Sprintf("waypoint %[1]s/waypoint unchanged (for service)\n"+
		"namespace %[1]s already uses waypoint waypoint (istio.io/use-waypoint=waypoint)\n", ns)
	if r.out != want {
		t.Errorf("second apply, stdout:\n%s\nwant:\n%s", r.out, want)
	}
	if again := getGateway(t, gc, ns, "waypoint"); again.Generation != gw.Generation || !maps.Equal(again.Labels, gw.Labels) {
		t.Errorf("second apply changed the Gateway (generation %d -> %d, labels %v -> %v)", gw.Generation, again.Generation, gw.Labels, again.Labels)
	}
}

func TestApplyUpdatesTrafficType(t *testing.T) {
	env, kc, gc := setup(t)
	ns := env.Namespace(t, ambientNS)

	r := cairnctl(t, kc, "apply", "-n", ns, "--name", "wp", "--for", "workload")
	mustOK(t, r)
	if want := fmt.Sprintf("waypoint %s/wp created (for workload)\n", ns); r.out != want {
		t.Errorf("stdout = %q, want %q", r.out, want)
	}
	r = cairnctl(t, kc, "apply", "-n", ns, "--name", "wp", "--for", "all")
	mustOK(t, r)
	if want := fmt.Sprintf("waypoint %s/wp configured (for all)\n", ns); r.out != want {
		t.Errorf("stdout = %q, want %q", r.out, want)
	}
	if got := getGateway(t, gc, ns, "wp").Labels["istio.io/waypoint-for"]; got != "all" {
		t.Errorf("istio.io/waypoint-for = %q, want all", got)
	}
	if _, ok := nsLabels(t, env, ns)["istio.io/use-waypoint"]; ok {
		t.Error("apply without --enroll-namespace labelled the namespace")
	}
}

func TestApplyRejectsBadFlagsBeforeTouchingTheCluster(t *testing.T) {
	env, kc, gc := setup(t)
	ns := env.Namespace(t, ambientNS)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--for", "pods"}, `waypoint traffic type "pods" is not one of service, workload, all, none`},
		{[]string{"--name", "none"}, `waypoint name "none" is reserved`},
		{[]string{"--name", "Bad_Name"}, `waypoint name "Bad_Name" is not valid`},
		{[]string{"--overwrite"}, "--overwrite replaces the namespace's istio.io/use-waypoint label and goes with --enroll-namespace"},
		{[]string{"--wait", "--waypoint-timeout", "0s"}, "--waypoint-timeout 0s: want a positive duration"},
	} {
		r := cairnctl(t, kc, append([]string{"apply", "-n", ns}, tc.args...)...)
		if msg := mustFail(t, r); !strings.Contains(msg, tc.want) {
			t.Errorf("apply %v: error %q, want it to contain %q", tc.args, msg, tc.want)
		}
	}
	list, err := gc.GatewayV1().Gateways(ns).List(ctx(t), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != 0 {
		t.Errorf("rejected applies left %d Gateways", len(list.Items))
	}
}

func TestApplyKeepsAnotherWaypointUnlessOverwrite(t *testing.T) {
	env, kc, gc := setup(t)
	for _, tc := range []struct {
		name       string
		labels     map[string]string
		wantErr    string
		wantWas    string
		removesNSL bool
	}{{
		name:    "other waypoint",
		labels:  map[string]string{"istio.io/use-waypoint": "other"},
		wantErr: "namespace %[1]s already uses waypoint %[1]s/other (istio.io/use-waypoint=other); run again with --overwrite to use waypoint %[1]s/waypoint instead",
		wantWas: "(was istio.io/use-waypoint=other)",
	}, {
		name:       "same name in another namespace",
		labels:     map[string]string{"istio.io/use-waypoint": "waypoint", "istio.io/use-waypoint-namespace": "infra"},
		wantErr:    "namespace %[1]s already uses waypoint infra/waypoint (istio.io/use-waypoint=waypoint, istio.io/use-waypoint-namespace=infra); run again with --overwrite to use waypoint %[1]s/waypoint instead",
		wantWas:    "(was istio.io/use-waypoint=waypoint, istio.io/use-waypoint-namespace=infra)",
		removesNSL: true,
	}, {
		name:    "opted out",
		labels:  map[string]string{"istio.io/use-waypoint": "none"},
		wantErr: "namespace %[1]s opts out of waypoints (istio.io/use-waypoint=none); run again with --overwrite to send its traffic through waypoint waypoint instead",
		wantWas: "(was istio.io/use-waypoint=none)",
	}} {
		t.Run(tc.name, func(t *testing.T) {
			labels := map[string]string{"istio.io/dataplane-mode": "ambient"}
			for k, v := range tc.labels {
				labels[k] = v
			}
			ns := env.Namespace(t, labels)

			msg := mustFail(t, cairnctl(t, kc, "apply", "-n", ns, "--enroll-namespace"))
			if want := fmt.Sprintf(tc.wantErr, ns); msg != want {
				t.Errorf("error:\n%s\nwant:\n%s", msg, want)
			}
			if _, err := gc.GatewayV1().Gateways(ns).Get(ctx(t), "waypoint", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
				t.Errorf("the refused apply created the Gateway (get: %v)", err)
			}
			if got := nsLabels(t, env, ns); got["istio.io/use-waypoint"] != tc.labels["istio.io/use-waypoint"] {
				t.Errorf("the refused apply changed the label to %q", got["istio.io/use-waypoint"])
			}

			r := cairnctl(t, kc, "apply", "-n", ns, "--enroll-namespace", "--overwrite")
			mustOK(t, r)
			if !strings.Contains(r.out, tc.wantWas) {
				t.Errorf("stdout does not say what was replaced (%s):\n%s", tc.wantWas, r.out)
			}
			got := nsLabels(t, env, ns)
			if got["istio.io/use-waypoint"] != "waypoint" {
				t.Errorf("after --overwrite, istio.io/use-waypoint = %q, want waypoint", got["istio.io/use-waypoint"])
			}
			if _, ok := got["istio.io/use-waypoint-namespace"]; ok {
				t.Errorf("after --overwrite, istio.io/use-waypoint-namespace is still there: %v", got)
			}
		})
	}
}

func TestApplyToleratesTheSameWaypoint(t *testing.T) {
	env, kc, _ := setup(t)
	ns := env.Namespace(t, map[string]string{"istio.io/dataplane-mode": "ambient", "istio.io/use-waypoint": "waypoint"})
	mustOK(t, cairnctl(t, kc, "apply", "-n", ns, "--enroll-namespace"))
}

func TestApplySaysHowToEnrollTheNamespace(t *testing.T) {
	env, kc, _ := setup(t)
	ns := env.Namespace(t, nil)
	r := cairnctl(t, kc, "apply", "-n", ns)
	mustOK(t, r)
	want := fmt.Sprintf("Warning: namespace %[1]s is not enrolled in the ambient mesh, so its pods' traffic does not reach the waypoint; "+
		"enroll it with: kubectl label namespace %[1]s istio.io/dataplane-mode=ambient\n", ns)
	if !strings.Contains(r.errOut, want) {
		t.Errorf("stderr:\n%s\nwant it to contain:\n%s", r.errOut, want)
	}

	msg := mustFail(t, cairnctl(t, kc, "apply", "-n", "no-such-namespace"))
	if want := "namespace no-such-namespace does not exist: create it (kubectl create namespace no-such-namespace) or choose another with -n"; msg != want {
		t.Errorf("error %q, want %q", msg, want)
	}
}

func TestApplySaysWhenTheGatewayClassIsMissing(t *testing.T) {
	env, kc, gc := setup(t)
	ns := env.Namespace(t, ambientNS)
	const warning = "Warning: GatewayClass istio-waypoint does not exist"

	r := cairnctl(t, kc, "apply", "-n", ns)
	mustOK(t, r)
	if !strings.Contains(r.errOut, warning) {
		t.Errorf("stderr does not warn about the missing GatewayClass:\n%s", r.errOut)
	}

	class := &gatewayv1.GatewayClass{
		ObjectMeta: metav1.ObjectMeta{Name: waypointspec.ClassName},
		Spec:       gatewayv1.GatewayClassSpec{ControllerName: "cairn.dev/test-controller"},
	}
	if _, err := gc.GatewayV1().GatewayClasses().Create(ctx(t), class, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = gc.GatewayV1().GatewayClasses().Delete(context.Background(), waypointspec.ClassName, metav1.DeleteOptions{})
	})
	r = cairnctl(t, kc, "apply", "-n", ns)
	mustOK(t, r)
	if strings.Contains(r.errOut, warning) {
		t.Errorf("warned about a GatewayClass that exists:\n%s", r.errOut)
	}
}

func TestApplyRefusesAGatewayThatIsNotAWaypoint(t *testing.T) {
	env, kc, gc := setup(t)
	ns := env.Namespace(t, ambientNS)
	other := otherGateway(t, gc, ns, "waypoint")
	msg := mustFail(t, cairnctl(t, kc, "apply", "-n", ns))
	if want := fmt.Sprintf(`the Gateway %s/waypoint exists and is not a waypoint (its class is "ingress"): choose another name with --name`, ns); msg != want {
		t.Errorf("error %q, want %q", msg, want)
	}
	if got := getGateway(t, gc, ns, "waypoint"); got.ResourceVersion != other.ResourceVersion {
		t.Error("apply changed a Gateway that is not a waypoint")
	}
}

func otherGateway(t *testing.T, gc gatewayclient.Interface, ns, name string) *gatewayv1.Gateway {
	t.Helper()
	gw := &gatewayv1.Gateway{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: gatewayv1.GatewaySpec{
			GatewayClassName: "ingress",
			Listeners:        []gatewayv1.Listener{{Name: "http", Port: 80, Protocol: gatewayv1.HTTPProtocolType}},
		},
	}
	created, err := gc.GatewayV1().Gateways(ns).Create(ctx(t), gw, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return created
}

func TestApplyWaitReturnsOnceProgrammedThenEnrolls(t *testing.T) {
	env, kc, gc := setup(t)
	ns := env.Namespace(t, ambientNS)

	// The "controller": once the Gateway exists, note whether the namespace
	// is labelled already, then mark the Gateway Programmed.
	labelledEarly := make(chan bool, 1)
	statusErr := make(chan error, 1)
	go func() {
		c, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		for c.Err() == nil {
			gw, err := gc.GatewayV1().Gateways(ns).Get(c, "waypoint", metav1.GetOptions{})
			if err != nil {
				time.Sleep(100 * time.Millisecond)
				continue
			}
			time.Sleep(time.Second) // let --wait poll a few times
			nsObj, err := env.Client().CoreV1().Namespaces().Get(c, ns, metav1.GetOptions{})
			labelledEarly <- err != nil || nsObj.Labels["istio.io/use-waypoint"] != ""
			gw.Status.Conditions = []metav1.Condition{{Type: "Programmed", Status: metav1.ConditionTrue, Reason: "Programmed",
				ObservedGeneration: gw.Generation, LastTransitionTime: metav1.Now()}}
			_, err = gc.GatewayV1().Gateways(ns).UpdateStatus(c, gw, metav1.UpdateOptions{})
			statusErr <- err
			return
		}
		statusErr <- c.Err()
	}()

	r := cairnctl(t, kc, "apply", "-n", ns, "--enroll-namespace", "--wait", "--waypoint-timeout", "60s")
	mustOK(t, r)
	if err := <-statusErr; err != nil {
		t.Fatalf("writing the status: %v", err)
	}
	if early := <-labelledEarly; early {
		t.Error("the namespace was labelled before the waypoint was programmed")
	}
	want := fmt.Sprintf("waypoint %[1]s/waypoint created (for service)\n"+
		"waypoint %[1]s/waypoint is programmed\n"+
		"namespace %[1]s labelled istio.io/use-waypoint=waypoint: its traffic now goes through waypoint waypoint\n", ns)
	if r.out != want {
		t.Errorf("stdout:\n%s\nwant:\n%s", r.out, want)
	}
	if got := nsLabels(t, env, ns)["istio.io/use-waypoint"]; got != "waypoint" {
		t.Errorf("istio.io/use-waypoint = %q after the wait, want waypoint", got)
	}
}

func TestApplyWaitTimesOutSayingWhatIsMissing(t *testing.T) {
	env, kc, gc := setup(t)

	t.Run("no controller", func(t *testing.T) {
		ns := env.Namespace(t, ambientNS)
		msg := mustFail(t, cairnctl(t, kc, "apply", "-n", ns, "--enroll-namespace", "--wait", "--waypoint-timeout", "2s"))
		for _, want := range []string{
			fmt.Sprintf("waypoint %s/waypoint is not programmed after 2s: no controller has taken it", ns),
			"check that istiod-lite is running",
			fmt.Sprintf("namespace %s was not labelled istio.io/use-waypoint=waypoint", ns),
		} {
			if !strings.Contains(msg, want) {
				t.Errorf("error:\n%s\nwant it to contain:\n%s", msg, want)
			}
		}
		if got := nsLabels(t, env, ns)["istio.io/use-waypoint"]; got != "" {
			t.Errorf("namespace labelled istio.io/use-waypoint=%s although the waypoint never got ready", got)
		}
	})

	t.Run("programmed at an older generation", func(t *testing.T) {
		ns := env.Namespace(t, ambientNS)
		mustOK(t, cairnctl(t, kc, "apply", "-n", ns))
		gw := getGateway(t, gc, ns, "waypoint")
		gw.Status.Conditions = []metav1.Condition{{Type: "Programmed", Status: metav1.ConditionTrue, Reason: "Programmed",
			ObservedGeneration: gw.Generation - 1, LastTransitionTime: metav1.Now()}}
		if _, err := gc.GatewayV1().Gateways(ns).UpdateStatus(ctx(t), gw, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		msg := mustFail(t, cairnctl(t, kc, "apply", "-n", ns, "--wait", "--waypoint-timeout", "2s"))
		want := fmt.Sprintf("Programmed=True was observed at generation %d, the Gateway is at generation %d: the controller has not caught up yet",
			gw.Generation-1, gw.Generation)
		if !strings.Contains(msg, want) {
			t.Errorf("error:\n%s\nwant it to contain:\n%s", msg, want)
		}
	})

	t.Run("not programmed", func(t *testing.T) {
		ns := env.Namespace(t, ambientNS)
		mustOK(t, cairnctl(t, kc, "apply", "-n", ns))
		writeStatus(t, gc, ns, "waypoint", metav1.ConditionFalse, "NoResources", "deployment waypoint has 0 of 1 pods ready")
		msg := mustFail(t, cairnctl(t, kc, "apply", "-n", ns, "--wait", "--waypoint-timeout", "2s"))
		want := fmt.Sprintf("waypoint %s/waypoint is not programmed after 2s: Programmed=False, reason NoResources: "+
			"deployment waypoint has 0 of 1 pods ready (no address assigned yet)", ns)
		if !strings.Contains(msg, want) {
			t.Errorf("error:\n%s\nwant it to contain:\n%s", msg, want)
		}
	})
}

func TestListShowsWaypointsOnly(t *testing.T) {
	env, kc, gc := setup(t)
	ns1 := env.Namespace(t, ambientNS)
	ns2 := env.Namespace(t, ambientNS)
	mustOK(t, cairnctl(t, kc, "apply", "-n", ns1))
	mustOK(t, cairnctl(t, kc, "apply", "-n", ns2, "--name", "wp2", "--for", "all"))
	otherGateway(t, gc, ns1, "ingress")
	writeStatus(t, gc, ns1, "waypoint", metav1.ConditionTrue, "Programmed", "", "10.96.0.42")

	r := cairnctl(t, kc, "list", "-n", ns1)
	mustOK(t, r)
	lines := strings.Split(strings.TrimSpace(r.out), "\n")
	if len(lines) != 2 {
		t.Fatalf("list -n %s printed %d lines, want a header and one waypoint:\n%s", ns1, len(lines), r.out)
	}
	if got := strings.Fields(lines[0]); strings.Join(got, " ") != "NAMESPACE NAME FOR PROGRAMMED ADDRESS AGE" {
		t.Errorf("header = %q", lines[0])
	}
	if got := strings.Fields(lines[1]); len(got) != 6 || strings.Join(got[:5], " ") != ns1+" waypoint service True 10.96.0.42" {
		t.Errorf("row = %q, want %s waypoint service True 10.96.0.42 <age>", lines[1], ns1)
	}

	r = cairnctl(t, kc, "list", "-A")
	mustOK(t, r)
	for _, want := range []string{ns1 + " ", ns2 + " "} {
		if !strings.Contains(r.out, want) {
			t.Errorf("list -A does not show namespace %s:\n%s", want, r.out)
		}
	}
	for _, line := range strings.Split(r.out, "\n") {
		if f := strings.Fields(line); len(f) > 1 && f[1] == "ingress" {
			t.Errorf("list -A shows a Gateway that is not a waypoint: %s", line)
		}
	}

	for _, format := range []string{"json", "yaml"} {
		r = cairnctl(t, kc, "list", "-A", "-o", format)
		mustOK(t, r)
		var list gatewayv1.GatewayList
		if err := yaml.UnmarshalStrict([]byte(r.out), &list); err != nil {
			t.Fatalf("-o %s: %v\n%s", format, err, r.out)
		}
		if list.Kind != "GatewayList" {
			t.Errorf("-o %s: kind %q, want GatewayList", format, list.Kind)
		}
		found := map[string]string{}
		for _, gw := range list.Items {
			if gw.Kind != "Gateway" || gw.ManagedFields != nil {
				t.Errorf("-o %s: item %s/%s has kind %q and managedFields %v", format, gw.Namespace, gw.Name, gw.Kind, gw.ManagedFields)
			}
			found[gw.Namespace+"/"+gw.Name] = waypointspec.For(&gw)
		}
		if found[ns1+"/waypoint"] != "service" || found[ns2+"/wp2"] != "all" || found[ns1+"/ingress"] != "" {
			t.Errorf("-o %s: waypoints %v, want %s/waypoint (service) and %s/wp2 (all) and no ingress", format, found, ns1, ns2)
		}
	}
	if format := mustFail(t, cairnctl(t, kc, "list", "-o", "wide")); !strings.Contains(format, `output format "wide": want json or yaml`) {
		t.Errorf("-o wide: %s", format)
	}

	empty := env.Namespace(t, nil)
	r = cairnctl(t, kc, "list", "-n", empty)
	mustOK(t, r)
	if r.out != "" || !strings.Contains(r.errOut, "No waypoints found in namespace "+empty) {
		t.Errorf("list of an empty namespace: stdout %q, stderr %q", r.out, r.errOut)
	}
}

func TestDelete(t *testing.T) {
	env, kc, gc := setup(t)
	ns := env.Namespace(t, ambientNS)
	mustOK(t, cairnctl(t, kc, "apply", "-n", ns, "--enroll-namespace"))
	mustOK(t, cairnctl(t, kc, "apply", "-n", ns, "--name", "a"))
	mustOK(t, cairnctl(t, kc, "apply", "-n", ns, "--name", "b"))
	otherGateway(t, gc, ns, "ingress")

	r := cairnctl(t, kc, "delete", "-n", ns)
	mustOK(t, r)
	if want := fmt.Sprintf("waypoint %s/waypoint deleted\n", ns); r.out != want {
		t.Errorf("stdout %q, want %q", r.out, want)
	}
	want := fmt.Sprintf("Warning: namespace %[1]s still has istio.io/use-waypoint=waypoint: its traffic has no waypoint %[1]s/waypoint to go through; "+
		"apply the waypoint again, or remove the label: kubectl label namespace %[1]s istio.io/use-waypoint- istio.io/use-waypoint-namespace-\n", ns)
	if r.errOut != want {
		t.Errorf("stderr:\n%s\nwant:\n%s", r.errOut, want)
	}

	msg := mustFail(t, cairnctl(t, kc, "delete", "-n", ns, "nope", "ingress"))
	for _, want := range []string{
		fmt.Sprintf("waypoint %[1]s/nope not found (cairnctl waypoint list -n %[1]s shows the waypoints there)", ns),
		fmt.Sprintf(`the Gateway %s/ingress is not a waypoint (its class is "ingress", not "istio-waypoint")`, ns),
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error:\n%s\nwant it to contain:\n%s", msg, want)
		}
	}
	getGateway(t, gc, ns, "ingress") // still there
	mustOK(t, cairnctl(t, kc, "delete", "-n", ns, "--ignore-not-found", "nope"))
	if msg := mustFail(t, cairnctl(t, kc, "delete", "-n", ns, "--all", "a")); msg != "give waypoint names or --all, not both" {
		t.Errorf("error %q", msg)
	}

	r = cairnctl(t, kc, "delete", "-n", ns, "--all")
	mustOK(t, r)
	if want := fmt.Sprintf("waypoint %[1]s/a deleted\nwaypoint %[1]s/b deleted\n", ns); r.out != want {
		t.Errorf("delete --all: stdout %q, want %q", r.out, want)
	}
	list, err := gc.GatewayV1().Gateways(ns).List(ctx(t), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != 1 || list.Items[0].Name != "ingress" {
		t.Errorf("after delete --all, Gateways left: %v, want only ingress", list.Items)
	}
}

func TestStatusShowsConditionsAndUsers(t *testing.T) {
	env, kc, gc := setup(t)
	ns := env.Namespace(t, ambientNS)
	client := env.Client()
	mustOK(t, cairnctl(t, kc, "apply", "-n", ns, "--enroll-namespace"))
	mustOK(t, cairnctl(t, kc, "apply", "-n", ns, "--name", "idle"))
	writeStatus(t, gc, ns, "waypoint", metav1.ConditionTrue, "Programmed", "assigned to service waypoint", "10.96.0.7")

	other := env.Namespace(t, ambientNS)
	for _, svc := range []*corev1.Service{
		service(ns, "reviews", map[string]string{"istio.io/use-waypoint": "waypoint"}),
		service(other, "ratings", map[string]string{"istio.io/use-waypoint": "waypoint", "istio.io/use-waypoint-namespace": ns}),
		service(other, "details", map[string]string{"istio.io/use-waypoint": "waypoint"}), // other's own waypoint, not ours
		service(ns, "plain", nil),
	} {
		if _, err := client.CoreV1().Services(svc.Namespace).Create(ctx(t), svc, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	r := cairnctl(t, kc, "status", "-n", ns)
	mustOK(t, r)
	blocks := strings.Split(r.out, "\n\n")
	if len(blocks) != 2 {
		t.Fatalf("status printed %d blocks, want 2 (idle, waypoint):\n%s", len(blocks), r.out)
	}
	idle, wp := blocks[0], blocks[1]
	for _, want := range []string{
		"Waypoint:    " + ns + "/waypoint\n",
		"Programmed:  True\n",
		"Addresses:   10.96.0.7 (IPAddress)\n",
		"Programmed  True    Programmed",
		"assigned to service waypoint",
		"Used by:\n  namespace " + ns + " (istio.io/use-waypoint=waypoint)\n",
		"\n  service " + ns + "/reviews (istio.io/use-waypoint=waypoint)\n",
		"\n  service " + other + "/ratings (istio.io/use-waypoint=waypoint, istio.io/use-waypoint-namespace=" + ns + ")\n",
	} {
		if !strings.Contains(wp, want) {
			t.Errorf("status of the waypoint:\n%s\nwant it to contain:\n%s", wp, want)
		}
	}
	if strings.Contains(wp, "details") || strings.Contains(wp, "Why not") {
		t.Errorf("status of the waypoint lists a Service of another waypoint, or a reason it is not programmed:\n%s", wp)
	}
	for _, want := range []string{
		"Waypoint:    " + ns + "/idle\n",
		"Why not:     no controller has taken it",
		"Addresses:   <none>\n",
		"Used by:\n  nothing: no namespace or Service is labelled istio.io/use-waypoint=idle; " +
			"send a namespace's traffic through it with: kubectl label namespace " + ns + " istio.io/use-waypoint=idle",
	} {
		if !strings.Contains(idle, want) {
			t.Errorf("status of the idle waypoint:\n%s\nwant it to contain:\n%s", idle, want)
		}
	}

	r = cairnctl(t, kc, "status", "-n", ns, "--name", "idle")
	mustOK(t, r)
	if strings.Contains(r.out, ns+"/waypoint") {
		t.Errorf("status --name idle shows the other waypoint:\n%s", r.out)
	}
	if msg := mustFail(t, cairnctl(t, kc, "status", "-n", ns, "nope")); !strings.Contains(msg, "waypoint "+ns+"/nope not found") {
		t.Errorf("status of a missing waypoint: %s", msg)
	}
}

func service(ns, name string, labels map[string]string) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80}}},
	}
}

func TestGeneratePrintsTheGateway(t *testing.T) {
	_, kc, _ := setup(t)
	r := cairnctl(t, kc, "generate", "-n", "shop", "--for", "all")
	mustOK(t, r)
	want := `apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  labels:
    istio.io/waypoint-for: all
  name: waypoint
  namespace: shop
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - name: mesh
    port: 15008
    protocol: HBONE
`
	if r.out != want {
		t.Errorf("generate printed:\n%s\nwant:\n%s", r.out, want)
	}
}

// TestMissingGatewayAPI runs against an API server that serves namespaces
// but no Gateway API (a stand-in: the shared test cluster has the CRDs,
// and removing them would break the other tests).
func TestMissingGatewayAPI(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if strings.HasPrefix(r.URL.Path, "/api/v1/namespaces/") {
			ns := corev1.Namespace{
				TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Namespace"},
				ObjectMeta: metav1.ObjectMeta{Name: filepath.Base(r.URL.Path), Labels: ambientNS},
			}
			_ = json.NewEncoder(w).Encode(ns)
			return
		}
		w.WriteHeader(http.StatusNotFound)
		_ = json.NewEncoder(w).Encode(metav1.Status{
			TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Status"},
			Status:   metav1.StatusFailure, Reason: metav1.StatusReasonNotFound, Code: http.StatusNotFound,
			Message: "the server could not find the requested resource",
		})
	}))
	t.Cleanup(srv.Close)
	kc := fakeKubeconfig(t, srv.URL)
	for _, args := range [][]string{{"apply", "-n", "shop"}, {"list", "-A"}, {"delete", "--all"}} {
		err := cairnctl(t, kc, args...).err
		if !errors.Is(err, errNoGatewayAPI) {
			t.Errorf("%v: error %v, want the Gateway API install hint", args, err)
		}
	}
	if !strings.Contains(errNoGatewayAPI.Error(), "kubectl apply --server-side -f https://github.com/kubernetes-sigs/gateway-api/releases/download/v1.6.3/standard-install.yaml") {
		t.Errorf("the hint does not say what to install: %v", errNoGatewayAPI)
	}
}

// TestRequestTimeoutBoundsAHangingServer: an API server that never answers
// does not hang cairnctl past --request-timeout.
func TestRequestTimeoutBoundsAHangingServer(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		<-r.Context().Done()
	}))
	t.Cleanup(srv.Close)
	kc := fakeKubeconfig(t, srv.URL)
	start := time.Now()
	r := cairnctl(t, kc, "list", "-A", "--request-timeout", "500ms")
	if r.err == nil {
		t.Fatal("list against a server that never answers succeeded")
	}
	if took := time.Since(start); took > 30*time.Second {
		t.Errorf("list took %v with --request-timeout 500ms", took)
	}
}

func fakeKubeconfig(t *testing.T, server string) string {
	t.Helper()
	kc := filepath.Join(t.TempDir(), "kubeconfig")
	cfg := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: fake, cluster: {server: %q}}]
users: [{name: fake, user: {}}]
contexts: [{name: fake, context: {cluster: fake, user: fake}}]
current-context: fake
`, server)
	if err := os.WriteFile(kc, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return kc
}
