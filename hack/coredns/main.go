// Command coredns is CoreDNS with only the plugins the lab's Corefile
// (integration/lab/addons/coredns.yaml) uses. CoreDNS's own main links
// every plugin it ships, cloud DNS providers' SDKs among them, and builds
// in minutes on a cold cache; the lab needs six. A plugin added to the
// Corefile must be added here, in Directives and as an import, or CoreDNS
// refuses the Corefile with "unknown directive".
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/ready"
)

func init() {
	// The order in which the plugins handle a query, as in CoreDNS's
	// plugin.cfg: each one sees the queries those above it pass on.
	dnsserver.Directives = []string{
		"ready",
		"health",
		"errors",
		"loadbalance",
		"cache",
		"kubernetes",
	}
}

func main() {
	coremain.Run()
}
