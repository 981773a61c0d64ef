package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cairnmesh/cairn/integration/lab/hostos"
	"github.com/cairnmesh/cairn/integration/lab/kubelet"
)

// DownReport says what Down removed.
type DownReport struct {
	Stopped    bool     // a running supervisor was stopped
	Killed     []int    // processes killed after the supervisor (or without one)
	Unmounted  []string // mount points under the lab dir
	Netns      []string // named network namespaces
	Links      []string // root-namespace links
	Cgroups    []string // cgroup directories
	RemovedDir bool
	Took       time.Duration
}

// supervisorStopTimeout is how long Down waits for the supervisor to stop
// the lab's processes before killing what is left.
const supervisorStopTimeout = 6 * time.Second

// Down stops the lab described by c and removes everything it made:
// processes (the supervisor and, by PID, what it started; any process left
// in a lab network namespace or pod cgroup), mounts under the lab dir,
// network namespaces (nodes and pods, with their links and iptables rules),
// the bridge and veths in the root namespace, the pods' cgroups and the lab
// dir. Nothing of a lab is not an error: Down is idempotent.
func Down(ctx context.Context, c Config) (r DownReport, err error) {
	if os.Geteuid() != 0 {
		return r, ErrNotRoot
	}
	begin := time.Now()
	defer func() { r.Took = time.Since(begin) }()
	log := c.Logger

	// 1. The supervisor stops its children and the control plane. It is
	// found by the state file, or by its command line if the state file
	// is gone.
	st, stErr := ReadState(c)
	sups := findSupervisors(c)
	if stErr == nil && st.Supervisor.Alive() && !slices.ContainsFunc(sups, func(p Proc) bool { return p.PID == st.Supervisor.PID }) {
		sups = append(sups, st.Supervisor)
	}
	if len(sups) > 0 {
		step := time.Now()
		log.Info("stopping the lab supervisor", "pid", sups[0].PID)
		if left := killAndWait(sups, unix.SIGTERM, supervisorStopTimeout); len(left) > 0 {
			log.Warn("the supervisor did not stop in time; killing it", "pid", left[0].PID)
			killAndWait(left, unix.SIGKILL, time.Second)
		}
		log.Info("supervisor stopped", "took", time.Since(step).Round(time.Millisecond))
		r.Stopped = true
	}

	// 2. Each node's kubelet knows what it started (container monitors,
	// containers, their cgroups and mounts): let it clean up first. What
	// follows sweeps whatever that missed.
	if nodeDirs, _ := filepath.Glob(filepath.Join(c.Dir, "nodes", "*", "root")); len(nodeDirs) > 0 {
		for _, root := range nodeDirs {
			if err := kubelet.Cleanup(root); err != nil {
				log.Warn("kubelet cleanup failed; sweeping instead", "node_root", root, "error", err)
			}
		}
	}

	// 3. Whatever is still alive: recorded processes, then anything in a
	// lab network namespace or a lab pod cgroup (pods, hostNetwork pods).
	if stErr == nil {
		for _, p := range st.Processes {
			if p.Alive() {
				r.Killed = append(r.Killed, p.PID)
			}
		}
		killAndWait(st.Processes, unix.SIGKILL, 2*time.Second)
	}
	nsInodes := labNetnsInodes(c)
	for range 3 { // processes may fork while we kill
		pids := slices.Concat(pidsInNetns(nsInodes), hostos.CgroupPIDs(labCgroups(c, st)...))
		pids = slices.DeleteFunc(slices.Compact(slices.Sorted(slices.Values(pids))), func(pid int) bool { return pid == os.Getpid() })
		if len(pids) == 0 {
			break
		}
		procs := make([]Proc, len(pids))
		for i, pid := range pids {
			procs[i] = newProc("", "", pid, "")
		}
		killAndWait(procs, unix.SIGKILL, 2*time.Second)
		r.Killed = append(r.Killed, pids...)
	}

	var errs []error
	// 4. Mounts under the lab dir, deepest first (pods' netns bind mounts,
	// volumes the kubelet mounted in the root mount namespace).
	mounts, merr := hostos.MountsUnder(c.Dir)
	if merr != nil {
		errs = append(errs, merr)
	}
	for _, m := range mounts {
		if err := unix.Unmount(m, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmounting %s: %w", m, err))
			continue
		}
		r.Unmounted = append(r.Unmounted, m)
	}

	// 5. Network: node namespaces, bridge, veths.
	r.Netns, _ = leftoverNetns(c)
	r.Links, _ = labLinks(c)
	if err := teardownNetwork(c); err != nil {
		errs = append(errs, err)
	}

	// 6. Cgroups of the lab's pods.
	for _, cg := range labCgroups(c, st) {
		removed, err := removeCgroupTree(cg)
		r.Cgroups = append(r.Cgroups, removed...)
		if err != nil {
			errs = append(errs, err)
		}
	}

	// 7. The lab dir.
	if _, err := os.Stat(c.Dir); err == nil {
		if err := os.RemoveAll(c.Dir); err != nil {
			errs = append(errs, fmt.Errorf("removing %s: %w", c.Dir, err))
		} else {
			r.RemovedDir = true
		}
	}
	if err := errors.Join(errs...); err != nil {
		return r, fmt.Errorf("removing the lab: %w", err)
	}
	if ctx.Err() != nil {
		return r, ctx.Err()
	}
	return r, nil
}

