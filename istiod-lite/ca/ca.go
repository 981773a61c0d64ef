// Package ca is the SPIFFE certificate authority of istiod-lite: the
// cairn.ca.v1.CertificateService gRPC service. A caller authenticates
// (Authenticator), asks for a certificate for one identity with a CSR, and
// gets a chain if it may hold that identity: a workload only its own, the
// node agent (ztunnel) only identities of pods that run on its own node
// (node authorization, looked up in a PodIndex). The package knows nothing
// of Kubernetes clients; kubeca implements its interfaces.
package ca

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	cav1 "github.com/cairnmesh/cairn/apis/ca/v1"
	"github.com/cairnmesh/cairn/internal/lograte"
	"github.com/cairnmesh/cairn/internal/pki"
	"github.com/cairnmesh/cairn/internal/spiffe"
)

// Caller is an authenticated client of the CA.
type Caller struct {
	// Namespace and ServiceAccount name the caller's service account.
	Namespace, ServiceAccount string
	// PodName and PodUID name the pod the caller's token is bound to;
	// empty for tokens not bound to a pod.
	PodName, PodUID string
	// NodeName is the node of that pod as the token says, if it says.
	NodeName string
}

// Authenticator finds out who calls. An error that is a gRPC status is
// returned as is; any other error becomes codes.Unauthenticated.
type Authenticator interface {
	Authenticate(ctx context.Context) (Caller, error)
}

// PodInfo is what node authorization needs to know about a pod.
type PodInfo struct {
	UID            string
	ServiceAccount string
	NodeName       string
}

// PodIndex answers node authorization's questions from a local cache; it
// must not call the API server.
type PodIndex interface {
	// Pod returns the pod namespace/name, if it exists.
	Pod(namespace, name string) (PodInfo, bool)
	// HasPodOnNode reports whether a pod of service account namespace/sa
	// that is not finished runs on node.
	HasPodOnNode(node, namespace, serviceAccount string) bool
}

// ServiceAccountRef names a service account.
type ServiceAccountRef struct{ Namespace, Name string }

// Config configures a Server.
type Config struct {
	TrustDomain string        // spiffe.DefaultTrustDomain if empty
	DefaultTTL  time.Duration // pki.DefaultLeafTTL if zero
	MaxTTL      time.Duration // cap on what callers ask for; DefaultTTL if zero
	ClockSkew   time.Duration // NotBefore backdating; pki.DefaultClockSkew if zero
	// NodeAgents are the service accounts allowed to ask for identities of
	// pods on their node: {cairn-system ztunnel} if empty.
	NodeAgents    []ServiceAccountRef
	Authenticator Authenticator
	Pods          PodIndex
	Logger        *slog.Logger          // slog.Default() if nil; the caller adds attributes such as component
	Registerer    prometheus.Registerer // metrics are not registered if nil
	// RefusalLog paces the warning lines about refused requests (each
	// is counted in cairn_ca_csr_refused_total anyway): any caller can
	// make refusals as fast as it likes. Nil means 10 at once, then one a
	// second.
	RefusalLog *lograte.Limiter
}

// authority is what signs, swapped as a whole on rotation.
type authority struct {
	ca       *pki.CA
	chainPEM []string // ca.Cert, then ca.Chain
}

// Server implements cav1.CertificateServiceServer.
type Server struct {
	cav1.UnimplementedCertificateServiceServer
	cfg     Config
	log     *slog.Logger
	auth    atomic.Pointer[authority]
	signed  prometheus.Counter
	refused *prometheus.CounterVec
	latency prometheus.Histogram
}

