// Package daemon assembles ztunnel: certificates, workload discovery, the
// node agent and its CNI socket, the enrolled pods' proxies, and the
// operator endpoints; Run runs them until its context ends, then drains.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"runtime/debug"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/sync/errgroup"

	"github.com/cairnmesh/cairn/internal/admin"
	"github.com/cairnmesh/cairn/internal/cpconn"
	"github.com/cairnmesh/cairn/internal/drain"
	"github.com/cairnmesh/cairn/internal/identity"
	"github.com/cairnmesh/cairn/internal/kubeclient"
	"github.com/cairnmesh/cairn/internal/netns"
	"github.com/cairnmesh/cairn/internal/nodepath"
	"github.com/cairnmesh/cairn/internal/xdsclient"
	"github.com/cairnmesh/cairn/ztunnel/capture"
	"github.com/cairnmesh/cairn/ztunnel/cni"
	"github.com/cairnmesh/cairn/ztunnel/enroll"
	"github.com/cairnmesh/cairn/ztunnel/hbone"
	"github.com/cairnmesh/cairn/ztunnel/nodeagent"
	"github.com/cairnmesh/cairn/ztunnel/proxy"
	"github.com/cairnmesh/cairn/ztunnel/state"
	"github.com/cairnmesh/cairn/ztunnel/telemetry"
)

// Config is ztunnel's configuration (its flags).
type Config struct {
	Kubeconfig  string
	NodeName    string
	PodName     string
	Namespace   string // ztunnel's own, for the DaemonSet check on exit
	DaemonSet   string // ztunnel's DaemonSet name
	TrustDomain string

	XDSAddress string // istiod-lite's xDS
	CAAddress  string
	ServerName string // of istiod-lite's certificate
	TokenFile  string
	RootCert   string

	NetnsDir          string // the node's /var/run/netns, as mounted
	ProcDir           string // the node's /proc, as mounted
	SysctlDir         string // the node's /proc/sys/net, as mounted (writable)
	CNISocket         string // our socket, as mounted
	CNISocketHostPath string // the hostPath path of the socket's file
	CNIBinDir         string // the node's CNI bin dir, as mounted
	CNIConfDir        string // the node's CNI conf dir, as mounted
	CNIPlugin         string // the cairn-cni binary to install

	AdminAddress     string
	MetricsAddress   string
	ReadinessAddress string

	// ProbeSources are the addresses the node gives the kubelet's probes of
	// enrolled pods, one per family; the pods let nothing else from the
	// node through uncaptured. KubeletCgroup says how the node tells the
	// kubelet's connections apart: "auto" (by the socket on the Node's
	// kubelet port), "none" (it does not: probes are captured like any
	// plaintext), or the kubelet's cgroup v2 path.
	ProbeSources  []netip.Addr
	KubeletCgroup string

	// DrainHandover is how long listeners stay open after SIGTERM, so that
	// a new ztunnel on the node takes over the pods' sockets; DrainTimeout
	// bounds the connections' drain after that.
	DrainHandover time.Duration
	DrainTimeout  time.Duration

	// Bounds on what pods and peers may make ztunnel hold: the node-wide
	// limits of inbound HBONE (shared by every pod's server), each HBONE
	// connection's, and the write timeout of every socket ztunnel writes.
	HBONELimits  hbone.Limits
	HBONE        proxy.HBONELimits
	WriteTimeout time.Duration

	// XDSStaleAfter is how long ztunnel may be without istiod-lite before
	// readiness and a metric say that its configuration may be stale.
	XDSStaleAfter time.Duration

	Logger    *slog.Logger
	AccessLog *slog.Logger
}

// UserAgent is the user_agent_name ztunnel's xDS client sends.
const UserAgent = "cairn-ztunnel"

