// Command cairnctl is the command-line interface to a Cairn mesh.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/cairnmesh/cairn/internal/version"
)

func main() {
	if err := newRootCommand().Execute(); err != nil {
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

  kubectl label namespace shop istio.io/dataplane-mode=ambient`,
		Version:       version.String(),
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(&cobra.Command{
		Use:   "version",
		Short: "Print the version of cairnctl",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintln(cmd.OutOrStdout(), "cairnctl", version.String())
			return err
		},
	})
	return root
}
