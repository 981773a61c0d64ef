// Package cni is how pods reach the node's ztunnel when they start: the
// cairn-cni plugin (chained after the cluster's CNI plugins) sends each
// pod's ADD and DEL to ztunnel over a unix socket on the node, and ztunnel
// answers an ADD only once the pod's traffic is captured, so the
// application's first packet is already in the mesh.
//
// The plugin does not know which pods are enrolled (that needs the API
// server); it hands every pod to ztunnel, which decides. If ztunnel cannot
// be reached, ADD fails and the kubelet retries the sandbox: a pod never
// starts uncaptured because the node's ztunnel was restarting. DEL never
// fails on ztunnel's account, since ztunnel also releases pods it sees
// deleted.
//
// The same package installs the plugin on a node: it copies the binary into
// the node's CNI bin directory and appends the plugin to the node's first
// CNI configuration list, and takes both out on uninstall.
package cni