// Run runs ztunnel until ctx ends, then drains and returns.
func Run(ctx context.Context, cfg Config) error {
	log := cfg.Logger
	if cfg.NodeName == "" {
		return errors.New("the node name is required (--node-name or $NODE_NAME)")
	}
	kube, err := kubeClient(cfg.Kubeconfig)
	if err != nil {
		return err
	}
	defer kube.Close()
	node, err := waitNode(ctx, kube, cfg.NodeName, log)
	if err != nil {
		return err
	}

	limiter, err := hbone.NewLimiter(cfg.HBONELimits)
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		limitsCollector{limiter})
	rec, err := telemetry.NewRecorder(reg, cfg.AccessLog)
	if err != nil {
		return err
	}
	bundle, err := identity.NewBundle(identity.BundleConfig{Path: cfg.RootCert, TrustDomain: cfg.TrustDomain, Logger: log.With("component", "bundle")})
	if err != nil {
		return fmt.Errorf("trust bundle: %w", err)
	}
	// One connection to istiod-lite for the CA and xDS (two if they are
	// at different addresses): TLS verified against the trust bundle as it
	// is at each handshake, so a CA root rotation needs no restart;
	// keepalive pings every 30 s (cpconn.DefaultKeepalive), so that a dead
	// connection is replaced in seconds, not after TCP's minutes.
	conns, err := controlPlaneConns(cfg, bundle, log.With("component", "cpconn"))
	if err != nil {
		return err
	}
	defer conns.close()
	mgr, err := identity.New(identity.Config{
		Conn: conns.ca, TokenFile: cfg.TokenFile, Bundle: bundle,
		Logger: log.With("component", "certs"),
	})
	if err != nil {
		return fmt.Errorf("certificates: %w", err)
	}
	store := state.NewStore()
	controlPlane, err := telemetry.NewControlPlane(reg, cfg.XDSStaleAfter, log.With("component", "xds"))
	if err != nil {
		return err
	}
	// The xDS connection, like the CA's, verifies istiod-lite against the
	// trust bundle as it is at each handshake: a CA root rotation needs no
	// ztunnel restart.
	xds, err := xdsclient.New(xdsclient.Config{
		Conn: conns.xds,
		// Authorizations first: istiod-lite answers in subscription order,
		// and the proxies decide nothing until both are in (state.Synced).
		TypeURLs: []string{xdsclient.AuthorizationTypeURL, xdsclient.AddressTypeURL},
		Registry: xdsclient.WorkloadRegistry(), Handler: storeHandler{store}, UserAgent: UserAgent,
		NodeID:   xdsclient.NodeID(cfg.NodeName, cfg.PodName, cfg.Namespace),
		Observer: controlPlane,
		Logger:   log.With("component", "xds"),
	})
	if err != nil {
		return fmt.Errorf("xDS client: %w", err)
	}
	probes, err := nodeProbes(ctx, cfg, node, log.With("component", "probes"))
	if err != nil {
		return err
	}
	defer probes.Netns.Close()
	mesh := enroll.New(enroll.Config{
		Proxy: proxy.Config{
			Store: store, Certificates: identities{mgr}, Bundle: bundle, Telemetry: rec,
			Log:          log.With("component", "proxy"),
			WriteTimeout: cfg.WriteTimeout, Limiter: limiter, HBONE: cfg.HBONE,
		},
		Identities: identities{mgr}, TrustDomain: cfg.TrustDomain, NetnsDir: cfg.NetnsDir,
		IPTables:     capture.IPTables{Sysctls: capture.Sysctls{Dir: cfg.SysctlDir}, Log: log.With("component", "iptables")},
		ProbeSources: cfg.ProbeSources, Probes: probes,
		Log: log.With("component", "enroll"),
	})
	finder := enroll.NetnsFinder{ProcDir: cfg.ProcDir, NetnsDir: cfg.NetnsDir, Log: log.With("component", "netns")}
	agent, err := nodeagent.New(nodeagent.Config{
		Node: cfg.NodeName, Instance: cfg.PodName, Kube: kube, Capturer: mesh,
		FindNetns: finder.Find,
		Log:       log.With("component", "nodeagent"),
	})
	if err != nil {
		return err
	}
	install := cni.Install{
		Binary: cfg.CNIPlugin, BinDir: cfg.CNIBinDir, ConfDir: cfg.CNIConfDir,
		Socket: nodepath.OnNode(node.Annotations, cfg.CNISocketHostPath),
	}

	var draining drain.State
	sources := admin.Sources{
		ConfigDump: map[string]func() any{
			"workloads":    func() any { return store.Snapshot() },
			"certificates": func() any { return mgr.Dump() },
			"bundle":       func() any { return bundle.Dump() },
			"pods":         func() any { return mesh.Pods() },
		},
		Connections: func() any { return mesh.Connections().List() },
		Ready: func() (bool, string) {
			select {
			case <-xds.Synced():
			default:
				return false, "waiting for the first workload discovery response from " + cfg.XDSAddress
			}
			if !agent.Synced() {
				return false, "waiting to list the node's pods"
			}
			// Ready all the same: the pods' traffic flows with the last
			// configuration, and failing the probe would only stop a
			// rolling update of ztunnel while istiod-lite is away.
			if stale, since, lastErr := controlPlane.Stale(); stale {
				return true, fmt.Sprintf("istiod-lite (%s) unreachable since %s (%s); the workloads and policies in use may be stale; last error: %s",
					cfg.XDSAddress, since.UTC().Format(time.RFC3339), time.Since(since).Round(time.Second), lastErr)
			}
			return true, ""
		},
	}

	cniLn, err := cni.Listen(cfg.CNISocket)
	if err != nil {
		return err
	}
	// Metrics and readiness answer anyone on the node's network: a client
	// that stops reading must not hold a goroutine and its buffers. (The
	// admin server is on localhost, and a CPU profile may take longer than
	// the write timeout.)
	servers, err := admin.Listen(ctx, []admin.Endpoint{
		{Name: "cni", Listener: cniLn, Handler: &cni.Server{Handler: agent, Log: log.With("component", "cni")}},
		{Name: "admin", Addr: cfg.AdminAddress, Handler: admin.AdminHandler(sources, log), IdleTimeout: admin.DefaultIdleTimeout},
		{Name: "metrics", Addr: cfg.MetricsAddress, Handler: admin.MetricsHandler(reg), IdleTimeout: admin.DefaultIdleTimeout, WriteTimeout: cfg.WriteTimeout},
		{Name: "readiness", Addr: cfg.ReadinessAddress, Handler: admin.ReadinessHandler(sources, &draining), IdleTimeout: admin.DefaultIdleTimeout, WriteTimeout: cfg.WriteTimeout},
	})
	if err != nil {
		return err
	}

	// Everything below runs until ctx ends; the mesh's proxies drain after.
	runCtx, stopRun := context.WithCancel(context.Background())
	defer stopRun()
	g, gctx := errgroup.WithContext(runCtx)
	g.Go(func() error { return bundle.Run(gctx) })
	for _, c := range conns.distinct() {
		g.Go(func() error { return c.Run(gctx) })
	}
	g.Go(func() error { return mgr.Run(gctx) })
	g.Go(func() error { return xds.Run(gctx) })
	g.Go(func() error { return agent.Run(gctx) })
	g.Go(func() error { return keepInstalled(gctx, install, log) })
	g.Go(func() error { return probes.Run(gctx, probeRulesInterval) })
	g.Go(func() error {
		returnStartupMemory(gctx, xds.Synced(), agent.Synced, log)
		return nil
	})
	servers.Serve(g)
	log.Info("ztunnel running", "node", cfg.NodeName, "xds", cfg.XDSAddress, "cni_socket_on_node", install.Socket)

	select {
	case <-ctx.Done():
	case <-gctx.Done(): // a component failed
	}
	log.Info("draining", "handover", cfg.DrainHandover, "timeout", cfg.DrainTimeout)
	// A successor binds the pods' ports during the handover.
	drain.Run(gctx, &draining, cfg.DrainHandover, cfg.DrainTimeout, mesh.Stop)
	if gone, err := daemonSetGone(kube, cfg.Namespace, cfg.DaemonSet); err == nil && gone {
		// Uninstalled, not restarted: new pods must not wait for a
		// ztunnel that will not come.
		log.Info("the ztunnel DaemonSet is gone: removing cairn-cni and the probe rules from the node")
		if err := install.Remove(); err != nil {
			log.Warn("removing cairn-cni", "err", err)
		}
		rctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := probes.Remove(rctx); err != nil {
			log.Warn("removing the probe rules", "err", err)
		}
		cancel()
	}
	stopRun()
	servers.Close()
	err = g.Wait()
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	return err
}

