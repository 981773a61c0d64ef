// Package index joins the Kubernetes objects that istiod-lite watches into
// the complete set of workload-discovery resources a ztunnel receives, and
// diffs one set against the one before so that only changes are pushed.
//
// Build is pure: objects in, resources and policy statuses out. The
// Controller (controller.go) feeds it from informers and hands the
// differences to a Sink, the xDS server.
package index

import (
	"cmp"
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
// API server and gives equal output for equal input.
func Build(in Inputs, cfg model.Config) Result {
	root := cmp.Or(cfg.RootNamespace, model.DefaultRootNamespace)
	res := Result{Resources: Resources{
		model.AddressTypeURL:       {},
		model.AuthorizationTypeURL: {},
	}}
	addresses := res.Resources[model.AddressTypeURL]
	authorizations := res.Resources[model.AuthorizationTypeURL]

	namespaces := make(map[string]*corev1.Namespace, len(in.Namespaces))
	for _, ns := range in.Namespaces {
		namespaces[ns.Name] = ns
	}
	services := byNamespace(in.Services)
	policies := byNamespace(in.AuthorizationPolicies)
	peerAuths := byNamespace(in.PeerAuthentications)

	for _, pod := range in.Pods {
		addr, skipped := model.BuildWorkload(model.WorkloadInputs{
			Pod:                   pod,
			Namespace:             namespaces[pod.Namespace],
			Services:              services[pod.Namespace],
			AuthorizationPolicies: slices.Concat(policies[pod.Namespace], policies[root]),
			PeerAuthentications:   slices.Concat(peerAuths[pod.Namespace], peerAuths[root]),
		}, cfg)
		res.Skipped = append(res.Skipped, skipped...)
		if addr != nil {
			addresses[model.AddressName(addr)] = addr
		}
	}

	servicesByName := make(map[string]*corev1.Service, len(in.Services))
	for _, svc := range in.Services {
		servicesByName[svc.Namespace+"/"+svc.Name] = svc
		addr, skipped := model.BuildService(svc, cfg)
		if skipped != nil {
			res.Skipped = append(res.Skipped, *skipped)
		}
		if addr != nil {
			addresses[model.AddressName(addr)] = addr
		}
	}
	for _, slice := range in.EndpointSlices {
		svc := servicesByName[slice.Namespace+"/"+slice.Labels[discoveryv1.LabelServiceName]]
		for _, addr := range model.BuildEndpointSliceWorkloads(slice, svc, cfg) {
			addresses[model.AddressName(addr)] = addr
		}
	}

	for _, p := range in.AuthorizationPolicies {
		authz, conds := model.BuildAuthorization(p, root)
		if authz != nil {
			authorizations[model.AuthorizationName(authz)] = authz
		}
		res.Statuses = append(res.Statuses, PolicyStatus{
			Kind: "AuthorizationPolicy", Namespace: p.Namespace, Name: p.Name,
			Generation: p.Generation, Conditions: conds,
		})
	}
	for _, pa := range in.PeerAuthentications {
		related := slices.Concat(peerAuths[pa.Namespace], peerAuths[root])
		authz, conds := model.BuildPeerAuthentication(pa, model.InheritedMTLSMode(pa, related, root), root)
		if authz != nil {
			authorizations[model.AuthorizationName(authz)] = authz
		}
		res.Statuses = append(res.Statuses, PolicyStatus{
			Kind: "PeerAuthentication", Namespace: pa.Namespace, Name: pa.Name,
			Generation: pa.Generation, Conditions: conds,
		})
	}
	return res
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
