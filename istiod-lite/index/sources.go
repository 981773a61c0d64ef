package index

import (
	"cmp"
	"slices"

	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	securityv1 "github.com/cairnmesh/cairn/apis/security/v1"
	"github.com/cairnmesh/cairn/istiod-lite/model"
)

// The model is the union of the parts built from each source object. Every
// resource name comes from exactly one source (a pod's workload, a
// Service's address, the workloads of an EndpointSlice, the Authorization
// of a policy), so a source can be rebuilt on its own and its old part
// replaced. What else a part depends on is read through a view, and the
// Controller's invalidation rules (dependents) must name every source whose
// part reads an object that changed.

// sourceKind is the kind of object a part is built from.
type sourceKind uint8

const (
	kindPod sourceKind = iota
	kindService
	kindEndpointSlice
	kindAuthorizationPolicy
	kindPeerAuthentication
	// kindNamespace gives no part; a namespace change invalidates its pods.
	kindNamespace
)

// source identifies one object by kind, namespace and name.
type source struct {
	kind      sourceKind
	namespace string
	name      string
}

func sourceOf(kind sourceKind, obj interface {
	GetNamespace() string
	GetName() string
}) source {
	return source{kind: kind, namespace: obj.GetNamespace(), name: obj.GetName()}
}

// part is what one source gives: resources of one type, what was left
// out, and for a policy the status it should show.
type part struct {
	typeURL   string
	resources map[string]proto.Message
	skipped   []model.Skipped
	status    *PolicyStatus
}

// view is how a builder reads the objects its source depends on.
type view interface {
	namespace(name string) *corev1.Namespace
	services(namespace string) []*corev1.Service
	service(namespace, name string) *corev1.Service
	authorizationPolicies(namespace string) []*securityv1.AuthorizationPolicy
	peerAuthentications(namespace string) []*securityv1.PeerAuthentication
	rootNamespace() string
}

func buildPod(pod *corev1.Pod, v view, cfg model.Config) part {
	root := v.rootNamespace()
	addr, skipped := model.BuildWorkload(model.WorkloadInputs{
		Pod:                   pod,
		Namespace:             v.namespace(pod.Namespace),
		Services:              v.services(pod.Namespace),
		AuthorizationPolicies: inNamespaceAndRoot(v.authorizationPolicies, pod.Namespace, root),
		PeerAuthentications:   inNamespaceAndRoot(v.peerAuthentications, pod.Namespace, root),
	}, cfg)
	p := part{typeURL: model.AddressTypeURL, skipped: skipped}
	if addr != nil {
		p.resources = map[string]proto.Message{model.AddressName(addr): addr}
	}
	return p
}

func buildService(svc *corev1.Service, cfg model.Config) part {
	p := part{typeURL: model.AddressTypeURL}
	addr, skipped := model.BuildService(svc, cfg)
	if skipped != nil {
		p.skipped = []model.Skipped{*skipped}
	}
	if addr != nil {
		p.resources = map[string]proto.Message{model.AddressName(addr): addr}
	}
	return p
}

func buildEndpointSlice(slice *discoveryv1.EndpointSlice, v view, cfg model.Config) part {
	p := part{typeURL: model.AddressTypeURL}
	svc := v.service(slice.Namespace, slice.Labels[discoveryv1.LabelServiceName])
	for _, addr := range model.BuildEndpointSliceWorkloads(slice, svc, cfg) {
		if p.resources == nil {
			p.resources = make(map[string]proto.Message)
		}
		p.resources[model.AddressName(addr)] = addr
	}
	return p
}

func buildAuthorizationPolicy(ap *securityv1.AuthorizationPolicy, v view) part {
	p := part{typeURL: model.AuthorizationTypeURL}
	authz, conds := model.BuildAuthorization(ap, v.rootNamespace())
	if authz != nil {
		p.resources = map[string]proto.Message{model.AuthorizationName(authz): authz}
	}
	p.status = &PolicyStatus{
		Kind: "AuthorizationPolicy", Namespace: ap.Namespace, Name: ap.Name,
		Generation: ap.Generation, Conditions: conds,
	}
	return p
}