// cpConns are the connections to istiod-lite: one, shared, when the CA
// and xDS are at the same address (the default).
type cpConns struct{ ca, xds *cpconn.Conn }

func controlPlaneConns(cfg Config, bundle *identity.Bundle, log *slog.Logger) (*cpConns, error) {
	dial := func(addr string) (*cpconn.Conn, error) {
		c, err := cpconn.Dial(cpconn.Config{
			Address: addr, ServerName: cfg.ServerName, Roots: bundle, TokenFile: cfg.TokenFile, Logger: log,
		})
		if err != nil {
			return nil, fmt.Errorf("connection to istiod-lite: %w", err)
		}
		return c, nil
	}
	ca, err := dial(cfg.CAAddress)
	if err != nil {
		return nil, err
	}
	if cfg.XDSAddress == cfg.CAAddress {
		return &cpConns{ca: ca, xds: ca}, nil
	}
	xds, err := dial(cfg.XDSAddress)
	if err != nil {
		_ = ca.Close()
		return nil, err
	}
	return &cpConns{ca: ca, xds: xds}, nil
}

func (c *cpConns) distinct() []*cpconn.Conn {
	if c.ca == c.xds {
		return []*cpconn.Conn{c.ca}
	}
	return []*cpconn.Conn{c.ca, c.xds}
}

