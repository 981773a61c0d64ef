// Command cairn-cni is the CNI plugin that the ztunnel DaemonSet chains after
// a cluster's own CNI plugins. For a pod that is enrolled in the mesh it hands
// the pod's network namespace to the node's ztunnel, which puts traffic
// capture in place before the application's first packet.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/cairnmesh/cairn/internal/version"
)

func main() {
	cmd := &cobra.Command{
		Use:   "cairn-cni",
		Short: "CNI plugin that enrolls pods in Cairn's ambient mesh",
		Long: `cairn-cni is a chained CNI plugin (CNI spec 1.0). The container runtime runs it
after the cluster's own plugins, with the CNI_* environment and the network
configuration on standard input. For a pod enrolled in the mesh it asks the
node's ztunnel to capture the pod's traffic; other pods pass through untouched.

The ztunnel DaemonSet installs it on every node; there is no need to run it by
hand.`,
		Version:       version.String(),
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			return errors.New("pod enrollment is not implemented in this build yet (see README.md for what works today)")
		},
	}
	if err := cmd.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "cairn-cni:", err)
		os.Exit(1)
	}
}
