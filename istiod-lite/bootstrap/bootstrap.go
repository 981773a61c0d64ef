// Package bootstrap wires istiod-lite together: Kubernetes clients and
// informers, the mesh index, the delta xDS server, the CA and its trust
// bundle, and the gRPC (15012), metrics and probes (15014) and debug
// (127.0.0.1:8080) listeners. Run owns every goroutine it starts and
// returns when ctx is done.
package bootstrap

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	cairnclient "github.com/cairnmesh/cairn/apis/client/clientset/versioned"
	"github.com/cairnmesh/cairn/internal/lograte"
	"github.com/cairnmesh/cairn/internal/pki"
	"github.com/cairnmesh/cairn/internal/spiffe"
	"github.com/cairnmesh/cairn/istiod-lite/ca"
	"github.com/cairnmesh/cairn/istiod-lite/ca/kubeca"
	"github.com/cairnmesh/cairn/istiod-lite/index"
	"github.com/cairnmesh/cairn/istiod-lite/model"
	"github.com/cairnmesh/cairn/istiod-lite/xds"
)

// Config is istiod-lite's configuration, from flags and environment.
type Config struct {
	Kubeconfig     string // empty: in-cluster
	Namespace      string // where istiod-lite runs and keeps the CA root
	ServiceAccount string // istiod-lite's own service account
	XDSAddress     string // gRPC: delta xDS and the CA, TLS
	MetricsAddress string // Prometheus /metrics, and /ready and /healthz for the kubelet's probes
	DebugAddress   string // /debug/... (and /ready, /healthz): keep it on localhost, reached by port-forward

	TrustDomain   string
	ClusterID     string
	DomainSuffix  string
	RootNamespace string
	TokenAudience string
	// Ztunnel is the node agents' service account, "namespace/name".
	Ztunnel string
	// XDSServiceAccounts are the service accounts ("namespace/name") that
	// may read workload discovery: the ztunnels' (and, later, the
	// waypoints'). Anyone else is refused with PermissionDenied.
	XDSServiceAccounts []string
	// XDSMaxSubscriptions and XDSMaxResourceNameLength bound what one xDS
	// stream may subscribe to (xds.Config); zero means the defaults.
	XDSMaxSubscriptions      int
	XDSMaxResourceNameLength int

	// TokenReview bounds the cost of bearer tokens (kubeca.TokenReviewer);
	// zero values mean the defaults.
	TokenReviewCacheSize   int
	TokenReviewCacheTTL    time.Duration
	TokenReviewMaxInFlight int
	TokenReviewWait        time.Duration
	// RefusalLogEvery and RefusalLogBurst pace the warning lines about
	// refused xDS streams and CSRs (each kind on its own): RefusalLogBurst
	// at once, then one per RefusalLogEvery. Zero Every logs them all.
	RefusalLogEvery time.Duration
	RefusalLogBurst int

	Debounce, MaxDelay  time.Duration
	CertTTL, MaxCertTTL time.Duration

	Logger *slog.Logger
}

