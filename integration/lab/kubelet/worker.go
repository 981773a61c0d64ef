package kubelet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// podWorker owns one pod: a goroutine that brings the pod's processes to
// what its spec asks, level-based (each sync looks at the whole pod), and
// writes its status. Probers and exit watchers of its containers are its
// goroutines too; they only record results and wake it.
type podWorker struct {
	k      *Kubelet
	uid    string
	log    *slog.Logger
	notify chan struct{}
	done   chan struct{}

	mu   sync.Mutex // guards the fields below; the worker is the only writer of rec
	pod  *corev1.Pod
	gone bool // deleted from the API
	rec  *podRecord
	ctrs map[string]*ctrRuntime

	// Worker-goroutine only.
	vols         podVolumes
	sandboxErr   *waiting
	sandboxRetry time.Time
	sandboxFails int
	lastStatus   *corev1.PodStatus
	lastWrite    time.Time
	finished     bool
	children     sync.WaitGroup // probers and watchers
}

// ctrRuntime is the live state of a container's current instance.
type ctrRuntime struct {
	inst    *instanceRecord
	monitor *procHandle
	proc    *procHandle
	spec    *containerSpec
	cancel  context.CancelFunc // stops the probers
	// monitorDone is closed when the monitor has exited (exited is then
	// set too, and exit.json is to be read).
	monitorDone chan struct{}
	exited      bool

	ready, started, livenessFailed bool

	retryAt time.Time
	waitErr *waiting // CreateContainerConfigError, ErrImagePull, ...
	pulls   int      // failed image resolutions in a row
}

func newPodWorker(k *Kubelet, uid string, rec *podRecord) *podWorker {
	w := &podWorker{
		k:      k,
		uid:    uid,
		log:    k.log.With("pod_uid", uid),
		notify: make(chan struct{}, 1),
		done:   make(chan struct{}),
		rec:    rec,
		ctrs:   map[string]*ctrRuntime{},
	}
	if rec != nil && rec.Name != "" {
		w.log = k.log.With("pod", rec.Namespace+"/"+rec.Name)
	}
	return w
}

func (w *podWorker) wake() {
	select {
	case w.notify <- struct{}{}:
	default:
	}
}

// update hands the worker the pod's latest version.
func (w *podWorker) update(pod *corev1.Pod) {
	w.mu.Lock()
	w.pod = pod
	w.mu.Unlock()
	w.wake()
}

// deleted tells the worker the pod is gone from the API.
func (w *podWorker) deleted() {
	w.mu.Lock()
	w.gone = true
	w.mu.Unlock()
	w.wake()
}

func (w *podWorker) run(ctx context.Context) {
	defer close(w.done)
	defer w.children.Wait()
	defer w.stopWatchers()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		next := w.sync(ctx)
		if w.finished || ctx.Err() != nil {
			return
		}
		wait := time.Minute
		if !next.IsZero() {
			wait = max(time.Until(next), 10*time.Millisecond)
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-w.notify:
		case <-timer.C:
		}
	}
}

// stopWatchers stops the probers and exit watchers (the containers keep
// running: a new kubelet adopts them).
func (w *podWorker) stopWatchers() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, c := range w.ctrs {
		if c.cancel != nil {
			c.cancel()
		}
	}
}

