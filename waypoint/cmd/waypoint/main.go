// Command waypoint is Cairn's optional L7 proxy for a namespace or service.
// Traffic reaches it over HBONE; it applies HTTPRoute and GRPCRoute rules and
// L7 AuthorizationPolicy, then carries requests on over HBONE to the pods.
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
		Use:   "waypoint",
		Short: "Cairn's L7 proxy for a namespace or service",
		Long: `waypoint is the L7 proxy that istiod-lite deploys for a Gateway of class
istio-waypoint. It receives traffic over HBONE on port 15008, applies the
Gateway API HTTPRoute and GRPCRoute rules attached to Services and the L7
rules of AuthorizationPolicy, and forwards requests over HBONE to the pods.

Ports: 15008 HBONE, 15020 metrics, 15021 readiness, 15000 admin.`,
		Version:       version.String(),
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			return errors.New("the L7 proxy is not implemented in this build yet (see README.md for what works today)")
		},
	}
	if err := cmd.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "waypoint:", err)
		os.Exit(1)
	}
}
