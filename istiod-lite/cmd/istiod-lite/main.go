// Command istiod-lite is Cairn's control plane: it watches Kubernetes, builds
// the mesh model, serves it over xDS to ztunnels and waypoints, and runs the
// certificate authority that signs SPIFFE identities.
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
		Use:   "istiod-lite",
		Short: "Cairn's control plane: mesh model, xDS and certificate authority",
		Long: `istiod-lite watches Kubernetes (Namespaces, Pods, Services, EndpointSlices,
Gateway API routes, AuthorizationPolicy, PeerAuthentication), builds the mesh
model and serves it over xDS: workload discovery to ztunnels, routes and
clusters to waypoints. Its certificate authority signs SPIFFE certificates,
for a ztunnel only the identities of pods on that ztunnel's own node. It
deploys a waypoint for every Gateway of class istio-waypoint.

Ports: 15012 gRPC (xDS and CA, TLS), 15014 metrics, 8080 debug.`,
		Version:       version.String(),
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			return errors.New("the control plane is not implemented in this build yet (see README.md for what works today)")
		},
	}
	if err := cmd.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "istiod-lite:", err)
		os.Exit(1)
	}
}
