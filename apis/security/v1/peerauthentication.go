package v1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// PeerAuthentication sets whether workloads accept plaintext traffic or only
// mutual TLS. A policy in the root namespace sets the mesh default, a policy
// without selector sets the namespace default, and a policy with a selector
// sets it for the selected workloads, optionally per port. The most specific
// policy wins.
//
// +genclient
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:categories=istio-io;security-istio-io,shortName=pa
// +kubebuilder:printcolumn:name="Mode",type=string,JSONPath=`.spec.mtls.mode`,description="The mutual TLS mode of the policy."
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`,description="Time since the policy was created."
type PeerAuthentication struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is the desired behaviour of the policy.
	// +required
	Spec PeerAuthenticationSpec `json:"spec"`

	// status is written by Cairn's control plane.
	// +optional
	Status PolicyStatus `json:"status,omitzero"`
}

// PeerAuthenticationSpec selects workloads and sets their mutual TLS mode.
//
// +kubebuilder:validation:XValidation:rule="!has(self.portLevelMtls) || (has(self.selector) && has(self.selector.matchLabels) && size(self.selector.matchLabels) > 0)",message="portLevelMtls requires a selector with matchLabels"
type PeerAuthenticationSpec struct {
	// selector limits the policy to the workloads with these labels. Without
	// it the policy applies to every workload in its namespace, or in the
	// mesh when it lives in the root namespace.
	// +optional
	Selector *WorkloadSelector `json:"selector,omitempty"`

	// mtls is the mode for all ports of the selected workloads, except those
	// listed in portLevelMtls.
	// +optional
	Mtls *MutualTLS `json:"mtls,omitempty"`

	// portLevelMtls overrides the mode for single ports. Keys are the ports
	// the workload listens on (container ports, not Service ports). Requires
	// a selector.
	// +optional
	// +kubebuilder:validation:MinProperties=1
	// +kubebuilder:validation:MaxProperties=256
	// +kubebuilder:validation:XValidation:rule="self.all(port, port.matches('^[1-9][0-9]{0,4}$') && int(port) <= 65535)",message="portLevelMtls keys must be port numbers from 1 to 65535"
	PortLevelMtls map[string]MutualTLS `json:"portLevelMtls,omitempty"`
}

// MutualTLS holds a mutual TLS mode.
type MutualTLS struct {
	// mode is the mutual TLS mode. UNSET inherits the mode of the next less
	// specific policy, and is PERMISSIVE when there is none.
	// +optional
	Mode MTLSMode `json:"mode,omitempty"`
}

// MTLSMode says whether a workload accepts plaintext connections.
//
// +kubebuilder:validation:Enum=UNSET;DISABLE;PERMISSIVE;STRICT
type MTLSMode string

const (
	// MTLSModeUnset inherits the mode from the next less specific policy.
	MTLSModeUnset MTLSMode = "UNSET"
	// MTLSModeDisable accepts plaintext only. Ambient mode ignores it and
	// treats it like PERMISSIVE.
	MTLSModeDisable MTLSMode = "DISABLE"
	// MTLSModePermissive accepts both mutual TLS and plaintext.
	MTLSModePermissive MTLSMode = "PERMISSIVE"
	// MTLSModeStrict accepts mutual TLS only.
	MTLSModeStrict MTLSMode = "STRICT"
)

// PeerAuthenticationList is a list of PeerAuthentication objects.
//
// +kubebuilder:object:root=true
type PeerAuthenticationList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []PeerAuthentication `json:"items"`
}
