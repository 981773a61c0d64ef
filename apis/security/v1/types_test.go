package v1_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"sigs.k8s.io/yaml"

	securityv1 "github.com/cairnmesh/cairn/apis/security/v1"
)

// istioManifests returns the Istio-style manifests in testdata, by file name.
func istioManifests(t *testing.T) map[string][]byte {
	t.Helper()
	files, err := filepath.Glob("testdata/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests in testdata (err %v)", err)
	}
	manifests := make(map[string][]byte, len(files))
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		manifests[filepath.Base(f)] = data
	}
	return manifests
}

// TestIstioManifestsRoundTrip decodes manifests written for Istio through
// the scheme in strict mode, so an unknown or misspelled field fails, and
// encodes them again: every field must come back with the same name and
// value.
func TestIstioManifestsRoundTrip(t *testing.T) {
	scheme := runtime.NewScheme()
	if err := securityv1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	decoder := serializer.NewCodecFactory(scheme, serializer.EnableStrict).UniversalDeserializer()

	for name, data := range istioManifests(t) {
		t.Run(name, func(t *testing.T) {
			obj, gvk, err := decoder.Decode(data, nil, nil)
			if err != nil {
				t.Fatalf("decoding: %v", err)
			}
			if gvk.GroupVersion() != securityv1.SchemeGroupVersion {
				t.Errorf("decoded as %v, want group version %v", gvk, securityv1.SchemeGroupVersion)
			}
			switch obj.(type) {
			case *securityv1.AuthorizationPolicy, *securityv1.PeerAuthentication:
			default:
				t.Fatalf("decoded into %T", obj)
			}

			got, err := json.Marshal(obj)
			if err != nil {
				t.Fatal(err)
			}
			want, err := yaml.YAMLToJSON(data)
			if err != nil {
				t.Fatal(err)
			}
			var gotTree, wantTree any
			if err := json.Unmarshal(got, &gotTree); err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(want, &wantTree); err != nil {
				t.Fatal(err)
			}
			// Go drops empty strings (omitempty); for Istio, "" and an
			// absent field mean the same, as in targetRefs' group: "".
			dropEmptyStrings(wantTree)
			if !reflect.DeepEqual(gotTree, wantTree) {
				t.Errorf("round trip changed the manifest\n got: %s\nwant: %s", got, want)
			}
		})
	}
}

// dropEmptyStrings removes the object fields whose value is "" from a
// decoded JSON tree.
func dropEmptyStrings(tree any) {
	switch v := tree.(type) {
	case map[string]any:
		for key, value := range v {
			if value == "" {
				delete(v, key)
			} else {
				dropEmptyStrings(value)
			}
		}
	case []any:
		for _, e := range v {
			dropEmptyStrings(e)
		}
	}
}

// TestRoundTripFieldValues spot-checks that decoded values land in the
// intended Go fields, including the renamed IP block fields.
func TestRoundTripFieldValues(t *testing.T) {
	data := istioManifests(t)
	var ap securityv1.AuthorizationPolicy
	if err := yaml.UnmarshalStrict(data["authorizationpolicy-all-fields.yaml"], &ap); err != nil {
		t.Fatal(err)
	}
	src := ap.Spec.Rules[0].From[0].Source
	if src.IPBlocks[0] != "10.0.0.0/16" || src.NotIPBlocks[0] != "10.0.9.0/24" ||
		src.RemoteIPBlocks[0] != "203.0.113.0/24" || src.NotRemoteIPBlocks[0] != "203.0.113.7" {
		t.Errorf("IP blocks decoded wrongly: %+v", src)
	}
	if ap.Spec.Action != securityv1.ActionAllow {
		t.Errorf("action = %q, want ALLOW", ap.Spec.Action)
	}

	var pa securityv1.PeerAuthentication
	if err := yaml.UnmarshalStrict(data["peerauthentication-port-level.yaml"], &pa); err != nil {
		t.Fatal(err)
	}
	if got := pa.Spec.PortLevelMtls["8080"].Mode; got != securityv1.MTLSModePermissive {
		t.Errorf("portLevelMtls[8080] = %q, want PERMISSIVE (unquoted YAML key)", got)
	}
	if got := pa.Spec.Mtls.Mode; got != securityv1.MTLSModeStrict {
		t.Errorf("mtls.mode = %q, want STRICT", got)
	}
}

