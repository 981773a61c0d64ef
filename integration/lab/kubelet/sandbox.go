package kubelet

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/containernetworking/cni/libcni"
	cnitypes "github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"golang.org/x/sys/unix"

	"github.com/cairnmesh/cairn/integration/lab/hostos"
)

// A pod's sandbox is what its containers share: a network namespace
// (bind-mounted under <NodeRoot>/var/run/netns) wired by CNI, and a pod
// cgroup in every hierarchy.

// newNetns creates a network namespace, bind-mounts it at path and brings
// its loopback up. The work happens on a thread that is thrown away
// afterwards (locked, never unlocked), so no goroutine ever runs in the
// wrong namespace.
func newNetns(path string) error {
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return fmt.Errorf("creating network namespace: %w", err)
	}
	f.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("unshare: %w", err)
			return
		}
		self := fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid())
		if err := unix.Mount(self, path, "", unix.MS_BIND, ""); err != nil {
			errc <- fmt.Errorf("bind-mounting %s: %w", path, err)
			return
		}
		errc <- loopbackUp()
	}()
	if err := <-errc; err != nil {
		_ = removeNetns(path)
		return fmt.Errorf("creating network namespace %s: %w", path, err)
	}
	return nil
}

func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("loopback flags: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("bringing loopback up: %w", err)
	}
	return nil
}

// removeNetns unmounts and removes a network namespace's file; a missing
// one is not an error. The namespace goes once no process uses it.
func removeNetns(path string) error {
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmounting %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing %s: %w", path, err)
	}
	return nil
}

