// Command ztunnel is Cairn's node proxy: one per node, it captures the TCP
// traffic of every enrolled pod inside the pod's network namespace and carries
// it over HBONE (HTTP/2 CONNECT in mutual TLS 1.3 on port 15008) with the
// pod's SPIFFE identity, enforcing L4 authorization on the way in.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"net/netip"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/cairnmesh/cairn/internal/version"
	"github.com/cairnmesh/cairn/ztunnel/capture"
	"github.com/cairnmesh/cairn/ztunnel/daemon"
	"github.com/cairnmesh/cairn/ztunnel/hbone"
	"github.com/cairnmesh/cairn/ztunnel/telemetry"
)

func main() {
	if err := command().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "ztunnel:", err)
		os.Exit(1)
	}
}

func command() *cobra.Command {
	var cfg daemon.Config
	var logLevel slog.Level
	cmd := &cobra.Command{
		Use:   "ztunnel",
		Short: "Cairn's per-node zero-trust tunnel",
		Long: `ztunnel runs once per node (a DaemonSet, install/manifests/ztunnel.yaml). It
captures the TCP connections of enrolled pods inside each pod's network
namespace and carries them over HBONE: HTTP/2 CONNECT in mutual TLS 1.3 on port
15008, authenticated with SPIFFE identities
spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>, and enforces the
L4 AuthorizationPolicies of the destination.

It installs the cairn-cni plugin on its node, so that new pods are captured
before their first packet, and captures pods that already run when their
namespace is labelled istio.io/dataplane-mode=ambient (no restart needed).
Enrolled pods let nothing from the node through uncaptured but the kubelet's
probes: ztunnel keeps rules on the node that give the kubelet's connections
to enrolled pods an address of their own (--probe-sources), telling the
kubelet apart by its cgroup (--kubelet-cgroup).
Workloads and policies come from istiod-lite over delta xDS; certificates from
istiod-lite's CA, one per service account with pods on the node.

Ports inside each enrolled pod: 15001 outbound, 15006 inbound plaintext,
15008 inbound HBONE. On the node: 15000 admin (localhost: /config_dump,
/debug/connections, /debug/pprof/), 15020 metrics (/metrics), 15021 readiness
(/healthz/ready). One JSON access-log line per connection on standard output (written
at least every second);
ztunnel's own logs on standard error.

On SIGTERM it reports not ready, keeps the pods' listeners open for
--drain-handover so that a new ztunnel on the node takes them over
(SO_REUSEPORT), then drains connections for up to --drain-timeout.

Every pod of the node depends on this one process, so what any client may
make it hold is bounded (docs/ztunnel.md, "Limits"). Node-wide, shared by
every pod's port 15008: --hbone-max-connections, --hbone-max-handshakes,
--hbone-max-streams and --hbone-max-buffered, of which one client address
may hold --hbone-source-share percent. Per HBONE connection: its window
(--hbone-connection-window), streams, the frames it may make ztunnel owe
or send in a row that carry nothing (GOAWAY ENHANCE_YOUR_CALM beyond),
and its handshake and idle timeouts. A write that any socket does not take
for --write-timeout ends its connection. The metrics
ztunnel_hbone_limit_in_use, _max and _refused_total show them.`,
		Version:       version.String(),
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg.Logger = slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: logLevel}))
			access := telemetry.NewLogBuffer(os.Stdout)
			cfg.AccessLog = slog.New(slog.NewJSONHandler(access, nil)).With("log", "access")
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			flushCtx, stopFlush := context.WithCancel(context.Background())
			var flushed sync.WaitGroup
			flushed.Go(func() { access.Run(flushCtx, telemetry.FlushInterval) })
			defer func() { stopFlush(); flushed.Wait() }() // the last lines too
			cfg.Logger.Info("starting ztunnel", "version", version.Version(), "node", cfg.NodeName)
			return daemon.Run(ctx, cfg)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Kubeconfig, "kubeconfig", "", "kubeconfig file; empty means the in-cluster configuration")
	f.StringVar(&cfg.NodeName, "node-name", os.Getenv("NODE_NAME"), "this node's name (default $NODE_NAME)")
	f.StringVar(&cfg.PodName, "pod-name", os.Getenv("POD_NAME"), "ztunnel's pod name, for its xDS node id (default $POD_NAME)")
	f.StringVar(&cfg.Namespace, "namespace", envOr("POD_NAMESPACE", "cairn-system"), "ztunnel's namespace (default $POD_NAMESPACE)")
	f.StringVar(&cfg.DaemonSet, "daemonset", "ztunnel", "ztunnel's DaemonSet: when it is gone at exit, cairn-cni is removed from the node")
	f.StringVar(&cfg.TrustDomain, "trust-domain", "cluster.local", "SPIFFE trust domain of the mesh")
	f.StringVar(&cfg.XDSAddress, "xds-address", "istiod.cairn-system.svc:15012", "istiod-lite's workload discovery (delta xDS) address")
	f.StringVar(&cfg.CAAddress, "ca-address", "istiod.cairn-system.svc:15012", "istiod-lite's CA address")
	f.StringVar(&cfg.ServerName, "server-name", "istiod.cairn-system.svc", "name in istiod-lite's certificate")
	f.StringVar(&cfg.TokenFile, "token-file", "/var/run/secrets/tokens/istio-token", "projected ServiceAccount token (audience istio-ca) for xDS and the CA")
	f.StringVar(&cfg.RootCert, "root-cert", "/var/run/secrets/istio/root-cert.pem", "the mesh's trust bundle (ConfigMap cairn-root-cert)")
	f.StringVar(&cfg.NetnsDir, "netns-dir", "/var/run/netns", "where the node's pod network namespaces are mounted")
	f.StringVar(&cfg.ProcDir, "proc-dir", "/host/proc", "the node's /proc, as mounted: a running pod's network namespace is found through its processes' cgroup (needs CAP_SYS_PTRACE)")
	f.StringVar(&cfg.SysctlDir, "sysctl-net-dir", "/host/proc-sys-net",
		"the node's /proc/sys/net, as mounted writable (the container's own /proc/sys is read-only): each enrolled pod's network sysctls "+
			"(net.netfilter.nf_conntrack_tcp_loose=0, without which the pod is not captured, and net.ipv4.tcp_migrate_req=1) are written through it from inside the pod's network namespace")
	f.StringVar(&cfg.CNISocket, "cni-socket", "/var/run/cairn/cni.sock", "socket cairn-cni calls, as ztunnel sees it")
	f.StringVar(&cfg.CNISocketHostPath, "cni-socket-host-path", "/var/run/cairn/cni.sock", "the same socket's path on the node (its hostPath volume path)")
	f.StringVar(&cfg.CNIBinDir, "cni-bin-dir", "/host/opt/cni/bin", "the node's CNI plugin directory, as mounted")
	f.StringVar(&cfg.CNIConfDir, "cni-conf-dir", "/host/etc/cni/net.d", "the node's CNI configuration directory, as mounted")
	f.StringVar(&cfg.CNIPlugin, "cni-plugin", daemon.DefaultCNIPlugin(), "the cairn-cni binary to install on the node")
	f.StringVar(&cfg.AdminAddress, "admin-address", "127.0.0.1:15000", "admin server (/config_dump, /debug/connections, /debug/pprof/)")
	f.StringVar(&cfg.MetricsAddress, "metrics-address", ":15020", "Prometheus metrics server")
	f.StringVar(&cfg.ReadinessAddress, "readiness-address", ":15021", "readiness server (/healthz/ready)")
	cfg.ProbeSources = slices.Clone(capture.DefaultProbeSources)
	f.Var(&addrList{&cfg.ProbeSources}, "probe-sources",
		"the addresses, one per family, that the node gives the kubelet's probes of enrolled pods; the pods let TCP from them through uncaptured, and nothing else from the node")
	f.StringVar(&cfg.KubeletCgroup, "kubelet-cgroup", "auto",
		`how to tell the kubelet's probes apart: "auto" (the cgroup v2 of the socket on the Node's kubelet port), "none" (capture them like any plaintext), or the kubelet's cgroup v2 path (e.g. /system.slice/kubelet.service)`)
	f.DurationVar(&cfg.DrainHandover, "drain-handover", 3*time.Second, "after SIGTERM, how long the pods' listeners stay open for a new ztunnel to take over")
	f.DurationVar(&cfg.DrainTimeout, "drain-timeout", 20*time.Second, "after the handover, how long open connections may take to finish")
	f.DurationVar(&cfg.XDSStaleAfter, "xds-stale-after", telemetry.DefaultStaleAfter, "after this long without istiod-lite, readiness (still 200) and the metric cairn_ztunnel_xds_stale say that the workloads and policies in use may be stale")
	f.TextVar(&logLevel, "log-level", slog.LevelInfo, "log level: debug, info, warn or error")

	cfg.HBONELimits = hbone.DefaultLimits()
	f.DurationVar(&cfg.WriteTimeout, "write-timeout", hbone.DefaultWriteTimeout, "a write that a socket's other end does not take for this long (a peer, an app, a client or a passthrough destination that stopped reading) ends its connection")
	f.IntVar(&cfg.HBONELimits.MaxConnections, "hbone-max-connections", hbone.DefaultMaxConnections, "inbound HBONE connections open at once on the node (port 15008 of every pod), from accept to close; more are closed at once")
	f.IntVar(&cfg.HBONELimits.MaxHandshakes, "hbone-max-handshakes", hbone.DefaultMaxHandshakes, "inbound TLS handshakes in progress at once on the node; more wait for a slot within --hbone-handshake-timeout")
	f.IntVar(&cfg.HBONELimits.MaxStreams, "hbone-max-streams", hbone.DefaultMaxStreams, "inbound tunnels (CONNECT streams) served at once on the node; more are refused (REFUSED_STREAM, which clients retry)")
	f.Var(newByteSize(&cfg.HBONELimits.MaxBuffered), "hbone-max-buffered", "bytes the node holds for apps that read slower than their clients send (e.g. 32Mi); a stream that would go over is reset (ENHANCE_YOUR_CALM)")
	f.IntVar(&cfg.HBONELimits.SourceShare, "hbone-source-share", hbone.DefaultSourceShare, "percentage of each --hbone-max-* node-wide limit that one client address (one pod) may hold")
	f.DurationVar(&cfg.HBONE.HandshakeTimeout, "hbone-handshake-timeout", hbone.DefaultHandshakeTimeout, "an inbound HBONE connection that has not finished its TLS handshake and HTTP/2 preface this long after accept (the wait for a handshake slot included) is closed")
	f.DurationVar(&cfg.HBONE.IdleTimeout, "hbone-idle-timeout", hbone.DefaultServerIdleTimeout, "an inbound HBONE connection without a stream for this long is closed (GOAWAY)")
	f.IntVar(&cfg.HBONE.MaxStreamsPerConnection, "hbone-max-streams-per-connection", hbone.DefaultMaxStreamsPerConnection, "tunnels served at once on one inbound HBONE connection (SETTINGS_MAX_CONCURRENT_STREAMS)")
	cfg.HBONE.ConnectionWindow = hbone.DefaultConnectionWindow
	f.Var(newIntByteSize(&cfg.HBONE.ConnectionWindow), "hbone-connection-window", "an inbound HBONE connection's receive window: the most it holds for apps slower than the client (e.g. 16Mi, at least 64Ki)")
	f.IntVar(&cfg.HBONE.MaxControlFrames, "hbone-max-control-frames", hbone.DefaultMaxControlFrames, "frames an HBONE connection may owe a peer that does not read them (acknowledgements, resets, window updates); more end it with GOAWAY ENHANCE_YOUR_CALM")
	f.IntVar(&cfg.HBONE.MaxIdleFrames, "hbone-max-idle-frames", hbone.DefaultMaxIdleFrames, "frames in a row that carry nothing (window updates, empty frames, refused requests, ...) an HBONE connection takes; more end it with GOAWAY ENHANCE_YOUR_CALM")
	return cmd
}

