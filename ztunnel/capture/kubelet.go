package capture

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/cairnmesh/cairn/internal/netns"
)

// DefaultKubeletPort is the kubelet's API port unless its Node says
// otherwise (status.daemonEndpoints.kubeletEndpoint.Port).
const DefaultKubeletPort = 10250

// Kubelet finds the kubelet's cgroup (v2) by the socket that listens on
// the kubelet's port (the Node's
// status.daemonEndpoints.kubeletEndpoint.Port, 10250 by default) in the
// node's network namespace, for the node's probe rules (Probes).
//
// The port is what identifies the kubelet: it binds it at start, before
// any pod runs, and nothing else can bind it while it does. The cgroup is
// what then tells its probes apart: a real node runs the kubelet in a
// cgroup of its own (system.slice/kubelet.service with systemd), and puts
// pods, host-network ones too, in cgroups under kubepods. Kubelet refuses
// a cgroup that would also cover others: the root cgroup, and one with
// child cgroups (the cgroup match covers them too).
//
// The cgroup is named as the kubelet's own cgroup namespace names it,
// the node's, whatever ztunnel's: a container that is not privileged has
// a cgroup namespace of its own on a cgroup v2 node (containerd's
// default), rooted at its own cgroup, from where the kubelet's cgroup has
// no name, and iptables' cgroup match resolves --path from the root of
// the cgroup namespace of the process that installs the rule. So Kubelet
// finds the kubelet's process (the one holding the listening socket,
// through the node's /proc), looks its cgroup up through that process's
// own view (/proc/<pid>/root, /proc/<pid>/mountinfo) from a thread in its
// cgroup namespace, and hands that namespace to the caller, which
// installs the rule from a thread in it (netns.Do). That needs
// CAP_SYS_PTRACE (another process's namespaces and root) and
// CAP_SYS_ADMIN (setns), which ztunnel has anyway.
type Kubelet struct {
	// Port is the kubelet's API port (DefaultKubeletPort).
	Port uint16
	// Addrs are the node's own addresses (its Node's status.addresses):
	// when the kubelet binds one of them rather than the wildcard, a
	// host-network process may listen on the same port on another
	// address, and only sockets on the wildcard or on Addrs count.
	Addrs []netip.Addr
	// ProcDir is the node's /proc as mounted (ztunnel's --proc-dir);
	// empty is /proc.
	ProcDir string

	mu   sync.Mutex
	last struct {
		pid   int
		start uint64
		dir   string // the cgroup's directory, through the process's root
	}
}

// Cgroup returns the kubelet's cgroup (v2) as iptables' cgroup match
// takes it, a path from the root of the kubelet's cgroup namespace, and
// that namespace, open: the caller installs the rule from a thread in it
// and closes it. It must run in the node's network namespace (the
// kubelet's socket is looked up in the calling thread's).
func (k *Kubelet) Cgroup() (string, *netns.Handle, error) {
	id, inodes, err := listenerCgroupID(k.port(), k.Addrs)
	if err != nil {
		return "", nil, err
	}
	pid, err := k.process(inodes)
	if err != nil {
		return "", nil, err
	}
	cgns, err := netns.OpenCgroup(k.procPath(pid, "ns/cgroup"))
	if err != nil {
		return "", nil, fmt.Errorf("the kubelet's cgroup namespace (process %d; ztunnel needs the node's /proc and CAP_SYS_PTRACE): %w", pid, err)
	}
	var path string
	// mountinfo and cgroup files read as the reading thread's cgroup
	// namespace names them: read them from the kubelet's.
	err = netns.Do(func() error {
		var err error
		path, err = k.cgroupPath(pid, id)
		return err
	}, cgns)
	if err != nil {
		cgns.Close()
		return "", nil, err
	}
	return path, cgns, nil
}

// CgroupNamespace returns the kubelet's cgroup namespace, open, for a
// cgroup path the operator gives (--kubelet-cgroup=<path>). It must run
// in the node's network namespace.
func (k *Kubelet) CgroupNamespace() (*netns.Handle, error) {
	_, inodes, err := listenerCgroupID(k.port(), k.Addrs)
	if err != nil {
		return nil, err
	}
	pid, err := k.process(inodes)
	if err != nil {
		return nil, err
	}
	cgns, err := netns.OpenCgroup(k.procPath(pid, "ns/cgroup"))
	if err != nil {
		return nil, fmt.Errorf("the kubelet's cgroup namespace (process %d; ztunnel needs the node's /proc and CAP_SYS_PTRACE): %w", pid, err)
	}
	return cgns, nil
}