func buildPeerAuthentication(pa *securityv1.PeerAuthentication, v view) part {
	p := part{typeURL: model.AuthorizationTypeURL}
	root := v.rootNamespace()
	related := inNamespaceAndRoot(v.peerAuthentications, pa.Namespace, root)
	authz, conds := model.BuildPeerAuthentication(pa, model.InheritedMTLSMode(pa, related, root), root)
	if authz != nil {
		p.resources = map[string]proto.Message{model.AuthorizationName(authz): authz}
	}
	p.status = &PolicyStatus{
		Kind: "PeerAuthentication", Namespace: pa.Namespace, Name: pa.Name,
		Generation: pa.Generation, Conditions: conds,
	}
	return p
}

// inNamespaceAndRoot lists the objects of a namespace and those of the
// root namespace (once, if they are the same).
func inNamespaceAndRoot[T any](list func(string) []T, namespace, root string) []T {
	if namespace == root {
		return list(namespace)
	}
	return slices.Concat(list(namespace), list(root))
}

// assemble merges parts into a Result, statuses and skipped entries in a
// stable order.
func assemble(parts map[source]part) Result {
	res := Result{Resources: Resources{
		model.AddressTypeURL:       {},
		model.AuthorizationTypeURL: {},
	}}
	for _, p := range parts {
		for name, msg := range p.resources {
			res.Resources[p.typeURL][name] = msg
		}
		res.Skipped = append(res.Skipped, p.skipped...)
		if p.status != nil {
			res.Statuses = append(res.Statuses, *p.status)
		}
	}
	slices.SortFunc(res.Statuses, func(a, b PolicyStatus) int {
		return cmp.Or(cmp.Compare(a.Kind, b.Kind), cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	slices.SortFunc(res.Skipped, func(a, b model.Skipped) int {
		return cmp.Or(cmp.Compare(a.Object, b.Object), cmp.Compare(a.Reason, b.Reason))
	})
	return res
}

// inputsView serves a view from listed Inputs.
type inputsView struct {
	root       string
	namespaces map[string]*corev1.Namespace
	svcs       map[string][]*corev1.Service
	svcByName  map[string]*corev1.Service
	aps        map[string][]*securityv1.AuthorizationPolicy
	pas        map[string][]*securityv1.PeerAuthentication
}

func newInputsView(in Inputs, cfg model.Config) *inputsView {
	v := &inputsView{
		root:       cmp.Or(cfg.RootNamespace, model.DefaultRootNamespace),
		namespaces: make(map[string]*corev1.Namespace, len(in.Namespaces)),
		svcs:       byNamespace(in.Services),
		svcByName:  make(map[string]*corev1.Service, len(in.Services)),
		aps:        byNamespace(in.AuthorizationPolicies),
		pas:        byNamespace(in.PeerAuthentications),
	}
	for _, ns := range in.Namespaces {
		v.namespaces[ns.Name] = ns
	}
	for _, svc := range in.Services {
		v.svcByName[svc.Namespace+"/"+svc.Name] = svc
	}
	return v
}

func (v *inputsView) rootNamespace() string                   { return v.root }
func (v *inputsView) namespace(name string) *corev1.Namespace { return v.namespaces[name] }
func (v *inputsView) services(ns string) []*corev1.Service    { return v.svcs[ns] }
func (v *inputsView) service(ns, name string) *corev1.Service { return v.svcByName[ns+"/"+name] }
func (v *inputsView) peerAuthentications(ns string) []*securityv1.PeerAuthentication {
	return v.pas[ns]
}
func (v *inputsView) authorizationPolicies(ns string) []*securityv1.AuthorizationPolicy {
	return v.aps[ns]
}
