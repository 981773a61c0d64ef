// Package index joins the Kubernetes objects that istiod-lite watches into
// the complete set of workload-discovery resources a ztunnel receives, and
// diffs one set against the one before so that only changes are pushed.
//
// Build is pure: objects in, resources and policy statuses out. The
// Controller (controller.go) feeds it from informers and hands the
// differences to a Sink, the xDS server.
package index

import (
	"slices"

	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	securityv1 "github.com/cairnmesh/cairn/apis/security/v1"
	"github.com/cairnmesh/cairn/istiod-lite/model"
)

// Inputs are every object the model depends on, as listed from informers.
type Inputs struct {
	Namespaces            []*corev1.Namespace
	Pods                  []*corev1.Pod
	Services              []*corev1.Service
	EndpointSlices        []*discoveryv1.EndpointSlice
	AuthorizationPolicies []*securityv1.AuthorizationPolicy
	PeerAuthentications   []*securityv1.PeerAuthentication
}

// Resources are xDS resources by type URL, then by resource name.
type Resources map[string]map[string]proto.Message

// PolicyStatus is what a policy's status conditions should say.
type PolicyStatus struct {
	Kind       string // AuthorizationPolicy or PeerAuthentication
	Namespace  string
	Name       string
	Generation int64
	Conditions []metav1.Condition
}

// Result is the model built from one set of Inputs.
type Result struct {
	Resources Resources
	Statuses  []PolicyStatus
	// Skipped names objects (or parts of them) that gave no resource, with
	// the reason, for logs and the debug endpoint.
	Skipped []model.Skipped
}

// Build turns the inputs into the full set of resources. It never calls the
// API server and gives equal output for equal input. The Controller builds
// the same model incrementally, one source object at a time, with the same
// per-source builders (sources.go).
func Build(in Inputs, cfg model.Config) Result {
	v := newInputsView(in, cfg)
	parts := make(map[source]part)
	for _, pod := range in.Pods {
		parts[sourceOf(kindPod, pod)] = buildPod(pod, v, cfg)
	}
	for _, svc := range in.Services {
		parts[sourceOf(kindService, svc)] = buildService(svc, cfg)
	}
	for _, slice := range in.EndpointSlices {
		parts[sourceOf(kindEndpointSlice, slice)] = buildEndpointSlice(slice, v, cfg)
	}
	for _, p := range in.AuthorizationPolicies {
		parts[sourceOf(kindAuthorizationPolicy, p)] = buildAuthorizationPolicy(p, v)
	}
	for _, pa := range in.PeerAuthentications {
		parts[sourceOf(kindPeerAuthentication, pa)] = buildPeerAuthentication(pa, v)
	}
	return assemble(parts)
}

// Change is what must be pushed for one type: resources added or changed,
// and names removed.
type Change struct {
	Upserts map[string]proto.Message
	Removes []string
}

// Empty reports whether the change pushes nothing.
func (c Change) Empty() bool { return len(c.Upserts) == 0 && len(c.Removes) == 0 }

// Diff returns, per type URL, what turns prev into next. A resource equal
// (proto.Equal) to its previous value is not in it, so an unchanged model
// pushes nothing. Types with no change are left out.
func Diff(prev, next Resources) map[string]Change {
	out := map[string]Change{}
	for typeURL := range unionKeys(prev, next) {
		var c Change
		before, after := prev[typeURL], next[typeURL]
		for name, msg := range after {
			if old, ok := before[name]; !ok || !proto.Equal(old, msg) {
				if c.Upserts == nil {
					c.Upserts = map[string]proto.Message{}
				}
				c.Upserts[name] = msg
			}
		}
		for name := range before {
			if _, ok := after[name]; !ok {
				c.Removes = append(c.Removes, name)
			}
		}
		slices.Sort(c.Removes)
		if !c.Empty() {
			out[typeURL] = c
		}
	}
	return out
}

func unionKeys(a, b Resources) map[string]struct{} {
	keys := make(map[string]struct{}, len(a)+len(b))
	for k := range a {
		keys[k] = struct{}{}
	}
	for k := range b {
		keys[k] = struct{}{}
	}
	return keys
}

// byNamespace groups objects by their namespace.
func byNamespace[T interface{ GetNamespace() string }](objs []T) map[string][]T {
	out := map[string][]T{}
	for _, o := range objs {
		out[o.GetNamespace()] = append(out[o.GetNamespace()], o)
	}
	return out
}
