package manifest

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	fakediscovery "k8s.io/client-go/discovery/fake"
	fakedynamic "k8s.io/client-go/dynamic/fake"
	k8stesting "k8s.io/client-go/testing"
)

func TestDecode(t *testing.T) {
	data := `# leading comment
---
apiVersion: v1
kind: Namespace
metadata:
  name: a
---
# a document with only a comment
---

---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: one, namespace: a}
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: two}
---
{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "sa"}}
`
	objs, err := Decode([]byte(data))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, o := range objs {
		got = append(got, describe(o))
	}
	want := "Namespace a|ConfigMap a/one|ConfigMap two|ServiceAccount sa"
	if strings.Join(got, "|") != want {
		t.Errorf("got %q, want %q", strings.Join(got, "|"), want)
	}

	for name, bad := range map[string]string{
		"no kind":    "apiVersion: v1\nmetadata: {name: x}\n",
		"not yaml":   "apiVersion: v1\nkind: [unclosed\n",
		"no version": "kind: Namespace\nmetadata: {name: x}\n",
	} {
		if _, err := Decode([]byte(bad)); err == nil {
			t.Errorf("%s: decoded without error", name)
		}
	}
}

func TestCRDNames(t *testing.T) {
	objs, err := Decode([]byte(`
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: peerauthentications.security.istio.io}
---
apiVersion: v1
kind: Namespace
metadata: {name: x}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: authorizationpolicies.security.istio.io}
`))
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(CRDNames(objs), ",")
	if got != "peerauthentications.security.istio.io,authorizationpolicies.security.istio.io" {
		t.Errorf("CRDNames = %s", got)
	}
}

func TestEstablished(t *testing.T) {
	for _, tc := range []struct {
		name   string
		status map[string]any
		want   bool
	}{
		{"no status", nil, false},
		{"names accepted only", map[string]any{"conditions": []any{
			map[string]any{"type": "NamesAccepted", "status": "True"},
		}}, false},
		{"established false", map[string]any{"conditions": []any{
			map[string]any{"type": "Established", "status": "False", "message": "installing"},
		}}, false},
		{"established", map[string]any{"conditions": []any{
			map[string]any{"type": "NamesAccepted", "status": "True"},
			map[string]any{"type": "Established", "status": "True", "lastTransitionTime": "2026-11-22T00:56:48Z"},
		}}, true},
	} {
		crd := &unstructured.Unstructured{Object: map[string]any{}}
		if tc.status != nil {
			crd.Object["status"] = tc.status
		}
		if got, why := established(crd); got != tc.want {
			t.Errorf("%s: established = %v (%s), want %v", tc.name, got, why, tc.want)
		}
		if _, ok := EstablishedTime(crd); ok != tc.want {
			t.Errorf("%s: EstablishedTime ok = %v, want %v", tc.name, ok, tc.want)
		}
	}
}

// fakeCluster is a dynamic client that records server-side applies and a
// discovery client whose resources the test can change.
type fakeCluster struct {
	disco   *fakediscovery.FakeDiscovery
	dyn     *fakedynamic.FakeDynamicClient
	applied []string // "resource namespace/name manager force"
}

