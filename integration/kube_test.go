package integration

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"
	gwclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/cairnmesh/cairn/internal/testenv"
)

// The controller-manager provides what a real cluster has and the tests
// rely on: the "default" ServiceAccount in new namespaces and
// EndpointSlices made from Pod status.
func TestMain(m *testing.M) {
	testenv.Main(m, testenv.Options{ControllerManager: true})
}

const ambientLabel = "istio.io/dataplane-mode"

func TestAmbientNamespaceIsFoundByLabelSelector(t *testing.T) {
	env := testenv.Get(t)
	ctx := testContext(t)
	ambient := env.Namespace(t, map[string]string{ambientLabel: "ambient"})
	plain := env.Namespace(t, nil)
	disabled := env.Namespace(t, map[string]string{ambientLabel: "none"})

	list, err := env.Client().CoreV1().Namespaces().List(ctx, metav1.ListOptions{
		LabelSelector: ambientLabel + "=ambient",
	})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, ns := range list.Items {
		names = append(names, ns.Name)
	}
	if !slices.Contains(names, ambient) {
		t.Errorf("selector %s=ambient did not find %s; found %v", ambientLabel, ambient, names)
	}
	for _, other := range []string{plain, disabled} {
		if slices.Contains(names, other) {
			t.Errorf("selector %s=ambient found %s, which is not enrolled", ambientLabel, other)
		}
	}
}

// TestPodStatusDrivesInformerAndEndpointSlice plays the kubelet: it binds
// a Pod to a node by name, writes its status, and checks what istiod-lite
// will see: the Pod's IP and readiness through an informer, and the
// EndpointSlice the controller-manager derives from it.
func TestPodStatusDrivesInformerAndEndpointSlice(t *testing.T) {
	env := testenv.Get(t)
	ctx := testContext(t)
	client := env.Client()
	ns := env.Namespace(t, map[string]string{ambientLabel: "ambient"})
	const podIP = "198.18.1.5"

	// Pods without serviceAccountName need the controller-made "default".
	eventually(t, 30*time.Second, func() error {
		_, err := client.CoreV1().ServiceAccounts(ns).Get(ctx, "default", metav1.GetOptions{})
		return err
	})

	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "reviews"},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "reviews"},
			Ports: []corev1.ServicePort{{
				Name: "http", Port: 9080, TargetPort: intstr.FromInt32(9080), Protocol: corev1.ProtocolTCP,
			}},
		},
	}
	svc, err := client.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// Since v1.37 the EndpointSlice controller skips pods whose node has
	// no Node object. A Node is just an object: no kubelet stands behind it.
	node := createNode(t, ctx, client, ns+"-node-a")
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "reviews-v1", Labels: map[string]string{"app": "reviews"}},
		Spec: corev1.PodSpec{
			NodeName: node, // bound: no scheduler involved, and no kubelet will run it
			Containers: []corev1.Container{{
				Name:  "reviews",
				Image: "example.invalid/reviews:v1",
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 9080}},
			}},
		},
	}
	pod, err = client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if pod.Spec.ServiceAccountName != "default" {
		t.Errorf("serviceAccountName = %q, want the admission default %q", pod.Spec.ServiceAccountName, "default")
	}

	factory := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithNamespace(ns))
	pods := factory.Core().V1().Pods().Lister()
	factory.Start(ctx.Done())
	t.Cleanup(factory.Shutdown) // t.Context, and so ctx, is cancelled before cleanups run
	for typ, ok := range factory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			t.Fatalf("informer for %v did not sync", typ)
		}
	}

	setPodStatus(t, ctx, client, ns, pod.Name, podIP, true)
	eventually(t, 10*time.Second, func() error {
		p, err := pods.Pods(ns).Get(pod.Name)
		if err != nil {
			return err
		}
		if p.Status.PodIP != podIP || !podReady(p) {
			return fmt.Errorf("informer sees podIP %q ready %v", p.Status.PodIP, podReady(p))
		}
		return nil
	})
	eventually(t, 30*time.Second, func() error {
		return endpointIs(ctx, client, ns, svc.Name, podIP, pod.Name, true)
	})

	setPodStatus(t, ctx, client, ns, pod.Name, podIP, false)
	eventually(t, 10*time.Second, func() error {
		p, err := pods.Pods(ns).Get(pod.Name)
		if err != nil {
			return err
		}
		if podReady(p) {
			return fmt.Errorf("informer still sees the pod ready")
		}
		return nil
	})
	eventually(t, 30*time.Second, func() error {
		return endpointIs(ctx, client, ns, svc.Name, podIP, pod.Name, false)
	})

	// Without a kubelet a bound pod only goes away with grace period 0.
	err = client.CoreV1().Pods(ns).Delete(ctx, pod.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, func() error {
		if _, err := pods.Pods(ns).Get(pod.Name); !apierrors.IsNotFound(err) {
			return fmt.Errorf("informer still has the deleted pod (err %v)", err)
		}
		eps, err := serviceSlices(ctx, client, ns, svc.Name)
		if err != nil {
			return err
		}
		for _, s := range eps {
			for _, ep := range s.Endpoints {
				if slices.Contains(ep.Addresses, podIP) {
					return fmt.Errorf("EndpointSlice %s still lists %s", s.Name, podIP)
				}
			}
		}
		return nil
	})
}