func (k *Kubelet) port() uint16 {
	if k.Port == 0 {
		return DefaultKubeletPort
	}
	return k.Port
}

func (k *Kubelet) procDir() string {
	if k.ProcDir == "" {
		return "/proc"
	}
	return k.ProcDir
}

func (k *Kubelet) procPath(pid int, name string) string {
	return filepath.Join(k.procDir(), strconv.Itoa(pid), name)
}

// process returns the process that holds one of the sockets inodes: the
// one found last time if it still does, or the first the node's /proc
// shows. The processes whose main thread is in the calling thread's
// network namespace (the node's) are looked at first, then the others: a
// process's threads may be in other namespaces than its main thread.
func (k *Kubelet) process(inodes []uint64) (int, error) {
	k.mu.Lock()
	pid, start := k.last.pid, k.last.start
	k.mu.Unlock()
	if pid > 0 && procStart(k.procPath(pid, "stat")) == start && holdsSocket(k.procPath(pid, "fd"), inodes) {
		return pid, nil
	}
	var self unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &self); err != nil {
		return 0, fmt.Errorf("this thread's network namespace: %w", err)
	}
	entries, err := os.ReadDir(k.procDir())
	if err != nil {
		return 0, fmt.Errorf("listing the node's processes: %w", err)
	}
	var node, others []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid <= 0 {
			continue
		}
		var st unix.Stat_t
		if unix.Stat(k.procPath(pid, "ns/net"), &st) == nil && st.Dev == self.Dev && st.Ino == self.Ino {
			node = append(node, pid)
		} else {
			others = append(others, pid)
		}
	}
	for _, pid := range slices.Concat(node, others) {
		if holdsSocket(k.procPath(pid, "fd"), inodes) {
			k.mu.Lock()
			k.last.pid, k.last.start = pid, procStart(k.procPath(pid, "stat"))
			k.mu.Unlock()
			return pid, nil
		}
	}
	return 0, fmt.Errorf("no process of %s holds the socket on the kubelet's port (ztunnel needs the node's /proc and CAP_SYS_PTRACE)", k.procDir())
}

// holdsSocket says whether the fd directory of a process has one of the
// sockets inodes.
func holdsSocket(fdDir string, inodes []uint64) bool {
	fds, err := os.ReadDir(fdDir)
	if err != nil {
		return false
	}
	for _, fd := range fds {
		link, err := os.Readlink(filepath.Join(fdDir, fd.Name()))
		if err != nil {
			continue
		}
		s, ok := strings.CutPrefix(link, "socket:[")
		if !ok {
			continue
		}
		ino, err := strconv.ParseUint(strings.TrimSuffix(s, "]"), 10, 64)
		if err == nil && slices.Contains(inodes, ino) {
			return true
		}
	}
	return false
}

// procStart is a process's start time (field 22 of its stat file); 0 if
// it is gone.
func procStart(statPath string) uint64 {
	data, err := os.ReadFile(statPath)
	if err != nil {
		return 0
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return 0
	}
	v, _ := strconv.ParseUint(f[19], 10, 64)
	return v
}

// listenerCgroupID returns the cgroup (v2) id of the TCP socket listening
// on port in the calling thread's network namespace, through sock_diag,
// and the inodes of the sockets of that cgroup that listen there.
// Sockets bound to the wildcard address win over ones bound to a single
// address (which a host-network process can bind next to the kubelet's
// if the kubelet binds only one); of those, only ones on addrs count if
// addrs are given. Sockets of different cgroups left are an error.
func listenerCgroupID(port uint16, addrs []netip.Addr) (uint64, []uint64, error) {
	type listener struct {
		wildcard bool
		cgroup   uint64
		inode    uint64
	}
	var found []listener
	for _, fam := range []uint8{unix.AF_INET, unix.AF_INET6} {
		socks, err := diagListeners(fam)
		if err != nil {
			return 0, nil, err
		}
		for _, s := range socks {
			if s.port != port || (!s.wildcard && len(addrs) > 0 && !slices.Contains(addrs, s.addr)) {
				continue
			}
			found = append(found, listener{wildcard: s.wildcard, cgroup: s.cgroup, inode: s.inode})
		}
	}
	if slices.ContainsFunc(found, func(l listener) bool { return l.wildcard }) {
		found = slices.DeleteFunc(found, func(l listener) bool { return !l.wildcard })
	}
	if len(found) == 0 {
		return 0, nil, fmt.Errorf("no socket listens on TCP port %d (the kubelet's) in this network namespace", port)
	}
	inodes := []uint64{found[0].inode}
	for _, l := range found[1:] {
		if l.cgroup != found[0].cgroup {
			return 0, nil, fmt.Errorf("sockets of different cgroups listen on TCP port %d: cannot tell which is the kubelet", port)
		}
		inodes = append(inodes, l.inode)
	}
	if found[0].cgroup == 0 {
		return 0, nil, fmt.Errorf("the kernel gave no cgroup for the socket on TCP port %d", port)
	}
	return found[0].cgroup, inodes, nil
}