// findSupervisors returns the running `lab supervise --dir <c.Dir>`
// processes.
func findSupervisors(c Config) []Proc {
	var out []Proc
	for _, pid := range allPIDs() {
		data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(data), "\x00"), "\x00")
		if len(args) == 4 && args[1] == "supervise" && args[2] == "--dir" && args[3] == c.Dir {
			if p := newProc("supervisor", "", pid, ""); p.Alive() {
				out = append(out, p)
			}
		}
	}
	return out
}

// labNetnsInodes returns the inodes of the lab's network namespaces: the
// nodes', and the pods' bind-mounted under the nodes' var/run/netns.
func labNetnsInodes(c Config) map[uint64]bool {
	inodes := map[uint64]bool{}
	names, _ := leftoverNetns(c)
	paths := make([]string, 0, len(names))
	for _, n := range names {
		paths = append(paths, filepath.Join(netnsDir, n))
	}
	nodeDirs, _ := filepath.Glob(filepath.Join(c.Dir, "nodes", "*", "root", NetnsDirRel, "*"))
	paths = append(paths, nodeDirs...)
	for _, p := range paths {
		if isNsfs(p) {
			if ino, err := netnsInode(p); err == nil {
				inodes[ino] = true
			}
		}
	}
	return inodes
}

// isNsfs reports whether path is a namespace file (a bind mount of one),
// not the empty file it is mounted on.
func isNsfs(path string) bool {
	var fs unix.Statfs_t
	return unix.Statfs(path, &fs) == nil && fs.Type == unix.NSFS_MAGIC
}

// pidsInNetns lists the processes whose network namespace is one of
// inodes.
func pidsInNetns(inodes map[uint64]bool) []int {
	if len(inodes) == 0 {
		return nil
	}
	var pids []int
	for _, pid := range allPIDs() {
		ino, err := netnsInode("/proc/" + strconv.Itoa(pid) + "/ns/net")
		if err == nil && inodes[ino] {
			pids = append(pids, pid)
		}
	}
	return pids
}

func allPIDs() []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range entries {
		if pid, err := strconv.Atoi(e.Name()); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// tailFile returns the last n lines of a file, indented, for error
// messages.
func tailFile(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(%s: %v)", path, err)
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return fmt.Sprintf("--- last lines of %s ---\n    %s", path, strings.Join(lines, "\n    "))
}
