package kubelet

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Defaults of Config.
const (
	DefaultAPIPort       = 10250
	DefaultClusterDomain = "cluster.local"
	DefaultCgroupParent  = "kubepods"
	DefaultMaxPods       = 110
	DefaultBackoffBase   = 10 * time.Second
	DefaultBackoffMax    = 5 * time.Minute
	DefaultBackoffReset  = 10 * time.Minute
	// DefaultInitCommand is the name of InitCommand, as the lab command
	// adds it.
	DefaultInitCommand = "container-init"
	// DebianCNIBinDir is where Debian's containernetworking-plugins
	// package installs bridge, host-local, loopback, ...
	DebianCNIBinDir = "/usr/lib/cni"
)

// Config configures one lab kubelet. NodeName, NodeIP, PodCIDR, NodeRoot
// and Kubeconfig are required; the rest has defaults.
type Config struct {
	// NodeName is the Node's name (e.g. lab-node-1).
	NodeName string
	// NodeIP is the node's address in its network namespace; it becomes
	// the Node's InternalIP and the pods' hostIP.
	NodeIP netip.Addr
	// PodCIDR is the node's pod range, written to spec.podCIDR(s). The CNI
	// configuration (host-local) hands out the addresses; the kubelet
	// only reports them.
	PodCIDR netip.Prefix
	// NodeRoot stands in for the node's "/": CNI configuration, network
	// namespaces, logs, volumes and hostPath volumes live under it. The
	// kubelet writes nowhere else except the cgroup filesystem.
	NodeRoot string
	// Kubeconfig is the path of the kubelet's kubeconfig.
	Kubeconfig string

	// CNIConfDir holds the node's CNI configuration; the first file in
	// lexical order is used, re-read for every pod. Default
	// <NodeRoot>/etc/cni/net.d.
	CNIConfDir string
	// CNIBinDirs are searched for plugins, in order. Default
	// <NodeRoot>/opt/cni/bin (where CNI DaemonSets install theirs) and
	// DebianCNIBinDir.
	CNIBinDirs []string

	// ClusterDNS is the nameserver of pods with dnsPolicy ClusterFirst.
	// Unset, those pods get the node's resolv.conf, as with a real
	// kubelet without --cluster-dns.
	ClusterDNS netip.Addr
	// ClusterDomain is the cluster's DNS domain. Default cluster.local.
	ClusterDomain string

	// BinDir is the repository's bin directory: image cairn/<name>[:tag]
	// runs <BinDir>/<name>. It is also visible read-only at /cairn/bin in
	// every container.
	BinDir string
	// Images maps further image references (without tag, or with) to
	// binaries, e.g. "coredns/coredns" -> <repo>/bin/coredns. An entry
	// with a tag matches only that tag; one without matches every tag.
	Images map[string]string

	// APIAddress is where the kubelet API listens. Default
	// <NodeIP>:<APIPort>.
	APIAddress string
	// APIPort is the kubelet port reported in the Node's
	// status.daemonEndpoints. Default 10250.
	APIPort int
	// TLSCertFile and TLSKeyFile are the kubelet API's serving
	// certificate (for NodeIP, signed by the lab CA); ClientCAFile
	// verifies the API server's client certificate. Without them the
	// kubelet API is not served.
	TLSCertFile  string
	TLSKeyFile   string
	ClientCAFile string

	// CgroupParent is the cgroup under which pods are placed, relative to
	// the kubelet's own cgroup in each hierarchy. Default "kubepods":
	// pod cgroups are <own>/kubepods/<qos>/pod<uid>/<container-id>.
	CgroupParent string
	// Cgroup, if set, is where the kubelet moves itself first thing,
	// relative to the cgroup it starts in (in each hierarchy it puts pods
	// in): a cgroup of its own, next to its pods' and not above them, as
	// systemd gives a real node's kubelet (system.slice/kubelet.service).
	// Node agents tell the kubelet's connections apart by it (ztunnel's
	// probe exemption); pods, host-network ones too, are never in it.
	Cgroup string
	// MaxPods is the Node's pod capacity. Default 110.
	MaxPods int

	// Restart back-off: the first restart is immediate, the next waits
	// BackoffBase, doubling up to BackoffMax; a container that ran for
	// BackoffReset starts over. Defaults 10s, 5m, 10m as in Kubernetes.
	BackoffBase  time.Duration
	BackoffMax   time.Duration
	BackoffReset time.Duration

	// InitArgs are the arguments after /proc/self/exe that reach
	// InitCommand. Default ["container-init"], which is right when the
	// command is added to the root command of this executable.
	InitArgs []string

	// Logger receives the kubelet's log. Default: discard.
	Logger *slog.Logger
}