// byteSize is a flag of bytes, with an optional binary suffix: 65536,
// 64Ki, 16Mi, 1Gi.
type byteSize struct{ v *int64 }

func newByteSize(v *int64) *byteSize { return &byteSize{v} }

func (b *byteSize) String() string {
	if b.v == nil {
		return "0"
	}
	return formatBytes(*b.v)
}

func (b *byteSize) Set(s string) error {
	n, err := parseBytes(s)
	if err != nil {
		return err
	}
	*b.v = n
	return nil
}

func (b *byteSize) Type() string { return "bytes" }

// intByteSize is byteSize for an int.
type intByteSize struct{ v *int }

func newIntByteSize(v *int) *intByteSize { return &intByteSize{v} }

func (b *intByteSize) String() string {
	if b.v == nil {
		return "0"
	}
	return formatBytes(int64(*b.v))
}

func (b *intByteSize) Set(s string) error {
	n, err := parseBytes(s)
	if err != nil {
		return err
	}
	if n > math.MaxInt32 {
		return fmt.Errorf("%s is too large", s)
	}
	*b.v = int(n)
	return nil
}

func (b *intByteSize) Type() string { return "bytes" }

var byteUnits = []struct {
	suffix string
	shift  uint
}{{"Gi", 30}, {"Mi", 20}, {"Ki", 10}}

