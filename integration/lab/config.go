package lab

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
)

// Defaults of Config.
const (
	DefaultNodes  = 2
	DefaultPrefix = "cairn"
	MaxNodes      = 50
)

// Addresses that do not depend on the lab's subnet. The Service CIDR is
// only routed by kube-proxy's rules inside the lab's namespaces, so two
// labs on one machine can share it.
var (
	ServiceCIDR     = netip.MustParsePrefix("198.19.0.0/16")
	KubernetesSvcIP = netip.MustParseAddr("198.19.0.1")
	ClusterDNSIP    = netip.MustParseAddr("198.19.0.10")
	ClusterCIDR     = netip.MustParsePrefix("198.18.0.0/16") // every lab's node and pod addresses
)

const (
	ClusterDomain = "cluster.local"
	APIServerPort = 6443

	configFileName   = "lab.json"
	stateFileName    = "state.json"
	kubeconfigName   = "kubeconfig"
	supervisorLogRel = "logs/supervisor.log"
)

// Config describes one lab. The zero value plus FromEnv (or Defaults) is
// the developer's lab in <repo>/.lab; tests use their own Dir, Prefix and
// Subnet so they can run next to it.
type Config struct {
	// Dir is the lab directory: state, certificates, logs and the nodes'
	// filesystems. Default <repo>/.lab ($LAB_DIR).
	Dir string `json:"dir"`
	// Nodes is the number of nodes. Default 2 ($LAB_NODES).
	Nodes int `json:"nodes"`
	// Prefix names what the lab creates outside Dir: the bridge
	// <prefix>lab0, the host ends of the nodes' veths <prefix>lab-n<i> and
	// the nodes' network namespaces <prefix>-node-<i>. Default "cairn"
	// ($LAB_PREFIX); at most 8 characters.
	Prefix string `json:"prefix"`
	// Subnet is the third octet of the bridge's 198.18.<Subnet>.0/24; node
	// i's pods get 198.18.<Subnet+i>.0/24. Default 0 ($LAB_SUBNET).
	Subnet int `json:"subnet"`
	// RepoDir is the repository checkout whose bin/ holds the binaries
	// (bin/k8s for Kubernetes, bin/<name> for images cairn/<name>).
	// Default: found from the working directory or the lab binary.
	RepoDir string `json:"repoDir"`
	// LabBinary is the `lab` command the supervisor and the kubelets run
	// as. Default: this executable if it is the lab command, else
	// <RepoDir>/bin/lab.
	LabBinary string `json:"labBinary"`
	// Images maps further image references to host binaries for every
	// node's kubelet (its --image flags; see kubelet.Config.Images), e.g.
	// "haproxy" -> /usr/sbin/haproxy, so a benchmark can run a Debian
	// program as a pod. Images cairn/<name> need no entry.
	Images map[string]string `json:"images,omitempty"`

	// Logger receives progress messages. Default: discard.
	Logger *slog.Logger `json:"-"`
}

// FromEnv returns the Config given by $LAB_DIR, $LAB_NODES, $LAB_PREFIX and
// $LAB_SUBNET, with defaults for the rest.
func FromEnv() (Config, error) {
	var c Config
	c.Dir = os.Getenv("LAB_DIR")
	c.Prefix = os.Getenv("LAB_PREFIX")
	for _, v := range []struct {
		env string
		dst *int
	}{{"LAB_NODES", &c.Nodes}, {"LAB_SUBNET", &c.Subnet}} {
		if s := os.Getenv(v.env); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil {
				return c, fmt.Errorf("$%s: %w", v.env, err)
			}
			*v.dst = n
		}
	}
	return c.WithDefaults()
}

