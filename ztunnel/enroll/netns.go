package enroll

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/cairnmesh/cairn/internal/netns"
	"github.com/cairnmesh/cairn/ztunnel/capture"
	"github.com/cairnmesh/cairn/ztunnel/nodeagent"
)

// NetnsFinder finds the network namespace of a pod that runs on the node
// without cairn-cni's help: a pod that ran before ztunnel started (a
// restart, an upgrade) or before its namespace was enrolled. It finds it
// only by what the pod cannot forge, never by an address: any pod with
// NET_ADMIN can put another pod's IP on its own interfaces.
//
// What a pod cannot forge is the cgroup its processes run in: the kubelet
// names it after the pod's UID (…/kubepods/<qos>/pod<uid>/<container>, or
// kubepods-<qos>-pod<uid_with_underscores>.slice with the systemd driver),
// and moving a process to another cgroup takes write access to the node's
// cgroup filesystem, which unprivileged pods do not have. So Find reads
// the node's /proc: the processes whose cgroup names the pod's UID, the
// network namespace each is in (the inode of /proc/<pid>/ns/net), and the
// entry of NetnsDir that is that namespace (same device and inode).
//
// It refuses (*nodeagent.RefusedError) when the pod's processes are in more
// than one namespace of NetnsDir, and when the namespace found does not
// hold each of the pod's IPs on an interface other than loopback. The
// node's own namespace (a process that is joining the pod, as exec does)
// and namespaces outside NetnsDir (a sandbox a process made for itself)
// are not the pod's sandbox and are passed over.
type NetnsFinder struct {
	// ProcDir is the node's /proc: in the DaemonSet, a hostPath mount at
	// /host/proc (reading other processes' ns/net needs CAP_SYS_PTRACE).
	ProcDir string
	// NetnsDir is where the runtime mounts pod network namespaces.
	NetnsDir string
	// Log gets what Find passes over, at debug level; nil discards it.
	Log *slog.Logger
}

// nsID identifies a namespace: its nsfs device and inode.
type nsID struct{ dev, ino uint64 }

func nsIDOf(st *unix.Stat_t) nsID { return nsID{dev: uint64(st.Dev), ino: st.Ino} }

// Find implements nodeagent.Config.FindNetns.
func (f NetnsFinder) Find(pod nodeagent.Pod) (string, error) {
	log := f.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	uid, ok := normalUID(pod.UID)
	if !ok {
		return "", fmt.Errorf("pod %s has no usable UID %q", pod, pod.UID)
	}
	procs, err := f.processes(uid)
	if err != nil {
		return "", err
	}
	if len(procs) == 0 {
		return "", fmt.Errorf("no process of pod %s (uid %s) in %s yet", pod, uid, f.ProcDir)
	}
	var self unix.Stat_t
	if err := unix.Stat("/proc/self/ns/net", &self); err != nil {
		return "", fmt.Errorf("ztunnel's own network namespace: %w", err)
	}
	dir, err := f.namespaces()
	if err != nil {
		return "", err
	}
	found := map[string][]int{} // path in NetnsDir -> pids
	for id, pids := range procs {
		switch path, ok := dir[id]; {
		case id == nsIDOf(&self):
			log.Debug("passing over processes of the pod in the node's own network namespace", "pod", pod.String(), "pids", pids)
		case !ok:
			log.Debug("passing over processes of the pod in a network namespace outside "+f.NetnsDir, "pod", pod.String(), "pids", pids)
		default:
			found[path] = pids
		}
	}
	switch len(found) {
	case 0:
		return "", fmt.Errorf("the processes of pod %s are in no network namespace of %s", pod, f.NetnsDir)
	case 1:
	default:
		var where []string
		for path, pids := range found {
			where = append(where, fmt.Sprintf("%s (pids %v)", path, pids))
		}
		slices.Sort(where)
		return "", &nodeagent.RefusedError{Reason: "NetnsAmbiguous", Message: fmt.Sprintf(
			"the processes of pod %s (uid %s) are in %d network namespaces: %s", pod, uid, len(found), strings.Join(where, ", "))}
	}
	var path string
	for p := range found {
		path = p
	}
	if err := holdsOnInterface(path, pod.IPs); err != nil {
		return "", &nodeagent.RefusedError{Reason: "NetnsMismatch", Message: fmt.Sprintf(
			"the network namespace %s of pod %s's processes does not hold the pod's address: %v", path, pod, err)}
	}
	return path, nil
}

// processes returns the network namespaces of the processes whose cgroup
// names pod uid, with their pids. Each process is read through a handle
// on its /proc directory, so a pid that is reused meanwhile fails the
// reads instead of mixing two processes.
func (f NetnsFinder) processes(uid string) (map[nsID][]int, error) {
	entries, err := os.ReadDir(f.ProcDir)
	if err != nil {
		return nil, fmt.Errorf("listing processes: %w", err)
	}
	underscored := strings.ReplaceAll(uid, "-", "_")
	out := map[nsID][]int{}
	buf := make([]byte, 16<<10)
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid <= 0 {
			continue
		}
		id, ok, err := f.processNetns(pid, uid, underscored, buf)
		if err != nil {
			return nil, err
		}
		if ok {
			out[id] = append(out[id], pid)
		}
	}
	return out, nil
}