// close closes the connections, once every client of them returned.
func (c *cpConns) close() {
	for _, conn := range c.distinct() {
		_ = conn.Close()
	}
}

// probeRulesInterval is how often ztunnel checks the node's probe rules:
// it follows the kubelet into a new cgroup (a restart under systemd makes
// one) and repairs rules someone else deleted.
const probeRulesInterval = 10 * time.Second

// nodeProbes sets up the node's probe rules (capture.Probes) in ztunnel's
// own network namespace, the node's, and applies them once, so that they
// are in place before the first pod is captured.
func nodeProbes(ctx context.Context, cfg Config, node *kubeclient.Node, log *slog.Logger) (*capture.Probes, error) {
	if err := (capture.NodeOptions{ProbeSources: cfg.ProbeSources}).Validate(); err != nil {
		return nil, fmt.Errorf("--probe-sources: %w", err)
	}
	self, err := netns.Open("/proc/self/ns/net")
	if err != nil {
		return nil, fmt.Errorf("the node's network namespace: %w", err)
	}
	port := uint16(capture.DefaultKubeletPort)
	if p := node.Status.DaemonEndpoints.KubeletEndpoint.Port; p > 0 && p < 65536 {
		port = uint16(p)
	}
	var addrs []netip.Addr
	for _, a := range node.Status.Addresses {
		if ip, err := netip.ParseAddr(a.Address); err == nil {
			addrs = append(addrs, ip)
		}
	}
	// The kubelet's cgroup is named from the root of its own cgroup
	// namespace, the node's: ztunnel's own, in a container that is not
	// privileged, is rooted at ztunnel's cgroup.
	kubelet := &capture.Kubelet{Port: port, Addrs: addrs, ProcDir: cfg.ProcDir}
	var find func() (string, *netns.Handle, error)
	switch cfg.KubeletCgroup {
	case "", "auto":
		find = kubelet.Cgroup
	case "none":
		log.Warn("--kubelet-cgroup=none: the kubelet's probes of enrolled pods are captured like any other plaintext client")
		find = func() (string, *netns.Handle, error) { return "", nil, nil }
	default:
		if err := (capture.NodeOptions{KubeletCgroup: cfg.KubeletCgroup}).Validate(); err != nil {
			_ = self.Close()
			return nil, fmt.Errorf("--kubelet-cgroup: %w", err)
		}
		find = func() (string, *netns.Handle, error) {
			cgns, err := kubelet.CgroupNamespace()
			if err != nil {
				return "", nil, err
			}
			return cfg.KubeletCgroup, cgns, nil
		}
	}
	p := &capture.Probes{
		Netns: self, IPTables: &capture.IPTables{Log: log}, Sources: cfg.ProbeSources,
		KubeletCgroup: find, Log: log,
	}
	if err := p.Reconcile(ctx); err != nil {
		log.Warn("probe rules on the node; trying again", "err", err)
	}
	return p, nil
}

