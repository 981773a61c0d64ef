// Command cairn-cni is the CNI plugin that the ztunnel DaemonSet chains after
// a cluster's own CNI plugins. It hands every pod's network namespace to the
// node's ztunnel, which puts traffic capture in place for enrolled pods
// before the application's first packet (see ztunnel/cni).
package main

import (
	"fmt"
	"os"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/spf13/cobra"

	"github.com/cairnmesh/cairn/internal/version"
	"github.com/cairnmesh/cairn/ztunnel/cni"
)

func main() {
	// Run by a container runtime: the CNI protocol, not flags.
	if os.Getenv("CNI_COMMAND") != "" {
		skel.PluginMainFuncs(cni.Funcs(), cni.Versions(), "cairn-cni "+version.String())
		return
	}
	cmd := &cobra.Command{
		Use:   "cairn-cni",
		Short: "CNI plugin that enrolls pods in Cairn's ambient mesh",
		Long: `cairn-cni is a chained CNI plugin (CNI spec 0.4.0 to 1.1.0). The container
runtime runs it after the cluster's own plugins, with the CNI_* environment and
the network configuration on standard input. It sends the pod's network
namespace to the node's ztunnel (over ` + cni.DefaultSocket + ` unless the
configuration's "socket" says otherwise), which captures the traffic of pods
enrolled in the mesh before ADD returns; other pods pass through untouched.
If ztunnel cannot be reached, ADD fails and the kubelet retries, so no pod
starts uncaptured while its node's ztunnel restarts.

The ztunnel DaemonSet installs it on every node; there is no need to run it by
hand.`,
		Version:       version.String(),
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return fmt.Errorf("cairn-cni is run by the container runtime with CNI_COMMAND set; see --help")
		},
	}
	if err := cmd.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "cairn-cni:", err)
		os.Exit(1)
	}
}
