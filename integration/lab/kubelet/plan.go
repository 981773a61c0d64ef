package kubelet

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// This file turns a pod spec into process plans: pure functions from the
// pod (plus what the kubelet fetched or created for it) to a
// containerSpec. Nothing here touches the system.

// Paths inside every container.
const (
	containerBinDir   = "/cairn/bin"   // the repository's bin/ (read-only)
	containerImageDir = "/cairn/image" // an image binary from outside bin/
	defaultPath       = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:" + containerBinDir
)

// hostDirs are the host directories every container sees read-only (or
// as symlinks when they are symlinks on the host, as with merged /usr).
var hostDirs = []string{"/usr", "/bin", "/sbin", "/lib", "/lib64"}

// podFiles are the per-pod files the kubelet writes before starting
// containers and bind-mounts over /etc.
type podFiles struct {
	ResolvConf string
	Hosts      string
	Hostname   string
}

// planInput is everything buildSpec needs for one container instance.
type planInput struct {
	Pod       *corev1.Pod
	Container *corev1.Container
	Env       []string // from containerEnv
	// Binary is the image's binary on the host; Entrypoint is where the
	// container sees it.
	Binary string
	BinDir string
	// Volumes maps a volume name to its directory (or file) on the host.
	Volumes map[string]hostVolume
	Files   podFiles
	NetNS   string // "" for hostNetwork pods
	Cgroups []string
	// Hostname is the container's hostname.
	Hostname string
	// ID, Dir, LogPath and RestartCount name the instance.
	ID           string
	Dir          string
	LogPath      string
	RestartCount int
	InitArgs     []string
	// HostSymlinks tells which of hostDirs are symlinks on the host, and
	// to what (os.Readlink); nil means a real directory, and a missing
	// entry (absent on the host) is skipped.
	HostDirs map[string]string
	// Security is what the runtime enforces (securityOf).
	Security securitySpec
}

// hostVolume is a volume prepared on the host.
type hostVolume struct {
	Path string
	// Host is true for hostPath volumes: sub-mounts are carried
	// (recursive bind) and the kubelet does not own the directory.
	Host bool
}

// buildSpec computes the containerSpec of one container instance.
func buildSpec(in planInput) (containerSpec, error) {
	c := in.Container
	var entry string
	if rel, err := filepath.Rel(in.BinDir, in.Binary); err == nil && in.BinDir != "" && !strings.HasPrefix(rel, "..") {
		entry = path.Join(containerBinDir, filepath.ToSlash(rel))
	} else {
		entry = path.Join(containerImageDir, filepath.Base(in.Binary))
	}
	argv := entrypoint(c, entry, in.Env)

	mounts, err := containerMounts(in, entry)
	if err != nil {
		return containerSpec{}, err
	}
	wd := c.WorkingDir
	if wd == "" {
		wd = "/"
	}
	return containerSpec{
		ID:           in.ID,
		PodUID:       string(in.Pod.UID),
		Namespace:    in.Pod.Namespace,
		Pod:          in.Pod.Name,
		Container:    c.Name,
		RestartCount: in.RestartCount,
		Argv:         argv,
		Env:          in.Env,
		WorkingDir:   wd,
		Hostname:     in.Hostname,
		NetNS:        in.NetNS,
		Cgroups:      in.Cgroups,
		RootDir:      filepath.Join(in.Dir, rootDirName),
		Mounts:       mounts,
		LogPath:      in.LogPath,
		Dir:          in.Dir,
		InitArgs:     in.InitArgs,
		Security:     in.Security,
	}, nil
}

// entrypoint computes argv the way a container runtime combines the
// image's entrypoint (here: its binary, without default arguments) with
// command and args. A command naming the image's binary (by base name, as
// a manifest written for a real image would, e.g. /usr/local/bin/ztunnel)
// runs the binary.
func entrypoint(c *corev1.Container, entry string, env []string) []string {
	var argv []string
	if len(c.Command) == 0 {
		argv = append([]string{entry}, expandArgs(c.Args, env)...)
	} else {
		argv = append(expandArgs(c.Command, env), expandArgs(c.Args, env)...)
		if path.Base(argv[0]) == path.Base(entry) {
			argv[0] = entry
		}
	}
	return argv
}

