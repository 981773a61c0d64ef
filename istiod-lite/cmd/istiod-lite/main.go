// Command istiod-lite is Cairn's control plane: it watches Kubernetes, builds
// the mesh model, serves it over xDS to ztunnels and waypoints, and runs the
// certificate authority that signs SPIFFE identities.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/cairnmesh/cairn/internal/version"
	"github.com/cairnmesh/cairn/istiod-lite/bootstrap"
	"github.com/cairnmesh/cairn/istiod-lite/ca/kubeca"
	"github.com/cairnmesh/cairn/istiod-lite/xds"
)

func main() {
	if err := newCommand().ExecuteContext(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, "istiod-lite:", err)
		os.Exit(1)
	}
}

func newCommand() *cobra.Command {
	cfg := bootstrap.Config{}
	var logLevel slog.Level
	cmd := &cobra.Command{
		Use:   "istiod-lite",
		Short: "Cairn's control plane: mesh model, xDS and certificate authority",
		Long: `istiod-lite watches Kubernetes (Namespaces, Pods, Services, EndpointSlices,
AuthorizationPolicy, PeerAuthentication), builds the mesh model and serves it
to ztunnels over delta xDS. Its certificate authority signs SPIFFE
certificates: for a ztunnel only the identities of pods on that ztunnel's own
node, for any other caller only its own identity. Clients authenticate with
their projected ServiceAccount token (audience --token-audience); xDS clients
may present a mesh certificate instead. Workload discovery is served only to
the service accounts of --xds-service-accounts (the ztunnels'); any other
client is refused with PermissionDenied.

Ports: 15012 gRPC (xDS and CA, TLS with a certificate for
istiod.<namespace>.svc), 15014 metrics and probes (/metrics, /ready,
/healthz), 127.0.0.1:8080 debug (/debug/model, /debug/resources,
/debug/clients, /ready, /healthz): the debug pages list the whole mesh, so
they listen on localhost only; reach them with
  kubectl -n cairn-system port-forward deploy/istiod-lite 8080`,
		Version:       version.String(),
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg.Logger = slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: logLevel}))
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			cfg.Logger.Info("starting istiod-lite", "version", version.Version())
			return bootstrap.Run(ctx, cfg)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Kubeconfig, "kubeconfig", "", "kubeconfig file; empty means the in-cluster configuration")
	f.StringVar(&cfg.Namespace, "namespace", envOr("POD_NAMESPACE", "cairn-system"), "namespace istiod-lite runs in and keeps the CA root in (default $POD_NAMESPACE)")
	f.StringVar(&cfg.ServiceAccount, "service-account", "istiod-lite", "istiod-lite's own service account, for its SPIFFE identity")
	f.StringVar(&cfg.XDSAddress, "xds-address", ":15012", "address of the gRPC server (delta xDS and the CA)")
	f.StringVar(&cfg.MetricsAddress, "metrics-address", ":15014", "address of the Prometheus /metrics and the /ready and /healthz probes")
	f.StringVar(&cfg.DebugAddress, "debug-address", "127.0.0.1:8080", "address of the /debug server (unauthenticated: keep it on localhost and use kubectl port-forward)")
	f.StringVar(&cfg.TrustDomain, "trust-domain", "cluster.local", "SPIFFE trust domain of the mesh")
	f.StringVar(&cfg.ClusterID, "cluster-id", "Kubernetes", "name of this cluster in workload names")
	f.StringVar(&cfg.DomainSuffix, "domain-suffix", "cluster.local", "DNS domain of the cluster's Services")
	f.StringVar(&cfg.RootNamespace, "root-namespace", "istio-system", "namespace whose policies apply to the whole mesh")
	f.StringVar(&cfg.TokenAudience, "token-audience", "istio-ca", "audience that clients' ServiceAccount tokens must carry")
	f.StringVar(&cfg.Ztunnel, "ztunnel-service-account", "cairn-system/ztunnel", "service account of the ztunnels, as namespace/name: the only callers that may ask for identities of other pods on their node")
	f.StringSliceVar(&cfg.XDSServiceAccounts, "xds-service-accounts", []string{"cairn-system/ztunnel"},
		"service accounts (namespace/name, comma-separated) that may read workload discovery over xDS; everyone else gets PermissionDenied")
	f.IntVar(&cfg.XDSMaxSubscriptions, "xds-max-subscriptions", xds.DefaultMaxSubscriptions, "most resource names one xDS stream may subscribe to, per type")
	f.IntVar(&cfg.XDSMaxResourceNameLength, "xds-max-resource-name-length", xds.DefaultMaxResourceNameLength, "longest resource name an xDS stream may subscribe to, in bytes")
	f.IntVar(&cfg.TokenReviewCacheSize, "token-review-cache-size", kubeca.DefaultReviewCacheSize, "TokenReview answers remembered (by token hash); negative turns the cache off")
	f.DurationVar(&cfg.TokenReviewCacheTTL, "token-review-cache-ttl", kubeca.DefaultReviewCacheTTL, "how long a TokenReview answer is reused (never beyond the token's expiry)")
	f.IntVar(&cfg.TokenReviewMaxInFlight, "token-review-max-in-flight", kubeca.DefaultMaxReviewsInFlight, "most TokenReviews in flight at once")
	f.DurationVar(&cfg.TokenReviewWait, "token-review-wait", kubeca.DefaultReviewWait, "how long a caller waits for a TokenReview slot before it is told to retry")
	f.DurationVar(&cfg.RefusalLogEvery, "refusal-log-every", time.Second, "after a burst, one warning line per this interval about refused xDS streams and refused CSRs (each); the rest are only counted in metrics; 0 logs every one")
	f.IntVar(&cfg.RefusalLogBurst, "refusal-log-burst", 10, "warning lines about refusals written at once before --refusal-log-every paces them")
	f.DurationVar(&cfg.Debounce, "debounce", 100*time.Millisecond, "push a batch of changes once none has arrived for this long")
	f.DurationVar(&cfg.MaxDelay, "max-delay", time.Second, "push changes at the latest this long after the first")
	f.DurationVar(&cfg.CertTTL, "cert-ttl", 24*time.Hour, "lifetime of workload certificates")
	f.DurationVar(&cfg.MaxCertTTL, "max-cert-ttl", 24*time.Hour, "longest lifetime a caller may ask for")
	f.TextVar(&logLevel, "log-level", slog.LevelInfo, "log level: debug, info, warn or error")
	return cmd
}

func envOr(key, fallback string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return fallback
}