// Run serves until ctx is done, then shuts everything down.
func Run(ctx context.Context, cfg Config) error {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	restConfig, err := clientConfig(cfg.Kubeconfig)
	if err != nil {
		return err
	}
	kube, err := kubernetes.NewForConfig(restConfig)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	security, err := cairnclient.NewForConfig(restConfig)
	if err != nil {
		return fmt.Errorf("security.istio.io client: %w", err)
	}
	nodeAgent, err := parseServiceAccount(cfg.Ztunnel)
	if err != nil {
		return err
	}
	var xdsClients []ca.ServiceAccountRef
	for _, sa := range cfg.XDSServiceAccounts {
		ref, err := parseServiceAccount(sa)
		if err != nil {
			return fmt.Errorf("xDS service accounts: %w", err)
		}
		xdsClients = append(xdsClients, ref)
	}
	if !slices.Contains(xdsClients, nodeAgent) {
		log.Warn("the ztunnel service account may not read workload discovery: ztunnels will get no configuration",
			"ztunnel_service_account", cfg.Ztunnel, "xds_service_accounts", cfg.XDSServiceAccounts)
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	reviewer := &kubeca.TokenReviewer{
		Client: kube, Audiences: []string{cfg.TokenAudience},
		CacheSize: cfg.TokenReviewCacheSize, CacheTTL: cfg.TokenReviewCacheTTL,
		MaxInFlight: cfg.TokenReviewMaxInFlight, ReviewWait: cfg.TokenReviewWait,
	}
	reg.MustRegister(reviewer.Collectors()...)

	// Workload discovery. Authorizations come first in delivery order: a
	// ztunnel never holds an Address before the policies pushed with it.
	xdsServer, err := xds.New(xds.Config{
		TypeURLs:              []string{model.AuthorizationTypeURL, model.AddressTypeURL},
		Debounce:              cfg.Debounce,
		MaxDelay:              cfg.MaxDelay,
		Authenticator:         xdsAuthenticator{reviewer: reviewer, trustDomain: cfg.TrustDomain, allowed: xdsClients},
		Logger:                log.With("component", "xds"),
		Registerer:            reg,
		MaxSubscriptions:      cfg.XDSMaxSubscriptions,
		MaxResourceNameLength: cfg.XDSMaxResourceNameLength,
		RefusalLog:            lograte.New(cfg.RefusalLogEvery, cfg.RefusalLogBurst),
	})
	if err != nil {
		return fmt.Errorf("xDS server: %w", err)
	}
	idx := index.New(kube, security, xdsServer, model.Config{
		ClusterID: cfg.ClusterID, DomainSuffix: cfg.DomainSuffix,
		TrustDomain: cfg.TrustDomain, RootNamespace: cfg.RootNamespace,
	}, log.With("component", "index"))

	// The CA: node authorization answers from the model's pod informer.
	pods, err := kubeca.NewPodIndex(idx.PodInformer())
	if err != nil {
		return fmt.Errorf("pod index: %w", err)
	}
	caServer, err := ca.New(ca.Config{
		TrustDomain:   cfg.TrustDomain,
		DefaultTTL:    cfg.CertTTL,
		MaxTTL:        cfg.MaxCertTTL,
		NodeAgents:    []ca.ServiceAccountRef{nodeAgent},
		Authenticator: reviewer,
		Pods:          pods,
		Logger:        log.With("component", "ca"),
		Registerer:    reg,
		RefusalLog:    lograte.New(cfg.RefusalLogEvery, cfg.RefusalLogBurst),
	})
	if err != nil {
		return fmt.Errorf("CA: %w", err)
	}
	serving := &servingCert{namespace: cfg.Namespace, serviceAccount: cfg.ServiceAccount, trustDomain: cfg.TrustDomain}
	bundle := &kubeca.Controller{
		Client: kube, Namespace: cfg.Namespace, TrustDomain: cfg.TrustDomain,
		Sink:   authorities{caServer, serving},
		Logger: log.With("component", "trust-bundle"),
	}

	// Clients may present a mesh certificate (verified against the current
	// trust bundle) instead of a token.
	grpcServer := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{
		MinVersion: tls.VersionTLS13,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			roots := x509.NewCertPool()
			roots.AppendCertsFromPEM([]byte(bundle.Bundle()))
			return &tls.Config{
				MinVersion:     tls.VersionTLS13,
				NextProtos:     []string{"h2"},
				GetCertificate: serving.get,
				ClientAuth:     tls.VerifyClientCertIfGiven,
				ClientCAs:      roots,
			}, nil
		},
	})),
		// ztunnels ping every 30 s to notice a dead connection (a node gone,
		// a network cut) in seconds rather than with TCP's minutes; allow
		// that, and ping idle clients ourselves.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 15 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: time.Minute, Timeout: 20 * time.Second}),
	)
	caServer.Register(grpcServer)
	xdsServer.Register(grpcServer)

	ready := func() error {
		switch {
		case !pods.HasSynced():
			return errors.New("pod informer not synced")
		case !bundle.Ready() || !caServer.Ready():
			return errors.New("CA root not loaded")
		case !idx.Ready():
			return errors.New("mesh model not built")
		}
		select {
		case <-xdsServer.Ready():
			return nil
		default:
			return errors.New("xDS server has no snapshot yet")
		}
	}
	// The probes answer on the pod-reachable metrics port (the kubelet
	// probes the pod's IP) and on the debug port. /debug/* lists every
	// workload, address, service account and policy of the mesh: it is
	// served only on the debug port, which listens on localhost by default
	// (kubectl port-forward reaches it there).
	probes := func(mux *http.ServeMux) {
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
		mux.HandleFunc("/ready", func(w http.ResponseWriter, _ *http.Request) {
			if err := ready(); err != nil {
				http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
				return
			}
			_, _ = w.Write([]byte("ready\n"))
		})
	}
	debug := http.NewServeMux()
	probes(debug)
	debug.HandleFunc("/debug/model", func(w http.ResponseWriter, _ *http.Request) { writeModel(w, idx.Last()) })
	debug.Handle("/debug/", xdsServer.DebugHandler())
	metrics := http.NewServeMux()
	probes(metrics)
	metrics.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	if !isLoopback(cfg.DebugAddress) {
		log.Warn("the debug server listens beyond localhost: anyone who reaches it can read the whole mesh model",
			"debug_address", cfg.DebugAddress)
	}

	listeners := map[string]string{"xds": cfg.XDSAddress, "metrics": cfg.MetricsAddress, "debug": cfg.DebugAddress}
	lns := map[string]net.Listener{}
	for name, addr := range listeners {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			for _, l := range lns {
				_ = l.Close()
			}
			return fmt.Errorf("listening for %s on %s: %w", name, addr, err)
		}
		lns[name] = ln
		log.Info("listening", "server", name, "addr", ln.Addr().String())
	}

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return bundle.Run(gctx) })
	g.Go(func() error { return xdsServer.Run(gctx) })
	g.Go(func() error { return idx.Run(gctx) })
	g.Go(func() error { return grpcServer.Serve(lns["xds"]) })
	for _, h := range []struct {
		name    string
		handler http.Handler
	}{{"metrics", metrics}, {"debug", debug}} {
		srv := &http.Server{Handler: h.handler, ReadHeaderTimeout: 10 * time.Second}
		ln := lns[h.name]
		g.Go(func() error {
			if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("%s server: %w", h.name, err)
			}
			return nil
		})
		g.Go(func() error {
			<-gctx.Done()
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			return srv.Shutdown(sctx)
		})
	}
	g.Go(func() error {
		<-gctx.Done()
		grpcServer.GracefulStop()
		return nil
	})
	err = g.Wait()
	if ctx.Err() != nil {
		return nil // asked to stop
	}
	return err
}

func clientConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig == "" {
		c, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("in-cluster Kubernetes config (use --kubeconfig outside a cluster): %w", err)
		}
		return c, nil
	}
	c, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("loading kubeconfig %s: %w", kubeconfig, err)
	}
	return c, nil
}

func parseServiceAccount(s string) (ca.ServiceAccountRef, error) {
	for i := range len(s) {
		if s[i] == '/' && i > 0 && i < len(s)-1 {
			return ca.ServiceAccountRef{Namespace: s[:i], Name: s[i+1:]}, nil
		}
	}
	return ca.ServiceAccountRef{}, fmt.Errorf("service account %q is not namespace/name", s)
}

// authorities hands a new CA root to everything that signs with it.
type authorities []kubeca.AuthoritySink

func (a authorities) SetAuthority(c *pki.CA) {
	for _, s := range a {
		s.SetAuthority(c)
	}
}

// xdsAuthenticator admits xDS clients by the mesh certificate they
// presented (already verified against the trust bundle in the handshake),
// or else by their ServiceAccount token, the same way the CA does; and
// then only the service accounts in allowed: workload discovery lists
// every pod, address, service account and policy of the mesh, which only
// the proxies need.
type xdsAuthenticator struct {
	reviewer    *kubeca.TokenReviewer
	trustDomain string
	allowed     []ca.ServiceAccountRef
}

