package index

import (
	"log/slog"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"

	securityv1 "github.com/cairnmesh/cairn/apis/security/v1"
	workloadv1 "github.com/cairnmesh/cairn/apis/workload/v1"
	"github.com/cairnmesh/cairn/istiod-lite/model"
)

func namespace(name string, labels map[string]string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
}

func pod(ns, name, ip string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID("uid-" + name), Labels: map[string]string{"app": "reviews"}},
		Spec: corev1.PodSpec{
			NodeName:           "node-a",
			ServiceAccountName: "reviews",
			Containers:         []corev1.Container{{Name: "app", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}},
		},
		Status: corev1.PodStatus{
			Phase:      corev1.PodRunning,
			PodIP:      ip,
			PodIPs:     []corev1.PodIP{{IP: ip}},
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}},
		},
	}
}

func service(ns, name string) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.ServiceSpec{
			ClusterIP: "198.19.0.20", ClusterIPs: []string{"198.19.0.20"},
			Selector: map[string]string{"app": "reviews"},
			Ports:    []corev1.ServicePort{{Name: "http", Port: 9080, TargetPort: intstr.FromString("http"), Protocol: corev1.ProtocolTCP}},
		},
	}
}

func shopInputs() Inputs {
	return Inputs{
		Namespaces: []*corev1.Namespace{namespace("shop", map[string]string{model.DataplaneModeLabel: model.DataplaneModeAmbient})},
		Pods:       []*corev1.Pod{pod("shop", "reviews-1", "198.18.1.5"), pod("shop", "reviews-2", "198.18.2.7")},
		Services:   []*corev1.Service{service("shop", "reviews")},
		AuthorizationPolicies: []*securityv1.AuthorizationPolicy{{
			ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "allow-frontend", Generation: 3},
			Spec: securityv1.AuthorizationPolicySpec{
				Selector: &securityv1.WorkloadSelector{MatchLabels: map[string]string{"app": "reviews"}},
				Action:   securityv1.ActionAllow,
				Rules: []securityv1.Rule{{From: []securityv1.From{{Source: &securityv1.Source{
					Principals: []string{"cluster.local/ns/shop/sa/frontend"},
				}}}}},
			},
		}},
		PeerAuthentications: []*securityv1.PeerAuthentication{{
			ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "strict"},
			Spec:       securityv1.PeerAuthenticationSpec{Mtls: &securityv1.MutualTLS{Mode: securityv1.MTLSModeStrict}},
		}},
	}
}

func TestBuildJoinsPodsServicesAndPolicies(t *testing.T) {
	res := Build(shopInputs(), model.Config{})
	addrs := res.Resources[model.AddressTypeURL]
	want := []string{"Kubernetes//Pod/shop/reviews-1", "Kubernetes//Pod/shop/reviews-2", "shop/reviews.shop.svc.cluster.local"}
	if got := sortedNames(addrs); !slices.Equal(got, want) {
		t.Fatalf("addresses %v, want %v", got, want)
	}
	w := addrs["Kubernetes//Pod/shop/reviews-1"].(*workloadv1.Address).GetWorkload()
	if w.GetTunnelProtocol() != workloadv1.TunnelProtocol_HBONE {
		t.Errorf("pod in an ambient namespace has tunnel %v, want HBONE", w.GetTunnelProtocol())
	}
	ports := w.GetServices()["shop/reviews.shop.svc.cluster.local"].GetPorts()
	if len(ports) != 1 || ports[0].GetServicePort() != 9080 || ports[0].GetTargetPort() != 8080 {
		t.Errorf("workload's service ports %v, want 9080 -> 8080 (named port resolved)", ports)
	}
	if !slices.Contains(w.GetAuthorizationPolicies(), "shop/allow-frontend") {
		t.Errorf("workload policies %v, want shop/allow-frontend", w.GetAuthorizationPolicies())
	}

	authz := sortedNames(res.Resources[model.AuthorizationTypeURL])
	if !slices.Equal(authz, []string{"shop/allow-frontend", "shop/converted_peer_authentication_strict"}) {
		t.Errorf("authorizations %v, want the policy and the converted STRICT PeerAuthentication", authz)
	}
	if len(res.Statuses) != 2 {
		t.Fatalf("statuses %+v, want one per policy", res.Statuses)
	}
	for _, st := range res.Statuses {
		if len(st.Conditions) == 0 {
			t.Errorf("%s %s/%s has no condition", st.Kind, st.Namespace, st.Name)
		}
	}
}

func TestDiffPushesOnlyWhatChanged(t *testing.T) {
	in := shopInputs()
	before := Build(in, model.Config{}).Resources

	if d := Diff(before, Build(shopInputs(), model.Config{}).Resources); len(d) != 0 {
		t.Errorf("rebuilding equal inputs changed %v, want nothing", d)
	}

	// A pod's IP changes: exactly one updated Address.
	in.Pods[0] = pod("shop", "reviews-1", "198.18.1.99")
	after := Build(in, model.Config{}).Resources
	d := Diff(before, after)
	if len(d) != 1 || len(d[model.AddressTypeURL].Upserts) != 1 || d[model.AddressTypeURL].Upserts["Kubernetes//Pod/shop/reviews-1"] == nil {
		t.Fatalf("after an IP change the diff is %v, want one upsert of reviews-1", d)
	}

	// A pod is deleted: exactly one removal.
	in.Pods = in.Pods[1:]
	d = Diff(after, Build(in, model.Config{}).Resources)
	if c := d[model.AddressTypeURL]; len(d) != 1 || len(c.Upserts) != 0 || !slices.Equal(c.Removes, []string{"Kubernetes//Pod/shop/reviews-1"}) {
		t.Fatalf("after a deletion the diff is %+v, want one removal", d)
	}
}

func TestUnenrolledNamespaceGivesPlainWorkloads(t *testing.T) {
	in := shopInputs()
	in.Namespaces[0].Labels = nil
	w := Build(in, model.Config{}).Resources[model.AddressTypeURL]["Kubernetes//Pod/shop/reviews-1"].(*workloadv1.Address).GetWorkload()
	if w.GetTunnelProtocol() != workloadv1.TunnelProtocol_NONE {
		t.Errorf("pod outside the mesh has tunnel %v, want NONE", w.GetTunnelProtocol())
	}
}

func sortedNames[V any](m map[string]V) []string {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

func TestNewlySkippedObjectsAreLoggedOnce(t *testing.T) {
	var buf strings.Builder
	c := &Controller{log: slog.New(slog.NewTextHandler(&buf, nil))}
	unscheduled := model.Skipped{Object: "Pod shop/pending", Reason: "not scheduled to a node yet"}
	c.logNewlySkipped(nil, []model.Skipped{unscheduled})
	c.logNewlySkipped([]model.Skipped{unscheduled}, []model.Skipped{unscheduled})
	if n := strings.Count(buf.String(), "Pod shop/pending"); n != 1 {
		t.Errorf("logged %d times, want once:\n%s", n, buf.String())
	}
	if !strings.Contains(buf.String(), "not scheduled to a node yet") {
		t.Errorf("log lacks the reason:\n%s", buf.String())
	}
}
