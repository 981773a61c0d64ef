package kubelet

import (
	"fmt"
	"net"
	"os"
	"testing"

	"github.com/cairnmesh/cairn/internal/kubeserver"
	"github.com/cairnmesh/cairn/internal/testenv"
)

// The test binary doubles as the lab command: run as "container-init ..."
// it is the container shim (the kubelet re-executes /proc/self/exe), and
// as "kubelet ..." it is a kubelet, started inside a test node's network
// namespace.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case DefaultInitCommand:
			cmd := InitCommand()
			cmd.SetArgs(os.Args[2:])
			if err := cmd.Execute(); err != nil {
				fmt.Fprintln(os.Stderr, "container-init:", err)
				os.Exit(1)
			}
			os.Exit(0)
		case "kubelet":
			cmd := Command()
			cmd.SetArgs(os.Args[2:])
			if err := cmd.Execute(); err != nil {
				fmt.Fprintln(os.Stderr, "kubelet:", err)
				os.Exit(1)
			}
			os.Exit(0)
		}
	}
	testenv.Main(m, testenv.Options{
		// Default ServiceAccounts and the kube-root-ca.crt ConfigMap, which
		// every pod's token volume needs.
		ControllerManager: true,
		Server: func(o *kubeserver.Options) {
			// The kubelet reaches the API server through a forwarder on the
			// test bridge (see testNode).
			o.ExtraIPs = append(o.ExtraIPs, net.ParseIP(testBridgeIP))
			o.ExtraArgs = map[string][]string{kubeserver.APIServer: apiServerKubeletArgs()}
		},
	})
}
