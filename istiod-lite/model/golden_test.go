package model

import (
	"bytes"
	"cmp"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	securityv1 "github.com/cairnmesh/cairn/apis/security/v1"
	workloadv1 "github.com/cairnmesh/cairn/apis/workload/v1"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden.yaml from the builders' output")

// inputs are the objects of one testdata/<case>-in.yaml file.
type inputs struct {
	namespaces []*corev1.Namespace
	pods       []*corev1.Pod
	services   []*corev1.Service
	slices     []*discoveryv1.EndpointSlice
	authz      []*securityv1.AuthorizationPolicy
	peerAuth   []*securityv1.PeerAuthentication
}

// readInputs decodes a multi-document YAML file of Kubernetes objects.
// Unknown kinds fail the test: a fixture nobody reads is a mistake.
func readInputs(t *testing.T, path string) inputs {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var in inputs
	for i, doc := range strings.Split(string(data), "\n---\n") {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		var meta metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			t.Fatalf("%s document %d: %v", path, i, err)
		}
		var obj any
		switch meta.Kind {
		case "Namespace":
			o := &corev1.Namespace{}
			in.namespaces, obj = append(in.namespaces, o), o
		case "Pod":
			o := &corev1.Pod{}
			in.pods, obj = append(in.pods, o), o
		case "Service":
			o := &corev1.Service{}
			in.services, obj = append(in.services, o), o
		case "EndpointSlice":
			o := &discoveryv1.EndpointSlice{}
			in.slices, obj = append(in.slices, o), o
		case "AuthorizationPolicy":
			o := &securityv1.AuthorizationPolicy{}
			in.authz, obj = append(in.authz, o), o
		case "PeerAuthentication":
			o := &securityv1.PeerAuthentication{}
			in.peerAuth, obj = append(in.peerAuth, o), o
		default:
			t.Fatalf("%s document %d: kind %q is not an input of the builders", path, i, meta.Kind)
		}
		if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
			t.Fatalf("%s document %d: %v", path, i, err)
		}
	}
	return in
}

// goldenOutput is what a golden file holds, in a deterministic order.
type goldenOutput struct {
	Addresses      []namedResource `json:"addresses,omitempty"`
	Authorizations []namedResource `json:"authorizations,omitempty"`
	Conditions     []objCondition  `json:"conditions,omitempty"`
	Skipped        []string        `json:"skipped,omitempty"`
}

type namedResource struct {
	Name     string `json:"name"`
	Resource any    `json:"resource"`
}

type objCondition struct {
	Object  string `json:"object"`
	Status  string `json:"status"`
	Reason  string `json:"reason"`
	Message string `json:"message"`
}

func resource(t *testing.T, name string, m proto.Message) namedResource {
	t.Helper()
	data, err := protojson.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	var v any
	if err := json.Unmarshal(data, &v); err != nil {
		t.Fatal(err)
	}
	return namedResource{Name: name, Resource: withEnumDefaults(readableIPs(v))}
}

// withEnumDefaults writes out the enum fields that protojson omits at their
// zero value, so a golden file shows every workload's tunnel and status and
// every policy's scope and action.
func withEnumDefaults(v any) any {
	m, ok := v.(map[string]any)
	if !ok {
		return v
	}
	set := func(m map[string]any, key, zero string) {
		if _, ok := m[key]; !ok {
			m[key] = zero
		}
	}
	if w, ok := m["workload"].(map[string]any); ok {
		set(w, "tunnelProtocol", workloadv1.TunnelProtocol(0).String())
		set(w, "status", workloadv1.WorkloadStatus(0).String())
	}
	if _, isAddress := m["workload"]; !isAddress {
		if _, isService := m["service"]; !isService {
			set(m, "scope", workloadv1.Scope(0).String())
			set(m, "action", workloadv1.Action(0).String())
		}
	}
	return m
}

// readableIPs replaces the base64 that protojson writes for the bytes
// fields "addresses" and "address" with IP text, so golden files can be
// reviewed.
func readableIPs(v any) any {
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			switch {
			case k == "address":
				if s, ok := e.(string); ok {
					v[k] = ipText(s)
					continue
				}
			case k == "addresses":
				if list, ok := e.([]any); ok && len(list) > 0 {
					if _, isString := list[0].(string); isString {
						for i, s := range list {
							list[i] = ipText(s.(string))
						}
						continue
					}
				}
			}
			v[k] = readableIPs(e)
		}
	case []any:
		for i, e := range v {
			v[i] = readableIPs(e)
		}
	}
	return v
}

func ipText(b64 string) string {
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return "invalid base64: " + b64
	}
	ip, ok := netip.AddrFromSlice(raw)
	if !ok {
		return fmt.Sprintf("invalid address of %d bytes", len(raw))
	}
	return ip.String()
}