// withDefaults validates c and fills in the defaults.
func (c Config) withDefaults() (Config, error) {
	var errs []error
	if c.NodeName == "" {
		errs = append(errs, errors.New("missing NodeName"))
	}
	if !c.NodeIP.IsValid() {
		errs = append(errs, errors.New("missing NodeIP"))
	}
	if !c.PodCIDR.IsValid() {
		errs = append(errs, errors.New("missing PodCIDR"))
	}
	if c.NodeRoot == "" {
		errs = append(errs, errors.New("missing NodeRoot"))
	}
	if c.Kubeconfig == "" {
		errs = append(errs, errors.New("missing Kubeconfig"))
	}
	if len(errs) > 0 {
		return c, fmt.Errorf("kubelet config: %w", errors.Join(errs...))
	}
	root, err := filepath.Abs(c.NodeRoot)
	if err != nil {
		return c, fmt.Errorf("kubelet config: %w", err)
	}
	c.NodeRoot = root
	c.PodCIDR = c.PodCIDR.Masked()
	if c.CNIConfDir == "" {
		c.CNIConfDir = c.nodePath("/etc/cni/net.d")
	}
	if len(c.CNIBinDirs) == 0 {
		c.CNIBinDirs = []string{c.nodePath("/opt/cni/bin"), DebianCNIBinDir}
	}
	if c.ClusterDomain == "" {
		c.ClusterDomain = DefaultClusterDomain
	}
	if c.APIPort == 0 {
		c.APIPort = DefaultAPIPort
	}
	if c.APIAddress == "" {
		c.APIAddress = netip.AddrPortFrom(c.NodeIP, uint16(c.APIPort)).String()
	}
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") || (c.TLSCertFile != "" && c.ClientCAFile == "") {
		return c, errors.New("kubelet config: TLSCertFile, TLSKeyFile and ClientCAFile go together")
	}
	if c.CgroupParent == "" {
		c.CgroupParent = DefaultCgroupParent
	}
	c.CgroupParent = strings.Trim(filepath.Clean("/"+c.CgroupParent), "/")
	if c.Cgroup != "" {
		c.Cgroup = strings.Trim(filepath.Clean("/"+c.Cgroup), "/")
		if c.Cgroup == c.CgroupParent || strings.HasPrefix(c.CgroupParent+"/", c.Cgroup+"/") {
			return c, fmt.Errorf("kubelet config: its cgroup %q would hold its pods' (%q)", c.Cgroup, c.CgroupParent)
		}
	}
	if c.MaxPods == 0 {
		c.MaxPods = DefaultMaxPods
	}
	if c.BackoffBase <= 0 {
		c.BackoffBase = DefaultBackoffBase
	}
	if c.BackoffMax <= 0 {
		c.BackoffMax = DefaultBackoffMax
	}
	if c.BackoffMax < c.BackoffBase {
		c.BackoffMax = c.BackoffBase
	}
	if c.BackoffReset <= 0 {
		c.BackoffReset = DefaultBackoffReset
	}
	if len(c.InitArgs) == 0 {
		c.InitArgs = []string{DefaultInitCommand}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c, nil
}

// nodePath maps an absolute path on the node to the host: NodeRoot + p.
func (c Config) nodePath(p string) string {
	return filepath.Join(c.NodeRoot, filepath.Clean("/"+p))
}

// stateDir holds the kubelet's own per-pod state (what survives a
// restart of the kubelet).
func (c Config) stateDir() string { return c.nodePath("/var/lib/cairn-kubelet") }

// netnsDir holds the pods' network namespaces, as /var/run/netns does on
// a real node (node agents mount it with hostPath).
func (c Config) netnsDir() string { return c.nodePath("/var/run/netns") }

// podsDir is the kubelet's pod directory (volumes), as /var/lib/kubelet/pods.
func (c Config) podsDir() string { return c.nodePath("/var/lib/kubelet/pods") }

// logDir is /var/log/pods on the node.
func (c Config) logDir() string { return c.nodePath("/var/log/pods") }

// ErrUnknownImage is returned (wrapped) by resolveImage for an image no
// binary stands for.
var ErrUnknownImage = errors.New("unknown image")

// resolveImage returns the binary that image runs: an explicit entry of
// Images (with its tag, or without), else <BinDir>/<name> for
// cairn/<name>[:tag] (also docker.io/cairn/<name>). The binary must exist.
func (c Config) resolveImage(image string) (string, error) {
	ref := strings.TrimPrefix(image, "docker.io/")
	ref, _, _ = strings.Cut(ref, "@") // a digest names no binary of ours
	name, tag := ref, ""
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		name, tag = ref[:i], ref[i+1:]
	}
	var bin string
	switch {
	case tag != "" && c.Images[name+":"+tag] != "":
		bin = c.Images[name+":"+tag]
	case c.Images[name] != "":
		bin = c.Images[name]
	case strings.HasPrefix(name, "cairn/") && c.BinDir != "":
		base := strings.TrimPrefix(name, "cairn/")
		if base == "" || strings.Contains(base, "/") || base == "." || base == ".." {
			return "", fmt.Errorf("%w %q: cairn/<name> names a binary in bin/", ErrUnknownImage, image)
		}
		bin = filepath.Join(c.BinDir, base)
	default:
		return "", fmt.Errorf("%w %q: the lab runs images cairn/<name> (bin/<name> of the repository) and %d configured others",
			ErrUnknownImage, image, len(c.Images))
	}
	fi, err := os.Stat(bin)
	if err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
		return "", fmt.Errorf("%w %q: its binary %s is missing or not executable (run `make build`)", ErrUnknownImage, image, bin)
	}
	return bin, nil
}
