package kubeserver

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"
)

// Binary names, as found in Options.BinDir. They are also the keys of
// Options.ExtraArgs and the names of the log files in Options.Dir.
const (
	Etcd              = "etcd"
	APIServer         = "kube-apiserver"
	ControllerManager = "kube-controller-manager"
	Scheduler         = "kube-scheduler"
)

// DefaultControllers are the kube-controller-manager controllers started
// when Options.Controllers is empty: what a mesh control plane observes
// (EndpointSlices, ServiceAccounts and their tokens, the root CA ConfigMap),
// namespace and garbage-collector clean-up, and the aggregation of
// ClusterRoles (without it the built-in view/edit/admin roles have no
// rules). Nothing that needs a cloud or kubelets.
var DefaultControllers = []string{
	"endpointslice",
	"endpointslicemirroring",
	"serviceaccount",
	"serviceaccount-token",
	"root-ca-cert-publisher",
	"namespace",
	"garbagecollector",
	"clusterrole-aggregation",
}

// DefaultServiceCIDR is the default Options.ServiceCIDR.
const DefaultServiceCIDR = "198.19.0.0/20"

// allowedServiceRange is where service CIDRs must lie: part of the
// 198.18.0.0/15 benchmarking range (RFC 2544), never routed, so a stray
// packet to a ClusterIP can't reach a real network.
var allowedServiceRange = netip.MustParsePrefix("198.19.0.0/16")

// DefaultServiceAccountIssuer is the default Options.ServiceAccountIssuer.
const DefaultServiceAccountIssuer = "https://kubernetes.default.svc.cluster.local"

// ErrBinaryNotFound is returned (wrapped) by Start when a binary it needs
// is missing from Options.BinDir.
var ErrBinaryNotFound = errors.New("binary not found")

// Options configures Start. Dir and BinDir are required; everything else
// has a default suitable for tests on loopback.
type Options struct {
	// Dir holds everything the server writes: certificates (certs/), etcd's
	// data (etcd/), kubeconfigs and one <binary>.log per process. It is
	// created if missing and not removed by Stop.
	Dir string
	// BinDir holds the etcd, kube-apiserver, kube-controller-manager and
	// kube-scheduler binaries.
	BinDir string

	// BindAddress is where kube-apiserver listens. Default 127.0.0.1. etcd,
	// kube-controller-manager and kube-scheduler always listen on
	// 127.0.0.1: only the API server is meant to be reached from elsewhere
	// (e.g. from the lab's network namespaces).
	BindAddress net.IP
	// AdvertiseAddress is the address the API server advertises to
	// cluster members. Default: BindAddress, or 127.0.0.1 when BindAddress
	// is unspecified (0.0.0.0 or ::). Clients from Config connect to
	// BindAddress, or to AdvertiseAddress when BindAddress is unspecified.
	AdvertiseAddress net.IP
	// SecurePort is the API server's port; 0 picks a free one.
	SecurePort int
	// ExtraIPs and ExtraDNSNames are added to the SANs of the API server's
	// serving certificate. It always has 127.0.0.1, ::1, localhost, the
	// bind and advertise addresses, the "kubernetes" Service's ClusterIP and
	// the kubernetes.default.svc names.
	ExtraIPs      []net.IP
	ExtraDNSNames []string

	// ServiceCIDR is --service-cluster-ip-range. It must lie within
	// 198.19.0.0/16. Default DefaultServiceCIDR.
	ServiceCIDR string
	// ServiceAccountIssuer is --service-account-issuer. Default
	// DefaultServiceAccountIssuer.
	ServiceAccountIssuer string
	// APIAudiences is --api-audiences, the audiences the API server itself
	// accepts in tokens. Default: the issuer only.
	APIAudiences []string
	// KeyAlgorithm is used for every generated key. Default ECDSA.
	KeyAlgorithm KeyAlgorithm

	// ControllerManager starts kube-controller-manager with Controllers
	// (default DefaultControllers).
	ControllerManager bool
	Controllers       []string
	// Scheduler starts kube-scheduler.
	Scheduler bool

	// ExtraArgs are appended to a binary's flags, keyed by binary name
	// (Etcd, APIServer, ...). Flags given later win, so they can override
	// the defaults.
	ExtraArgs map[string][]string

	// StartTimeout bounds the wait for each process to become ready.
	// Default 60s.
	StartTimeout time.Duration
	// StopGrace is how long Stop waits after SIGTERM before SIGKILL.
	// Default 5s.
	StopGrace time.Duration

	// Logger receives the server's own progress messages (not the
	// processes' logs, which go to files). Default: discard.
	Logger *slog.Logger
}

