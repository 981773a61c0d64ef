package kubelet

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// This file decides, from a container's securityContext (and its pod's),
// what the container's process is allowed: the parts of a
// securityContext that containerd and runc enforce on a real node and
// that matter to Cairn. Pure: securityOf only computes; the start and
// exec stages apply the result (creds.go, init.go).

// securitySpec is what the runtime enforces for one container's
// processes, its own and those of exec. The zero value is a privileged
// container, as the lab ran every container before (and as a spec.json
// written by an earlier kubelet reads): root, every capability the
// kubelet has, the node's cgroup namespace, nothing masked or read-only.
type securitySpec struct {
	// Confined is a container that is not privileged: Caps apply, and
	// so do CgroupNS, the masked and read-only paths and ReadOnlySys.
	// Privileged ones keep every capability.
	Confined bool `json:"confined,omitempty"`
	// Caps are the capabilities (CAP_NET_ADMIN, ...) of the bounding,
	// permitted and effective sets, as containerd computes them, for a
	// Confined container. The inheritable and ambient sets are empty, as
	// containerd leaves them, so a process that does not run as root
	// loses the permitted and effective ones at execve (as on a node).
	Caps []string `json:"caps"`
	// UID, GID and Groups are the process's user, group and
	// supplementary groups (runAsUser, runAsGroup, supplementalGroups and
	// fsGroup).
	UID    int64   `json:"uid"`
	GID    int64   `json:"gid"`
	Groups []int64 `json:"groups,omitempty"`
	// NoNewPrivs is allowPrivilegeEscalation: false.
	NoNewPrivs bool `json:"noNewPrivs,omitempty"`
	// ReadOnlyRoot is readOnlyRootFilesystem: the container's root and
	// the directories that belong to it (/etc, /tmp, /run) are read-only;
	// volumes are as mounted.
	ReadOnlyRoot bool `json:"readOnlyRoot,omitempty"`
	// CgroupNS is a private cgroup namespace rooted at the container's
	// cgroup, with only that subtree mounted (read-only) at
	// /sys/fs/cgroup: containerd's default on a cgroup v2 node for a
	// container that is not privileged.
	CgroupNS bool `json:"cgroupNS,omitempty"`
	// MaskedPaths are hidden (an empty read-only tmpfs over a directory,
	// /dev/null over a file); ReadonlyPaths are remounted read-only. Both
	// as the kubelet hands them to the runtime for procMount Default.
	MaskedPaths   []string `json:"maskedPaths,omitempty"`
	ReadonlyPaths []string `json:"readonlyPaths,omitempty"`
	// ReadOnlySys mounts /sys read-only, as runc does for a container
	// that is not privileged.
	ReadOnlySys bool `json:"readOnlySys,omitempty"`
}

// defaultCaps is the capability set containerd (and Docker) give a
// container that asks for nothing else.
var defaultCaps = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
	"CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
	"CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
}

// The kubelet's default masked and read-only paths (procMount Default),
// which runc applies inside the container's /proc and /sys.
var (
	defaultMaskedPaths = []string{
		"/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys",
		"/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
		"/proc/sched_debug", "/proc/scsi", "/sys/firmware",
		"/sys/devices/virtual/powercap",
	}
	defaultReadonlyPaths = []string{
		"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
	}
)

// capNumbers maps every capability the kernel may know to its number
// (linux/capability.h).
var capNumbers = map[string]int{
	"CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_DAC_READ_SEARCH": 2, "CAP_FOWNER": 3,
	"CAP_FSETID": 4, "CAP_KILL": 5, "CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_SETPCAP": 8,
	"CAP_LINUX_IMMUTABLE": 9, "CAP_NET_BIND_SERVICE": 10, "CAP_NET_BROADCAST": 11,
	"CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13, "CAP_IPC_LOCK": 14, "CAP_IPC_OWNER": 15,
	"CAP_SYS_MODULE": 16, "CAP_SYS_RAWIO": 17, "CAP_SYS_CHROOT": 18, "CAP_SYS_PTRACE": 19,
	"CAP_SYS_PACCT": 20, "CAP_SYS_ADMIN": 21, "CAP_SYS_BOOT": 22, "CAP_SYS_NICE": 23,
	"CAP_SYS_RESOURCE": 24, "CAP_SYS_TIME": 25, "CAP_SYS_TTY_CONFIG": 26, "CAP_MKNOD": 27,
	"CAP_LEASE": 28, "CAP_AUDIT_WRITE": 29, "CAP_AUDIT_CONTROL": 30, "CAP_SETFCAP": 31,
	"CAP_MAC_OVERRIDE": 32, "CAP_MAC_ADMIN": 33, "CAP_SYSLOG": 34, "CAP_WAKE_ALARM": 35,
	"CAP_BLOCK_SUSPEND": 36, "CAP_AUDIT_READ": 37, "CAP_PERFMON": 38, "CAP_BPF": 39,
	"CAP_CHECKPOINT_RESTORE": 40,
}