type diagSocket struct {
	addr     netip.Addr
	port     uint16
	wildcard bool
	cgroup   uint64
	inode    uint64
}

// Netlink sock_diag constants and sizes (linux/inet_diag.h): the request
// is struct inet_diag_req_v2, the answers struct inet_diag_msg followed
// by attributes, of which INET_DIAG_CGROUP_ID carries the socket's cgroup
// v2 id.
const (
	inetDiagReqV2Size = 56
	inetDiagMsgSize   = 72
	inetDiagCgroupID  = 21
	tcpListenState    = 10
)

// diagListeners dumps the listening TCP sockets of family fam.
func diagListeners(fam uint8) ([]diagSocket, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return nil, fmt.Errorf("sock_diag socket: %w", err)
	}
	defer unix.Close(fd)
	tv := unix.NsecToTimeval(int64(5e9))
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return nil, fmt.Errorf("sock_diag socket: %w", err)
	}
	req := make([]byte, unix.SizeofNlMsghdr+inetDiagReqV2Size)
	binary.NativeEndian.PutUint32(req[0:], uint32(len(req)))
	binary.NativeEndian.PutUint16(req[4:], unix.SOCK_DIAG_BY_FAMILY)
	binary.NativeEndian.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	binary.NativeEndian.PutUint32(req[8:], 1) // sequence
	body := req[unix.SizeofNlMsghdr:]
	body[0] = fam
	body[1] = unix.IPPROTO_TCP
	binary.NativeEndian.PutUint32(body[4:], 1<<tcpListenState)
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, fmt.Errorf("sock_diag request: %w", err)
	}
	var out []diagSocket
	buf := make([]byte, 64<<10)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("sock_diag answer: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return nil, fmt.Errorf("sock_diag answer: %w", err)
		}
		for _, m := range msgs {
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				return out, nil
			case unix.NLMSG_ERROR:
				if len(m.Data) >= 4 {
					if errno := -int32(binary.NativeEndian.Uint32(m.Data)); errno != 0 {
						return nil, fmt.Errorf("sock_diag: %w", unix.Errno(errno))
					}
				}
				return out, nil
			}
			if s, ok := parseDiagMsg(m.Data); ok {
				out = append(out, s)
			}
		}
	}
}

// parseDiagMsg reads one struct inet_diag_msg and its attributes.
func parseDiagMsg(b []byte) (diagSocket, bool) {
	if len(b) < inetDiagMsgSize {
		return diagSocket{}, false
	}
	fam := b[0]
	s := diagSocket{port: binary.BigEndian.Uint16(b[4:6]), inode: uint64(binary.NativeEndian.Uint32(b[68:72]))}
	src := b[8:24]
	if fam == unix.AF_INET {
		src = src[:4]
	}
	s.wildcard = !slices.ContainsFunc(src, func(c byte) bool { return c != 0 })
	if a, ok := netip.AddrFromSlice(src); ok {
		s.addr = a.Unmap()
	}
	for attrs := b[inetDiagMsgSize:]; len(attrs) >= 4; {
		l := int(binary.NativeEndian.Uint16(attrs[0:]))
		typ := binary.NativeEndian.Uint16(attrs[2:]) &^ (unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)
		if l < 4 || l > len(attrs) {
			break
		}
		if typ == inetDiagCgroupID && l >= 12 {
			s.cgroup = binary.NativeEndian.Uint64(attrs[4:12])
		}
		attrs = attrs[min((l+3)&^3, len(attrs)):]
	}
	return s, true
}

