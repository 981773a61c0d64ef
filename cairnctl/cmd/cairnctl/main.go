// Command cairnctl is the command-line interface to a Cairn mesh.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/cairnmesh/cairn/cairnctl/kube"
	"github.com/cairnmesh/cairn/cairnctl/waypoint"
	"github.com/cairnmesh/cairn/internal/version"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRootCommand().ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "cairnctl:", err)
		os.Exit(1)
	}
}

func newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "cairnctl",
		Short: "Command-line interface to the Cairn ambient mesh",
		Long: `cairnctl installs Cairn, deploys waypoints and shows what the mesh sees.

Enroll a namespace in the mesh with plain kubectl:

  kubectl label namespace shop istio.io/dataplane-mode=ambient

then give it a waypoint for L7 routing and authorization:

  cairnctl waypoint apply -n shop --enroll-namespace --wait`,
		Version:       version.String(),
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	var kf kube.Flags
	kf.AddFlags(root.PersistentFlags())
	root.AddCommand(&cobra.Command{
		Use:   "version",
		Short: "Print the version of cairnctl",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintln(cmd.OutOrStdout(), "cairnctl", version.String())
			return err
		},
	})
	root.AddCommand(waypoint.Command(&kf))
	return root
}