// containerMounts lists the steps that build a container's root, in
// order: the host's system directories, /etc as a writable overlay, real
// /proc, /sys and /dev, a private /tmp, the repository's binaries, the
// pod's /etc files and the volumes (parents before children); then, for a
// container that is not privileged, the masked and read-only paths (as
// runc applies them, after every other mount).
//
// The security spec changes some: /sys read-only, and at /sys/fs/cgroup
// the container's own cgroup (v2) subtree, read-only, instead of the
// node's hierarchies, when it has a private cgroup namespace; with a
// read-only root, /etc, /tmp and /run (which on a node are part of the
// image's root filesystem) and the runtime's /etc/resolv.conf and
// /etc/hostname are read-only too, while the kubelet's /etc/hosts and
// the volumes stay as mounted. The root itself is made read-only last,
// by the start stage.
func containerMounts(in planInput, entry string) ([]mountSpec, error) {
	sec := in.Security
	ro := sec.ReadOnlyRoot
	var ms []mountSpec
	for _, d := range hostDirs {
		link, ok := in.HostDirs[d]
		switch {
		case !ok:
		case link != "":
			ms = append(ms, mountSpec{Kind: mountSymlink, Source: link, Target: d})
		default:
			ms = append(ms, mountSpec{Kind: mountBind, Source: d, Target: d, ReadOnly: true})
		}
	}
	cgroupMount := mountSpec{Kind: mountRBind, Source: "/sys/fs/cgroup", Target: "/sys/fs/cgroup", Optional: true}
	if sec.CgroupNS {
		cgroupMount = mountSpec{Kind: mountCgroup2, Target: "/sys/fs/cgroup", ReadOnly: true}
	}
	ms = append(ms,
		mountSpec{Kind: mountOverlay, Source: "/etc", Target: "/etc"},
		mountSpec{Kind: mountProc, Target: "/proc"},
		mountSpec{Kind: mountSysfs, Target: "/sys", ReadOnly: sec.ReadOnlySys},
		cgroupMount,
		mountSpec{Kind: mountRBind, Source: "/dev", Target: "/dev"},
		mountSpec{Kind: mountTmpfs, Target: "/tmp"},
		mountSpec{Kind: mountTmpfs, Target: "/run"},
		mountSpec{Kind: mountSymlink, Source: "../run", Target: "/var/run"},
	)
	if in.BinDir != "" {
		ms = append(ms, mountSpec{Kind: mountBind, Source: in.BinDir, Target: containerBinDir, ReadOnly: true, Optional: true})
	}
	if strings.HasPrefix(entry, containerImageDir+"/") {
		ms = append(ms, mountSpec{Kind: mountBind, Source: in.Binary, Target: entry, ReadOnly: true, File: true})
	}
	for _, f := range []struct {
		src, dst string
		ro       bool
	}{
		{in.Files.ResolvConf, "/etc/resolv.conf", ro},
		{in.Files.Hosts, "/etc/hosts", false},
		{in.Files.Hostname, "/etc/hostname", ro},
	} {
		if f.src != "" {
			ms = append(ms, mountSpec{Kind: mountBind, Source: f.src, Target: f.dst, File: true, ReadOnly: f.ro})
		}
	}
	vms := slices.Clone(in.Container.VolumeMounts)
	// Parents first, so that a volume mounted inside another is not
	// hidden by it; otherwise the order of the spec.
	slices.SortStableFunc(vms, func(a, b corev1.VolumeMount) int {
		return depth(a.MountPath) - depth(b.MountPath)
	})
	for _, vm := range vms {
		v, ok := in.Volumes[vm.Name]
		if !ok {
			return nil, fmt.Errorf("volumeMount %q: no volume %q in the pod", vm.MountPath, vm.Name)
		}
		if vm.SubPathExpr != "" {
			return nil, fmt.Errorf("volumeMount %q: subPathExpr is not supported by the lab kubelet", vm.MountPath)
		}
		if !path.IsAbs(vm.MountPath) {
			return nil, fmt.Errorf("volumeMount %q: mountPath must be absolute", vm.MountPath)
		}
		src := v.Path
		if vm.SubPath != "" {
			sub := path.Clean(vm.SubPath)
			if path.IsAbs(vm.SubPath) || sub == ".." || strings.HasPrefix(sub, "../") {
				return nil, fmt.Errorf("volumeMount %q: subPath %q must be a relative path inside the volume", vm.MountPath, vm.SubPath)
			}
			src = filepath.Join(v.Path, sub)
		}
		kind := mountBind
		if v.Host {
			kind = mountRBind
		}
		ms = append(ms, mountSpec{
			Kind:     kind,
			Source:   src,
			Target:   path.Clean(vm.MountPath),
			ReadOnly: vm.ReadOnly,
			File:     isFile(src),
			Owned:    !v.Host,
		})
	}
	if ro {
		// Last, once every mount point in them is made.
		for _, d := range []string{"/etc", "/tmp", "/run"} {
			ms = append(ms, mountSpec{Kind: mountReadOnly, Target: d})
		}
	}
	for _, p := range sec.ReadonlyPaths {
		ms = append(ms, mountSpec{Kind: mountReadOnly, Target: p, Optional: true})
	}
	for _, p := range sec.MaskedPaths {
		ms = append(ms, mountSpec{Kind: mountMask, Target: p, Optional: true})
	}
	return ms, nil
}