// New returns a Server; it refuses every request until SetAuthority.
func New(cfg Config) (*Server, error) {
	if cfg.Authenticator == nil || cfg.Pods == nil {
		return nil, errors.New("ca: Authenticator and Pods are required")
	}
	if cfg.TrustDomain == "" {
		cfg.TrustDomain = spiffe.DefaultTrustDomain
	}
	if _, err := spiffe.New(cfg.TrustDomain, "x", "x"); err != nil {
		return nil, fmt.Errorf("ca: %w", err)
	}
	if cfg.DefaultTTL <= 0 {
		cfg.DefaultTTL = pki.DefaultLeafTTL
	}
	if cfg.MaxTTL <= 0 {
		cfg.MaxTTL = cfg.DefaultTTL
	}
	if cfg.DefaultTTL > cfg.MaxTTL {
		return nil, fmt.Errorf("ca: default TTL %v exceeds max TTL %v", cfg.DefaultTTL, cfg.MaxTTL)
	}
	if len(cfg.NodeAgents) == 0 {
		cfg.NodeAgents = []ServiceAccountRef{{Namespace: "cairn-system", Name: "ztunnel"}}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.RefusalLog == nil {
		cfg.RefusalLog = lograte.New(time.Second, 10)
	}
	s := &Server{
		cfg: cfg,
		log: cfg.Logger,
		signed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cairn_ca_csr_signed_total",
			Help: "Certificate signing requests signed.",
		}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cairn_ca_csr_refused_total",
			Help: "Certificate signing requests refused, by gRPC status code.",
		}, []string{"code"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "cairn_ca_csr_sign_duration_seconds",
			Help:    "Time to check and sign a CSR once the caller is authenticated.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 14), // 100 µs .. 0.8 s
		}),
	}
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{s.signed, s.refused, s.latency} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("ca: registering metrics: %w", err)
			}
		}
	}
	return s, nil
}

// Register adds the service to a gRPC server.
func (s *Server) Register(r grpc.ServiceRegistrar) { cav1.RegisterCertificateServiceServer(r, s) }

// SetAuthority makes ca sign from now on. Publish the roots that verify it
// before calling SetAuthority, so that no workload holds a certificate its
// peers cannot verify yet.
func (s *Server) SetAuthority(ca *pki.CA) {
	a := &authority{ca: ca}
	for _, c := range append([]*x509.Certificate{ca.Cert}, ca.Chain...) {
		a.chainPEM = append(a.chainPEM, string(pki.EncodeCertPEM(c)))
	}
	s.auth.Store(a)
	s.log.Info("signing with CA", "subject", ca.Cert.Subject.String(), "not_after", ca.Cert.NotAfter)
}

// Ready reports whether the server has an authority to sign with.
func (s *Server) Ready() bool { return s.auth.Load() != nil }

// CreateCertificate implements cav1.CertificateServiceServer.
func (s *Server) CreateCertificate(ctx context.Context, req *cav1.CreateCertificateRequest) (*cav1.CreateCertificateResponse, error) {
	resp, caller, id, err := s.create(ctx, req)
	if err != nil {
		st := status.Convert(err)
		s.refused.WithLabelValues(st.Code().String()).Inc()
		attrs := []any{"code", st.Code().String(), "reason", st.Message()}
		if caller.ServiceAccount != "" {
			attrs = append(attrs, "caller", caller.Namespace+"/"+caller.ServiceAccount, "pod", caller.PodName)
		}
		if !id.IsZero() {
			attrs = append(attrs, "identity", id.String())
		}
		if ok, suppressed := s.cfg.RefusalLog.Allow(); ok {
			if suppressed > 0 {
				attrs = append(attrs, "suppressed_since_last", suppressed)
			}
			s.log.Warn("refused CSR", attrs...)
		}
		return nil, st.Err()
	}
	s.signed.Inc()
	s.log.Debug("signed CSR", "caller", caller.Namespace+"/"+caller.ServiceAccount, "pod", caller.PodName, "identity", id.String())
	return resp, nil
}

