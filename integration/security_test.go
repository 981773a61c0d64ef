package integration

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/cache"
	"sigs.k8s.io/yaml"

	cairnclient "github.com/cairnmesh/cairn/apis/client/clientset/versioned"
	cairninformers "github.com/cairnmesh/cairn/apis/client/informers/externalversions"
	securityv1 "github.com/cairnmesh/cairn/apis/security/v1"
	"github.com/cairnmesh/cairn/internal/testenv"
)

var securityResources = map[string]schema.GroupVersionResource{
	"AuthorizationPolicy": securityv1.SchemeGroupVersion.WithResource("authorizationpolicies"),
	"PeerAuthentication":  securityv1.SchemeGroupVersion.WithResource("peerauthentications"),
}

// createStrict creates the object in manifest in namespace ns the way
// `kubectl create --validate=strict` does: an unknown field is an error, not
// a silently dropped field.
func createStrict(ctx context.Context, t *testing.T, dyn dynamic.Interface, ns, manifest string) (*unstructured.Unstructured, error) {
	t.Helper()
	obj := &unstructured.Unstructured{}
	if err := yaml.Unmarshal([]byte(manifest), &obj.Object); err != nil {
		t.Fatalf("bad test manifest: %v", err)
	}
	gvr, ok := securityResources[obj.GetKind()]
	if !ok {
		t.Fatalf("test manifest of unexpected kind %q", obj.GetKind())
	}
	obj.SetNamespace(ns)
	return dyn.Resource(gvr).Namespace(ns).Create(ctx, obj, metav1.CreateOptions{FieldValidation: "Strict"})
}

// TestAuthorizationPolicyThroughTypedClient uses the generated clientset and
// informers the way istiod-lite will: create a policy, see the schema's
// default, write a status condition through the status subresource and see
// it arrive through an informer.
func TestAuthorizationPolicyThroughTypedClient(t *testing.T) {
	env := testenv.Get(t)
	ctx := testContext(t)
	ns := env.Namespace(t, map[string]string{ambientLabel: "ambient"})
	client, err := cairnclient.NewForConfig(env.Config())
	if err != nil {
		t.Fatal(err)
	}

	policy := &securityv1.AuthorizationPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "allow-frontend", Namespace: ns},
		Spec: securityv1.AuthorizationPolicySpec{
			Selector: &securityv1.WorkloadSelector{MatchLabels: map[string]string{"app": "reviews"}},
			Rules: []securityv1.Rule{{
				From: []securityv1.From{{Source: &securityv1.Source{Principals: []string{"cluster.local/ns/" + ns + "/sa/frontend"}}}},
				To:   []securityv1.To{{Operation: &securityv1.Operation{Ports: []string{"9080"}}}},
			}},
		},
	}
	created, err := client.SecurityV1().AuthorizationPolicies(ns).Create(ctx, policy, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating AuthorizationPolicy: %v", err)
	}
	if created.Spec.Action != securityv1.ActionAllow {
		t.Errorf("action = %q, want the schema default ALLOW", created.Spec.Action)
	}

	factory := cairninformers.NewSharedInformerFactoryWithOptions(client, 0, cairninformers.WithNamespace(ns))
	informer := factory.Security().V1().AuthorizationPolicies()
	seen := make(chan *securityv1.AuthorizationPolicy, 10)
	if _, err := informer.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		UpdateFunc: func(_, obj any) { seen <- obj.(*securityv1.AuthorizationPolicy) },
	}); err != nil {
		t.Fatal(err)
	}
	factory.Start(ctx.Done())
	t.Cleanup(factory.Shutdown)
	if !cache.WaitForCacheSync(ctx.Done(), informer.Informer().HasSynced) {
		t.Fatal("AuthorizationPolicy informer did not sync")
	}
	if _, err := informer.Lister().AuthorizationPolicies(ns).Get("allow-frontend"); err != nil {
		t.Fatalf("lister: %v", err)
	}

	created.Status.Conditions = []metav1.Condition{{
		Type: "Accepted", Status: metav1.ConditionTrue, Reason: "Accepted",
		Message: "enforced by ztunnel", LastTransitionTime: metav1.Now(), ObservedGeneration: created.Generation,
	}}
	if _, err := client.SecurityV1().AuthorizationPolicies(ns).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("writing status: %v", err)
	}
	select {
	case got := <-seen:
		if len(got.Status.Conditions) != 1 || got.Status.Conditions[0].Message != "enforced by ztunnel" {
			t.Errorf("informer saw status %+v, want the Accepted condition", got.Status)
		}
		if len(got.Spec.Rules) != 1 || got.Spec.Rules[0].To[0].Operation.Ports[0] != "9080" {
			t.Errorf("informer saw spec %+v, want it unchanged", got.Spec)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the status update did not reach the informer")
	}
}