// fullAuthorizationPolicy sets every field of the spec and status (checked
// by TestFixturesSetEveryField), so that the deepcopy test covers them all.
// It is not a valid policy: selector and targets exclude each other.
func fullAuthorizationPolicy() *securityv1.AuthorizationPolicy {
	target := securityv1.PolicyTargetReference{Group: "gateway.networking.k8s.io", Kind: "Gateway", Name: "waypoint", Namespace: "shop"}
	return &securityv1.AuthorizationPolicy{
		TypeMeta:   metav1.TypeMeta{APIVersion: "security.istio.io/v1", Kind: "AuthorizationPolicy"},
		ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "shop", Labels: map[string]string{"a": "b"}},
		Spec: securityv1.AuthorizationPolicySpec{
			Selector:   &securityv1.WorkloadSelector{MatchLabels: map[string]string{"app": "checkout"}},
			TargetRef:  &target,
			TargetRefs: []securityv1.PolicyTargetReference{target},
			Action:     securityv1.ActionCustom,
			Provider:   &securityv1.ExtensionProvider{Name: "opa"},
			Rules: []securityv1.Rule{{
				From: []securityv1.From{{Source: &securityv1.Source{
					Principals: []string{"p"}, NotPrincipals: []string{"np"},
					RequestPrincipals: []string{"rp"}, NotRequestPrincipals: []string{"nrp"},
					Namespaces: []string{"ns"}, NotNamespaces: []string{"nns"},
					IPBlocks: []string{"10.0.0.0/8"}, NotIPBlocks: []string{"10.1.0.0/16"},
					RemoteIPBlocks: []string{"192.0.2.0/24"}, NotRemoteIPBlocks: []string{"192.0.2.1"},
					ServiceAccounts: []string{"shop/a"}, NotServiceAccounts: []string{"shop/b"},
				}}},
				To: []securityv1.To{{Operation: &securityv1.Operation{
					Hosts: []string{"h"}, NotHosts: []string{"nh"},
					Ports: []string{"80"}, NotPorts: []string{"81"},
					Methods: []string{"GET"}, NotMethods: []string{"PUT"},
					Paths: []string{"/a"}, NotPaths: []string{"/b"},
				}}},
				When: []securityv1.Condition{{Key: "source.ip", Values: []string{"10.0.0.1"}, NotValues: []string{"10.0.0.2"}}},
			}},
		},
		Status: fullStatus(),
	}
}

func fullPeerAuthentication() *securityv1.PeerAuthentication {
	return &securityv1.PeerAuthentication{
		TypeMeta:   metav1.TypeMeta{APIVersion: "security.istio.io/v1", Kind: "PeerAuthentication"},
		ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "shop"},
		Spec: securityv1.PeerAuthenticationSpec{
			Selector:      &securityv1.WorkloadSelector{MatchLabels: map[string]string{"app": "checkout"}},
			Mtls:          &securityv1.MutualTLS{Mode: securityv1.MTLSModeStrict},
			PortLevelMtls: map[string]securityv1.MutualTLS{"8080": {Mode: securityv1.MTLSModePermissive}},
		},
		Status: fullStatus(),
	}
}

func fullStatus() securityv1.PolicyStatus {
	return securityv1.PolicyStatus{
		Conditions: []metav1.Condition{{
			Type: "Accepted", Status: metav1.ConditionTrue, ObservedGeneration: 3,
			LastTransitionTime: metav1.Unix(1700000000, 0), Reason: "Accepted", Message: "ok",
		}},
		ObservedGeneration: 3,
	}
}

// TestFixturesSetEveryField keeps the deepcopy fixtures complete: a field
// added to the API must be added to them too.
func TestFixturesSetEveryField(t *testing.T) {
	for _, obj := range []any{fullAuthorizationPolicy(), fullPeerAuthentication()} {
		v := reflect.ValueOf(obj).Elem()
		for _, part := range []string{"Spec", "Status"} {
			for _, path := range zeroFields(part, v.FieldByName(part)) {
				t.Errorf("%T: fixture leaves %s unset", obj, path)
			}
		}
	}
}

// zeroFields lists the paths below v that hold zero values, empty slices
// or empty maps.
func zeroFields(path string, v reflect.Value) []string {
	if v.IsZero() || ((v.Kind() == reflect.Slice || v.Kind() == reflect.Map) && v.Len() == 0) {
		return []string{path}
	}
	var zero []string
	switch v.Kind() {
	case reflect.Pointer:
		zero = zeroFields(path, v.Elem())
	case reflect.Struct:
		if v.Type() == reflect.TypeFor[metav1.Time]() {
			break
		}
		for i := range v.NumField() {
			if f := v.Type().Field(i); f.IsExported() {
				zero = append(zero, zeroFields(path+"."+f.Name, v.Field(i))...)
			}
		}
	case reflect.Slice:
		for i := range v.Len() {
			zero = append(zero, zeroFields(path+"[]", v.Index(i))...)
		}
	case reflect.Map:
		iter := v.MapRange()
		for iter.Next() {
			zero = append(zero, zeroFields(path+"{}", iter.Value())...)
		}
	}
	return zero
}

