package kubelet

import (
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
)

// Command returns the `kubelet` subcommand of the lab command: it runs
// one lab kubelet until SIGINT or SIGTERM. It must be started inside the
// node's network namespace but in the host's mount namespace (setns or
// `nsenter --net=...`, not `ip netns exec`, which unshares the mount
// namespace: the pods' network namespaces would then be mounted where
// nobody else, not even the kubelet's next incarnation, sees them).
func Command() *cobra.Command {
	var (
		cfg        Config
		nodeIP     string
		podCIDR    string
		clusterDNS string
		images     []string
		logLevel   string
	)
	cmd := &cobra.Command{
		Use:   "kubelet",
		Short: "Run a lab kubelet for one node (inside the node's network namespace)",
		Long: `kubelet registers a Node and runs the pods the scheduler binds to it: each
pod gets a network namespace set up by the node's CNI configuration, each
container is a process in it with its own mount namespace, and the
kubelet API (logs, exec, port-forward) is served on the node's address.

Stopping the kubelet leaves its pods running; a new kubelet with the same
--node-root adopts them.`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var err error
			if cfg.NodeIP, err = netip.ParseAddr(nodeIP); err != nil {
				return fmt.Errorf("--node-ip: %w", err)
			}
			if cfg.PodCIDR, err = netip.ParsePrefix(podCIDR); err != nil {
				return fmt.Errorf("--pod-cidr: %w", err)
			}
			if clusterDNS != "" {
				if cfg.ClusterDNS, err = netip.ParseAddr(clusterDNS); err != nil {
					return fmt.Errorf("--cluster-dns: %w", err)
				}
			}
			for _, kv := range images {
				k, v, ok := strings.Cut(kv, "=")
				if !ok || k == "" || v == "" {
					return fmt.Errorf("--image %q: want <image>=<binary>", kv)
				}
				if cfg.Images == nil {
					cfg.Images = map[string]string{}
				}
				cfg.Images[k] = v
			}
			var level slog.Level
			if err := level.UnmarshalText([]byte(logLevel)); err != nil {
				return fmt.Errorf("--log-level: %w", err)
			}
			cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return Run(ctx, cfg)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.NodeName, "node-name", "", "the Node's name (required)")
	f.StringVar(&nodeIP, "node-ip", "", "the node's IP address (required)")
	f.StringVar(&podCIDR, "pod-cidr", "", "the node's pod CIDR (required)")
	f.StringVar(&cfg.NodeRoot, "node-root", "", "directory standing in for the node's / (required)")
	f.StringVar(&cfg.Kubeconfig, "kubeconfig", "", "kubeconfig of the kubelet (required)")
	f.StringVar(&cfg.CNIConfDir, "cni-conf-dir", "", "CNI configuration directory (default <node-root>/etc/cni/net.d)")
	f.StringSliceVar(&cfg.CNIBinDirs, "cni-bin-dir", nil, "CNI plugin directories (default <node-root>/opt/cni/bin,"+DebianCNIBinDir+")")
	f.StringVar(&clusterDNS, "cluster-dns", "", "cluster DNS server for ClusterFirst pods")
	f.StringVar(&cfg.ClusterDomain, "cluster-domain", DefaultClusterDomain, "cluster DNS domain")
	f.StringVar(&cfg.BinDir, "bin-dir", "", "the repository's bin directory: image cairn/<name> runs <bin-dir>/<name>")
	f.StringArrayVar(&images, "image", nil, "extra image to binary mapping, <image>[:<tag>]=<binary> (repeatable)")
	f.StringVar(&cfg.APIAddress, "address", "", "kubelet API listen address (default <node-ip>:<port>)")
	f.IntVar(&cfg.APIPort, "port", DefaultAPIPort, "kubelet API port")
	f.StringVar(&cfg.TLSCertFile, "tls-cert-file", "", "kubelet API serving certificate")
	f.StringVar(&cfg.TLSKeyFile, "tls-private-key-file", "", "kubelet API serving key")
	f.StringVar(&cfg.ClientCAFile, "client-ca-file", "", "CA that signs the API server's client certificate")
	f.StringVar(&cfg.CgroupParent, "cgroup-parent", DefaultCgroupParent, "cgroup for pods, relative to the kubelet's own")
	f.StringVar(&cfg.Cgroup, "cgroup", "", "cgroup the kubelet moves itself into at start, relative to the one it starts in (a real node's is system.slice/kubelet.service); must not hold the pods'")
	f.IntVar(&cfg.MaxPods, "max-pods", DefaultMaxPods, "pod capacity of the node")
	f.DurationVar(&cfg.BackoffBase, "backoff-base", DefaultBackoffBase, "first delay of the restart back-off")
	f.DurationVar(&cfg.BackoffMax, "backoff-max", DefaultBackoffMax, "longest delay of the restart back-off")
	f.StringSliceVar(&cfg.InitArgs, "init-args", []string{DefaultInitCommand}, "arguments after /proc/self/exe that reach the container-init command")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	for _, name := range []string{"node-name", "node-ip", "pod-cidr", "node-root", "kubeconfig"} {
		_ = cmd.MarkFlagRequired(name)
	}
	return cmd
}

// InitCommand returns the hidden `container-init` command, the shim the
// kubelet re-executes its own binary as (see Config.InitArgs). Add it to
// the root command of every binary that runs Command or Run.
func InitCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:           DefaultInitCommand,
		Short:         "Container shim of the lab kubelet (internal)",
		Hidden:        true,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	cmd.AddCommand(&cobra.Command{
		Use:  "monitor <spec.json>",
		Args: cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error { return runMonitor(args[0]) },
	}, &cobra.Command{
		Use:  "start <spec.json>",
		Args: cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error { return runStart(args[0]) },
	})
	var enterJSON, execJSON string
	enter := &cobra.Command{
		Use:  "enter --spec <json> -- command...",
		Args: cobra.MinimumNArgs(1),
		RunE: func(_ *cobra.Command, args []string) error { return runEnter(enterJSON, args) },
	}
	enter.Flags().StringVar(&enterJSON, "spec", "", "what to enter (enterSpec, JSON)")
	execCmd := &cobra.Command{
		Use:  "exec --security <json> -- command...",
		Args: cobra.MinimumNArgs(1),
		RunE: func(_ *cobra.Command, args []string) error { return runExec(execJSON, args) },
	}
	execCmd.Flags().StringVar(&execJSON, "security", "", "the container's security spec (JSON)")
	cmd.AddCommand(execCmd)
	cmd.AddCommand(enter)
	return cmd
}