// createNode creates a Node object and deletes it when the test ends.
func createNode(t *testing.T, ctx context.Context, client kubernetes.Interface, name string) string {
	t.Helper()
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{
		Name:   name,
		Labels: map[string]string{corev1.LabelTopologyZone: "zone-a"},
	}}
	if _, err := client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating node: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := client.CoreV1().Nodes().Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			t.Logf("deleting node %s: %v", name, err)
		}
	})
	return name
}

// setPodStatus writes what a kubelet would for a running pod, through the
// status subresource.
func setPodStatus(t *testing.T, ctx context.Context, client kubernetes.Interface, ns, name, ip string, ready bool) {
	t.Helper()
	p, err := client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cond := corev1.ConditionFalse
	if ready {
		cond = corev1.ConditionTrue
	}
	now := metav1.Now()
	p.Status = corev1.PodStatus{
		Phase:     corev1.PodRunning,
		HostIP:    "198.18.0.2",
		HostIPs:   []corev1.HostIP{{IP: "198.18.0.2"}},
		PodIP:     ip,
		PodIPs:    []corev1.PodIP{{IP: ip}},
		StartTime: &now,
		Conditions: []corev1.PodCondition{
			{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.PodInitialized, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.ContainersReady, Status: cond, LastTransitionTime: now},
			{Type: corev1.PodReady, Status: cond, LastTransitionTime: now},
		},
	}
	if _, err := client.CoreV1().Pods(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("updating pod status: %v", err)
	}
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func serviceSlices(ctx context.Context, client kubernetes.Interface, ns, svc string) ([]discoveryv1.EndpointSlice, error) {
	list, err := client.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{
		LabelSelector: labels.Set{discoveryv1.LabelServiceName: svc}.String(),
	})
	if err != nil {
		return nil, err
	}
	return list.Items, nil
}

// endpointIs returns nil if a controller-made EndpointSlice of svc has an
// endpoint for ip, pointing at the pod, with the given readiness.
func endpointIs(ctx context.Context, client kubernetes.Interface, ns, svc, ip, pod string, ready bool) error {
	eps, err := serviceSlices(ctx, client, ns, svc)
	if err != nil {
		return err
	}
	var seen []string
	for _, s := range eps {
		if s.Labels[discoveryv1.LabelManagedBy] != "endpointslice-controller.k8s.io" {
			continue
		}
		for _, ep := range s.Endpoints {
			gotReady := ep.Conditions.Ready != nil && *ep.Conditions.Ready
			seen = append(seen, fmt.Sprintf("%v ready=%v", ep.Addresses, gotReady))
			if len(ep.Addresses) == 0 || ep.Addresses[0] != ip {
				continue
			}
			if ep.TargetRef == nil || ep.TargetRef.Kind != "Pod" || ep.TargetRef.Name != pod {
				return fmt.Errorf("endpoint %s has targetRef %+v, want Pod %s", ip, ep.TargetRef, pod)
			}
			if gotReady != ready {
				return fmt.Errorf("endpoint %s ready=%v, want %v", ip, gotReady, ready)
			}
			if len(s.Ports) != 1 || s.Ports[0].Port == nil || *s.Ports[0].Port != 9080 {
				return fmt.Errorf("EndpointSlice %s ports %+v, want 9080", s.Name, s.Ports)
			}
			if ep.Zone == nil || *ep.Zone != "zone-a" {
				return fmt.Errorf("endpoint %s zone %v, want the node's zone-a", ip, ep.Zone)
			}
			return nil
		}
	}
	return fmt.Errorf("no controller-made endpoint for %s yet; endpoints: %v", ip, seen)
}

