package kubelet

import (
	"errors"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"
)

func TestSecurityOf(t *testing.T) {
	ztunnelSC := &corev1.SecurityContext{
		Privileged: ptr.To(false), RunAsUser: ptr.To[int64](0), RunAsNonRoot: ptr.To(false),
		AllowPrivilegeEscalation: ptr.To(false), ReadOnlyRootFilesystem: ptr.To(true),
		Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"},
			Add: []corev1.Capability{"NET_ADMIN", "NET_RAW", "SYS_ADMIN", "SYS_PTRACE"}},
	}
	for _, tc := range []struct {
		name    string
		pod     *corev1.PodSecurityContext
		c       *corev1.SecurityContext
		v2      bool
		want    securitySpec
		wantErr string
	}{{
		name: "nothing asked: containerd's defaults, masked /proc, private cgroupns on v2",
		v2:   true,
		want: securitySpec{Confined: true, Caps: sorted(defaultCaps), CgroupNS: true, ReadOnlySys: true,
			MaskedPaths: defaultMaskedPaths, ReadonlyPaths: defaultReadonlyPaths},
	}, {
		name: "cgroup v1 only: the node's cgroup namespace",
		want: securitySpec{Confined: true, Caps: sorted(defaultCaps), ReadOnlySys: true,
			MaskedPaths: defaultMaskedPaths, ReadonlyPaths: defaultReadonlyPaths},
	}, {
		name: "ztunnel's manifest: drop ALL and add four, no_new_privs, read-only root",
		c:    ztunnelSC, v2: true,
		want: securitySpec{Confined: true, Caps: []string{"CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_SYS_PTRACE", "CAP_SYS_ADMIN"},
			NoNewPrivs: true, ReadOnlyRoot: true, CgroupNS: true, ReadOnlySys: true,
			MaskedPaths: defaultMaskedPaths, ReadonlyPaths: defaultReadonlyPaths},
	}, {
		name: "add to the defaults, drop one, names in any form",
		c: &corev1.SecurityContext{Capabilities: &corev1.Capabilities{
			Add: []corev1.Capability{"net_admin", "CAP_SYS_TIME"}, Drop: []corev1.Capability{"NET_RAW", "cap_mknod"}}},
		want: securitySpec{Confined: true, ReadOnlySys: true, MaskedPaths: defaultMaskedPaths, ReadonlyPaths: defaultReadonlyPaths,
			Caps: sorted(append(slices.DeleteFunc(slices.Clone(defaultCaps), func(c string) bool {
				return c == "CAP_NET_RAW" || c == "CAP_MKNOD"
			}), "CAP_NET_ADMIN", "CAP_SYS_TIME"))},
	}, {
		name: "add ALL, drop one",
		c:    &corev1.SecurityContext{Capabilities: &corev1.Capabilities{Add: []corev1.Capability{"ALL"}, Drop: []corev1.Capability{"SYS_ADMIN"}}},
		want: securitySpec{Confined: true, ReadOnlySys: true, MaskedPaths: defaultMaskedPaths, ReadonlyPaths: defaultReadonlyPaths,
			Caps: slices.DeleteFunc(allCaps(), func(c string) bool { return c == "CAP_SYS_ADMIN" })},
	}, {
		name: "add ALL and drop ALL: drop wins, the added ones stay",
		c: &corev1.SecurityContext{Capabilities: &corev1.Capabilities{
			Add: []corev1.Capability{"ALL", "KILL"}, Drop: []corev1.Capability{"ALL"}}},
		want: securitySpec{Confined: true, ReadOnlySys: true, MaskedPaths: defaultMaskedPaths, ReadonlyPaths: defaultReadonlyPaths,
			Caps: []string{"CAP_KILL"}},
	}, {
		name: "drop ALL only: no capability at all",
		c:    &corev1.SecurityContext{Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}},
		want: securitySpec{Confined: true, ReadOnlySys: true, MaskedPaths: defaultMaskedPaths, ReadonlyPaths: defaultReadonlyPaths,
			Caps: []string{}},
	}, {
		name: "privileged: today's behaviour, user still applied",
		c:    &corev1.SecurityContext{Privileged: ptr.To(true), RunAsUser: ptr.To[int64](1000)},
		v2:   true,
		want: securitySpec{UID: 1000},
	}, {
		name: "user and groups from the pod, the container's user wins",
		pod: &corev1.PodSecurityContext{RunAsUser: ptr.To[int64](1000), RunAsGroup: ptr.To[int64](2000),
			SupplementalGroups: []int64{3000, 10}, FSGroup: ptr.To[int64](10), RunAsNonRoot: ptr.To(true)},
		c: &corev1.SecurityContext{RunAsUser: ptr.To[int64](1337)},
		want: securitySpec{Confined: true, Caps: sorted(defaultCaps), ReadOnlySys: true, MaskedPaths: defaultMaskedPaths,
			ReadonlyPaths: defaultReadonlyPaths, UID: 1337, GID: 2000, Groups: []int64{10, 3000}},
	}, {
		name: "unmasked /proc",
		c:    &corev1.SecurityContext{ProcMount: ptr.To(corev1.UnmaskedProcMount)},
		want: securitySpec{Confined: true, Caps: sorted(defaultCaps), ReadOnlySys: true},
	}, {
		name:    "runAsNonRoot without a user: the image's root",
		pod:     &corev1.PodSecurityContext{RunAsNonRoot: ptr.To(true)},
		wantErr: errRunAsRoot.Error(),
	}, {
		name:    "runAsNonRoot with user 0",
		c:       &corev1.SecurityContext{RunAsNonRoot: ptr.To(true), RunAsUser: ptr.To[int64](0)},
		wantErr: "breaks non-root policy",
	}, {
		name:    "unknown capability",
		c:       &corev1.SecurityContext{Capabilities: &corev1.Capabilities{Add: []corev1.Capability{"NET_WIZARD"}}},
		wantErr: `unknown capability "NET_WIZARD"`,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			pod := testPod()
			pod.Spec.SecurityContext = tc.pod
			pod.Spec.Containers[0].SecurityContext = tc.c
			got, err := securityOf(pod, &pod.Spec.Containers[0], tc.v2)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one with %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !equalSpec(got, tc.want) {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func sorted(caps []string) []string {
	out := slices.Clone(caps)
	slices.SortFunc(out, func(a, b string) int { return capNumbers[a] - capNumbers[b] })
	return out
}

func equalSpec(a, b securitySpec) bool {
	return a.Confined == b.Confined && slices.Equal(a.Caps, b.Caps) && a.UID == b.UID && a.GID == b.GID &&
		slices.Equal(a.Groups, b.Groups) && a.NoNewPrivs == b.NoNewPrivs && a.ReadOnlyRoot == b.ReadOnlyRoot &&
		a.CgroupNS == b.CgroupNS && slices.Equal(a.MaskedPaths, b.MaskedPaths) &&
		slices.Equal(a.ReadonlyPaths, b.ReadonlyPaths) && a.ReadOnlySys == b.ReadOnlySys &&
		(a.Caps == nil) == (b.Caps == nil)
}

// TestContainerMountsSecurity: a confined container with a read-only root
// gets its own cgroup subtree, /sys read-only, the read-only /etc, /tmp
// and /run after every volume's mount point is made, and the masked and
// read-only paths last; a privileged one keeps the node's cgroups.
func TestContainerMountsSecurity(t *testing.T) {
	pod := testPod()
	c := &pod.Spec.Containers[0]
	c.VolumeMounts = []corev1.VolumeMount{{Name: "token", MountPath: "/var/run/secrets/tokens"}}
	in := planInput{Pod: pod, Container: c, Binary: "/repo/bin/echoserver", BinDir: "/repo/bin",
		Volumes: map[string]hostVolume{"token": {Path: "/lab/token"}},
		Files:   podFiles{ResolvConf: "/lab/resolv.conf", Hosts: "/lab/hosts", Hostname: "/lab/hostname"},
		Security: securitySpec{Confined: true, ReadOnlyRoot: true, CgroupNS: true, ReadOnlySys: true,
			MaskedPaths: defaultMaskedPaths, ReadonlyPaths: defaultReadonlyPaths}}
	ms, err := containerMounts(in, "/cairn/bin/echoserver")
	if err != nil {
		t.Fatal(err)
	}
	at := func(kind, target string) int {
		return slices.IndexFunc(ms, func(m mountSpec) bool { return m.Kind == kind && m.Target == target })
	}
	find := func(kind, target string) mountSpec {
		t.Helper()
		i := at(kind, target)
		if i < 0 {
			t.Fatalf("no %s mount on %s in %+v", kind, target, ms)
		}
		return ms[i]
	}
	if m := find(mountCgroup2, "/sys/fs/cgroup"); !m.ReadOnly {
		t.Error("the container's cgroup2 mount is writable")
	}
	if at(mountRBind, "/sys/fs/cgroup") >= 0 {
		t.Error("the node's cgroup hierarchies are bound into a confined container")
	}
	if m := find(mountSysfs, "/sys"); !m.ReadOnly {
		t.Error("/sys is writable")
	}
	if !find(mountBind, "/etc/resolv.conf").ReadOnly || !find(mountBind, "/etc/hostname").ReadOnly || find(mountBind, "/etc/hosts").ReadOnly {
		t.Error("with a read-only root, resolv.conf and hostname are read-only and the kubelet's hosts file is not")
	}
	volume := at(mountBind, "/var/run/secrets/tokens")
	for _, d := range []string{"/etc", "/tmp", "/run"} {
		if i := at(mountReadOnly, d); i < volume {
			t.Errorf("%s made read-only at step %d, before the volume's mount point (step %d)", d, i, volume)
		}
	}
	sys := at(mountReadOnly, "/proc/sys")
	kcore := at(mountMask, "/proc/kcore")
	if sys < volume || kcore < sys {
		t.Errorf("read-only paths (/proc/sys at %d) then masked ones (/proc/kcore at %d) come after the volumes (%d)", sys, kcore, volume)
	}
	if m := ms[sys]; !m.Optional {
		t.Error("a read-only path the kernel lacks must be skipped")
	}

	in.Security = securitySpec{}
	ms, err = containerMounts(in, "/cairn/bin/echoserver")
	if err != nil {
		t.Fatal(err)
	}
	if at(mountRBind, "/sys/fs/cgroup") < 0 || at(mountCgroup2, "/sys/fs/cgroup") >= 0 || at(mountMask, "/proc/kcore") >= 0 ||
		at(mountReadOnly, "/etc") >= 0 || find(mountSysfs, "/sys").ReadOnly {
		t.Errorf("a privileged container's mounts changed: %+v", ms)
	}
}

// TestTweakCapsErrors: unknown names fail the container, as runc does.
func TestTweakCapsErrors(t *testing.T) {
	_, err := tweakCaps(&corev1.Capabilities{Drop: []corev1.Capability{"SYS_WIZARD"}})
	if err == nil {
		t.Fatal("an unknown capability to drop is accepted")
	}
	if errors.Is(err, errRunAsRoot) {
		t.Fatal(err)
	}
}
