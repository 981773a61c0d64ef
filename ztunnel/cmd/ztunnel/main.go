// Command ztunnel is Cairn's node proxy: one per node, it captures the TCP
// traffic of every enrolled pod inside the pod's network namespace and carries
// it over HBONE (HTTP/2 CONNECT in mutual TLS 1.3 on port 15008) with the
// pod's SPIFFE identity, enforcing L4 authorization on the way in.
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
		Use:   "ztunnel",
		Short: "Cairn's per-node zero-trust tunnel",
		Long: `ztunnel runs once per node (a DaemonSet). It captures the TCP connections of
enrolled pods inside each pod's network namespace and carries them over HBONE:
HTTP/2 CONNECT in mutual TLS 1.3 on port 15008, authenticated with SPIFFE
identities spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>.

Ports inside each enrolled pod: 15001 outbound, 15006 inbound plaintext,
15008 inbound HBONE. On the node: 15000 admin (localhost), 15020 metrics,
15021 readiness.`,
		Version:       version.String(),
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			return errors.New("the data plane is not implemented in this build yet (see README.md for what works today)")
		},
	}
	if err := cmd.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "ztunnel:", err)
		os.Exit(1)
	}
}