// WithDefaults validates c and fills in defaults.
func (c Config) WithDefaults() (Config, error) {
	if c.RepoDir == "" {
		root, err := findRepo()
		if err != nil {
			return c, err
		}
		c.RepoDir = root
	}
	if c.Dir == "" {
		c.Dir = filepath.Join(c.RepoDir, ".lab")
	}
	dir, err := filepath.Abs(c.Dir)
	if err != nil {
		return c, fmt.Errorf("lab dir: %w", err)
	}
	c.Dir = dir
	if c.Nodes == 0 {
		c.Nodes = DefaultNodes
	}
	if c.Nodes < 1 || c.Nodes > MaxNodes {
		return c, fmt.Errorf("lab: %d nodes: want 1 to %d", c.Nodes, MaxNodes)
	}
	if c.Prefix == "" {
		c.Prefix = DefaultPrefix
	}
	if len(c.Prefix) > 8 {
		return c, fmt.Errorf("lab: prefix %q is longer than 8 characters (interface names are at most 15)", c.Prefix)
	}
	if c.Subnet < 0 || c.Subnet+c.Nodes > 255 {
		return c, fmt.Errorf("lab: subnet %d with %d nodes leaves 198.18.0.0/16", c.Subnet, c.Nodes)
	}
	if c.LabBinary == "" {
		self, err := os.Executable()
		if err == nil && filepath.Base(self) == "lab" {
			c.LabBinary = self
		} else {
			c.LabBinary = filepath.Join(c.RepoDir, "bin", "lab")
		}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c, nil
}

// findRepo returns the repository root: the first directory above the
// working directory, or else above the executable, that has go.mod and
// integration/lab.
func findRepo() (string, error) {
	var starts []string
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	if exe, err := os.Executable(); err == nil {
		starts = append(starts, filepath.Dir(exe))
	}
	for _, dir := range starts {
		for {
			if isRepo(dir) {
				return dir, nil
			}
			parent := filepath.Dir(dir)
			if parent == dir {
				break
			}
			dir = parent
		}
	}
	return "", errors.New("lab: cannot find the repository (go.mod with integration/lab) above the working directory; run from the checkout")
}

func isRepo(dir string) bool {
	_, err1 := os.Stat(filepath.Join(dir, "go.mod"))
	_, err2 := os.Stat(filepath.Join(dir, "integration", "lab"))
	return err1 == nil && err2 == nil
}

// Names and addresses derived from the Config.

// BridgeName is the bridge in the root network namespace.
func (c Config) BridgeName() string { return c.Prefix + "lab0" }

// HostVethName is the root-namespace end of node i's veth.
func (c Config) HostVethName(i int) string { return fmt.Sprintf("%slab-n%d", c.Prefix, i) }

// NetnsName is node i's named network namespace (/var/run/netns/<name>).
func (c Config) NetnsName(i int) string { return fmt.Sprintf("%s-node-%d", c.Prefix, i) }

// NodeName is node i's Kubernetes name.
func NodeName(i int) string { return fmt.Sprintf("lab-node-%d", i) }

// BridgeAddr is the bridge's address with its prefix, 198.18.<Subnet>.1/24;
// the API server listens on it.
func (c Config) BridgeAddr() netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(c.Subnet), 1}), 24)
}

// NodeAddr is node i's address with its prefix, 198.18.<Subnet>.(10+i)/24.
func (c Config) NodeAddr(i int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(c.Subnet), byte(10 + i)}), 24)
}

// PodCIDR is node i's pod range, 198.18.<Subnet+i>.0/24.
func (c Config) PodCIDR(i int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(c.Subnet + i), 0}), 24)
}

// APIServerURL is where the API server listens.
func (c Config) APIServerURL() string {
	return fmt.Sprintf("https://%s:%d", c.BridgeAddr().Addr(), APIServerPort)
}

// Paths inside Dir.

// KubeconfigPath is the admin kubeconfig `lab up` writes.
func (c Config) KubeconfigPath() string { return filepath.Join(c.Dir, kubeconfigName) }

// LogDir holds the supervisor's, the kubelets' and kube-proxies' logs.
func (c Config) LogDir() string { return filepath.Join(c.Dir, "logs") }

// ControlPlaneDir is kubeserver's directory (certs, etcd data, logs).
func (c Config) ControlPlaneDir() string { return filepath.Join(c.Dir, "control-plane") }

// NodeDir holds node i's certificates, kubeconfigs and configuration.
func (c Config) NodeDir(i int) string { return filepath.Join(c.Dir, "nodes", NodeName(i)) }

// NodeRoot is node i's filesystem: its /etc/cni/net.d, /opt/cni/bin,
// /var/run/netns, /var/lib/cni, /var/log/pods and hostPath volumes live
// under it.
func (c Config) NodeRoot(i int) string { return filepath.Join(c.NodeDir(i), "root") }

// BinDir is <repo>/bin, where images cairn/<name> find their binaries.
func (c Config) BinDir() string { return filepath.Join(c.RepoDir, "bin") }

// K8sBinDir is <repo>/bin/k8s (make k8s-bins).
func (c Config) K8sBinDir() string { return filepath.Join(c.RepoDir, "bin", "k8s") }

func (c Config) configPath() string { return filepath.Join(c.Dir, configFileName) }

// save writes c to <Dir>/lab.json, for the supervisor and for `lab down`.
func (c Config) save() error {
	data, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(c.Dir, 0o755); err != nil {
		return fmt.Errorf("saving lab config: %w", err)
	}
	if err := os.WriteFile(c.configPath(), data, 0o644); err != nil {
		return fmt.Errorf("saving lab config: %w", err)
	}
	return nil
}

// LoadConfig reads the Config a `lab up` saved in dir.
func LoadConfig(dir string) (Config, error) {
	data, err := os.ReadFile(filepath.Join(dir, configFileName))
	if err != nil {
		return Config{}, fmt.Errorf("reading lab config: %w", err)
	}
	var c Config
	if err := json.Unmarshal(data, &c); err != nil {
		return Config{}, fmt.Errorf("reading lab config %s: %w", filepath.Join(dir, configFileName), err)
	}
	return c.WithDefaults()
}
