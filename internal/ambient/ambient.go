// Package ambient holds the enrolment rule that istiod-lite (which describes
// workloads as in or out of the mesh) and ztunnel (which captures their
// traffic) must agree on, with the labels Cairn shares with Istio.
package ambient

import corev1 "k8s.io/api/core/v1"

// Labels and values Cairn shares with Istio.
const (
	// DataplaneModeLabel enrols a namespace or pod in the mesh ("ambient")
	// or, on a pod, opts it out ("none").
	DataplaneModeLabel = "istio.io/dataplane-mode"
	// DataplaneModeAmbient is the value that enrols.
	DataplaneModeAmbient = "ambient"
	// DataplaneModeNone on a pod keeps it out of the mesh.
	DataplaneModeNone = "none"
)

// Enrolled reports whether a pod is in the mesh: istio.io/dataplane-mode is
// "ambient" on the pod, or on its namespace while the pod does not say
// "none". Pods on the host network are never captured.
func Enrolled(pod *corev1.Pod, ns *corev1.Namespace) bool {
	if pod.Spec.HostNetwork {
		return false
	}
	switch pod.Labels[DataplaneModeLabel] {
	case DataplaneModeAmbient:
		return true
	case DataplaneModeNone:
		return false
	}
	return ns != nil && ns.Labels[DataplaneModeLabel] == DataplaneModeAmbient
}