func TestAuthorizationPolicyWithInvalidActionIsRejected(t *testing.T) {
	env := testenv.Get(t)
	ctx := testContext(t)
	ns := env.Namespace(t, nil)
	client, err := cairnclient.NewForConfig(env.Config())
	if err != nil {
		t.Fatal(err)
	}
	_, err = client.SecurityV1().AuthorizationPolicies(ns).Create(ctx, &securityv1.AuthorizationPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "bad-action", Namespace: ns},
		Spec:       securityv1.AuthorizationPolicySpec{Action: "REJECT", Rules: []securityv1.Rule{{}}},
	}, metav1.CreateOptions{})
	if !apierrors.IsInvalid(err) {
		t.Fatalf("creating a policy with action REJECT: err = %v, want Invalid from the CRD schema", err)
	}
	if !strings.Contains(err.Error(), `Unsupported value: "REJECT"`) {
		t.Errorf("error %q does not name the bad value", err)
	}
}

// TestIstioManifestsAreAccepted applies policies written for Istio ambient
// (apis/security/v1/testdata) unchanged: a user moving to Cairn keeps them.
func TestIstioManifestsAreAccepted(t *testing.T) {
	env := testenv.Get(t)
	ctx := testContext(t)
	dyn := dynamic.NewForConfigOrDie(env.Config())
	files, err := filepath.Glob("../apis/security/v1/testdata/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests found (err %v)", err)
	}
	ns := env.Namespace(t, nil)
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := createStrict(ctx, t, dyn, ns, string(data)); err != nil {
			t.Errorf("%s: %v", filepath.Base(f), err)
		}
	}
}