func (a xdsAuthenticator) Authenticate(ctx context.Context) (xds.Identity, error) {
	id, sa, err := a.identify(ctx)
	if err != nil {
		return xds.Identity{}, err
	}
	if !slices.Contains(a.allowed, sa) {
		names := make([]string, 0, len(a.allowed))
		for _, r := range a.allowed {
			names = append(names, r.Namespace+"/"+r.Name)
		}
		return xds.Identity{}, status.Errorf(codes.PermissionDenied,
			"xds: %s may not read workload discovery: only the service accounts %v may (istiod-lite --xds-service-accounts)",
			id.Principal, names)
	}
	return id, nil
}

// identify says who the client is, and as which service account.
func (a xdsAuthenticator) identify(ctx context.Context) (xds.Identity, ca.ServiceAccountRef, error) {
	if p, ok := peer.FromContext(ctx); ok {
		if info, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(info.State.VerifiedChains) > 0 {
			id, err := spiffe.FromCert(info.State.VerifiedChains[0][0])
			if err != nil {
				return xds.Identity{}, ca.ServiceAccountRef{}, fmt.Errorf("client certificate: %w", err)
			}
			if id.TrustDomain != a.trustDomain {
				return xds.Identity{}, ca.ServiceAccountRef{}, status.Errorf(codes.PermissionDenied,
					"xds: client certificate of trust domain %q, this mesh is %q", id.TrustDomain, a.trustDomain)
			}
			return xds.Identity{Principal: id.String()}, ca.ServiceAccountRef{Namespace: id.Namespace, Name: id.ServiceAccount}, nil
		}
	}
	c, err := a.reviewer.Authenticate(ctx)
	if err != nil {
		return xds.Identity{}, ca.ServiceAccountRef{}, err
	}
	return xds.Identity{Principal: "system:serviceaccount:" + c.Namespace + ":" + c.ServiceAccount, Node: c.NodeName},
		ca.ServiceAccountRef{Namespace: c.Namespace, Name: c.ServiceAccount}, nil
}

// isLoopback reports whether a listen address binds only a loopback
// address.
func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// servingCert is istiod-lite's own TLS certificate for port 15012: its
// SPIFFE identity plus the DNS name istiod.<namespace>.svc, signed by the
// current CA root and renewed at half its life.
type servingCert struct {
	namespace, serviceAccount, trustDomain string

	mu   sync.Mutex
	ca   *pki.CA
	cert *tls.Certificate
	half time.Time
}

func (s *servingCert) SetAuthority(c *pki.CA) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ca, s.cert = c, nil
}

func (s *servingCert) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cert != nil && time.Now().Before(s.half) {
		return s.cert, nil
	}
	if s.ca == nil {
		return nil, errors.New("the CA root is not loaded yet")
	}
	key, err := pki.GenerateKey()
	if err != nil {
		return nil, err
	}
	id := spiffe.Identity{TrustDomain: s.trustDomain, Namespace: s.namespace, ServiceAccount: s.serviceAccount}
	leaf, err := s.ca.Sign(key.Public(), id, pki.LeafOptions{
		DNSNames: []string{"istiod." + s.namespace + ".svc", "istiod." + s.namespace + ".svc.cluster.local"},
	})
	if err != nil {
		return nil, fmt.Errorf("issuing the xDS serving certificate: %w", err)
	}
	// Leaf, then the signing certificate and whatever lies between it and
	// the root, so clients with only the root can build the path.
	chain := [][]byte{leaf.Raw, s.ca.Cert.Raw}
	for _, c := range s.ca.Chain {
		chain = append(chain, c.Raw)
	}
	s.cert = &tls.Certificate{Certificate: chain, PrivateKey: key, Leaf: leaf}
	s.half = leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) / 2)
	return s.cert, nil
}

// writeModel serves the last built model: resource names per type, the
// objects skipped and the policy statuses.
func writeModel(w http.ResponseWriter, r index.Result) {
	out := struct {
		Resources map[string][]string  `json:"resources"`
		Skipped   []string             `json:"skipped"`
		Statuses  []index.PolicyStatus `json:"statuses"`
	}{Resources: map[string][]string{}, Statuses: r.Statuses}
	for typeURL, res := range r.Resources {
		for name := range res {
			out.Resources[typeURL] = append(out.Resources[typeURL], name)
		}
	}
	for _, s := range r.Skipped {
		out.Skipped = append(out.Skipped, s.String())
	}
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(out)
}