// returnStartupMemory gives the memory of start-up back to the node once
// ztunnel is ready: decoding the first workload discovery response and
// listing the node's pods leave garbage that, with no traffic yet, the next
// GC would not collect for a long time (a ready ztunnel held 27–29 MB of
// RSS where one carrying traffic holds 22–26).
func returnStartupMemory(ctx context.Context, xdsSynced <-chan struct{}, agentSynced func() bool, log *slog.Logger) {
	select {
	case <-xdsSynced:
	case <-ctx.Done():
		return
	}
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for !agentSynced() {
		select {
		case <-tick.C:
		case <-ctx.Done():
			return
		}
	}
	debug.FreeOSMemory()
	log.Debug("returned start-up memory")
}

// keepInstalled chains cairn-cni into the node's CNI configuration, and
// again whenever the cluster's CNI rewrites it.
func keepInstalled(ctx context.Context, in cni.Install, log *slog.Logger) error {
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	lastErr := ""
	for {
		changed, err := in.Ensure()
		switch {
		case err != nil && err.Error() != lastErr:
			log.Warn("installing cairn-cni", "err", err)
			lastErr = err.Error()
		case err == nil && changed:
			log.Info("cairn-cni chained into the node's CNI configuration", "conf_dir", in.ConfDir, "socket", in.Socket)
			lastErr = ""
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

func kubeClient(kubeconfig string) (*kubeclient.Client, error) {
	kc, err := kubeclient.Load(kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("the Kubernetes client configuration: %w", err)
	}
	kube, err := kubeclient.New(kc, kubeclient.WithUserAgent("ztunnel"))
	if err != nil {
		return nil, fmt.Errorf("the Kubernetes client: %w", err)
	}
	return kube, nil
}

// nodeReadTimeout bounds one attempt to read the Node, so that an API
// server that accepted the connection and then stalled is tried again.
const nodeReadTimeout = 10 * time.Second

// waitNode reads ztunnel's Node, retrying while the API server is away.
func waitNode(ctx context.Context, kube *kubeclient.Client, name string, log *slog.Logger) (*kubeclient.Node, error) {
	for delay := 200 * time.Millisecond; ; delay = min(2*delay, 10*time.Second) {
		var node kubeclient.Node
		actx, cancel := context.WithTimeout(ctx, nodeReadTimeout)
		err := kube.Get(actx, kubeclient.Nodes, "", name, &node)
		cancel()
		if err == nil {
			return &node, nil
		}
		log.Warn("reading this node; retrying", "node", name, "err", err)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("reading node %s: %w", name, err)
		case <-time.After(delay):
		}
	}
}

// daemonSetGone says whether ztunnel's DaemonSet was deleted (an
// uninstall), as opposed to a restart or an update.
func daemonSetGone(kube *kubeclient.Client, ns, name string) (bool, error) {
	if name == "" {
		return false, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	var ds kubeclient.DaemonSet
	err := kube.Get(ctx, kubeclient.DaemonSets, ns, name, &ds)
	if kubeclient.IsNotFound(err) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	return ds.DeletionTimestamp != nil, nil
}

// DefaultCNIPlugin is the cairn-cni binary next to ztunnel's own.
func DefaultCNIPlugin() string {
	exe, err := os.Executable()
	if err != nil {
		return "/usr/local/bin/cairn-cni"
	}
	return filepath.Join(filepath.Dir(exe), "cairn-cni")
}