// TestDeepCopyIsIndependent changes every value reachable from a deep copy
// and checks that the original did not change, i.e. that no slice, map or
// pointer is shared between the two.
func TestDeepCopyIsIndependent(t *testing.T) {
	tests := []struct {
		name  string
		build func() runtime.Object
	}{
		{"AuthorizationPolicy", func() runtime.Object { return fullAuthorizationPolicy() }},
		{"PeerAuthentication", func() runtime.Object { return fullPeerAuthentication() }},
		{"AuthorizationPolicyList", func() runtime.Object {
			return &securityv1.AuthorizationPolicyList{Items: []securityv1.AuthorizationPolicy{*fullAuthorizationPolicy()}}
		}},
		{"PeerAuthenticationList", func() runtime.Object {
			return &securityv1.PeerAuthenticationList{Items: []securityv1.PeerAuthentication{*fullPeerAuthentication()}}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			original := tc.build()
			copied := original.DeepCopyObject()
			if !reflect.DeepEqual(original, copied) {
				t.Fatalf("copy differs from original:\n%+v\n%+v", original, copied)
			}
			if n := mutate(reflect.ValueOf(copied)); n == 0 {
				t.Fatal("mutate changed nothing")
			}
			if want := tc.build(); !reflect.DeepEqual(original, want) {
				got, _ := json.Marshal(original)
				wantJSON, _ := json.Marshal(want)
				t.Errorf("changing the copy changed the original, so DeepCopy shares memory:\n got: %s\nwant: %s", got, wantJSON)
			}
		})
	}
}

// mutate changes every string, number and bool reachable from v, and
// returns how many values it changed.
func mutate(v reflect.Value) int {
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface:
		if v.IsNil() {
			return 0
		}
		return mutate(v.Elem())
	case reflect.Struct:
		if v.Type() == reflect.TypeFor[metav1.Time]() {
			v.Set(reflect.ValueOf(metav1.Unix(v.Interface().(metav1.Time).Unix()+1, 0)))
			return 1
		}
		n := 0
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				n += mutate(v.Field(i))
			}
		}
		return n
	case reflect.Slice:
		n := 0
		for i := range v.Len() {
			n += mutate(v.Index(i))
		}
		return n
	case reflect.Map:
		// Map values are not addressable: change a copy and store it back,
		// which writes into the map the copy shares if it shares one.
		n := 0
		iter := v.MapRange()
		for iter.Next() {
			e := reflect.New(v.Type().Elem()).Elem()
			e.Set(iter.Value())
			n += mutate(e)
			v.SetMapIndex(iter.Key(), e)
		}
		return n
	case reflect.String:
		v.SetString(v.String() + "-changed")
		return 1
	case reflect.Int, reflect.Int32, reflect.Int64:
		v.SetInt(v.Int() + 1)
		return 1
	case reflect.Bool:
		v.SetBool(!v.Bool())
		return 1
	}
	return 0
}

// TestConstantsMatchCRDEnums keeps the Go constants and the enum markers in
// step; both are spelled by hand.
func TestConstantsMatchCRDEnums(t *testing.T) {
	actions := []securityv1.Action{securityv1.ActionAllow, securityv1.ActionDeny, securityv1.ActionAudit, securityv1.ActionCustom}
	modes := []securityv1.MTLSMode{securityv1.MTLSModeUnset, securityv1.MTLSModeDisable, securityv1.MTLSModePermissive, securityv1.MTLSModeStrict}
	ap := loadCRD(t, "authorizationpolicies")
	pa := loadCRD(t, "peerauthentications")
	if got, want := enumOf(t, ap, "spec", "action"), strings.Join(toStrings(actions), ","); got != want {
		t.Errorf("action enum %s, Go constants %s", got, want)
	}
	if got, want := enumOf(t, pa, "spec", "mtls", "mode"), strings.Join(toStrings(modes), ","); got != want {
		t.Errorf("mtls.mode enum %s, Go constants %s", got, want)
	}
}

func toStrings[S ~string](values []S) []string {
	out := make([]string, len(values))
	for i, v := range values {
		out[i] = string(v)
	}
	return out
}
