package v1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// AuthorizationPolicy decides which requests may reach the workloads it
// applies to. A workload that no policy applies to accepts all traffic. Once
// an ALLOW policy applies, traffic that matches none of the ALLOW policies is
// refused; DENY policies are checked before ALLOW policies and win over them.
//
// +genclient
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:categories=istio-io;security-istio-io,shortName=ap
// +kubebuilder:printcolumn:name="Action",type=string,JSONPath=`.spec.action`,description="What the policy does with matching requests."
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`,description="Time since the policy was created."
type AuthorizationPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is the desired behaviour of the policy.
	// +required
	Spec AuthorizationPolicySpec `json:"spec"`

	// status is written by Cairn's control plane.
	// +optional
	Status PolicyStatus `json:"status,omitzero"`
}

// AuthorizationPolicySpec selects workloads or targets and lists the rules
// that requests are matched against.
//
// +kubebuilder:validation:XValidation:rule="(has(self.selector) ? 1 : 0) + (has(self.targetRef) ? 1 : 0) + (has(self.targetRefs) ? 1 : 0) <= 1",message="only one of selector, targetRef and targetRefs may be set"
// +kubebuilder:validation:XValidation:rule="!has(self.provider) || (has(self.action) && self.action == 'CUSTOM')",message="provider may only be set when action is CUSTOM"
// +kubebuilder:validation:XValidation:rule="!has(self.action) || self.action != 'CUSTOM' || has(self.provider)",message="action CUSTOM requires a provider"
// +kubebuilder:validation:XValidation:rule="!has(self.action) || self.action != 'DENY' || (has(self.rules) && size(self.rules) > 0)",message="a DENY policy without rules never matches; add an empty rule {} to deny every request"
type AuthorizationPolicySpec struct {
	// selector limits the policy to the workloads with these labels. Without
	// selector, targetRef and targetRefs, the policy applies to every
	// workload in its namespace, or in the mesh when it lives in the root
	// namespace.
	// +optional
	Selector *WorkloadSelector `json:"selector,omitempty"`

	// targetRef attaches the policy to one resource.
	// Deprecated: use targetRefs.
	// +optional
	TargetRef *PolicyTargetReference `json:"targetRef,omitempty"`

	// targetRefs attaches the policy to resources, such as a waypoint Gateway
	// or a Service, instead of selecting workloads by label. The waypoint
	// that serves the target enforces the policy.
	// +optional
	// +kubebuilder:validation:MaxItems=16
	TargetRefs []PolicyTargetReference `json:"targetRefs,omitempty"`

	// rules are the patterns a request is matched against. A request matches
	// the policy if it matches any rule. An ALLOW policy without rules allows
	// nothing; an empty rule {} matches every request.
	// +optional
	Rules []Rule `json:"rules,omitempty"`

	// action is what happens to matching requests. Defaults to ALLOW.
	// +optional
	// +kubebuilder:default=ALLOW
	Action Action `json:"action,omitempty"`

	// provider names the external authorizer that decides requests for a
	// CUSTOM policy. It must be set with, and only with, action CUSTOM.
	// +optional
	Provider *ExtensionProvider `json:"provider,omitempty"`
}

// Action is what an AuthorizationPolicy does with the requests it matches.
//
// +kubebuilder:validation:Enum=ALLOW;DENY;AUDIT;CUSTOM
type Action string

const (
	// ActionAllow lets matching requests through.
	ActionAllow Action = "ALLOW"
	// ActionDeny refuses matching requests.
	ActionDeny Action = "DENY"
	// ActionAudit marks matching requests for audit logging; it neither
	// allows nor denies them.
	ActionAudit Action = "AUDIT"
	// ActionCustom hands matching requests to the external authorizer named
	// by the policy's provider.
	ActionCustom Action = "CUSTOM"
)

// ExtensionProvider names an external authorizer.
type ExtensionProvider struct {
	// name of the authorizer, as configured in the mesh's extension
	// providers.
	// +required
	// +kubebuilder:validation:MinLength=1
	Name string `json:"name,omitempty"`
}

// Rule matches a request when every part that is set matches: any entry of
// from, any entry of to, and all of when. Parts left out match everything.
type Rule struct {
	// from lists the sources a request may come from.
	// +optional
	From []From `json:"from,omitempty"`

	// to lists the operations a request may perform.
	// +optional
	To []To `json:"to,omitempty"`

	// when lists extra conditions on request attributes; all must hold.
	// +optional
	When []Condition `json:"when,omitempty"`
}

// From wraps one source in a rule's from list.
type From struct {
	// source describes where matching requests come from.
	// +required
	Source *Source `json:"source,omitempty"`
}

// To wraps one operation in a rule's to list.
type To struct {
	// operation describes what matching requests do.
	// +required
	Operation *Operation `json:"operation,omitempty"`
}

// Source matches the origin of a request. Every field that is set must match;
// a list matches if any entry matches. String entries may use a single '*'
// as a prefix or suffix wildcard, or be "*" alone to match any non-empty
// value. The not* fields list values that must not match.
//
// +kubebuilder:validation:MinProperties=1
// +kubebuilder:validation:XValidation:rule="!(has(self.serviceAccounts) || has(self.notServiceAccounts)) || !(has(self.principals) || has(self.notPrincipals) || has(self.namespaces) || has(self.notNamespaces))",message="serviceAccounts and notServiceAccounts cannot be combined with principals, notPrincipals, namespaces or notNamespaces in one source"
type Source struct {
	// principals are peer identities taken from the mTLS certificate, in the
	// form <trust domain>/ns/<namespace>/sa/<service account>.
	// +optional
	Principals []string `json:"principals,omitempty"`

	// notPrincipals are peer identities that must not match.
	// +optional
	NotPrincipals []string `json:"notPrincipals,omitempty"`

	// requestPrincipals are end-user identities from a validated JWT, in the
	// form <issuer>/<subject>. Only a waypoint can check them.
	// +optional
	RequestPrincipals []string `json:"requestPrincipals,omitempty"`

	// notRequestPrincipals are JWT identities that must not match.
	// +optional
	NotRequestPrincipals []string `json:"notRequestPrincipals,omitempty"`

	// namespaces are the namespaces of the peer, taken from its mTLS identity.
	// +optional
	Namespaces []string `json:"namespaces,omitempty"`

	// notNamespaces are peer namespaces that must not match.
	// +optional
	NotNamespaces []string `json:"notNamespaces,omitempty"`

	// ipBlocks are the IP addresses or CIDR ranges of the connection's source
	// address, for example 10.0.0.1 or 10.0.0.0/16.
	// +optional
	IPBlocks []string `json:"ipBlocks,omitempty"`

	// notIpBlocks are source addresses or ranges that must not match.
	// +optional
	NotIPBlocks []string `json:"notIpBlocks,omitempty"`

	// remoteIpBlocks are client addresses or ranges as reported by proxies in
	// front of the mesh (X-Forwarded-For). Only a waypoint can check them.
	// +optional
	RemoteIPBlocks []string `json:"remoteIpBlocks,omitempty"`

	// notRemoteIpBlocks are client addresses or ranges that must not match.
	// +optional
	NotRemoteIPBlocks []string `json:"notRemoteIpBlocks,omitempty"`

	// serviceAccounts are the peer's Kubernetes service accounts, written as
	// <namespace>/<name>, or <name> alone for the policy's namespace.
	// +optional
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:validation:items:MaxLength=320
	ServiceAccounts []string `json:"serviceAccounts,omitempty"`

	// notServiceAccounts are service accounts that must not match.
	// +optional
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:validation:items:MaxLength=320
	NotServiceAccounts []string `json:"notServiceAccounts,omitempty"`
}

// Operation matches what a request does. Every field that is set must match;
// a list matches if any entry matches. Hosts, methods and paths are HTTP
// attributes that only a waypoint can check; ports work everywhere. String
// entries accept the same wildcards as in Source.
//
// +kubebuilder:validation:MinProperties=1
type Operation struct {
	// hosts are values of the request's Host (HTTP/1) or :authority (HTTP/2)
	// header.
	// +optional
	Hosts []string `json:"hosts,omitempty"`

	// notHosts are hosts that must not match.
	// +optional
	NotHosts []string `json:"notHosts,omitempty"`

	// ports are destination port numbers, written as strings, for example
	// "8080".
	// +optional
	Ports []string `json:"ports,omitempty"`

	// notPorts are destination ports that must not match.
	// +optional
	NotPorts []string `json:"notPorts,omitempty"`

	// methods are HTTP methods such as GET, or for gRPC the full method name
	// /<package>.<service>/<method>.
	// +optional
	Methods []string `json:"methods,omitempty"`

	// notMethods are methods that must not match.
	// +optional
	NotMethods []string `json:"notMethods,omitempty"`

	// paths are request paths without the query string, for example /api/*.
	// +optional
	Paths []string `json:"paths,omitempty"`

	// notPaths are paths that must not match.
	// +optional
	NotPaths []string `json:"notPaths,omitempty"`
}

// Condition matches a request attribute named by key, for example
// source.ip, destination.port or request.headers[x-user].
//
// +kubebuilder:validation:XValidation:rule="has(self.values) || has(self.notValues)",message="at least one of values and notValues must be set"
type Condition struct {
	// key is the name of the attribute.
	// +required
	// +kubebuilder:validation:MinLength=1
	Key string `json:"key,omitempty"`

	// values the attribute may have; the condition holds if any matches.
	// +optional
	Values []string `json:"values,omitempty"`

	// notValues the attribute must not have.
	// +optional
	NotValues []string `json:"notValues,omitempty"`
}

// AuthorizationPolicyList is a list of AuthorizationPolicy objects.
//
// +kubebuilder:object:root=true
type AuthorizationPolicyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []AuthorizationPolicy `json:"items"`
}
