// Package lab runs a multi-node Kubernetes cluster on one Linux machine
// without containers: a real control plane (internal/kubeserver) on a
// bridge in the root network namespace, and nodes that are network
// namespaces, each with a lab kubelet (integration/lab/kubelet) and
// kube-proxy. Pods are processes in their own network namespaces, wired by
// Debian's CNI plugins. See design.md section 8 and issue 3.
//
// `lab up` (Up) prepares the network and starts a detached supervisor
// (`lab supervise`, Supervise) that owns every process of the lab; `lab
// down` (Down) stops it and removes everything the lab made.
package lab
