package v1_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"sigs.k8s.io/yaml"
)

// The API server's own checks of these CRDs (structural schema, CEL rules
// and their cost) and of objects against them run in
// integration/security_test.go, against a real kube-apiserver.

// crdDir holds the CRDs that make generate writes from this package.
const crdDir = "../../../install/crds"

func loadCRD(t *testing.T, plural string) *apiextensionsv1.CustomResourceDefinition {
	t.Helper()
	return readCRD(t, filepath.Join(crdDir, "security.istio.io_"+plural+".yaml"))
}

func readCRD(t *testing.T, path string) *apiextensionsv1.CustomResourceDefinition {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run make generate)", err)
	}
	var crd apiextensionsv1.CustomResourceDefinition
	if err := yaml.UnmarshalStrict(data, &crd); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if len(crd.Spec.Versions) != 1 || crd.Spec.Versions[0].Schema == nil {
		t.Fatalf("%s: want exactly one version with a schema", path)
	}
	return &crd
}

// schemaAt walks from the root schema along property names; "[]" steps into
// array items and "{}" into map values.
func schemaAt(t *testing.T, crd *apiextensionsv1.CustomResourceDefinition, path ...string) apiextensionsv1.JSONSchemaProps {
	t.Helper()
	s := *crd.Spec.Versions[0].Schema.OpenAPIV3Schema
	for i, step := range path {
		var next *apiextensionsv1.JSONSchemaProps
		switch step {
		case "[]":
			if s.Items != nil {
				next = s.Items.Schema
			}
		case "{}":
			if s.AdditionalProperties != nil {
				next = s.AdditionalProperties.Schema
			}
		default:
			if p, ok := s.Properties[step]; ok {
				next = &p
			}
		}
		if next == nil {
			t.Fatalf("%s: no schema at %s", crd.Name, strings.Join(path[:i+1], "."))
		}
		s = *next
	}
	return s
}

func enumOf(t *testing.T, crd *apiextensionsv1.CustomResourceDefinition, path ...string) string {
	t.Helper()
	var values []string
	for _, v := range schemaAt(t, crd, path...).Enum {
		values = append(values, strings.Trim(string(v.Raw), `"`))
	}
	return strings.Join(values, ",")
}

// TestCRDMarkers checks the parts of the generated CRDs that come from
// kubebuilder markers, so a lost or mistyped marker fails here.
func TestCRDMarkers(t *testing.T) {
	ap := loadCRD(t, "authorizationpolicies")
	pa := loadCRD(t, "peerauthentications")

	for _, crd := range []*apiextensionsv1.CustomResourceDefinition{ap, pa} {
		v := crd.Spec.Versions[0]
		if crd.Spec.Group != "security.istio.io" || v.Name != "v1" || !v.Served || !v.Storage {
			t.Errorf("%s: group %s version %s served=%v storage=%v", crd.Name, crd.Spec.Group, v.Name, v.Served, v.Storage)
		}
		if crd.Spec.Scope != apiextensionsv1.NamespaceScoped {
			t.Errorf("%s: scope %s", crd.Name, crd.Spec.Scope)
		}
		if v.Subresources == nil || v.Subresources.Status == nil {
			t.Errorf("%s: no status subresource", crd.Name)
		}
		if got := crd.Spec.Names.Categories; !slices.Equal(got, []string{"istio-io", "security-istio-io"}) {
			t.Errorf("%s: categories %v", crd.Name, got)
		}
		if got := v.Schema.OpenAPIV3Schema.Required; !slices.Equal(got, []string{"spec"}) {
			t.Errorf("%s: required %v, want [spec]", crd.Name, got)
		}
		conditions := schemaAt(t, crd, "status", "conditions")
		if conditions.XListType == nil || *conditions.XListType != "map" || !slices.Equal(conditions.XListMapKeys, []string{"type"}) {
			t.Errorf("%s: status.conditions is not a list map keyed by type", crd.Name)
		}
	}

	if got := ap.Spec.Names.ShortNames; !slices.Equal(got, []string{"ap"}) {
		t.Errorf("AuthorizationPolicy short names %v", got)
	}
	if got := pa.Spec.Names.ShortNames; !slices.Equal(got, []string{"pa"}) {
		t.Errorf("PeerAuthentication short names %v", got)
	}
	for crd, want := range map[*apiextensionsv1.CustomResourceDefinition]string{ap: "Action=.spec.action,Age=.metadata.creationTimestamp", pa: "Mode=.spec.mtls.mode,Age=.metadata.creationTimestamp"} {
		var cols []string
		for _, c := range crd.Spec.Versions[0].AdditionalPrinterColumns {
			cols = append(cols, c.Name+"="+c.JSONPath)
		}
		if got := strings.Join(cols, ","); got != want {
			t.Errorf("%s: printer columns %s, want %s", crd.Name, got, want)
		}
	}

	action := schemaAt(t, ap, "spec", "action")
	if got := enumOf(t, ap, "spec", "action"); got != "ALLOW,DENY,AUDIT,CUSTOM" {
		t.Errorf("action enum %s", got)
	}
	if action.Default == nil || string(action.Default.Raw) != `"ALLOW"` {
		t.Errorf("action default %v, want ALLOW", action.Default)
	}
	if got := enumOf(t, pa, "spec", "mtls", "mode"); got != "UNSET,DISABLE,PERMISSIVE,STRICT" {
		t.Errorf("mtls.mode enum %s", got)
	}
	if got := enumOf(t, pa, "spec", "portLevelMtls", "{}", "mode"); got != "UNSET,DISABLE,PERMISSIVE,STRICT" {
		t.Errorf("portLevelMtls mode enum %s", got)
	}

	required := []struct {
		crd  *apiextensionsv1.CustomResourceDefinition
		path []string
		want []string
	}{
		{ap, []string{"spec", "rules", "[]", "when", "[]"}, []string{"key"}},
		{ap, []string{"spec", "rules", "[]", "from", "[]"}, []string{"source"}},
		{ap, []string{"spec", "rules", "[]", "to", "[]"}, []string{"operation"}},
		{ap, []string{"spec", "targetRefs", "[]"}, []string{"kind", "name"}},
		{ap, []string{"spec", "targetRef"}, []string{"kind", "name"}},
		{ap, []string{"spec", "provider"}, []string{"name"}},
		{ap, []string{"spec"}, nil},
		{pa, []string{"spec"}, nil},
	}
	for _, r := range required {
		if got := schemaAt(t, r.crd, r.path...).Required; !slices.Equal(got, r.want) {
			t.Errorf("%s: %s requires %v, want %v", r.crd.Spec.Names.Kind, strings.Join(r.path, "."), got, r.want)
		}
	}
}