// allCaps lists every capability in capNumbers, by number.
func allCaps() []string {
	out := make([]string, 0, len(capNumbers))
	for name := range capNumbers {
		out = append(out, name)
	}
	slices.SortFunc(out, func(a, b string) int { return capNumbers[a] - capNumbers[b] })
	return out
}

// errRunAsRoot is the kubelet's refusal of runAsNonRoot with uid 0.
var errRunAsRoot = errors.New("container has runAsNonRoot and image will run as root")

// securityOf computes what the runtime enforces for container c of pod,
// merging the pod's securityContext into the container's as the kubelet
// does (the container's fields win). cgroupV2 says the node has a
// cgroup v2 hierarchy, where a container that is not privileged gets a
// private cgroup namespace. Images run as root in the lab (their binary
// has no user of its own), so runAsNonRoot needs a non-zero runAsUser.
func securityOf(pod *corev1.Pod, c *corev1.Container, cgroupV2 bool) (securitySpec, error) {
	psc := pod.Spec.SecurityContext
	if psc == nil {
		psc = &corev1.PodSecurityContext{}
	}
	sc := c.SecurityContext
	if sc == nil {
		sc = &corev1.SecurityContext{}
	}
	var s securitySpec

	uid, gid := psc.RunAsUser, psc.RunAsGroup
	if sc.RunAsUser != nil {
		uid = sc.RunAsUser
	}
	if sc.RunAsGroup != nil {
		gid = sc.RunAsGroup
	}
	if uid != nil {
		s.UID = *uid
	}
	if gid != nil {
		s.GID = *gid
	}
	if s.UID < 0 || s.GID < 0 {
		return securitySpec{}, fmt.Errorf("runAsUser %d, runAsGroup %d: must not be negative", s.UID, s.GID)
	}
	nonRoot := psc.RunAsNonRoot
	if sc.RunAsNonRoot != nil {
		nonRoot = sc.RunAsNonRoot
	}
	if nonRoot != nil && *nonRoot && s.UID == 0 {
		if uid == nil {
			return securitySpec{}, errRunAsRoot
		}
		return securitySpec{}, fmt.Errorf("container's runAsUser breaks non-root policy (pod: %q, container: %s)", pod.Namespace+"/"+pod.Name, c.Name)
	}
	s.Groups = append(s.Groups, psc.SupplementalGroups...)
	if psc.FSGroup != nil {
		s.Groups = append(s.Groups, *psc.FSGroup)
	}
	slices.Sort(s.Groups)
	s.Groups = slices.Compact(s.Groups)

	s.NoNewPrivs = sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation
	s.ReadOnlyRoot = sc.ReadOnlyRootFilesystem != nil && *sc.ReadOnlyRootFilesystem

	if sc.Privileged != nil && *sc.Privileged {
		return s, nil
	}
	caps, err := tweakCaps(sc.Capabilities)
	if err != nil {
		return securitySpec{}, err
	}
	s.Confined = true
	s.Caps = caps
	s.CgroupNS = cgroupV2
	s.ReadOnlySys = true
	if sc.ProcMount == nil || *sc.ProcMount != corev1.UnmaskedProcMount {
		s.MaskedPaths = slices.Clone(defaultMaskedPaths)
		s.ReadonlyPaths = slices.Clone(defaultReadonlyPaths)
	}
	return s, nil
}

// tweakCaps computes a container's capabilities as containerd does:
// add ALL gives every one, drop ALL none (applied after add ALL), then
// each capability added, then each dropped. Names may come with or
// without CAP_, in any case.
func tweakCaps(c *corev1.Capabilities) ([]string, error) {
	set := slices.Clone(defaultCaps)
	if c == nil {
		slices.SortFunc(set, func(a, b string) int { return capNumbers[a] - capNumbers[b] })
		return set, nil
	}
	norm := func(list []corev1.Capability) ([]string, bool, error) {
		var out []string
		all := false
		for _, x := range list {
			name := strings.ToUpper(string(x))
			if name == "ALL" {
				all = true
				continue
			}
			if !strings.HasPrefix(name, "CAP_") {
				name = "CAP_" + name
			}
			if _, ok := capNumbers[name]; !ok {
				return nil, false, fmt.Errorf("unknown capability %q", x)
			}
			out = append(out, name)
		}
		return out, all, nil
	}
	add, addAll, err := norm(c.Add)
	if err != nil {
		return nil, err
	}
	drop, dropAll, err := norm(c.Drop)
	if err != nil {
		return nil, err
	}
	if addAll {
		set = allCaps()
	}
	if dropAll {
		set = nil
	}
	for _, a := range add {
		if !slices.Contains(set, a) {
			set = append(set, a)
		}
	}
	set = slices.DeleteFunc(set, func(x string) bool { return slices.Contains(drop, x) })
	slices.SortFunc(set, func(a, b string) int { return capNumbers[a] - capNumbers[b] })
	if set == nil {
		set = []string{}
	}
	return set, nil
}