// sync does one round and returns when it wants to run again (zero:
// only on news).
func (w *podWorker) sync(ctx context.Context) time.Time {
	w.mu.Lock()
	pod, gone := w.pod, w.gone
	w.mu.Unlock()

	if gone || (pod != nil && pod.DeletionTimestamp != nil) {
		w.terminate(ctx, pod, gone)
		return time.Time{}
	}
	if pod == nil {
		return time.Time{}
	}
	if w.rec == nil {
		if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
			// Finished before this kubelet knew it (or its state was
			// lost): nothing to run.
			w.finished = true
			return time.Time{}
		}
		if !w.admit(ctx, pod) {
			return time.Time{}
		}
	}
	w.log = w.k.log.With("pod", pod.Namespace+"/"+pod.Name)
	if w.rec.Rejected != nil || w.rec.Finished {
		w.writeStatus(ctx, pod, decision{})
		return time.Time{}
	}

	now := time.Now()
	if !w.rec.SandboxReady {
		if now.Before(w.sandboxRetry) {
			w.writeStatus(ctx, pod, decision{})
			return w.sandboxRetry
		}
		if err := w.setupSandbox(ctx, pod); err != nil {
			if ctx.Err() != nil {
				return time.Time{}
			}
			w.sandboxFails++
			w.sandboxRetry = now.Add(min(time.Duration(w.sandboxFails)*time.Second, 30*time.Second))
			w.sandboxErr = &waiting{Reason: "ContainerCreating", Message: err.Error()}
			w.log.Warn("pod sandbox", "err", err)
			w.k.event(pod, corev1.EventTypeWarning, "FailedCreatePodSandBox", "Failed to create pod sandbox: %v", err)
			w.writeStatus(ctx, pod, decision{})
			return w.sandboxRetry
		}
		w.sandboxErr = nil
		w.sandboxFails = 0
	}
	if err := w.k.setupVolumes(ctx, pod, newAPIObjects(ctx, w.k.client, pod.Namespace), &w.vols, w.rec.IPs); err != nil {
		if ctx.Err() != nil {
			return time.Time{}
		}
		w.log.Warn("volumes", "err", err)
		w.k.event(pod, corev1.EventTypeWarning, "FailedMount", "MountVolume.SetUp failed: %v", err)
		if !w.anyStarted() {
			w.sandboxErr = &waiting{Reason: "ContainerCreating", Message: err.Error()}
			w.writeStatus(ctx, pod, decision{})
			return now.Add(2 * time.Second)
		}
	}
	w.sandboxErr = nil

	w.collectExits(pod)
	d := decide(pod, w.runs(), time.Now())
	for _, name := range d.Kill {
		c := w.ctrs[name]
		w.k.event(pod, corev1.EventTypeNormal, "Killing", "Container %s failed liveness probe, will be restarted", name)
		w.killInstances(ctx, pod, []*ctrRuntime{c}, containerGrace(pod, findContainer(pod, name)))
		w.collectExits(pod)
	}
	for _, name := range d.Start {
		if ctx.Err() != nil {
			return time.Time{}
		}
		w.startContainer(ctx, pod, name)
	}
	if len(d.Kill) > 0 || len(d.Start) > 0 {
		d = decide(pod, w.runs(), time.Now())
	}
	if d.Failed || d.Done {
		w.finish(ctx, pod, d)
	}
	w.writeStatus(ctx, pod, d)

	next := d.Wake
	for _, c := range w.ctrs {
		if c.waitErr != nil && !c.retryAt.IsZero() && (next.IsZero() || c.retryAt.Before(next)) {
			next = c.retryAt
		}
	}
	if !w.vols.nextRefresh.IsZero() && (next.IsZero() || w.vols.nextRefresh.Before(next)) {
		next = w.vols.nextRefresh
	}
	return next
}

// admit decides whether the node can run the pod at all. A pod it cannot
// run fails with a reason and an event; the kubelet goes on.
func (w *podWorker) admit(ctx context.Context, pod *corev1.Pod) bool {
	rec := &podRecord{
		UID: string(pod.UID), Namespace: pod.Namespace, Name: pod.Name,
		HostNetwork: pod.Spec.HostNetwork,
		SandboxID:   newID(),
		StartTime:   time.Now(),
		Containers:  map[string][]*instanceRecord{},
		Crashes:     map[string]int{},
	}
	if r := admissionError(pod); r != nil {
		rec.Rejected = r
	} else if pod.Spec.HostNetwork {
		if err := hostPortsFree(pod); err != nil {
			rec.Rejected = &waiting{Reason: "HostPortConflict", Message: err.Error()}
		}
	}
	w.mu.Lock()
	w.rec = rec
	w.mu.Unlock()
	if err := w.k.cfg.saveRecord(rec); err != nil {
		w.log.Error("saving pod state", "err", err)
	}
	if rec.Rejected != nil {
		w.log.Warn("pod rejected", "reason", rec.Rejected.Reason, "message", rec.Rejected.Message)
		w.k.event(pod, corev1.EventTypeWarning, rec.Rejected.Reason, "%s", rec.Rejected.Message)
		w.writeStatus(ctx, pod, decision{})
		return false
	}
	return true
}