func depth(p string) int { return strings.Count(path.Clean("/"+p), "/") }

func isFile(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && !fi.IsDir()
}

// podHostname returns the pod's hostname and, with a subdomain, its FQDN.
func podHostname(pod *corev1.Pod, domain string) (hostname, fqdn string) {
	hostname = pod.Spec.Hostname
	if hostname == "" {
		hostname = pod.Name
	}
	if len(hostname) > 63 {
		hostname = strings.TrimRight(hostname[:63], "-.")
	}
	if pod.Spec.Subdomain != "" {
		fqdn = fmt.Sprintf("%s.%s.%s.svc.%s", hostname, pod.Spec.Subdomain, pod.Namespace, domain)
	}
	return hostname, fqdn
}

// resolvConf renders a pod's /etc/resolv.conf for its dnsPolicy.
// nodeResolv is the node's own resolv.conf, used by dnsPolicy Default
// (and by ClusterFirst for hostNetwork pods, and when there is no
// cluster DNS).
func resolvConf(pod *corev1.Pod, clusterDNS, domain string, nodeResolv []byte) string {
	policy := pod.Spec.DNSPolicy
	if policy == "" {
		policy = corev1.DNSClusterFirst
	}
	var servers, searches, options []string
	cluster := false
	switch policy {
	case corev1.DNSClusterFirstWithHostNet:
		cluster = true
	case corev1.DNSClusterFirst:
		cluster = !pod.Spec.HostNetwork
	case corev1.DNSNone:
	default: // Default
	}
	if cluster && clusterDNS == "" {
		cluster = false
		policy = corev1.DNSDefault
	}
	switch {
	case cluster:
		servers = []string{clusterDNS}
		searches = []string{
			pod.Namespace + ".svc." + domain,
			"svc." + domain,
			domain,
		}
		options = []string{"ndots:5"}
	case policy != corev1.DNSNone:
		servers, searches, options = parseResolv(nodeResolv)
	}
	if dc := pod.Spec.DNSConfig; dc != nil {
		servers = appendNew(servers, dc.Nameservers...)
		searches = appendNew(searches, dc.Searches...)
		for _, o := range dc.Options {
			opt := o.Name
			if o.Value != nil {
				opt += ":" + *o.Value
			}
			options = slices.DeleteFunc(options, func(s string) bool {
				name, _, _ := strings.Cut(s, ":")
				return name == o.Name
			})
			options = append(options, opt)
		}
	}
	var b strings.Builder
	if len(searches) > 0 {
		b.WriteString("search " + strings.Join(searches, " ") + "\n")
	}
	for _, s := range servers {
		b.WriteString("nameserver " + s + "\n")
	}
	if len(options) > 0 {
		b.WriteString("options " + strings.Join(options, " ") + "\n")
	}
	return b.String()
}

func parseResolv(data []byte) (servers, searches, options []string) {
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || strings.HasPrefix(f[0], "#") || strings.HasPrefix(f[0], ";") {
			continue
		}
		switch f[0] {
		case "nameserver":
			servers = append(servers, f[1])
		case "search", "domain":
			searches = f[1:]
		case "options":
			options = append(options, f[1:]...)
		}
	}
	return servers, searches, options
}

func appendNew(list []string, items ...string) []string {
	for _, it := range items {
		if !slices.Contains(list, it) {
			list = append(list, it)
		}
	}
	return list
}

// hostsFile renders a pod's /etc/hosts. hostNetwork pods get the node's
// (nodeHosts), as on a real node.
func hostsFile(pod *corev1.Pod, podIPs []string, domain string, nodeHosts []byte) string {
	var b strings.Builder
	if pod.Spec.HostNetwork && len(nodeHosts) > 0 {
		b.Write(nodeHosts)
		if !bytes.HasSuffix(nodeHosts, []byte("\n")) {
			b.WriteByte('\n')
		}
	} else {
		b.WriteString("# Kubernetes-managed hosts file.\n")
		b.WriteString("127.0.0.1\tlocalhost\n")
		b.WriteString("::1\tlocalhost ip6-localhost ip6-loopback\n")
		b.WriteString("fe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n")
		hostname, fqdn := podHostname(pod, domain)
		for _, ip := range podIPs {
			if fqdn != "" {
				fmt.Fprintf(&b, "%s\t%s\t%s\n", ip, fqdn, hostname)
			} else {
				fmt.Fprintf(&b, "%s\t%s\n", ip, hostname)
			}
		}
	}
	if len(pod.Spec.HostAliases) > 0 {
		b.WriteString("\n# Entries added by HostAliases.\n")
		for _, ha := range pod.Spec.HostAliases {
			fmt.Fprintf(&b, "%s\t%s\n", ha.IP, strings.Join(ha.Hostnames, "\t"))
		}
	}
	return b.String()
}
