package lab

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/cairnmesh/cairn/integration/lab/hostos"
)

// Inventory is what of a lab exists on the machine.
type Inventory struct {
	Processes []Proc   // alive: recorded in the state file, or in a lab network namespace or cgroup
	Netns     []string // named network namespaces of the nodes
	PodNetns  []string // pods' network namespaces bind-mounted under the nodes' roots
	Links     []string // the bridge and veths in the root namespace
	Mounts    []string // mount points under the lab dir
	Cgroups   []string // the lab's cgroup directories
	Dir       bool     // the lab dir exists
}

// TakeInventory lists what of the lab c exists.
func TakeInventory(c Config) Inventory {
	var inv Inventory
	st, _ := ReadState(c)
	pids := map[int]bool{}
	for _, p := range append([]Proc{st.Supervisor}, st.Processes...) {
		if p.Alive() {
			inv.Processes = append(inv.Processes, p)
			pids[p.PID] = true
		}
	}
	for _, pid := range slices.Concat(pidsInNetns(labNetnsInodes(c)), hostos.CgroupPIDs(labCgroups(c, st)...)) {
		if !pids[pid] && pid != os.Getpid() {
			pids[pid] = true
			inv.Processes = append(inv.Processes, newProc(procName(pid), "", pid, ""))
		}
	}
	inv.Netns, _ = leftoverNetns(c)
	inv.PodNetns = podNetnsFiles(c)
	inv.Links, _ = labLinks(c)
	inv.Mounts, _ = hostos.MountsUnder(c.Dir)
	inv.Cgroups = labCgroups(c, st)
	_, err := os.Stat(c.Dir)
	inv.Dir = err == nil
	return inv
}

// Empty reports whether nothing of the lab is left.
func (inv Inventory) Empty() bool {
	return len(inv.Processes)+len(inv.Netns)+len(inv.PodNetns)+len(inv.Links)+len(inv.Mounts)+len(inv.Cgroups) == 0 && !inv.Dir
}

func (inv Inventory) String() string {
	var parts []string
	if len(inv.Processes) > 0 {
		var ps []string
		for _, p := range inv.Processes {
			ps = append(ps, fmt.Sprintf("%s[%d]", p.Name, p.PID))
		}
		parts = append(parts, "processes "+strings.Join(ps, " "))
	}
	for _, l := range []struct {
		what  string
		items []string
	}{{"netns", inv.Netns}, {"pod netns", inv.PodNetns}, {"links", inv.Links}, {"mounts", inv.Mounts}, {"cgroups", inv.Cgroups}} {
		if len(l.items) > 0 {
			parts = append(parts, l.what+" "+strings.Join(l.items, " "))
		}
	}
	if inv.Dir {
		parts = append(parts, "the lab dir")
	}
	if len(parts) == 0 {
		return "nothing"
	}
	return strings.Join(parts, "; ")
}

// podNetnsFiles lists the pods' network namespace mounts under the nodes'
// var/run/netns.
func podNetnsFiles(c Config) []string {
	files, _ := filepath.Glob(filepath.Join(c.Dir, "nodes", "*", "root", NetnsDirRel, "*"))
	return slices.DeleteFunc(files, func(f string) bool { return !isNsfs(f) })
}

// PodNetns returns the network namespace files of node i's pods.
func (c Config) PodNetns(i int) []string {
	files, _ := filepath.Glob(filepath.Join(c.NodeRoot(i), NetnsDirRel, "*"))
	return slices.DeleteFunc(files, func(f string) bool { return !isNsfs(f) })
}

// PodCgroups returns the cgroup directories (one per hierarchy) of the
// pod with the given UID, wherever a kubelet of this lab made them.
func (c Config) PodCgroups(uid string) []string {
	st, _ := ReadState(c)
	var out []string
	for _, root := range labCgroups(c, st) {
		_ = filepath.WalkDir(root, func(path string, e fs.DirEntry, err error) error {
			if err != nil || !e.IsDir() {
				return nil
			}
			if strings.Contains(e.Name(), uid) {
				out = append(out, path)
				return filepath.SkipDir
			}
			return nil
		})
	}
	return out
}

// procName returns a process's command name, for messages.
func procName(pid int) string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(data))
}