// admissionError checks what the lab kubelet cannot do: unsupported
// volume types and volume mounts it cannot make.
func admissionError(pod *corev1.Pod) *waiting {
	names := map[string]bool{}
	for i := range pod.Spec.Volumes {
		v := &pod.Spec.Volumes[i]
		names[v.Name] = true
		if volumeKind(v) == "" {
			return &waiting{Reason: "UnsupportedVolume", Message: fmt.Sprintf(
				"volume %q is of type %s, which the lab kubelet does not support (it supports emptyDir, hostPath, configMap, secret, downwardAPI and projected)",
				v.Name, volumeTypeName(v))}
		}
	}
	all := append(slices.Clone(pod.Spec.InitContainers), pod.Spec.Containers...)
	for _, c := range all {
		for _, vm := range c.VolumeMounts {
			if !names[vm.Name] {
				return &waiting{Reason: "UnsupportedVolume", Message: fmt.Sprintf("container %s mounts volume %q, which the pod does not have", c.Name, vm.Name)}
			}
			if vm.SubPathExpr != "" {
				return &waiting{Reason: "UnsupportedVolume", Message: fmt.Sprintf("container %s: subPathExpr is not supported by the lab kubelet", c.Name)}
			}
			if vm.MountPropagation != nil && *vm.MountPropagation == corev1.MountPropagationBidirectional {
				return &waiting{Reason: "UnsupportedVolume", Message: fmt.Sprintf("container %s: Bidirectional mount propagation is not supported by the lab kubelet", c.Name)}
			}
		}
		if len(c.VolumeDevices) > 0 {
			return &waiting{Reason: "UnsupportedVolume", Message: fmt.Sprintf("container %s: volumeDevices are not supported by the lab kubelet", c.Name)}
		}
	}
	return nil
}

// hostPortsFree checks that the ports a hostNetwork pod declares are free
// in the node's network namespace (the kubelet's).
func hostPortsFree(pod *corev1.Pod) error {
	all := append(slices.Clone(pod.Spec.InitContainers), pod.Spec.Containers...)
	for _, c := range all {
		for _, p := range c.Ports {
			port := p.HostPort
			if port == 0 {
				port = p.ContainerPort
			}
			addr := net.JoinHostPort(p.HostIP, strconv.Itoa(int(port)))
			switch p.Protocol {
			case corev1.ProtocolUDP:
				l, err := net.ListenPacket("udp", addr)
				if err != nil {
					return fmt.Errorf("container %s: host port %d/UDP is in use on the node: %w", c.Name, port, err)
				}
				l.Close()
			case corev1.ProtocolSCTP:
			default:
				l, err := net.Listen("tcp", addr)
				if err != nil {
					return fmt.Errorf("container %s: host port %d/TCP is in use on the node: %w", c.Name, port, err)
				}
				l.Close()
			}
		}
	}
	return nil
}

// setupSandbox creates the pod's cgroup and, unless it uses the host's
// network, its network namespace, and runs CNI ADD.
func (w *podWorker) setupSandbox(ctx context.Context, pod *corev1.Pod) error {
	rec := w.rec
	qos := qosDir(pod)
	w.locked(func() { rec.Cgroups = w.k.cgroups.podDirs(qos, rec.UID) })
	if err := createCgroups(rec.Cgroups); err != nil {
		return err
	}
	if pod.Spec.HostNetwork {
		w.locked(func() { rec.IPs = []string{w.k.cfg.NodeIP.String()} })
	} else {
		if rec.NetNS == "" {
			w.locked(func() { rec.NetNS = filepath.Join(w.k.cfg.netnsDir(), "cni-"+rec.SandboxID[:32]) })
			if err := w.k.cfg.saveRecord(rec); err != nil {
				return err
			}
		}
		if ok, _ := isMountPoint(rec.NetNS); !ok {
			_ = removeNetns(rec.NetNS)
			if err := newNetns(rec.NetNS); err != nil {
				return err
			}
		}
		start := time.Now()
		ips, err := w.k.cni.add(ctx, w.network())
		if err != nil {
			// Leave nothing half-done: DEL undoes what ADD did.
			_ = w.k.cni.del(context.WithoutCancel(ctx), w.network())
			return err
		}
		w.log.Debug("CNI ADD", "ips", ips, "took", time.Since(start).Round(time.Millisecond))
		w.locked(func() { rec.IPs = ips })
	}
	if err := w.writePodFiles(pod); err != nil {
		return err
	}
	w.locked(func() { rec.SandboxReady = true })
	return w.k.cfg.saveRecord(rec)
}

