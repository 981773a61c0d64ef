package main

import (
	"github.com/spf13/cobra"

	"github.com/cairnmesh/cairn/integration/lab/kubelet"
)

// kubeletCommands are the lab kubelet (`lab kubelet`, which the supervisor
// runs in each node) and its container shim (`lab container-init`, which
// the kubelet re-executes this binary as).
func kubeletCommands() []*cobra.Command {
	k := kubelet.Command()
	k.Hidden = true
	return []*cobra.Command{k, kubelet.InitCommand()}
}
