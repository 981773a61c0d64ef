package kubeca

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/cairnmesh/cairn/istiod-lite/ca"
)

// nodeSAIndex indexes pods that are not finished by node/namespace/sa.
const nodeSAIndex = "cairn-ca-node-sa"

// PodIndex implements ca.PodIndex over a shared pod informer, with no API
// call per lookup.
type PodIndex struct {
	informer cache.SharedIndexInformer
}

var _ ca.PodIndex = (*PodIndex)(nil)

// NewPodIndex adds its index to a pod informer that has not started yet
// (from any SharedInformerFactory: the CA can share the model's).
func NewPodIndex(informer cache.SharedIndexInformer) (*PodIndex, error) {
	err := informer.AddIndexers(cache.Indexers{nodeSAIndex: func(obj any) ([]string, error) {
		p, ok := obj.(*corev1.Pod)
		if !ok || p.Spec.NodeName == "" || finished(p) {
			return nil, nil
		}
		return []string{nodeSAKey(p.Spec.NodeName, p.Namespace, serviceAccount(p))}, nil
	}})
	if err != nil {
		return nil, fmt.Errorf("adding pod index: %w", err)
	}
	return &PodIndex{informer: informer}, nil
}

// HasSynced reports whether the informer has synced.
func (x *PodIndex) HasSynced() bool { return x.informer.HasSynced() }

// Pod implements ca.PodIndex.
func (x *PodIndex) Pod(namespace, name string) (ca.PodInfo, bool) {
	obj, ok, err := x.informer.GetIndexer().GetByKey(namespace + "/" + name)
	if err != nil || !ok {
		return ca.PodInfo{}, false
	}
	p, ok := obj.(*corev1.Pod)
	if !ok || finished(p) {
		return ca.PodInfo{}, false
	}
	return ca.PodInfo{UID: string(p.UID), ServiceAccount: serviceAccount(p), NodeName: p.Spec.NodeName}, true
}

// HasPodOnNode implements ca.PodIndex.
func (x *PodIndex) HasPodOnNode(node, namespace, sa string) bool {
	objs, err := x.informer.GetIndexer().ByIndex(nodeSAIndex, nodeSAKey(node, namespace, sa))
	return err == nil && len(objs) > 0
}

func nodeSAKey(node, ns, sa string) string { return node + "/" + ns + "/" + sa }

func serviceAccount(p *corev1.Pod) string {
	if p.Spec.ServiceAccountName == "" {
		return "default"
	}
	return p.Spec.ServiceAccountName
}

func finished(p *corev1.Pod) bool {
	return p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
}