// TestGatewayAPIWaypointAndServiceRoute checks the Gateway API objects
// ambient mesh users write: a waypoint Gateway listening for HBONE, and a
// GAMMA HTTPRoute attached to a Service. The CRD schemas must accept them
// and reject malformed routes.
func TestGatewayAPIWaypointAndServiceRoute(t *testing.T) {
	env := testenv.Get(t)
	ctx := testContext(t)
	ns := env.Namespace(t, nil)
	gw, err := gwclient.NewForConfig(env.Config())
	if err != nil {
		t.Fatal(err)
	}

	class := &gwv1.GatewayClass{
		ObjectMeta: metav1.ObjectMeta{Name: "istio-waypoint"},
		Spec:       gwv1.GatewayClassSpec{ControllerName: "istio.io/mesh-controller"},
	}
	if _, err := gw.GatewayV1().GatewayClasses().Create(ctx, class, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("creating GatewayClass: %v", err)
	}

	waypoint := &gwv1.Gateway{
		ObjectMeta: metav1.ObjectMeta{Name: "waypoint"},
		Spec: gwv1.GatewaySpec{
			GatewayClassName: "istio-waypoint",
			Listeners: []gwv1.Listener{{
				Name:     "mesh",
				Port:     15008,
				Protocol: "HBONE",
			}},
		},
	}
	got, err := gw.GatewayV1().Gateways(ns).Create(ctx, waypoint, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating waypoint Gateway: %v", err)
	}
	if l := got.Spec.Listeners; len(l) != 1 || l[0].Protocol != "HBONE" || l[0].Port != 15008 {
		t.Errorf("stored listeners %+v", l)
	}

	route := serviceRoute("reviews", gwv1.PathMatchPathPrefix, "/v1")
	stored, err := gw.GatewayV1().HTTPRoutes(ns).Create(ctx, route, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating HTTPRoute with a Service parent: %v", err)
	}
	parent := stored.Spec.ParentRefs[0]
	if parent.Group == nil || *parent.Group != "" || parent.Kind == nil || *parent.Kind != "Service" ||
		parent.Port == nil || *parent.Port != 9080 {
		t.Errorf("stored parentRef %+v, want group \"\", kind Service, port 9080", parent)
	}
	if w := stored.Spec.Rules[0].BackendRefs; len(w) != 2 || *w[0].Weight != 90 || *w[1].Weight != 10 {
		t.Errorf("stored backendRefs %+v", w)
	}

	for _, tc := range []struct {
		name  string
		route *gwv1.HTTPRoute
		field string // part of the validation message
	}{
		{"unknown path match type", serviceRoute("bad-type", "Glob", "/v1"), "spec.rules[0].matches[0].path.type"},
		{"relative path prefix", serviceRoute("bad-path", gwv1.PathMatchPathPrefix, "v1"), "path"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := gw.GatewayV1().HTTPRoutes(ns).Create(ctx, tc.route, metav1.CreateOptions{})
			if !apierrors.IsInvalid(err) {
				t.Fatalf("err = %v, want Invalid", err)
			}
			if !strings.Contains(err.Error(), tc.field) {
				t.Errorf("error does not mention %s: %v", tc.field, err)
			}
			if _, err := gw.GatewayV1().HTTPRoutes(ns).Get(ctx, tc.route.Name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
				t.Errorf("rejected route exists anyway (err %v)", err)
			}
		})
	}
}

// serviceRoute returns a GAMMA HTTPRoute whose parent is the Service
// "reviews", splitting traffic 90/10 between two versions.
func serviceRoute(name string, pathType gwv1.PathMatchType, path string) *gwv1.HTTPRoute {
	backend := func(svc string, weight int32) gwv1.HTTPBackendRef {
		return gwv1.HTTPBackendRef{BackendRef: gwv1.BackendRef{
			BackendObjectReference: gwv1.BackendObjectReference{
				Name: gwv1.ObjectName(svc),
				Port: ptr.To[gwv1.PortNumber](9080),
			},
			Weight: ptr.To(weight),
		}}
	}
	return &gwv1.HTTPRoute{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: gwv1.HTTPRouteSpec{
			CommonRouteSpec: gwv1.CommonRouteSpec{ParentRefs: []gwv1.ParentReference{{
				Group: ptr.To[gwv1.Group](""),
				Kind:  ptr.To[gwv1.Kind]("Service"),
				Name:  "reviews",
				Port:  ptr.To[gwv1.PortNumber](9080),
			}}},
			Rules: []gwv1.HTTPRouteRule{{
				Matches: []gwv1.HTTPRouteMatch{{
					Path: &gwv1.HTTPPathMatch{Type: ptr.To(pathType), Value: ptr.To(path)},
					Headers: []gwv1.HTTPHeaderMatch{{
						Name: "x-canary", Value: "true",
					}},
				}},
				BackendRefs: []gwv1.HTTPBackendRef{backend("reviews-v1", 90), backend("reviews-v2", 10)},
			}},
		},
	}
}

