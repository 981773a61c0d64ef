package index

import (
	"errors"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	securityv1 "github.com/cairnmesh/cairn/apis/security/v1"
	"github.com/cairnmesh/cairn/istiod-lite/model"
)

// listerView serves a view from the Controller's informers, for one
// rebuild: the per-namespace lists are read once and kept, since every pod
// of a namespace asks for the same ones.
type listerView struct {
	c    *Controller
	svcs map[string][]*corev1.Service
	aps  map[string][]*securityv1.AuthorizationPolicy
	pas  map[string][]*securityv1.PeerAuthentication
	errs []error
}

func (c *Controller) newView() *listerView {
	return &listerView{
		c:    c,
		svcs: make(map[string][]*corev1.Service),
		aps:  make(map[string][]*securityv1.AuthorizationPolicy),
		pas:  make(map[string][]*securityv1.PeerAuthentication),
	}
}

// err is what went wrong reading the informers during the rebuild.
func (v *listerView) err() error {
	if err := errors.Join(v.errs...); err != nil {
		return fmt.Errorf("reading from informers: %w", err)
	}
	return nil
}

func memo[T any](m map[string][]T, errs *[]error, ns string, list func(labels.Selector) ([]T, error)) []T {
	if got, ok := m[ns]; ok {
		return got
	}
	got, err := list(labels.Everything())
	if err != nil {
		*errs = append(*errs, err)
	}
	m[ns] = got
	return got
}

func (v *listerView) rootNamespace() string { return v.c.root }

func (v *listerView) namespace(name string) *corev1.Namespace {
	ns, err := v.c.kubeInformers.Core().V1().Namespaces().Lister().Get(name)
	if err != nil {
		return nil
	}
	return ns
}

func (v *listerView) services(ns string) []*corev1.Service {
	return memo(v.svcs, &v.errs, ns, v.c.kubeInformers.Core().V1().Services().Lister().Services(ns).List)
}

func (v *listerView) service(ns, name string) *corev1.Service {
	svc, err := v.c.kubeInformers.Core().V1().Services().Lister().Services(ns).Get(name)
	if err != nil {
		return nil
	}
	return svc
}

func (v *listerView) authorizationPolicies(ns string) []*securityv1.AuthorizationPolicy {
	return memo(v.aps, &v.errs, ns, v.c.securityInformers.Security().V1().AuthorizationPolicies().Lister().AuthorizationPolicies(ns).List)
}

func (v *listerView) peerAuthentications(ns string) []*securityv1.PeerAuthentication {
	return memo(v.pas, &v.errs, ns, v.c.securityInformers.Security().V1().PeerAuthentications().Lister().PeerAuthentications(ns).List)
}

// typeURL is the type of the resources a kind of source gives.
func (k sourceKind) typeURL() string {
	switch k {
	case kindAuthorizationPolicy, kindPeerAuthentication:
		return model.AuthorizationTypeURL
	default:
		return model.AddressTypeURL
	}
}

func sourcesOf[T interface {
	GetNamespace() string
	GetName() string
}](kind sourceKind, objs []T) []source {
	out := make([]source, len(objs))
	for i, o := range objs {
		out[i] = sourceOf(kind, o)
	}
	return out
}

// Informer transforms: what the model never reads is dropped before it is
// cached, which is most of a pod. Objects are still complete enough for
// the status writer: managed fields are left out of its updates, so the API
// server keeps them.

// lastApplied is kubectl's copy of the whole applied object.
const lastApplied = "kubectl.kubernetes.io/last-applied-configuration"

func dropManagedFields(obj any) (any, error) {
	if m, ok := obj.(metav1.Object); ok {
		m.SetManagedFields(nil)
	}
	return obj, nil
}

// trimPod keeps what model.BuildWorkload and the CA's pod index read.
func trimPod(obj any) (any, error) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil // a tombstone of a deleted pod
	}
	pod.ManagedFields = nil
	delete(pod.Annotations, lastApplied)
	containers := make([]corev1.Container, len(pod.Spec.Containers))
	for i, ct := range pod.Spec.Containers {
		containers[i] = corev1.Container{Name: ct.Name, Ports: ct.Ports}
	}
	pod.Spec = corev1.PodSpec{
		NodeName:           pod.Spec.NodeName,
		ServiceAccountName: pod.Spec.ServiceAccountName,
		HostNetwork:        pod.Spec.HostNetwork,
		Containers:         containers,
	}
	pod.Status = corev1.PodStatus{
		Phase:      pod.Status.Phase,
		PodIP:      pod.Status.PodIP,
		PodIPs:     pod.Status.PodIPs,
		Conditions: pod.Status.Conditions,
	}
	return pod, nil
}