// TestSecuritySchemaValidation sends objects to the API server and checks
// what the CRD schema and its CEL rules say. wantErr is a substring of the
// expected error, or "" for objects that must be accepted.
func TestSecuritySchemaValidation(t *testing.T) {
	env := testenv.Get(t)
	ctx := testContext(t)
	dyn := dynamic.NewForConfigOrDie(env.Config())
	ns := env.Namespace(t, nil)
	tests := []struct {
		name     string
		kind     string
		manifest string
		wantErr  string
	}{
		{"action lowercase", "AuthorizationPolicy", authorizationPolicy(`action: deny
rules: [{}]`), `Unsupported value: "deny"`},
		{"action unknown", "AuthorizationPolicy", authorizationPolicy(`action: REJECT`), `Unsupported value: "REJECT"`},
		{"selector and targetRefs", "AuthorizationPolicy", authorizationPolicy(`
selector: {matchLabels: {app: a}}
targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: w}]`), "only one of selector, targetRef and targetRefs"},
		{"targetRef and targetRefs", "AuthorizationPolicy", authorizationPolicy(`
targetRef: {kind: Gateway, group: gateway.networking.k8s.io, name: w}
targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: w}]`), "only one of selector, targetRef and targetRefs"},
		{"targetRefs Service without group", "AuthorizationPolicy", authorizationPolicy(`targetRefs: [{kind: Service, name: s}]`), ""},
		{"targetRefs unsupported kind", "AuthorizationPolicy", authorizationPolicy(`targetRefs: [{kind: ConfigMap, name: c}]`), "targets must be"},
		{"targetRefs other namespace", "AuthorizationPolicy", authorizationPolicy(`targetRefs: [{kind: Service, name: s, namespace: other}]`), "cross-namespace"},
		{"targetRefs without name", "AuthorizationPolicy", authorizationPolicy(`targetRefs: [{kind: Service}]`), "spec.targetRefs[0].name: Required value"},
		{"provider without CUSTOM", "AuthorizationPolicy", authorizationPolicy(`
provider: {name: opa}
rules: [{}]`), "provider may only be set when action is CUSTOM"},
		{"CUSTOM without provider", "AuthorizationPolicy", authorizationPolicy(`
action: CUSTOM
rules: [{}]`), "action CUSTOM requires a provider"},
		{"CUSTOM with empty provider name", "AuthorizationPolicy", authorizationPolicy(`
action: CUSTOM
provider: {name: ""}
rules: [{}]`), "spec.provider.name"},
		{"DENY without rules", "AuthorizationPolicy", authorizationPolicy(`action: DENY`), "a DENY policy without rules never matches"},
		{"DENY with empty rule", "AuthorizationPolicy", authorizationPolicy(`
action: DENY
rules: [{}]`), ""},
		{"serviceAccounts with principals", "AuthorizationPolicy", authorizationPolicy(`
rules:
- from:
  - source: {serviceAccounts: [shop/a], principals: [cluster.local/ns/shop/sa/b]}`), "serviceAccounts and notServiceAccounts cannot be combined"},
		{"notServiceAccounts with notNamespaces", "AuthorizationPolicy", authorizationPolicy(`
rules:
- from:
  - source: {notServiceAccounts: [shop/a], notNamespaces: [other]}`), "serviceAccounts and notServiceAccounts cannot be combined"},
		{"serviceAccounts with ipBlocks", "AuthorizationPolicy", authorizationPolicy(`
rules:
- from:
  - source: {serviceAccounts: [shop/a], ipBlocks: [10.0.0.0/8]}`), ""},
		{"too many serviceAccounts", "AuthorizationPolicy", authorizationPolicy(`
rules:
- from:
  - source: {serviceAccounts: [a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p,q]}`), "Too many"},
		{"empty source", "AuthorizationPolicy", authorizationPolicy(`
rules:
- from:
  - source: {}`), "spec.rules[0].from[0].source"},
		{"from without source", "AuthorizationPolicy", authorizationPolicy(`
rules:
- from:
  - {}`), "spec.rules[0].from[0].source: Required value"},
		{"empty operation", "AuthorizationPolicy", authorizationPolicy(`
rules:
- to:
  - operation: {}`), "spec.rules[0].to[0].operation"},
		{"when without key", "AuthorizationPolicy", authorizationPolicy(`
rules:
- when:
  - values: [a]`), "spec.rules[0].when[0].key: Required value"},
		{"when without values", "AuthorizationPolicy", authorizationPolicy(`
rules:
- when:
  - key: source.ip`), "at least one of values and notValues"},
		{"when with notValues only", "AuthorizationPolicy", authorizationPolicy(`
rules:
- when:
  - key: source.ip
    notValues: [10.0.0.1]`), ""},
		{"label key with wildcard", "AuthorizationPolicy", authorizationPolicy(`selector: {matchLabels: {"app*": a}}`), "label keys must be non-empty"},
		{"label value too long", "AuthorizationPolicy", authorizationPolicy(`selector: {matchLabels: {app: ` + strings.Repeat("a", 64) + `}}`), "label values must be at most 63 characters"},

		{"mode lowercase", "PeerAuthentication", peerAuthentication(`mtls: {mode: strict}`), `Unsupported value: "strict"`},
		{"port level without selector", "PeerAuthentication", peerAuthentication(`portLevelMtls: {"8080": {mode: STRICT}}`), "portLevelMtls requires a selector"},
		{"port level with empty selector", "PeerAuthentication", peerAuthentication(`
selector: {}
portLevelMtls: {"8080": {mode: STRICT}}`), "portLevelMtls requires a selector"},
		{"port level empty", "PeerAuthentication", peerAuthentication(`
selector: {matchLabels: {app: a}}
portLevelMtls: {}`), "spec.portLevelMtls"},
		{"port zero", "PeerAuthentication", peerAuthentication(`
selector: {matchLabels: {app: a}}
portLevelMtls: {"0": {mode: STRICT}}`), "port numbers from 1 to 65535"},
		{"port too large", "PeerAuthentication", peerAuthentication(`
selector: {matchLabels: {app: a}}
portLevelMtls: {"65536": {mode: STRICT}}`), "port numbers from 1 to 65535"},
		{"port leading zero", "PeerAuthentication", peerAuthentication(`
selector: {matchLabels: {app: a}}
portLevelMtls: {"080": {mode: STRICT}}`), "port numbers from 1 to 65535"},
		{"port name", "PeerAuthentication", peerAuthentication(`
selector: {matchLabels: {app: a}}
portLevelMtls: {http: {mode: STRICT}}`), "port numbers from 1 to 65535"},
		{"port highest", "PeerAuthentication", peerAuthentication(`
selector: {matchLabels: {app: a}}
portLevelMtls: {"65535": {mode: STRICT}, "1": {mode: DISABLE}}`), ""},
		{"port mode invalid", "PeerAuthentication", peerAuthentication(`
selector: {matchLabels: {app: a}}
portLevelMtls: {"8080": {mode: MUTUAL}}`), `Unsupported value: "MUTUAL"`},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			manifest := strings.Replace(tc.manifest, "name: p,", "name: p"+strconv.Itoa(i)+",", 1)
			_, err := createStrict(ctx, t, dyn, ns, manifest)
			got := ""
			if err != nil {
				got = err.Error()
			}
			switch {
			case tc.wantErr == "" && got != "":
				t.Errorf("rejected: %s", got)
			case tc.wantErr != "" && got == "":
				t.Errorf("accepted, want an error containing %q", tc.wantErr)
			case !strings.Contains(got, tc.wantErr):
				t.Errorf("error %q, want it to contain %q", got, tc.wantErr)
			}
		})
	}
}

func authorizationPolicy(spec string) string {
	return "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: shop}\nspec:\n" + indent(spec)
}

func peerAuthentication(spec string) string {
	return "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p, namespace: shop}\nspec:\n" + indent(spec)
}

func indent(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	for i := range lines {
		lines[i] = "  " + lines[i]
	}
	return strings.Join(lines, "\n") + "\n"
}
