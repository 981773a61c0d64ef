// Package v1 holds the Go types of the security.istio.io/v1 API group:
// AuthorizationPolicy and PeerAuthentication. Cairn serves these kinds under
// Istio's group, version and field names, so that manifests written for Istio
// ambient mode apply to Cairn unchanged.
//
// The deepcopy functions, the CRD YAML in install/crds and the typed client in
// apis/client are generated from this package by `make generate`.
//
// +k8s:deepcopy-gen=package
// +kubebuilder:object:generate=true
// +groupName=security.istio.io
package v1