func (s *Server) create(ctx context.Context, req *cav1.CreateCertificateRequest) (*cav1.CreateCertificateResponse, Caller, spiffe.Identity, error) {
	caller, err := s.cfg.Authenticator.Authenticate(ctx)
	if err != nil {
		if _, ok := status.FromError(err); ok {
			return nil, caller, spiffe.Identity{}, err
		}
		return nil, caller, spiffe.Identity{}, status.Errorf(codes.Unauthenticated, "authentication failed: %v", err)
	}
	start := time.Now()
	csr, err := pki.ParseCSR([]byte(req.GetCsr()))
	if err != nil {
		return nil, caller, spiffe.Identity{}, status.Errorf(codes.InvalidArgument, "invalid CSR: %v", err)
	}
	if err := pki.CheckLeafKey(csr.PublicKey); err != nil {
		return nil, caller, spiffe.Identity{}, status.Errorf(codes.InvalidArgument, "invalid CSR: %v", err)
	}
	id, err := pki.CSRIdentity(csr)
	if err != nil {
		return nil, caller, id, status.Errorf(codes.InvalidArgument, "invalid CSR: %v", err)
	}
	if id.TrustDomain != s.cfg.TrustDomain {
		return nil, caller, id, status.Errorf(codes.InvalidArgument, "CSR identity %s is not in trust domain %q", id, s.cfg.TrustDomain)
	}
	if err := s.authorize(caller, id); err != nil {
		return nil, caller, id, err
	}
	a := s.auth.Load()
	if a == nil {
		return nil, caller, id, status.Error(codes.Unavailable, "CA has no signing certificate yet")
	}
	ttl := s.cfg.DefaultTTL
	if v := req.GetValiditySeconds(); v > 0 {
		ttl = time.Duration(min(v, int64(s.cfg.MaxTTL/time.Second))) * time.Second
	}
	leaf, err := a.ca.Sign(csr.PublicKey, id, pki.LeafOptions{TTL: ttl, ClockSkew: s.cfg.ClockSkew})
	if err != nil {
		return nil, caller, id, status.Errorf(codes.Internal, "signing: %v", err)
	}
	s.latency.Observe(time.Since(start).Seconds())
	chain := append([]string{string(pki.EncodeCertPEM(leaf))}, a.chainPEM...)
	return &cav1.CreateCertificateResponse{CertChain: chain}, caller, id, nil
}

// authorize decides whether caller may hold id: its own identity always;
// another one only as a node agent, for a service account with a pod on
// the node of the agent's own pod.
func (s *Server) authorize(caller Caller, id spiffe.Identity) error {
	if caller.Namespace == id.Namespace && caller.ServiceAccount == id.ServiceAccount {
		return nil
	}
	if !s.isNodeAgent(caller) {
		return status.Errorf(codes.PermissionDenied, "service account %s/%s may only obtain its own identity, not %s",
			caller.Namespace, caller.ServiceAccount, id)
	}
	if caller.PodName == "" || caller.PodUID == "" {
		return status.Errorf(codes.PermissionDenied, "node agent %s/%s must use a token bound to its pod to obtain %s",
			caller.Namespace, caller.ServiceAccount, id)
	}
	pod, ok := s.cfg.Pods.Pod(caller.Namespace, caller.PodName)
	switch {
	case !ok:
		return status.Errorf(codes.PermissionDenied, "node agent pod %s/%s of the token does not exist", caller.Namespace, caller.PodName)
	case pod.UID != caller.PodUID:
		return status.Errorf(codes.PermissionDenied, "node agent pod %s/%s has UID %s, the token is bound to UID %s (pod was replaced)",
			caller.Namespace, caller.PodName, pod.UID, caller.PodUID)
	case pod.ServiceAccount != caller.ServiceAccount:
		return status.Errorf(codes.PermissionDenied, "node agent pod %s/%s runs as service account %s, not %s",
			caller.Namespace, caller.PodName, pod.ServiceAccount, caller.ServiceAccount)
	case pod.NodeName == "":
		return status.Errorf(codes.PermissionDenied, "node agent pod %s/%s is not scheduled to a node", caller.Namespace, caller.PodName)
	case caller.NodeName != "" && caller.NodeName != pod.NodeName:
		return status.Errorf(codes.PermissionDenied, "token is bound to node %s but pod %s/%s runs on node %s",
			caller.NodeName, caller.Namespace, caller.PodName, pod.NodeName)
	}
	if !s.cfg.Pods.HasPodOnNode(pod.NodeName, id.Namespace, id.ServiceAccount) {
		return status.Errorf(codes.PermissionDenied, "no pod of service account %s/%s runs on node %s of node agent pod %s/%s",
			id.Namespace, id.ServiceAccount, pod.NodeName, caller.Namespace, caller.PodName)
	}
	return nil
}

func (s *Server) isNodeAgent(c Caller) bool {
	for _, a := range s.cfg.NodeAgents {
		if a.Namespace == c.Namespace && a.Name == c.ServiceAccount {
			return true
		}
	}
	return false
}