// processNetns reads one process: whether its cgroup names pod uid and,
// if so, its network namespace. A process that ended meanwhile is not an
// error; one whose namespace ztunnel may not read is.
func (f NetnsFinder) processNetns(pid int, uid, underscored string, buf []byte) (nsID, bool, error) {
	dirfd, err := unix.Open(filepath.Join(f.ProcDir, strconv.Itoa(pid)), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nsID{}, false, nil // gone
	}
	defer unix.Close(dirfd)
	fd, err := unix.Openat(dirfd, "cgroup", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nsID{}, false, nil // gone, or a kernel thread's
	}
	n, err := readFull(fd, buf)
	unix.Close(fd)
	if err != nil || n == 0 {
		return nsID{}, false, nil
	}
	cg := string(buf[:n])
	if !strings.Contains(cg, uid) && !strings.Contains(cg, underscored) {
		return nsID{}, false, nil
	}
	if !slices.Contains(podUIDs(cg), uid) {
		return nsID{}, false, nil
	}
	var st unix.Stat_t
	switch err := unix.Fstatat(dirfd, "ns/net", &st, 0); {
	case errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH):
		return nsID{}, false, nil // ended meanwhile
	case err != nil:
		return nsID{}, false, fmt.Errorf("reading the network namespace of process %d (ztunnel needs the node's /proc and CAP_SYS_PTRACE): %w", pid, err)
	}
	return nsIDOf(&st), true, nil
}

// readFull reads fd until EOF or buf is full.
func readFull(fd int, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := unix.Read(fd, buf[n:])
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return n, err
		}
		if m == 0 {
			break
		}
		n += m
	}
	return n, nil
}

// namespaces maps the network namespaces mounted in NetnsDir to their
// paths.
func (f NetnsFinder) namespaces() (map[nsID]string, error) {
	entries, err := os.ReadDir(f.NetnsDir)
	if err != nil {
		return nil, fmt.Errorf("listing network namespaces: %w", err)
	}
	out := make(map[nsID]string, len(entries))
	for _, e := range entries {
		path := filepath.Join(f.NetnsDir, e.Name())
		var st unix.Stat_t
		if err := unix.Stat(path, &st); err != nil {
			continue // gone meanwhile
		}
		var fs unix.Statfs_t
		if err := unix.Statfs(path, &fs); err != nil || fs.Type != unix.NSFS_MAGIC {
			continue // not (or no longer) a mounted namespace
		}
		out[nsIDOf(&st)] = path
	}
	return out, nil
}

// podUIDs returns the pod UIDs that the lines of a /proc/<pid>/cgroup file
// name: on each line, the first path element that is a kubelet's pod
// cgroup. Only the first counts: a cgroup that a pod made below its own
// (where it may choose the name) never decides whose the process is.
func podUIDs(cgroupFile string) []string {
	var out []string
	for line := range strings.Lines(cgroupFile) {
		// hierarchy-id:controllers:path
		parts := strings.SplitN(strings.TrimSpace(line), ":", 3)
		if len(parts) != 3 {
			continue
		}
		for elem := range strings.SplitSeq(parts[2], "/") {
			if uid, ok := podCgroupUID(elem); ok {
				if !slices.Contains(out, uid) {
					out = append(out, uid)
				}
				break
			}
		}
	}
	return out
}

// podCgroupUID recognises a pod's cgroup as the kubelet names it:
// pod<uid> (cgroupfs driver) or kubepods[-<qos>]-pod<uid_with_underscores>.slice
// (systemd driver).
func podCgroupUID(elem string) (string, bool) {
	if s, ok := strings.CutSuffix(elem, ".slice"); ok {
		if i := strings.LastIndex(s, "-pod"); i >= 0 && strings.HasPrefix(s, "kubepods") {
			return normalUID(s[i+len("-pod"):])
		}
		return "", false
	}
	if s, ok := strings.CutPrefix(elem, "pod"); ok {
		return normalUID(s)
	}
	return "", false
}

// normalUID returns a pod UID in its canonical form (lower case, dashes),
// if s is one (a UUID, with dashes or underscores).
func normalUID(s string) (string, bool) {
	if len(s) != 36 {
		return "", false
	}
	b := []byte(strings.ToLower(s))
	for i, c := range b {
		switch i {
		case 8, 13, 18, 23:
			if c != '-' && c != '_' {
				return "", false
			}
			b[i] = '-'
		default:
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
				return "", false
			}
		}
	}
	return string(b), true
}

// holdsOnInterface checks that the namespace at path holds every ip on an
// interface other than loopback: where the CNI put the pod's address. An
// address on loopback is what an impostor can add to its own namespace.
func holdsOnInterface(path string, ips []netip.Addr) error {
	if len(ips) == 0 {
		return errors.New("the pod has no IP to check")
	}
	h, err := netns.Open(path)
	if err != nil {
		return err
	}
	defer h.Close()
	held := map[netip.Addr]bool{}
	err = h.Do(func() error {
		ifs, err := net.Interfaces()
		if err != nil {
			return err
		}
		for _, ifc := range ifs {
			if ifc.Flags&net.FlagLoopback != 0 {
				continue
			}
			addrs, err := ifc.Addrs()
			if err != nil {
				return fmt.Errorf("addresses of %s: %w", ifc.Name, err)
			}
			for _, a := range addrs {
				if n, ok := a.(*net.IPNet); ok {
					if ip, ok := netip.AddrFromSlice(n.IP); ok {
						held[ip.Unmap()] = true
					}
				}
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("listing the interfaces of %s: %w", path, err)
	}
	for _, ip := range ips {
		if !held[ip.Unmap()] {
			return fmt.Errorf("%s is on no interface other than loopback", ip)
		}
	}
	return nil
}

// migrateRequests sets net.ipv4.tcp_migrate_req in the pod: when an old
// ztunnel closes its listeners, connections still in its accept queue
// move to the new ztunnel's socket of the same SO_REUSEPORT group instead
// of being reset. (Linux 5.14 and later.) It writes through s, the
// node's /proc/sys/net: ztunnel's own /proc/sys is read-only.
func migrateRequests(h *netns.Handle, s capture.Sysctls) error {
	return h.Do(func() error { return s.Set("ipv4/tcp_migrate_req", "1") })
}