// withDefaults validates o and returns a copy with the defaults filled in.
func (o Options) withDefaults() (Options, error) {
	if o.Dir == "" {
		return o, errors.New("options: Dir is required")
	}
	if o.BinDir == "" {
		return o, errors.New("options: BinDir is required")
	}
	dir, err := filepath.Abs(o.Dir)
	if err != nil {
		return o, fmt.Errorf("options: %w", err)
	}
	o.Dir = dir
	if o.BindAddress == nil {
		o.BindAddress = net.IPv4(127, 0, 0, 1)
	}
	if o.AdvertiseAddress == nil {
		o.AdvertiseAddress = o.BindAddress
		if o.BindAddress.IsUnspecified() {
			o.AdvertiseAddress = net.IPv4(127, 0, 0, 1)
		}
	}
	if o.SecurePort < 0 || o.SecurePort > 65535 {
		return o, fmt.Errorf("options: SecurePort %d out of range", o.SecurePort)
	}
	if o.ServiceCIDR == "" {
		o.ServiceCIDR = DefaultServiceCIDR
	}
	if _, err := serviceIP(o.ServiceCIDR); err != nil {
		return o, err
	}
	if o.ServiceAccountIssuer == "" {
		o.ServiceAccountIssuer = DefaultServiceAccountIssuer
	}
	if len(o.APIAudiences) == 0 {
		o.APIAudiences = []string{o.ServiceAccountIssuer}
	}
	if o.ControllerManager && len(o.Controllers) == 0 {
		o.Controllers = DefaultControllers
	}
	if o.StartTimeout <= 0 {
		o.StartTimeout = 60 * time.Second
	}
	if o.StopGrace <= 0 {
		o.StopGrace = 5 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o, nil
}

// binaries returns the names of the binaries o needs.
func (o Options) binaries() []string {
	bins := []string{Etcd, APIServer}
	if o.ControllerManager {
		bins = append(bins, ControllerManager)
	}
	if o.Scheduler {
		bins = append(bins, Scheduler)
	}
	return bins
}

// CheckBinaries reports (wrapping ErrBinaryNotFound) whether a binary
// that opts needs is missing from opts.BinDir or not executable.
func CheckBinaries(opts Options) error {
	var missing []string
	for _, b := range opts.binaries() {
		fi, err := os.Stat(filepath.Join(opts.BinDir, b))
		if err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
			missing = append(missing, b)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: %v in %s", ErrBinaryNotFound, missing, opts.BinDir)
	}
	return nil
}

// serviceIP checks that cidr is an IPv4 prefix inside 198.19.0.0/16 and
// returns its first usable address, which the API server gives to the
// "kubernetes" Service.
func serviceIP(cidr string) (net.IP, error) {
	p, err := netip.ParsePrefix(cidr)
	if err != nil {
		return nil, fmt.Errorf("options: ServiceCIDR: %w", err)
	}
	if p != p.Masked() {
		return nil, fmt.Errorf("options: ServiceCIDR %s has host bits set", cidr)
	}
	if !p.Addr().Is4() || p.Bits() < allowedServiceRange.Bits() || !allowedServiceRange.Contains(p.Addr()) {
		return nil, fmt.Errorf("options: ServiceCIDR %s is not inside %s", cidr, allowedServiceRange)
	}
	if p.Bits() > 30 {
		return nil, fmt.Errorf("options: ServiceCIDR %s is too small", cidr)
	}
	return net.IP(p.Addr().Next().AsSlice()), nil
}