// TestServiceAccountTokenReview is how istiod-lite's CA will authenticate
// ztunnel: a bound token with audience istio-ca, checked by TokenReview.
func TestServiceAccountTokenReview(t *testing.T) {
	env := testenv.Get(t)
	ctx := testContext(t)
	client := env.Client()
	ns := env.Namespace(t, nil)
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "ztunnel"}}
	if _, err := client.CoreV1().ServiceAccounts(ns).Create(ctx, sa, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	caToken := requestToken(t, ctx, client, ns, sa.Name, "istio-ca")
	otherToken := requestToken(t, ctx, client, ns, sa.Name, "some-other-service")
	wantUser := "system:serviceaccount:" + ns + ":ztunnel"

	status := reviewToken(t, ctx, client, caToken, "istio-ca")
	if !status.Authenticated || status.Error != "" {
		t.Fatalf("istio-ca token not authenticated: %+v", status)
	}
	if status.User.Username != wantUser {
		t.Errorf("user %q, want %q", status.User.Username, wantUser)
	}
	if !slices.Contains(status.User.Groups, "system:serviceaccounts:"+ns) {
		t.Errorf("groups %v lack the namespace group", status.User.Groups)
	}
	if !slices.Equal(status.Audiences, []string{"istio-ca"}) {
		t.Errorf("audiences %v, want [istio-ca]", status.Audiences)
	}

	for name, token := range map[string]string{
		"token for another audience": otherToken,
		"garbage":                    "not-a-jwt",
		"truncated token":            caToken[:len(caToken)-10],
	} {
		if st := reviewToken(t, ctx, client, token, "istio-ca"); st.Authenticated {
			t.Errorf("%s authenticated as %q", name, st.User.Username)
		}
	}
	// Not checked here: a bound token stops authenticating once its
	// ServiceAccount is deleted, but the API server caches successful token
	// authentications for 10s, so that check costs 10s.
}

func requestToken(t *testing.T, ctx context.Context, client kubernetes.Interface, ns, sa string, audiences ...string) string {
	t.Helper()
	tr, err := client.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, &authnv1.TokenRequest{
		Spec: authnv1.TokenRequestSpec{Audiences: audiences, ExpirationSeconds: ptr.To[int64](600)},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("TokenRequest for %s/%s %v: %v", ns, sa, audiences, err)
	}
	return tr.Status.Token
}

func reviewToken(t *testing.T, ctx context.Context, client kubernetes.Interface, token string, audiences ...string) authnv1.TokenReviewStatus {
	t.Helper()
	tr, err := client.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{
		Spec: authnv1.TokenReviewSpec{Token: token, Audiences: audiences},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("TokenReview: %v", err)
	}
	return tr.Status
}

// TestRBACAppliesToServiceAccounts: a ServiceAccount's own token is
// subject to RBAC, so tests of component permissions mean something.
func TestRBACAppliesToServiceAccounts(t *testing.T) {
	env := testenv.Get(t)
	ctx := testContext(t)
	admin := env.Client()
	ns := env.Namespace(t, nil)
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "reader"}}
	if _, err := admin.CoreV1().ServiceAccounts(ns).Create(ctx, sa, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// No audience: the token is for the API server itself.
	cfg := env.Config()
	cfg.TLSClientConfig = rest.TLSClientConfig{CAData: cfg.CAData}
	cfg.BearerToken = requestToken(t, ctx, admin, ns, sa.Name)
	asSA, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}

	_, err = asSA.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if !apierrors.IsForbidden(err) {
		t.Fatalf("listing pods without a binding: err = %v, want Forbidden", err)
	}
	if !strings.Contains(err.Error(), "system:serviceaccount:"+ns+":reader") {
		t.Errorf("Forbidden does not name the ServiceAccount: %v", err)
	}

	role := &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: "pod-reader"},
		Rules: []rbacv1.PolicyRule{{
			APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "watch"},
		}},
	}
	if _, err := admin.RbacV1().Roles(ns).Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	binding := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "reader"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: sa.Name, Namespace: ns}},
	}
	if _, err := admin.RbacV1().RoleBindings(ns).Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, func() error {
		_, err := asSA.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		return err
	})
	// The binding is namespaced and the role is about pods only.
	if _, err := asSA.CoreV1().Pods("default").List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("listing pods in another namespace: err = %v, want Forbidden", err)
	}
	if _, err := asSA.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("listing secrets: err = %v, want Forbidden", err)
	}
}

// testContext returns a context cancelled when the test ends, with a
// deadline well inside go test's default timeout.
func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// eventually polls cond every 50ms until it returns nil, and fails the
// test with cond's last error after timeout.
func eventually(t *testing.T, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not true after %v: %v", timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
