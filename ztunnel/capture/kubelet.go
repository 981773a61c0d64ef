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
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// DefaultKubeletPort is the kubelet's API port unless its Node says
// otherwise (status.daemonEndpoints.kubeletEndpoint.Port).
const DefaultKubeletPort = 10250

// KubeletCgroup finds the kubelet's cgroup (v2) by the socket that
// listens on the kubelet's port (the Node's
// status.daemonEndpoints.kubeletEndpoint.Port, 10250 by default) in the
// calling thread's network namespace, which must be the node's. It
// returns the cgroup's path from the root of the calling process's cgroup
// namespace, as iptables' cgroup match takes it.
//
// The port is what identifies the kubelet: it binds it at start, before
// any pod runs, and nothing else can bind it while it does. The cgroup is
// what then tells its probes apart: a real node runs the kubelet in a
// cgroup of its own (system.slice/kubelet.service with systemd), and puts
// pods, host-network ones too, in cgroups under kubepods. KubeletCgroup
// refuses a cgroup that would also cover others: the root cgroup, and one
// with child cgroups (the cgroup match covers them too).
//
// It needs the node's cgroup hierarchy in view: with a private cgroup
// namespace (a container on a cgroup v2 node that is not privileged), the
// kubelet's cgroup is outside it, and KubeletCgroup says so.
//
// addrs are the node's own addresses (its Node's status.addresses): when
// the kubelet binds one of them rather than the wildcard, a host-network
// process may listen on the same port on another address, and only
// sockets on the wildcard or on addrs count.
func KubeletCgroup(port uint16, addrs ...netip.Addr) (string, error) {
	id, err := listenerCgroupID(port, addrs)
	if err != nil {
		return "", err
	}
	return cgroupPath(id)
}

// listenerCgroupID returns the cgroup (v2) id of the TCP socket listening
// on port in the calling thread's network namespace, through sock_diag.
// Sockets bound to the wildcard address win over ones bound to a single
// address (which a host-network process can bind next to the kubelet's
// if the kubelet binds only one); of those, only ones on addrs count if
// addrs are given. Sockets of different cgroups left are an error.
func listenerCgroupID(port uint16, addrs []netip.Addr) (uint64, error) {
	type listener struct {
		wildcard bool
		cgroup   uint64
	}
	var found []listener
	for _, fam := range []uint8{unix.AF_INET, unix.AF_INET6} {
		socks, err := diagListeners(fam)
		if err != nil {
			return 0, err
		}
		for _, s := range socks {
			if s.port != port || (!s.wildcard && len(addrs) > 0 && !slices.Contains(addrs, s.addr)) {
				continue
			}
			found = append(found, listener{wildcard: s.wildcard, cgroup: s.cgroup})
		}
	}
	if slices.ContainsFunc(found, func(l listener) bool { return l.wildcard }) {
		found = slices.DeleteFunc(found, func(l listener) bool { return !l.wildcard })
	}
	if len(found) == 0 {
		return 0, fmt.Errorf("no socket listens on TCP port %d (the kubelet's) in this network namespace", port)
	}
	for _, l := range found[1:] {
		if l.cgroup != found[0].cgroup {
			return 0, fmt.Errorf("sockets of different cgroups listen on TCP port %d: cannot tell which is the kubelet", port)
		}
	}
	if found[0].cgroup == 0 {
		return 0, fmt.Errorf("the kernel gave no cgroup for the socket on TCP port %d", port)
	}
	return found[0].cgroup, nil
}

type diagSocket struct {
	addr     netip.Addr
	port     uint16
	wildcard bool
	cgroup   uint64
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
	s := diagSocket{port: binary.BigEndian.Uint16(b[4:6])}
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
// root of the calling process's cgroup namespace: the directory of the
// cgroup2 mount with that inode number, below the mount's root. It refuses
// the root cgroup and a cgroup with child cgroups.
func cgroupPath(id uint64) (string, error) {
	mount, root, err := cgroup2Mount()
	if err != nil {
		return "", err
	}
	// The kubelet stays in one cgroup: look where it was last time
	// before walking the node's whole hierarchy again.
	var found string
	lastFound.Lock()
	if last := lastFound.dir; last != "" && strings.HasPrefix(last, mount+"/") {
		var st unix.Stat_t
		if unix.Stat(last, &st) == nil && st.Ino == id {
			found = last
		}
	}
	lastFound.Unlock()
	walkErr := filepath.WalkDir(mount, func(path string, d fs.DirEntry, err error) error {
		if found != "" {
			return fs.SkipAll
		}
		if err != nil || !d.IsDir() {
			return nil // a cgroup that went meanwhile
		}
		var st unix.Stat_t
		if unix.Stat(path, &st) == nil && st.Ino == id {
			found = path
			return fs.SkipAll
		}
		return nil
	})
	if walkErr != nil {
		return "", fmt.Errorf("looking for cgroup %d under %s: %w", id, mount, walkErr)
	}
	if found == "" {
		return "", fmt.Errorf("cgroup %d is not under %s: outside this process's cgroup namespace "+
			"(on a cgroup v2 node only a privileged container shares the node's)", id, mount)
	}
	lastFound.Lock()
	lastFound.dir = found
	lastFound.Unlock()
	rel, err := filepath.Rel(mount, found)
	if err != nil {
		return "", err
	}
	path := filepath.Join(root, rel)
	if path == "/" {
		return "", errors.New("the kubelet is in the root cgroup, with everything else on the node: " +
			"run it in a cgroup of its own (as systemd does, system.slice/kubelet.service)")
	}
	if strings.HasPrefix(path, "/..") {
		return "", fmt.Errorf("cgroup %s is outside this process's cgroup namespace", path)
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

// lastFound is the directory cgroupPath found last.
var lastFound struct {
	sync.Mutex
	dir string
}

// cgroup2Mount finds the cgroup v2 hierarchy in /proc/self/mountinfo: its
// mount point, and the cgroup mounted there (the mount's root, from the
// root of our cgroup namespace).
func cgroup2Mount() (mount, root string, err error) {
	f, err := os.Open("/proc/self/mountinfo")
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
	return "", "", errors.New("no cgroup2 hierarchy mounted (/proc/self/mountinfo): the kubelet's cgroup cannot be found")
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