// cgroupPath returns the path of the cgroup (v2) whose id is id, from the
// root of the calling thread's cgroup namespace, as process pid sees the
// cgroup hierarchy: the directory with that inode number under its
// cgroup2 mount (through /proc/<pid>/root), below the mount's root. It
// looks first where it found it last and in the process's own cgroup,
// then through the whole hierarchy. It refuses the root cgroup and a
// cgroup with child cgroups.
func (k *Kubelet) cgroupPath(pid int, id uint64) (string, error) {
	mount, root, err := cgroup2Mount(k.procPath(pid, "mountinfo"))
	if err != nil {
		return "", err
	}
	base := filepath.Join(k.procPath(pid, "root"), mount)
	is := func(dir string) bool {
		var st unix.Stat_t
		return dir != "" && strings.HasPrefix(dir, base) && unix.Stat(dir, &st) == nil && st.Ino == id
	}
	k.mu.Lock()
	found := k.last.dir
	k.mu.Unlock()
	if !is(found) {
		found = ""
		if own, err := ownCgroup(k.procPath(pid, "cgroup")); err == nil {
			if rel, err := filepath.Rel(root, own); err == nil && !strings.HasPrefix(rel, "..") && is(filepath.Join(base, rel)) {
				found = filepath.Join(base, rel)
			}
		}
	}
	if found == "" {
		walkErr := filepath.WalkDir(base, func(path string, d fs.DirEntry, err error) error {
			if found != "" {
				return fs.SkipAll
			}
			if err != nil || !d.IsDir() {
				return nil // a cgroup that went meanwhile
			}
			if is(path) {
				found = path
				return fs.SkipAll
			}
			return nil
		})
		if walkErr != nil {
			return "", fmt.Errorf("looking for cgroup %d under %s: %w", id, base, walkErr)
		}
	}
	if found == "" {
		return "", fmt.Errorf("cgroup %d is not under %s (the kubelet's cgroup2 mount; ztunnel needs CAP_SYS_PTRACE to look through it)", id, base)
	}
	k.mu.Lock()
	k.last.dir = found
	k.mu.Unlock()
	rel, err := filepath.Rel(base, found)
	if err != nil {
		return "", err
	}
	path := filepath.Join(root, rel)
	if path == "/" {
		return "", errors.New("the kubelet is in the root cgroup, with everything else on the node: " +
			"run it in a cgroup of its own (as systemd does, system.slice/kubelet.service)")
	}
	if strings.HasPrefix(path, "/..") {
		return "", fmt.Errorf("cgroup %s is outside the kubelet's cgroup namespace", path)
	}
	entries, err := os.ReadDir(found)
	if err != nil {
		return "", err
	}
	for _, e := range entries {
		if e.IsDir() {
			return "", fmt.Errorf("the kubelet's cgroup %s has child cgroups (%s), whose sockets a match on it would cover too", path, e.Name())
		}
	}
	return path, nil
}

// ownCgroup returns the cgroup v2 path of a /proc/<pid>/cgroup file (its
// "0::" line), as the reading thread's cgroup namespace names it.
func ownCgroup(file string) (string, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s has no cgroup v2 line", file)
}

// cgroup2Mount finds the cgroup v2 hierarchy in a mountinfo file: its
// mount point, and the cgroup mounted there (the mount's root, from the
// root of the reading thread's cgroup namespace).
func cgroup2Mount(mountinfo string) (mount, root string, err error) {
	f, err := os.Open(mountinfo)
	if err != nil {
		return "", "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		fields, typ := strings.Fields(pre), strings.Fields(post)
		if !ok || len(fields) < 5 || len(typ) < 1 || typ[0] != "cgroup2" {
			continue
		}
		return unescapeMount(fields[4]), unescapeMount(fields[3]), nil
	}
	if err := sc.Err(); err != nil {
		return "", "", err
	}
	return "", "", fmt.Errorf("no cgroup2 hierarchy mounted (%s): the kubelet's cgroup cannot be found", mountinfo)
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v byte
			ok := true
			for _, c := range []byte(s[i+1 : i+4]) {
				if c < '0' || c > '7' {
					ok = false
					break
				}
				v = v*8 + c - '0'
			}
			if ok {
				b.WriteByte(v)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