func newFakeCluster(t *testing.T) *fakeCluster {
	fc := &fakeCluster{
		disco: &fakediscovery.FakeDiscovery{Fake: &k8stesting.Fake{}},
		dyn:   fakedynamic.NewSimpleDynamicClient(runtime.NewScheme()),
	}
	fc.disco.Resources = []*metav1.APIResourceList{{
		GroupVersion: "v1",
		APIResources: []metav1.APIResource{
			{Name: "namespaces", Kind: "Namespace", Namespaced: false, Verbs: []string{"get", "patch"}},
			{Name: "configmaps", Kind: "ConfigMap", Namespaced: true, Verbs: []string{"get", "patch"}},
		},
	}}
	fc.dyn.PrependReactor("patch", "*", func(action k8stesting.Action) (bool, runtime.Object, error) {
		pa := action.(k8stesting.PatchActionImpl)
		if pa.GetPatchType() != types.ApplyPatchType {
			t.Errorf("patch type %s, want server-side apply", pa.GetPatchType())
		}
		var obj map[string]any
		if err := json.Unmarshal(pa.GetPatch(), &obj); err != nil {
			t.Errorf("patch is not JSON: %v", err)
		}
		force := pa.PatchOptions.Force != nil && *pa.PatchOptions.Force
		fc.applied = append(fc.applied, strings.Join([]string{
			pa.GetResource().Resource, pa.GetNamespace() + "/" + pa.GetName(),
			pa.PatchOptions.FieldManager, map[bool]string{true: "force", false: "noforce"}[force],
		}, " "))
		return true, &unstructured.Unstructured{Object: obj}, nil
	})
	return fc
}

func TestApplyScopesAndFieldManager(t *testing.T) {
	fc := newFakeCluster(t)
	a := NewWithClients(fc.dyn, fc.disco, Options{FieldManager: "cairnctl", Namespace: "istio-system"})
	objs, err := a.Apply(context.Background(), []byte(`
apiVersion: v1
kind: Namespace
metadata: {name: istio-system, namespace: ignored}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: mesh}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: other, namespace: elsewhere}
`))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"namespaces /istio-system cairnctl force",
		"configmaps istio-system/mesh cairnctl force",
		"configmaps elsewhere/other cairnctl force",
	}
	if strings.Join(fc.applied, "\n") != strings.Join(want, "\n") {
		t.Errorf("applied:\n%s\nwant:\n%s", strings.Join(fc.applied, "\n"), strings.Join(want, "\n"))
	}
	if len(objs) != 3 || objs[1].GetNamespace() != "istio-system" {
		t.Errorf("returned objects: %v", objs)
	}

	// NoForce is passed through; the name is required.
	fc.applied = nil
	a = NewWithClients(fc.dyn, fc.disco, Options{NoForce: true})
	if _, err := a.Apply(context.Background(), []byte("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")); err != nil {
		t.Fatal(err)
	}
	if len(fc.applied) != 1 || fc.applied[0] != "configmaps default/x cairn noforce" {
		t.Errorf("applied %q", fc.applied)
	}
	if _, err := a.Apply(context.Background(), []byte("apiVersion: v1\nkind: ConfigMap\nmetadata: {generateName: x-}\n")); err == nil {
		t.Error("object without a name applied")
	}
}

// TestApplyRefreshesDiscovery: a kind that appears after the discovery
// cache was filled (a CRD just established) is found after one reset.
func TestApplyRefreshesDiscovery(t *testing.T) {
	fc := newFakeCluster(t)
	a := NewWithClients(fc.dyn, fc.disco, Options{})
	policy := []byte(`
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny, namespace: demo}
`)
	_, err := a.Apply(context.Background(), policy)
	if !meta.IsNoMatchError(err) {
		t.Fatalf("unknown kind: err = %v, want a no-match error", err)
	}
	if !strings.Contains(err.Error(), "WaitForCRDs") {
		t.Errorf("error lacks the hint: %v", err)
	}

	fc.disco.Resources = append(fc.disco.Resources, &metav1.APIResourceList{
		GroupVersion: "security.istio.io/v1",
		APIResources: []metav1.APIResource{
			{Name: "authorizationpolicies", Kind: "AuthorizationPolicy", Namespaced: true, Verbs: []string{"get", "patch"}},
		},
	})
	if _, err := a.Apply(context.Background(), policy); err != nil {
		t.Fatalf("after the kind appeared: %v", err)
	}
	if len(fc.applied) != 1 || fc.applied[0] != "authorizationpolicies demo/deny cairn force" {
		t.Errorf("applied %q", fc.applied)
	}
}
