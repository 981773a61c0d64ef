// Command echoserver is the lab's sample application (image cairn/echoserver):
// it answers HTTP/1.1, h2c, gRPC and raw TCP with the name of the pod that
// served the request and what arrived.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/cairnmesh/cairn/integration/apps/echo"
	"github.com/cairnmesh/cairn/internal/version"
)

func main() {
	cfg := echo.Config{}
	cmd := &cobra.Command{
		Use:   "echoserver",
		Short: "Answer HTTP, h2c, gRPC and TCP with the serving pod and the request seen",
		Long: `echoserver answers every request with what it saw, as JSON for HTTP:
the pod and namespace that served it (from $POD_NAME and $POD_NAMESPACE,
set through the downward API), method, path, host, protocol and headers.

HTTP query parameters: status=<code> answers with that status code;
delay=<duration> waits before answering.
gRPC: cairn.echo.v1.Echo/Echo returns the message, pod and metadata.
TCP: one greeting line naming the pod, then every byte echoed back.`,
		Version:       version.String(),
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			cfg.Logger = slog.New(slog.NewJSONHandler(os.Stderr, nil))
			return echo.Run(ctx, cfg)
		},
	}
	hostname, _ := os.Hostname()
	f := cmd.Flags()
	f.StringVar(&cfg.Pod, "pod", envOr("POD_NAME", hostname), "pod name to report (default $POD_NAME, else the hostname)")
	f.StringVar(&cfg.Namespace, "namespace", envOr("POD_NAMESPACE", "default"), "namespace to report (default $POD_NAMESPACE)")
	f.IntVar(&cfg.HTTPPort, "http-port", 8080, "port for HTTP/1.1 and h2c; 0 turns it off")
	f.IntVar(&cfg.GRPCPort, "grpc-port", 7070, "port for gRPC; 0 turns it off")
	f.IntVar(&cfg.TCPPort, "tcp-port", 9090, "port for the raw TCP echo; 0 turns it off")
	f.StringVar(&cfg.Address, "address", "", "IP address to bind (default: all)")
	if err := cmd.ExecuteContext(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, "echoserver:", err)
		os.Exit(1)
	}
}

func envOr(key, fallback string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return fallback
}