// build runs every builder over the inputs, as the control plane does, and
// fails the test for objects that no builder used.
func build(t *testing.T, in inputs, cfg Config) goldenOutput {
	t.Helper()
	var out goldenOutput
	usedNamespaces := map[string]bool{}
	nsByName := map[string]*corev1.Namespace{}
	for _, ns := range in.namespaces {
		nsByName[ns.Name] = ns
	}
	for _, pod := range in.pods {
		ns := nsByName[pod.Namespace]
		usedNamespaces[pod.Namespace] = true
		addr, skipped := BuildWorkload(WorkloadInputs{
			Pod: pod, Namespace: ns, Services: in.services,
			AuthorizationPolicies: in.authz, PeerAuthentications: in.peerAuth,
		}, cfg)
		for _, s := range skipped {
			out.Skipped = append(out.Skipped, s.String())
		}
		if addr != nil {
			out.Addresses = append(out.Addresses, resource(t, AddressName(addr), addr))
		}
	}
	for _, svc := range in.services {
		addr, skipped := BuildService(svc, cfg)
		if skipped != nil {
			out.Skipped = append(out.Skipped, skipped.String())
			continue
		}
		out.Addresses = append(out.Addresses, resource(t, AddressName(addr), addr))
	}
	for _, slice := range in.slices {
		var svc *corev1.Service
		for _, s := range in.services {
			if s.Namespace == slice.Namespace && s.Name == slice.Labels[discoveryv1.LabelServiceName] {
				svc = s
			}
		}
		if svc == nil {
			t.Errorf("EndpointSlice %s/%s: no Service %q in the fixture", slice.Namespace, slice.Name, slice.Labels[discoveryv1.LabelServiceName])
		}
		for _, addr := range BuildEndpointSliceWorkloads(slice, svc, cfg) {
			out.Addresses = append(out.Addresses, resource(t, AddressName(addr), addr))
		}
	}
	addConds := func(object string, conds []metav1.Condition) {
		for _, c := range conds {
			out.Conditions = append(out.Conditions, objCondition{
				Object: object, Status: string(c.Status), Reason: c.Reason, Message: c.Message,
			})
		}
	}
	for _, p := range in.authz {
		a, conds := BuildAuthorization(p, cfg.RootNamespace)
		addConds("AuthorizationPolicy "+p.Namespace+"/"+p.Name, conds)
		if a != nil {
			out.Authorizations = append(out.Authorizations, resource(t, AuthorizationName(a), a))
		}
	}
	for _, pa := range in.peerAuth {
		a, conds := BuildPeerAuthentication(pa, InheritedMTLSMode(pa, in.peerAuth, cfg.RootNamespace), cfg.RootNamespace)
		addConds("PeerAuthentication "+pa.Namespace+"/"+pa.Name, conds)
		if a != nil {
			out.Authorizations = append(out.Authorizations, resource(t, AuthorizationName(a), a))
		}
	}
	for _, ns := range in.namespaces {
		if !usedNamespaces[ns.Name] {
			t.Errorf("Namespace %s is unused: no pod of the fixture is in it", ns.Name)
		}
	}
	byName := func(a, b namedResource) int { return cmp.Compare(a.Name, b.Name) }
	slices.SortFunc(out.Addresses, byName)
	slices.SortFunc(out.Authorizations, byName)
	slices.SortStableFunc(out.Conditions, func(a, b objCondition) int { return cmp.Compare(a.Object, b.Object) })
	slices.Sort(out.Skipped)
	return out
}

// TestGolden renders testdata/<case>-in.yaml through every builder and
// compares the result with testdata/<case>.golden.yaml. Run
// `go test ./istiod-lite/model -update` to rewrite the golden files.
func TestGolden(t *testing.T) {
	ins, err := filepath.Glob("testdata/*-in.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(ins) == 0 {
		t.Fatal("no testdata/*-in.yaml")
	}
	want := map[string]bool{}
	for _, in := range ins {
		name := strings.TrimSuffix(filepath.Base(in), "-in.yaml")
		golden := filepath.Join("testdata", name+".golden.yaml")
		want[golden] = true
		t.Run(name, func(t *testing.T) {
			out := build(t, readInputs(t, in), Config{})
			got, err := yaml.Marshal(out)
			if err != nil {
				t.Fatal(err)
			}
			got = append([]byte("# Generated by `go test ./istiod-lite/model -update` from "+filepath.Base(in)+
				"; addresses are shown as IP text instead of protojson's base64.\n"), got...)
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			have, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v; run `go test ./istiod-lite/model -update`", err)
			}
			if !bytes.Equal(have, got) {
				t.Errorf("%s is stale; run `go test ./istiod-lite/model -update` and review the diff.\n%s",
					golden, lineDiff(string(have), string(got)))
			}
		})
	}
	// Golden files without input are fixtures nobody uses.
	goldens, _ := filepath.Glob("testdata/*.golden.yaml")
	for _, g := range goldens {
		if !want[g] {
			t.Errorf("%s has no %s-in.yaml; delete it", g, strings.TrimSuffix(filepath.Base(g), ".golden.yaml"))
		}
	}
	all, _ := filepath.Glob("testdata/*")
	for _, f := range all {
		if !strings.HasSuffix(f, "-in.yaml") && !strings.HasSuffix(f, ".golden.yaml") {
			t.Errorf("%s is neither <case>-in.yaml nor <case>.golden.yaml; no test reads it", f)
		}
	}
}

// lineDiff shows the first differing lines of two texts.
func lineDiff(have, want string) string {
	h, w := strings.Split(have, "\n"), strings.Split(want, "\n")
	for i := range max(len(h), len(w)) {
		var hl, wl string
		if i < len(h) {
			hl = h[i]
		}
		if i < len(w) {
			wl = w[i]
		}
		if hl != wl {
			return fmt.Sprintf("line %d:\n  have: %s\n  want: %s", i+1, hl, wl)
		}
	}
	return ""
}
