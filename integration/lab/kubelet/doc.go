// Package kubelet is the lab kubelet: it makes one network namespace of
// the lab a Kubernetes node. It registers a Node (with a Lease), watches
// the pods bound to it and runs them as plain processes, and serves the
// kubelet API (logs, exec, port-forward) through integration/lab/kubeletapi.
//
// # Pods
//
// A pod's sandbox is a network namespace bind-mounted at
// <NodeRoot>/var/run/netns/cni-<id> (that directory is a shared mount, so
// node agents that mount it with hostPath see namespaces made later), set
// up by the node's CNI configuration through libcni: the first file of
// <NodeRoot>/etc/cni/net.d, re-read for every pod so that a plugin a
// DaemonSet chains in later is called too, with CNI_ARGS naming the pod
// (K8S_POD_NAMESPACE, K8S_POD_NAME, K8S_POD_INFRA_CONTAINER_ID,
// K8S_POD_UID) and libcni's cache under <NodeRoot>/var/lib/cni. hostNetwork
// pods use the kubelet's namespace, the node's. Each pod gets a cgroup
// named as a real kubelet's cgroupfs layout, under the cgroup the kubelet
// started in, in every hierarchy but cpuset:
// <start>/kubepods/<qos>/pod<uid>/<container-id>. With --cgroup the
// kubelet first moves itself into a cgroup of its own beside them (the
// lab's: <start>/<prefix>lab/lab-node-<i>/kubelet), as systemd runs a real
// node's kubelet in system.slice/kubelet.service: its sockets, probes
// included, are then told apart from every pod's, host-network or not.
//
// # Containers
//
// A container is a process with its own mount and UTS namespaces (and,
// unless privileged, cgroup namespace) in the pod's network namespace and
// cgroup. The kubelet re-executes its own binary as the hidden
// container-init command (InitCommand) in two roles:
//
//   - the monitor, in a session of its own, is the container's parent (as
//     conmon is): it copies stdout and stderr into the CRI-format log
//     <NodeRoot>/var/log/pods/<ns>_<pod>_<uid>/<container>/<restart>.log,
//     waits for the container and records its exit (exit.json). It outlives
//     the kubelet, which is how a restarted kubelet adopts running pods.
//   - the start stage, cloned by the monitor with CLONE_NEWNS|CLONE_NEWUTS,
//     joins the cgroups and the pod's network namespace (setns on its one
//     locked thread, then execve from that thread), builds the root, takes
//     on the container's credentials and execs the container's program.
//
// The root is a tmpfs on an empty directory under the lab dir that
// becomes "/" by pivot_root. In it: the host's /usr (read-only; /bin,
// /sbin, /lib, /lib64 as the symlinks they are on a merged-/usr host), /etc
// as an overlay (host /etc below, a tmpfs above, so the container may
// write there and mount points can be made) with the pod's resolv.conf,
// hosts and hostname on top, fresh /proc and /sys (showing the pod's
// network), the host's /dev, /sys/fs/cgroup (the node's hierarchies for a
// privileged container, its own cgroup otherwise), a private /tmp,
// /var/run -> /run, the repository's bin/ read-only at /cairn/bin, and the
// volumes. Every mount is a slave of the node's: nothing a container
// mounts reaches the host, and mounts made on the node under a hostPath
// reach the container. Mount points are only ever created on the tmpfs,
// the overlay or the kubelet's own volume directories; a volume whose
// mount point would have to be created inside a host directory fails
// with a clear message. So the kubelet writes on the host only under
// NodeRoot (the lab dir) and in the cgroup filesystem.
//
// Images map to binaries (Config.resolveImage): cairn/<name>:<tag> runs
// <BinDir>/<name>, other images come from Config.Images, and an unknown
// image leaves the container Waiting with ErrImagePull, then
// ImagePullBackOff. command and args override the binary as they would
// an image's entrypoint; a command naming the binary by its base name
// (/usr/local/bin/ztunnel) runs it.
//
// exec joins a running container with nsenter (util-linux), started by
// the enter role after it joined the container's cgroups: a multi-threaded
// Go process cannot setns(CLONE_NEWNS). nsenter then runs the kubelet's
// binary again (handed over as an open file, /proc/self/fd/N, since it has
// no path in the container's root) in the exec role, which takes on the
// container's credentials (below) and execs the command, as a runtime's
// exec does. port-forward dials 127.0.0.1 from a thread inside the pod's
// network namespace.
//
// # securityContext
//
// The kubelet enforces what containerd and runc enforce for a container
// and what matters to Cairn (security.go decides, creds.go and the start
// stage apply), for the container's process and for exec alike:
//
//   - privileged: false (the default) gives the capabilities containerd
//     computes: its default set (CHOWN, DAC_OVERRIDE, FSETID, FOWNER,
//     MKNOD, NET_RAW, SETGID, SETUID, SETFCAP, SETPCAP, NET_BIND_SERVICE,
//     SYS_CHROOT, KILL, AUDIT_WRITE), add ALL, drop ALL, then each added
//     and each dropped, as the bounding, permitted and effective sets;
//     inheritable and ambient stay empty, as containerd leaves them, so a
//     container that does not run as root keeps none after execve. /proc
//     has the kubelet's default masked paths (/proc/kcore, /proc/keys,
//     /sys/firmware, ...: an empty read-only tmpfs or /dev/null) and
//     read-only paths (/proc/sys, /proc/bus, /proc/fs, /proc/irq,
//     /proc/sysrq-trigger) unless procMount is Unmasked, and /sys is
//     read-only. With a cgroup v2 hierarchy on the node the container has
//     a cgroup namespace of its own, rooted at its cgroup (unshared after
//     joining it, as runc does), and /sys/fs/cgroup is a fresh read-only
//     cgroup2 mount of that subtree, as containerd does on a cgroup v2
//     node. The lab's host may be hybrid (cgroup v1 controllers beside
//     the v2 hierarchy): the lab then behaves as a cgroup v2 node, which
//     is what Cairn must work on.
//   - allowPrivilegeEscalation: false sets no_new_privs.
//   - readOnlyRootFilesystem: true makes the root read-only, and with it
//     /etc, /tmp and /run (part of an image's root on a node) and the
//     runtime's /etc/resolv.conf and /etc/hostname; the kubelet's
//     /etc/hosts and the volumes stay as mounted.
//   - runAsUser, runAsGroup (container over pod), supplementalGroups and
//     fsGroup give the user, group and supplementary groups; runAsNonRoot
//     refuses uid 0 (CreateContainerConfigError), and images run as root
//     unless told otherwise (their binaries have no user of their own).
//   - privileged: true keeps what every container had before: the
//     kubelet's capabilities, the node's cgroup namespace and /sys/fs/cgroup,
//     nothing masked or read-only (user and groups still apply).
//
// # State
//
// Per pod, <NodeRoot>/var/lib/cairn-kubelet/pods/<uid>/pod.json holds the
// sandbox (netns path, IPs, cgroups) and each container's last two
// instances (monitor and container PIDs with their start times, exit).
// On start the kubelet reads it: live monitors are adopted, exits that
// happened meanwhile are read from disk and handled by the restart
// policy, and pods the API no longer has are torn down.
//
// Volumes: emptyDir, hostPath (NodeRoot + path, except /proc, /sys and
// /dev, which stay the real ones), configMap, secret, downwardAPI and
// projected (ServiceAccount tokens from TokenRequest bound to the pod,
// refreshed at 80% of their life; configMap; secret; downwardAPI). Other
// types fail the pod (reason UnsupportedVolume) with an event, as does a
// hostNetwork pod whose ports are in use on the node (HostPortConflict).
//
// Not done: resource limits are not enforced; of securityContext,
// seccompProfile is not enforced (RuntimeDefault would need containerd's
// whole default profile: an allow-list of system calls, some by argument
// and by capability), nor are AppArmor, SELinux, sysctls, fsGroup's
// ownership of volumes and the user's groups from the image; /dev is the
// host's (runc gives a minimal one); lifecycle hooks do not run, emptyDir
// medium Memory is a directory on disk, and terminationMessagePath is not
// read (FallbackToLogsOnError is).
package kubelet
