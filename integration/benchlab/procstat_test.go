package benchlab

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/cairnmesh/cairn/integration/lab/hostos"
	"github.com/cairnmesh/cairn/internal/netns"
)

// userHZ is the unit of utime and stime in /proc/<pid>/stat (USER_HZ):
// 100 on every architecture Linux runs Go on; the kernel keeps it fixed
// for user space whatever its own tick.
const userHZ = 100

// proc is a proxy process being measured. start (the start time in
// /proc/<pid>/stat) tells a restarted process from the one measured.
type proc struct {
	name  string
	pid   int
	start uint64
	// pprof, for a ztunnel, is its pod, where the admin port
	// (127.0.0.1:15000, the node's loopback) serves Go's profiles.
	pprof *podRef
}

// podProcess finds the process named comm among a pod's processes: the
// lab kubelet runs containers as host processes in the pod's cgroups.
func podProcess(pod corev1.Pod, comm, name string) (proc, error) {
	pids := hostos.CgroupPIDs(cfg.PodCgroups(string(pod.UID))...)
	slices.Sort(pids)
	pids = slices.Compact(pids)
	var found []proc
	for _, pid := range pids {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if err != nil || strings.TrimSpace(string(data)) != comm {
			continue
		}
		_, start, err := readStat(pid)
		if err != nil {
			return proc{}, err
		}
		found = append(found, proc{name: name, pid: pid, start: start})
	}
	if len(found) != 1 {
		return proc{}, fmt.Errorf("pod %s/%s: %d processes named %s among %v, want 1", pod.Namespace, pod.Name, len(found), comm, pids)
	}
	return found[0], nil
}

// readStat returns a process's CPU time (user and system, every thread)
// and its start time, from /proc/<pid>/stat.
func readStat(pid int) (cpu time.Duration, start uint64, err error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	// The command name (field 2) may hold spaces; fields after it start
	// with the state (field 3).
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 20 {
		return 0, 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	utime, err1 := strconv.ParseUint(f[11], 10, 64) // field 14
	stime, err2 := strconv.ParseUint(f[12], 10, 64) // field 15
	start, err3 := strconv.ParseUint(f[19], 10, 64) // field 22
	if err1 != nil || err2 != nil || err3 != nil {
		return 0, 0, fmt.Errorf("/proc/%d/stat: %q", pid, data)
	}
	return time.Duration(utime+stime) * time.Second / userHZ, start, nil
}

// memInfo is a process's resident memory, from /proc/<pid>/status: all
// of it (VmRSS, what the targets are about), and its anonymous part (heap,
// stacks) and file part (the mapped binary and libraries, whose pages
// other processes of the same binary share).
type memInfo struct{ rss, anon, file int64 }

func readMem(pid int) (memInfo, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return memInfo{}, err
	}
	var m memInfo
	fields := map[string]*int64{"VmRSS:": &m.rss, "RssAnon:": &m.anon, "RssFile:": &m.file}
	seen := 0
	for line := range strings.SplitSeq(string(data), "\n") {
		f := strings.Fields(line)
		dst, ok := fields[firstOr(f)]
		if !ok {
			continue
		}
		if len(f) != 3 || f[2] != "kB" {
			return memInfo{}, fmt.Errorf("/proc/%d/status: %q", pid, line)
		}
		kb, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			return memInfo{}, fmt.Errorf("/proc/%d/status: %w", pid, err)
		}
		*dst = kb << 10
		seen++
	}
	if seen != len(fields) {
		return memInfo{}, fmt.Errorf("/proc/%d/status: no VmRSS, RssAnon or RssFile", pid)
	}
	return m, nil
}

func firstOr(f []string) string {
	if len(f) == 0 {
		return ""
	}
	return f[0]
}

// mb converts bytes to MiB, the unit the report calls MB.
func mb(b int64) float64 { return float64(b) / (1 << 20) }

// podNetns opens the network namespace of a pod's processes, from the
// node: what the harness does there (reading the capture rules, tuning
// the load generators' sysctls) needs what the pods themselves are not
// given (NET_ADMIN, a writable /proc/sys).
func podNetns(ctx context.Context, p podRef) (*netns.Handle, error) {
	pod, err := client.CoreV1().Pods(p.ns).Get(ctx, p.name, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	for _, pid := range hostos.CgroupPIDs(cfg.PodCgroups(string(pod.UID))...) {
		if h, err := netns.Open(fmt.Sprintf("/proc/%d/ns/net", pid)); err == nil {
			return h, nil
		}
	}
	return nil, fmt.Errorf("pod %s/%s: no process", p.ns, p.name)
}