func parseBytes(s string) (int64, error) {
	shift := uint(0)
	for _, u := range byteUnits {
		if rest, ok := strings.CutSuffix(s, u.suffix); ok {
			s, shift = rest, u.shift
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 || n > math.MaxInt64>>shift {
		return 0, fmt.Errorf("%q is not a size in bytes (e.g. 65536, 64Ki, 16Mi, 1Gi)", s)
	}
	return n << shift, nil
}

func formatBytes(n int64) string {
	for _, u := range byteUnits {
		if n != 0 && n%(1<<u.shift) == 0 {
			return strconv.FormatInt(n>>u.shift, 10) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10)
}

// addrList is a flag of comma-separated IP addresses.
type addrList struct{ dst *[]netip.Addr }

func (a *addrList) String() string {
	if a.dst == nil {
		return ""
	}
	parts := make([]string, len(*a.dst))
	for i, ip := range *a.dst {
		parts[i] = ip.String()
	}
	return strings.Join(parts, ",")
}

func (a *addrList) Set(s string) error {
	var out []netip.Addr
	for _, part := range strings.Split(s, ",") {
		if part = strings.TrimSpace(part); part == "" {
			continue
		}
		ip, err := netip.ParseAddr(part)
		if err != nil {
			return err
		}
		out = append(out, ip)
	}
	*a.dst = out
	return nil
}

func (a *addrList) Type() string { return "addresses" }

func envOr(key, fallback string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return fallback
}
