// Package dataplane holds the enrolment rule on plain label maps: the
// labels Cairn shares with Istio, and whether a pod is in the mesh. It
// imports no Kubernetes API types, so that ztunnel, which decodes only the
// few pod and namespace fields it reads, links none of k8s.io/api; the
// parent package ambient wraps it for callers holding corev1 objects.
package dataplane

// Labels and values Cairn shares with Istio.
const (
	// ModeLabel enrols a namespace or pod in the mesh ("ambient") or, on
	// a pod, opts it out ("none").
	ModeLabel = "istio.io/dataplane-mode"
	// ModeAmbient is the value that enrols.
	ModeAmbient = "ambient"
	// ModeNone on a pod keeps it out of the mesh.
	ModeNone = "none"
)

// Enrolled reports whether a pod is in the mesh, from the pod's labels,
// whether it runs on the host network, and its namespace's labels (nil when
// the namespace is unknown): istio.io/dataplane-mode is "ambient" on the
// pod, or on its namespace while the pod does not say "none". Pods on the
// host network are never captured: they share the node's network namespace.
func Enrolled(podLabels map[string]string, hostNetwork bool, nsLabels map[string]string) bool {
	if hostNetwork {
		return false
	}
	switch podLabels[ModeLabel] {
	case ModeAmbient:
		return true
	case ModeNone:
		return false
	}
	return nsLabels[ModeLabel] == ModeAmbient
}