func (w *podWorker) network() podNetwork {
	return podNetwork{SandboxID: w.rec.SandboxID, NetNS: w.rec.NetNS, Namespace: w.rec.Namespace, Name: w.rec.Name, UID: w.rec.UID}
}

func qosDir(pod *corev1.Pod) string {
	q := pod.Status.QOSClass
	if q == "" {
		q = qosClass(pod)
	}
	switch q {
	case corev1.PodQOSGuaranteed:
		return ""
	case corev1.PodQOSBurstable:
		return "burstable"
	}
	return "besteffort"
}

// podFilesDir holds the pod's resolv.conf, hosts and hostname.
func (w *podWorker) podFilesDir() string {
	return filepath.Join(w.k.cfg.podsDir(), w.rec.UID, "etc")
}

func (w *podWorker) writePodFiles(pod *corev1.Pod) error {
	dir := w.podFilesDir()
	cfg := w.k.cfg
	dns := ""
	if cfg.ClusterDNS.IsValid() {
		dns = cfg.ClusterDNS.String()
	}
	nodeResolv, _ := os.ReadFile(cfg.nodePath("/etc/resolv.conf"))
	nodeHosts, _ := os.ReadFile(cfg.nodePath("/etc/hosts"))
	if len(nodeHosts) == 0 {
		nodeHosts = fmt.Appendf(nil, "127.0.0.1\tlocalhost\n%s\t%s\n", cfg.NodeIP, cfg.NodeName)
	}
	hostname, _ := podHostname(pod, cfg.ClusterDomain)
	if pod.Spec.HostNetwork {
		hostname = cfg.NodeName
	}
	for name, data := range map[string]string{
		"resolv.conf": resolvConf(pod, dns, cfg.ClusterDomain, nodeResolv),
		"hosts":       hostsFile(pod, w.rec.IPs, cfg.ClusterDomain, nodeHosts),
		"hostname":    hostname + "\n",
	} {
		if err := writeFileAtomic(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func (w *podWorker) anyStarted() bool {
	for _, insts := range w.rec.Containers {
		if len(insts) > 0 {
			return true
		}
	}
	return false
}

// runs builds decide's view of the containers.
func (w *podWorker) runs() map[string]ctrRun {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := map[string]ctrRun{}
	for name, insts := range w.rec.Containers {
		if len(insts) == 0 {
			continue
		}
		cur := insts[len(insts)-1]
		r := ctrRun{Ever: true, Exit: cur.Exit}
		if c := w.ctrs[name]; c != nil && cur.Exit == nil && !c.exited {
			r.Running = true
			r.Started = c.started
			r.LivenessFailed = c.livenessFailed
		}
		if cur.Exit != nil {
			delay := w.k.backoff.delay(w.rec.Crashes[name])
			r.RetryAt = cur.Exit.FinishedAt.Add(delay)
		}
		out[name] = r
	}
	for name, c := range w.ctrs {
		if c.waitErr != nil {
			r := out[name]
			if r.RetryAt.Before(c.retryAt) {
				r.RetryAt = c.retryAt
			}
			out[name] = r
		}
	}
	return out
}

// collectExits reads the exit of every instance whose monitor has exited.
func (w *podWorker) collectExits(pod *corev1.Pod) {
	for name, c := range w.ctrs {
		w.mu.Lock()
		exited := c.exited && c.inst != nil && c.inst.Exit == nil
		w.mu.Unlock()
		if !exited {
			continue
		}
		var exit exitState
		if err := readJSON(filepath.Join(c.inst.Dir, exitFile), &exit); err != nil {
			exit = exitState{ExitCode: 137, Signal: 9, Reason: "Error",
				Message: "the container's monitor ended without recording an exit", FinishedAt: time.Now()}
		}
		if exit.ExitCode != 0 && exit.Message == "" {
			exit.Message = w.terminationMessage(pod, name, c.inst)
		}
		ranFor := time.Duration(0)
		if c.inst.Started != nil {
			ranFor = exit.FinishedAt.Sub(c.inst.Started.StartedAt)
		}
		w.mu.Lock()
		c.inst.Exit = &exit
		c.ready, c.started = false, false
		c.livenessFailed = false
		if c.cancel != nil {
			c.cancel()
		}
		if exit.ExitCode != 0 || !isInit(pod, name) {
			w.rec.Crashes[name] = w.k.backoff.crashes(w.rec.Crashes[name], ranFor)
		}
		w.mu.Unlock()
		killCgroups(c.inst.Cgroups) // what the container left behind
		_ = removeCgroups(c.inst.Cgroups, time.Second)
		if c.proc != nil {
			c.proc.Close()
		}
		if c.monitor != nil {
			c.monitor.Close()
		}
		w.log.Info("container exited", "container", name, "code", exit.ExitCode, "reason", exit.Reason, "restarts", c.inst.RestartCount)
		if exit.Reason == "StartError" {
			w.k.event(pod, corev1.EventTypeWarning, "Failed", "Error: failed to start container %q: %s", name, exit.Message)
		}
		if err := w.k.cfg.saveRecord(w.rec); err != nil {
			w.log.Error("saving pod state", "err", err)
		}
	}
}

// terminationMessage is the tail of the log for FallbackToLogsOnError.
func (w *podWorker) terminationMessage(pod *corev1.Pod, name string, inst *instanceRecord) string {
	c := findContainer(pod, name)
	if c == nil || c.TerminationMessagePolicy != corev1.TerminationMessageFallbackToLogsOnError {
		return ""
	}
	data, err := os.ReadFile(inst.LogPath)
	if err != nil {
		return ""
	}
	entries := tailEntries(parseEntries(data), 80)
	var out []byte
	for _, e := range entries {
		out = append(out, e.Content...)
		if !e.Partial {
			out = append(out, '\n')
		}
	}
	if len(out) > 2048 {
		out = out[len(out)-2048:]
	}
	return string(out)
}

func isInit(pod *corev1.Pod, name string) bool {
	return slices.ContainsFunc(pod.Spec.InitContainers, func(c corev1.Container) bool { return c.Name == name })
}

// containerGrace is how long a container gets between SIGTERM and
// SIGKILL when the kubelet kills it.
func containerGrace(pod *corev1.Pod, c *corev1.Container) time.Duration {
	g := int64(30)
	if pod.Spec.TerminationGracePeriodSeconds != nil {
		g = *pod.Spec.TerminationGracePeriodSeconds
	}
	if c != nil && c.LivenessProbe != nil && c.LivenessProbe.TerminationGracePeriodSeconds != nil {
		g = *c.LivenessProbe.TerminationGracePeriodSeconds
	}
	return time.Duration(g) * time.Second
}

// killInstances stops running instances: SIGTERM, up to grace, then
// SIGKILL to everything in their cgroups; it waits until their monitors
// have recorded the exits (or a last timeout).
func (w *podWorker) killInstances(ctx context.Context, pod *corev1.Pod, cs []*ctrRuntime, grace time.Duration) {
	var live []*ctrRuntime
	for _, c := range cs {
		w.mu.Lock()
		skip := c == nil || c.inst == nil || c.inst.Exit != nil || c.monitorDone == nil || c.exited
		w.mu.Unlock()
		if skip {
			continue
		}
		if c.proc != nil {
			_ = c.proc.Signal(syscall.SIGTERM)
		}
		live = append(live, c)
	}
	waitAll := func(d time.Duration) bool {
		t := time.NewTimer(d)
		defer t.Stop()
		for _, c := range live {
			select {
			case <-c.monitorDone:
			case <-t.C:
				return false
			case <-ctx.Done():
				return false
			}
		}
		return true
	}
	if grace > 0 && waitAll(grace) {
		return
	}
	for _, c := range live {
		killCgroups(c.inst.Cgroups)
	}
	if !waitAll(5*time.Second) && ctx.Err() == nil {
		w.log.Warn("containers did not exit after SIGKILL")
		w.markExited(live)
	}
}

func (w *podWorker) markExited(cs []*ctrRuntime) {
	w.mu.Lock()
	for _, c := range cs {
		c.exited = true
	}
	w.mu.Unlock()
}

// finish stops what still runs of a pod that is done and tears down its
// sandbox; logs and status stay until the pod is deleted.
func (w *podWorker) finish(ctx context.Context, pod *corev1.Pod, d decision) {
	var running []*ctrRuntime
	for _, c := range w.ctrs {
		if c.inst != nil && c.inst.Exit == nil {
			running = append(running, c)
		}
	}
	w.killInstances(ctx, pod, running, containerGrace(pod, nil))
	w.collectExits(pod)
	w.teardownSandbox(ctx, false)
	w.locked(func() {
		w.rec.Finished = true
		w.rec.Failed = d.Failed
	})
	if err := w.k.cfg.saveRecord(w.rec); err != nil {
		w.log.Error("saving pod state", "err", err)
	}
}

// teardownSandbox runs CNI DEL and removes the network namespace, the
// cgroups and the volumes; with all, also the logs and the state.
func (w *podWorker) teardownSandbox(ctx context.Context, all bool) {
	rec := w.rec
	ctx = context.WithoutCancel(ctx)
	if rec.NetNS != "" {
		if err := w.k.cni.del(ctx, w.network()); err != nil {
			w.log.Warn("CNI DEL", "err", err)
		}
		if err := removeNetns(rec.NetNS); err != nil {
			w.log.Warn("removing network namespace", "err", err)
		}
	}
	var dirs []string
	for _, insts := range rec.Containers {
		for _, in := range insts {
			dirs = append(dirs, in.Cgroups...)
		}
	}
	dirs = append(dirs, rec.Cgroups...)
	if err := removeCgroups(dirs, 5*time.Second); err != nil {
		w.log.Warn("removing cgroups", "err", err)
	}
	if err := os.RemoveAll(filepath.Join(w.k.cfg.podsDir(), rec.UID)); err != nil {
		w.log.Warn("removing volumes", "err", err)
	}
	w.locked(func() { rec.SandboxReady = false })
	if all {
		_ = os.RemoveAll(w.k.cfg.logDirOf(rec.Namespace, rec.Name, rec.UID))
		for _, insts := range rec.Containers {
			for _, in := range insts {
				_ = os.Remove(w.k.cfg.containerLogLink(rec.Namespace, rec.Name, in.Name, in.ID))
			}
		}
		_ = os.RemoveAll(w.k.cfg.podStateDir(rec.UID))
	}
}

// terminate ends a pod that is being deleted: its containers get SIGTERM
// and the grace period, then SIGKILL; then CNI DEL, and everything the
// pod had on the node goes. A pod still in the API is then deleted with
// grace period 0, which is what a kubelet does last.
func (w *podWorker) terminate(ctx context.Context, pod *corev1.Pod, gone bool) {
	if w.rec != nil {
		grace := time.Second // the pod is gone from the API: no one waits
		if !gone {
			grace = 30 * time.Second
			switch {
			case pod.DeletionGracePeriodSeconds != nil:
				grace = time.Duration(*pod.DeletionGracePeriodSeconds) * time.Second
			case pod.Spec.TerminationGracePeriodSeconds != nil:
				grace = time.Duration(*pod.Spec.TerminationGracePeriodSeconds) * time.Second
			}
		}
		var running []*ctrRuntime
		for _, c := range w.ctrs {
			if c.inst != nil && c.inst.Exit == nil {
				running = append(running, c)
			}
		}
		if len(running) > 0 && pod != nil {
			for _, c := range running {
				w.k.event(pod, corev1.EventTypeNormal, "Killing", "Stopping container %s", c.inst.Name)
			}
		}
		w.killInstances(ctx, pod, running, grace)
		if ctx.Err() != nil {
			return // the kubelet is stopping; the next one finishes this
		}
		w.stopWatchers()
		for _, c := range w.ctrs {
			if c.proc != nil {
				c.proc.Close()
			}
			if c.monitor != nil {
				c.monitor.Close()
			}
		}
		w.teardownSandbox(ctx, true)
		w.log.Info("pod removed")
	}
	if !gone && pod != nil {
		zero := int64(0)
		err := w.k.client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{
			GracePeriodSeconds: &zero,
			Preconditions:      &metav1.Preconditions{UID: &pod.UID},
		})
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			w.log.Warn("deleting pod", "err", err)
			if ctx.Err() == nil {
				return // try again on the next sync
			}
		}
	}
	w.finished = true
}

// writeStatus computes the pod's status and writes it through the status
// subresource when it differs from the API's.
func (w *podWorker) writeStatus(ctx context.Context, pod *corev1.Pod, d decision) {
	now := time.Now()
	st := podStatus(pod, w.podInfo(pod, d), now)
	if statusEqual(st, pod.Status) {
		w.lastStatus = &st
		return
	}
	if w.lastStatus != nil && statusEqual(st, *w.lastStatus) && time.Since(w.lastWrite) < 30*time.Second {
		return // written; the informer has not caught up yet
	}
	p := pod.DeepCopy()
	p.Status = st
	_, err := w.k.client.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, p, metav1.UpdateOptions{})
	if apierrors.IsConflict(err) {
		fresh, gerr := w.k.client.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
		if gerr != nil {
			w.log.Warn("writing pod status", "err", err)
			return
		}
		if fresh.UID != pod.UID {
			return
		}
		fresh.Status = podStatus(fresh, w.podInfo(fresh, d), now)
		st = fresh.Status
		_, err = w.k.client.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, fresh, metav1.UpdateOptions{})
	}
	if err != nil {
		if !apierrors.IsNotFound(err) && ctx.Err() == nil {
			w.log.Warn("writing pod status", "err", err)
		}
		return
	}
	w.lastStatus = &st
	w.lastWrite = now
	w.k.observeStatus(pod, st)
}

