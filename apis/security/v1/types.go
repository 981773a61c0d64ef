package v1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// WorkloadSelector picks the workloads a policy applies to by their labels.
type WorkloadSelector struct {
	// matchLabels selects the pods (and other workloads) whose labels contain
	// every one of these key/value pairs. Wildcards are not supported.
	// +optional
	// +kubebuilder:validation:MaxProperties=4096
	// +kubebuilder:validation:XValidation:rule="self.all(key, key.size() > 0 && !key.contains('*'))",message="label keys must be non-empty and must not contain '*'"
	// +kubebuilder:validation:XValidation:rule="self.all(key, self[key].size() <= 63)",message="label values must be at most 63 characters"
	MatchLabels map[string]string `json:"matchLabels,omitempty"`
}

// The rule is a raw string that spells the empty string "": gofmt turns two
// single quotes in a comment into a typographic quote.
// +kubebuilder:validation:XValidation:rule=`[has(self.group) ? self.group : "", self.kind] in [["", "Service"], ["core", "Service"], ["networking.istio.io", "ServiceEntry"], ["gateway.networking.k8s.io", "Gateway"], ["gateway.networking.k8s.io", "GatewayClass"]]`,message="targets must be a core Service, a networking.istio.io ServiceEntry, or a gateway.networking.k8s.io Gateway or GatewayClass"

// PolicyTargetReference names the resource a policy is attached to, such as a
// waypoint Gateway or a Service. It replaces a workload selector for policies
// that a waypoint enforces.
type PolicyTargetReference struct {
	// group is the API group of the target; empty (or "core") for a Service.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	Group string `json:"group,omitempty"`

	// kind is the kind of the target, for example Gateway or Service.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$`
	Kind string `json:"kind,omitempty"`

	// name is the name of the target, in the namespace of the policy.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name,omitempty"`

	// namespace of the target. Only targets in the policy's own namespace are
	// supported, so this must be left empty.
	// +optional
	// +kubebuilder:validation:XValidation:rule="self.size() == 0",message="cross-namespace targets are not supported; leave namespace empty"
	Namespace string `json:"namespace,omitempty"`
}

// PolicyStatus reports how Cairn's control plane handled a policy.
type PolicyStatus struct {
	// conditions describe the current state of the policy, one per type, for
	// example whether ztunnel or a waypoint accepted it and, if not, why.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=16
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// observedGeneration is the metadata.generation of the policy that this
	// status was computed from.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
}
