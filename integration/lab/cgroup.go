package lab

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cairnmesh/cairn/integration/lab/hostos"
)

// CgroupParent is node i's kubelet's CgroupParent: relative to the
// cgroup the kubelet starts in, in each hierarchy (the supervisor's, which
// it inherits), pods go under <own>/<prefix>lab/lab-node-<i>/kubepods/,
// the layout of a real kubelet's cgroupfs driver that node agents look
// for. The kubelet itself moves to KubeletCgroup, beside them.
func (c Config) CgroupParent(i int) string {
	return filepath.Join(c.cgroupName(), NodeName(i), "kubepods")
}

// KubeletCgroup is node i's kubelet's own cgroup, next to its pods'
// (CgroupParent): <own>/<prefix>lab/lab-node-<i>/kubelet, as a real node's
// systemd runs the kubelet in system.slice/kubelet.service, apart from
// kubepods. ztunnel tells the kubelet's probes apart by it.
func (c Config) KubeletCgroup(i int) string {
	return filepath.Join(c.cgroupName(), NodeName(i), "kubelet")
}

// cgroupName is the lab's own cgroup below the supervisor's, one per
// prefix.
func (c Config) cgroupName() string { return c.Prefix + "lab" }

// cgroupHierarchy is one mounted cgroup hierarchy.
type cgroupHierarchy struct {
	mount string // where it is mounted, e.g. /sys/fs/cgroup/memory
	root  string // the cgroup mounted there (field 4 of mountinfo), usually /
	key   string // its controllers as /proc/<pid>/cgroup names them ("" for v2)
}

// cgroupHierarchies lists the mounted cgroup hierarchies (v1 controllers and
// the v2 unified one).
func cgroupHierarchies() ([]cgroupHierarchy, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	subsystems := cgroupSubsystems()
	var out []cgroupHierarchy
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent dev root mount-point options ... - fstype source super-options
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		fields := strings.Fields(pre)
		typ := strings.Fields(post)
		if len(fields) < 5 || len(typ) < 3 {
			continue
		}
		h := cgroupHierarchy{mount: hostos.UnescapeMountPath(fields[4]), root: hostos.UnescapeMountPath(fields[3])}
		switch typ[0] {
		case "cgroup2":
		case "cgroup":
			var ctrls []string
			for _, o := range strings.Split(typ[2], ",") {
				if subsystems[o] || strings.HasPrefix(o, "name=") {
					ctrls = append(ctrls, o)
				}
			}
			h.key = strings.Join(ctrls, ",")
		default:
			continue
		}
		out = append(out, h)
	}
	return out, sc.Err()
}

// cgroupSubsystems returns the controllers the kernel knows (/proc/cgroups).
func cgroupSubsystems() map[string]bool {
	data, err := os.ReadFile("/proc/cgroups")
	if err != nil {
		return nil
	}
	m := map[string]bool{}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) > 0 && !strings.HasPrefix(f[0], "#") {
			m[f[0]] = true
		}
	}
	return m
}

// ownCgroups maps the hierarchies of /proc/<pid>/cgroup ("cpu",
// "cpu,cpuacct", "name=systemd", "" for v2) to the process's cgroup.
func ownCgroups(pid string) map[string]string {
	data, err := os.ReadFile("/proc/" + pid + "/cgroup")
	if err != nil {
		return nil
	}
	own := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) == 3 {
			own[parts[1]] = parts[2]
		}
	}
	return own
}

// cgroupRoots returns the directories, one per hierarchy, of the lab's
// cgroup below the cgroups of process pid ("self" for this one), and below
// each hierarchy's root: where the kubelets put the pods, whether they
// inherited this process's cgroups or the root ones.
func (c Config) cgroupRoots(pid string) []string {
	hs, err := cgroupHierarchies()
	if err != nil {
		return nil
	}
	own := ownCgroups(pid)
	var dirs []string
	for _, h := range hs {
		dirs = append(dirs, filepath.Join(h.mount, c.cgroupName()))
		if p, ok := own[h.key]; ok {
			rel, err := filepath.Rel(h.root, p)
			if err == nil && !strings.HasPrefix(rel, "..") {
				dirs = append(dirs, filepath.Join(h.mount, rel, c.cgroupName()))
			}
		}
	}
	slices.Sort(dirs)
	return slices.Compact(dirs)
}

// labCgroups returns the lab's cgroup directories that exist: those the
// supervisor recorded and those cgroupRoots finds from this process.
func labCgroups(c Config, st State) []string {
	var out []string
	for _, d := range slices.Concat(st.Cgroups, c.cgroupRoots("self")) {
		if fi, err := os.Stat(d); err == nil && fi.IsDir() && !slices.Contains(out, d) {
			out = append(out, d)
		}
	}
	return out
}

// removeCgroupTree removes a cgroup and its descendants, deepest first.
// A cgroup can only go once its processes have; rmdir is retried briefly
// while killed processes are still exiting.
func removeCgroupTree(root string) ([]string, error) {
	var dirs []string
	_ = filepath.WalkDir(root, func(path string, e fs.DirEntry, err error) error {
		if err == nil && e.IsDir() {
			dirs = append(dirs, path)
		}
		return nil
	})
	slices.SortFunc(dirs, func(a, b string) int { return strings.Count(b, "/") - strings.Count(a, "/") })
	var removed []string
	var errs []error
	for _, d := range dirs {
		var err error
		for try := 0; try < 20; try++ {
			err = unix.Rmdir(d)
			if err == nil || errors.Is(err, unix.ENOENT) || !errors.Is(err, unix.EBUSY) {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		switch {
		case err == nil:
			removed = append(removed, d)
		case errors.Is(err, unix.ENOENT):
		default:
			errs = append(errs, fmt.Errorf("removing cgroup %s: %w", d, err))
		}
	}
	return removed, errors.Join(errs...)
}