// podInfo gathers what podStatus needs.
func (w *podWorker) podInfo(pod *corev1.Pod, d decision) podInfo {
	w.mu.Lock()
	defer w.mu.Unlock()
	rec := w.rec
	info := podInfo{
		HostIP:       w.k.cfg.NodeIP.String(),
		StartTime:    rec.StartTime,
		SandboxReady: rec.SandboxReady,
		Initialized:  d.Initialized,
		Rejected:     rec.Rejected,
		Failed:       rec.Failed || d.Failed,
	}
	if rec.SandboxReady || rec.Finished {
		info.PodIPs = rec.IPs
	}
	if rec.Finished && !rec.Failed {
		info.Initialized = true
	}
	build := func(c corev1.Container) ctrInfo {
		ci := ctrInfo{Name: c.Name, Image: c.Image}
		insts := rec.Containers[c.Name]
		if n := len(insts); n > 0 {
			cur := insts[n-1]
			ci.Current = cur.info()
			ci.ImageID = "file://" + cur.Binary
			if n > 1 {
				ci.Previous = insts[n-2].info()
			}
			if cur.Exit == nil && cur.Started == nil {
				ci.Current = nil // being created
				if n > 1 {
					ci.Current = insts[n-2].info()
				}
			}
		}
		if rt := w.ctrs[c.Name]; rt != nil && ci.Current != nil && ci.Current.Exit == nil {
			ci.Ready = rt.ready
			ci.Started = rt.started
		}
		if wt, ok := d.Waiting[c.Name]; ok {
			ci.Waiting = &wt
		}
		if rt := w.ctrs[c.Name]; rt != nil && rt.waitErr != nil && (ci.Current == nil || ci.Current.Exit != nil) {
			ci.Waiting = rt.waitErr
		}
		if ci.Current == nil && ci.Waiting == nil && w.sandboxErr != nil {
			ci.Waiting = &waiting{Reason: "ContainerCreating"}
		}
		if ci.Current != nil && ci.Current.Exit != nil && ci.Waiting != nil && ci.Waiting.Reason == "PodInitializing" {
			ci.Waiting = nil
		}
		return ci
	}
	for _, c := range pod.Spec.InitContainers {
		info.Init = append(info.Init, build(c))
	}
	for _, c := range pod.Spec.Containers {
		info.Main = append(info.Main, build(c))
	}
	return info
}

var errNotRunning = errors.New("container is not running")

// locked runs fn with the worker's lock held: for the worker's writes of
// what Runtime and status readers see.
func (w *podWorker) locked(fn func()) {
	w.mu.Lock()
	defer w.mu.Unlock()
	fn()
}