// inNetns runs fn on a thread in the network namespace at path. The thread
// is thrown away afterwards.
func inNetns(path string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked
		if err := hostos.JoinNetns(path); err != nil {
			errc <- err
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// dialInNetns connects to addr over TCP from inside the network namespace
// at path ("" dials from the kubelet's own).
func dialInNetns(ctx context.Context, path, addr string) (net.Conn, error) {
	if path == "" {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}
	var conn net.Conn
	err := inNetns(path, func() error {
		// The socket is created on this thread, so in the namespace;
		// the connect itself may complete on any thread.
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		conn = c
		return err
	})
	return conn, err
}

// ensureSharedMount makes dir a mount point with shared propagation (a
// bind mount onto itself), as `ip netns` does for /run/netns. Mounts
// made under it later then reach containers that bind it with
// HostToContainer (every lab bind of a hostPath is a slave).
func ensureSharedMount(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	mounted, err := isMountPoint(dir)
	if err != nil {
		return err
	}
	if !mounted {
		if err := unix.Mount(dir, dir, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind-mounting %s: %w", dir, err)
		}
	}
	if err := unix.Mount("", dir, "", unix.MS_SHARED, ""); err != nil {
		return fmt.Errorf("making %s shared: %w", dir, err)
	}
	return nil
}

func isMountPoint(dir string) (bool, error) {
	mps, err := hostos.MountsUnder(dir)
	if err != nil {
		return false, err
	}
	return slices.Contains(mps, dir), nil
}

// cni runs the node's CNI configuration.
type cni struct {
	confDir string
	binDirs []string
	conf    *libcni.CNIConfig
}

func newCNI(cfg Config) *cni {
	return &cni{
		confDir: cfg.CNIConfDir,
		binDirs: cfg.CNIBinDirs,
		// The cache (results for CHECK and DEL) goes under the node's
		// root, never to the host's /var/lib/cni.
		conf: libcni.NewCNIConfigWithCacheDir(cfg.CNIBinDirs, cfg.nodePath("/var/lib/cni"), nil),
	}
}

// load reads the node's network configuration: the first .conflist,
// .conf or .json file in lexical order, as kubelets and containerd pick
// it. It is read anew for each call, so that a plugin a DaemonSet chains
// in later is called for pods created after it.
func (c *cni) load() (*libcni.NetworkConfigList, error) {
	files, err := libcni.ConfFiles(c.confDir, []string{".conflist", ".conf", ".json"})
	if err != nil {
		return nil, fmt.Errorf("reading CNI configuration in %s: %w", c.confDir, err)
	}
	slices.Sort(files)
	for _, f := range files {
		if strings.HasSuffix(f, ".conflist") {
			list, err := libcni.NetworkConfFromFile(f)
			if err != nil {
				return nil, fmt.Errorf("CNI configuration %s: %w", f, err)
			}
			return list, nil
		}
		// A single plugin's configuration: a list of one, as runtimes
		// have always read it.
		var raw map[string]any
		if err := json.Unmarshal(mustRead(f), &raw); err != nil {
			return nil, fmt.Errorf("CNI configuration %s: %w", f, err)
		}
		if raw["type"] == nil {
			continue
		}
		data, _ := json.Marshal(map[string]any{"name": raw["name"], "cniVersion": raw["cniVersion"], "plugins": []any{raw}})
		list, err := libcni.NetworkConfFromBytes(data)
		if err != nil {
			return nil, fmt.Errorf("CNI configuration %s: %w", f, err)
		}
		return list, nil
	}
	return nil, fmt.Errorf("no CNI configuration in %s: the node's network is not ready", c.confDir)
}

func mustRead(path string) []byte {
	data, _ := os.ReadFile(path)
	return data
}

// podNetwork names one pod's attachment.
type podNetwork struct {
	SandboxID string
	NetNS     string
	Namespace string
	Name      string
	UID       string
}

func (n podNetwork) runtimeConf() *libcni.RuntimeConf {
	return &libcni.RuntimeConf{
		ContainerID: n.SandboxID,
		NetNS:       n.NetNS,
		IfName:      "eth0",
		Args: [][2]string{
			{"IgnoreUnknown", "1"},
			{"K8S_POD_NAMESPACE", n.Namespace},
			{"K8S_POD_NAME", n.Name},
			{"K8S_POD_INFRA_CONTAINER_ID", n.SandboxID},
			{"K8S_POD_UID", n.UID},
		},
	}
}

// add runs ADD and returns the pod's IPs.
func (c *cni) add(ctx context.Context, n podNetwork) ([]string, error) {
	list, err := c.load()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	res, err := c.conf.AddNetworkList(ctx, list, n.runtimeConf())
	if err != nil {
		return nil, fmt.Errorf("CNI ADD (%s): %w", list.Name, err)
	}
	ips, err := resultIPs(res)
	if err != nil {
		return nil, fmt.Errorf("CNI ADD (%s): %w", list.Name, err)
	}
	return ips, nil
}

// check runs CHECK (a no-op for configurations that disable it).
func (c *cni) check(ctx context.Context, n podNetwork) error {
	list, err := c.load()
	if err != nil {
		return err
	}
	if list.DisableCheck {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := c.conf.CheckNetworkList(ctx, list, n.runtimeConf()); err != nil {
		return fmt.Errorf("CNI CHECK (%s): %w", list.Name, err)
	}
	return nil
}

// del runs DEL. Without a configuration there is nothing to call; the
// namespace's removal takes the pod's interface with it.
func (c *cni) del(ctx context.Context, n podNetwork) error {
	list, err := c.load()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := c.conf.DelNetworkList(ctx, list, n.runtimeConf()); err != nil {
		return fmt.Errorf("CNI DEL (%s): %w", list.Name, err)
	}
	return nil
}

// resultIPs returns the addresses of the pod's interface (the one inside
// the namespace), IPv4 first.
func resultIPs(res cnitypes.Result) ([]string, error) {
	r, err := types100.NewResultFromResult(res)
	if err != nil {
		return nil, err
	}
	var v4, v6 []string
	for _, ip := range r.IPs {
		if ip.Interface != nil && *ip.Interface < len(r.Interfaces) && r.Interfaces[*ip.Interface].Sandbox == "" {
			continue // a host-side address
		}
		if ip.Address.IP.To4() != nil {
			v4 = append(v4, ip.Address.IP.String())
		} else {
			v6 = append(v6, ip.Address.IP.String())
		}
	}
	ips := append(v4, v6...)
	if len(ips) == 0 {
		return nil, errors.New("the result has no IP address for the pod")
	}
	return ips, nil
}

// cgroups places pods in the cgroup hierarchies, under the kubelet's own
// cgroup in each: <own>/<parent>/<qos>/pod<uid>/<container-id>.
type cgroups struct {
	bases []string // per hierarchy: mount point + own cgroup + parent
	self  []string // per hierarchy: the cgroup the kubelet moves to (Config.Cgroup), if any
	// v2 says that one of them is the cgroup v2 hierarchy: containers
	// that are not privileged get a cgroup namespace of their own, as
	// containerd gives them on a cgroup v2 node.
	v2 bool
}

// join moves the kubelet's process into its own cgroups (c.self),
// creating them.
func (c *cgroups) join() error {
	if err := createCgroups(c.self); err != nil {
		return err
	}
	return joinCgroups(c.self)
}

// discoverCgroups finds the hierarchies the kubelet's process is in.
// cpuset is left out: its cgroups take no task before cpus and mems are
// set, and nothing in the lab needs it. Pods go under parent, and the
// kubelet itself, if self is set, into self; both relative to the cgroup
// the process is in now.
func discoverCgroups(parent, self string) (*cgroups, error) {
	own, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return nil, fmt.Errorf("reading /proc/self/cgroup: %w", err)
	}
	paths := map[string]string{} // controllers ("cpu", "name=systemd", "" for v2) -> path
	for _, line := range strings.Split(strings.TrimSpace(string(own)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) == 3 {
			paths[parts[1]] = parts[2]
		}
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var cg cgroups
	seen := map[string]bool{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		sep := slices.Index(fields, "-")
		if sep < 0 || sep+3 >= len(fields) || len(fields) < 5 {
			continue
		}
		fstype, super := fields[sep+1], fields[sep+3]
		mp := hostos.UnescapeMountPath(fields[4])
		var key string
		switch fstype {
		case "cgroup2":
			key = ""
		case "cgroup":
			var ctrls []string
			for _, o := range strings.Split(super, ",") {
				if o == "rw" || o == "ro" || strings.HasPrefix(o, "release_agent") || o == "clone_children" || o == "noprefix" || o == "xattr" {
					continue
				}
				ctrls = append(ctrls, o)
			}
			key = strings.Join(ctrls, ",")
			if key == "cpuset" || key == "" {
				continue
			}
		default:
			continue
		}
		rel, ok := paths[key]
		if !ok {
			// /proc/self/cgroup may order co-mounted controllers
			// differently (cpu,cpuacct vs cpuacct,cpu).
			for k, p := range paths {
				if sameSet(k, key) {
					rel, ok = p, true
				}
			}
		}
		if !ok || seen[mp] {
			continue
		}
		seen[mp] = true
		cg.v2 = cg.v2 || fstype == "cgroup2"
		cg.bases = append(cg.bases, filepath.Join(mp, rel, parent))
		if self != "" {
			cg.self = append(cg.self, filepath.Join(mp, rel, self))
		}
	}
	if len(cg.bases) == 0 {
		return nil, errors.New("no cgroup hierarchy found in /proc/self/mountinfo")
	}
	return &cg, sc.Err()
}

func sameSet(a, b string) bool {
	x, y := strings.Split(a, ","), strings.Split(b, ",")
	slices.Sort(x)
	slices.Sort(y)
	return slices.Equal(x, y)
}

// podDirs returns the pod's cgroup directory in every hierarchy.
func (c *cgroups) podDirs(qos, uid string) []string {
	var out []string
	for _, b := range c.bases {
		if qos != "" {
			out = append(out, filepath.Join(b, qos, "pod"+uid))
		} else {
			out = append(out, filepath.Join(b, "pod"+uid))
		}
	}
	return out
}

func createCgroups(dirs []string) error {
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("creating cgroup %s: %w", d, err)
		}
	}
	return nil
}

// killCgroups sends SIGKILL to every process in the cgroups.
func killCgroups(dirs []string) {
	for _, d := range dirs {
		for _, pid := range hostos.CgroupPIDs(d) {
			_ = unix.Kill(pid, unix.SIGKILL)
		}
	}
}

// removeCgroups kills what is left in the cgroups and removes them,
// children first, retrying for up to timeout while processes exit.
func removeCgroups(dirs []string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		var errs []error
		for _, d := range dirs {
			if err := removeCgroupTree(d); err != nil {
				errs = append(errs, err)
			}
		}
		err := errors.Join(errs...)
		if err == nil || time.Now().After(deadline) {
			return err
		}
		killCgroups(dirs)
		time.Sleep(20 * time.Millisecond)
	}
}

func removeCgroupTree(dir string) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range entries {
		if e.IsDir() {
			if err := removeCgroupTree(filepath.Join(dir, e.Name())); err != nil {
				return err
			}
		}
	}
	if err := unix.Rmdir(dir); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("removing cgroup %s: %w", dir, err)
	}
	return nil
}
