// Package nodepath maps between the paths a node's own processes use (the
// kubelet, the CNI plugins it runs) and the paths a pod sees through
// hostPath volumes.
//
// On a real node both are the same: a hostPath volume of /var/run/netns is
// the node's /var/run/netns. The lab's kubelet runs several nodes on one
// machine and roots each node's hostPath volumes in a directory of its own;
// it says so in the Node annotation RootAnnotation, and ztunnel uses it to
// tell the CNI plugin where its socket is on the node.
package nodepath

import (
	"path/filepath"
	"strings"
)

// RootAnnotation on a Node names the directory that stands for "/" in the
// node's hostPath volumes. Absent or "/" on real nodes.
const RootAnnotation = "lab.cairn.dev/host-path-root"

// OnNode returns the node's own path for a hostPath path, given the Node's
// annotations.
func OnNode(annotations map[string]string, hostPath string) string {
	root := annotations[RootAnnotation]
	if root == "" || root == "/" {
		return hostPath
	}
	return filepath.Join(root, hostPath)
}

// InPod returns the path under which a pod that mounts hostDir (a hostPath
// volume) at podDir sees the node path nodePath, or "" when nodePath is not
// under hostDir on that node. annotations are the Node's.
func InPod(annotations map[string]string, hostDir, podDir, nodePath string) string {
	base := filepath.Clean(OnNode(annotations, hostDir))
	p := filepath.Clean(nodePath)
	if p != base && !strings.HasPrefix(p, base+"/") {
		return ""
	}
	return filepath.Join(podDir, strings.TrimPrefix(p, base))
}
