//go:build tools

// Package k8sbins pins the Kubernetes commands that `make k8s-bins` builds for
// the test API server and the lab. It is its own module so that the root
// module never depends on k8s.io/kubernetes.
package k8sbins

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
