// Package ambient holds the enrolment rule that istiod-lite (which describes
// workloads as in or out of the mesh) and ztunnel (which captures their
// traffic) must agree on, with the labels Cairn shares with Istio.
//
// The rule itself is in the subpackage dataplane, on plain label maps;
// this package applies it to corev1 objects for istiod-lite. ztunnel
// imports dataplane only, so that it does not link k8s.io/api.
package ambient

import (
	corev1 "k8s.io/api/core/v1"

	"github.com/cairnmesh/cairn/internal/ambient/dataplane"
)

// Labels and values Cairn shares with Istio.
const (
	// DataplaneModeLabel enrols a namespace or pod in the mesh ("ambient")
	// or, on a pod, opts it out ("none").
	DataplaneModeLabel = dataplane.ModeLabel
	// DataplaneModeAmbient is the value that enrols.
	DataplaneModeAmbient = dataplane.ModeAmbient
	// DataplaneModeNone on a pod keeps it out of the mesh.
	DataplaneModeNone = dataplane.ModeNone
)

// Enrolled reports whether a pod is in the mesh: istio.io/dataplane-mode is
// "ambient" on the pod, or on its namespace while the pod does not say
// "none". Pods on the host network are never captured. ns is nil when the
// namespace is unknown.
func Enrolled(pod *corev1.Pod, ns *corev1.Namespace) bool {
	var nsLabels map[string]string
	if ns != nil {
		nsLabels = ns.Labels
	}
	return dataplane.Enrolled(pod.Labels, pod.Spec.HostNetwork, nsLabels)
}
