package kubelet

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// logDirOf is /var/log/pods/<namespace>_<pod>_<uid> on the node.
func (c Config) logDirOf(namespace, pod, uid string) string {
	return filepath.Join(c.logDir(), namespace+"_"+pod+"_"+uid)
}

// containerLogLink is /var/log/containers/<pod>_<namespace>_<container>-<id>.log.
func (c Config) containerLogLink(namespace, pod, container, id string) string {
	return c.nodePath(filepath.Join("/var/log/containers", pod+"_"+namespace+"_"+container+"-"+id+".log"))
}

// startContainer starts a new instance of the named container: resolve
// the image, compute its environment and mounts, and start its monitor.
// Failures are recorded on the container (waiting reason, back-off) and
// as events; they never stop the worker.
func (w *podWorker) startContainer(ctx context.Context, pod *corev1.Pod, name string) {
	c := findContainer(pod, name)
	rt := w.ctrs[name]
	if rt == nil {
		rt = &ctrRuntime{}
		w.mu.Lock()
		w.ctrs[name] = rt
		w.mu.Unlock()
	}
	setWait := func(reason, msg string, retry time.Duration) {
		w.mu.Lock()
		rt.waitErr = &waiting{Reason: reason, Message: msg}
		rt.retryAt = time.Now().Add(retry)
		w.mu.Unlock()
	}

	binary, err := w.k.cfg.resolveImage(c.Image)
	if err != nil {
		rt.pulls++
		reason := "ErrImagePull"
		if rt.pulls > 1 {
			reason = "ImagePullBackOff"
		}
		retry := w.k.backoff.delay(rt.pulls + 1)
		msg := fmt.Sprintf("Failed to pull image %q: %v", c.Image, err)
		setWait(reason, msg, retry)
		w.k.event(pod, corev1.EventTypeWarning, "Failed", "%s", msg)
		if rt.pulls > 1 {
			w.k.event(pod, corev1.EventTypeNormal, "BackOff", "Back-off pulling image %q", c.Image)
		}
		return
	}
	if rt.pulls > 0 || rt.inst == nil {
		w.k.event(pod, corev1.EventTypeNormal, "Pulled", "Container image %q already present on machine (%s)", c.Image, binary)
	}
	rt.pulls = 0

	spec, inst, err := w.prepare(ctx, pod, c, binary)
	if err != nil {
		setWait("CreateContainerConfigError", err.Error(), 2*time.Second)
		w.k.event(pod, corev1.EventTypeWarning, "Failed", "Error: %v", err)
		w.log.Warn("preparing container", "container", name, "err", err)
		return
	}
	w.mu.Lock()
	rt.waitErr = nil
	rt.retryAt = time.Time{}
	insts := append(w.rec.Containers[name], inst)
	if len(insts) > 2 {
		old := insts[0]
		insts = insts[len(insts)-2:]
		_ = os.RemoveAll(old.Dir)
		_ = os.Remove(old.LogPath)
		_ = os.Remove(w.k.cfg.containerLogLink(w.rec.Namespace, w.rec.Name, name, old.ID))
	}
	w.rec.Containers[name] = insts
	w.mu.Unlock()
	if err := w.k.cfg.saveRecord(w.rec); err != nil {
		w.log.Error("saving pod state", "err", err)
	}
	w.k.event(pod, corev1.EventTypeNormal, "Created", "Created container %s", name)

	st, err := w.k.startMonitor(spec)
	if err != nil {
		// The monitor could not even run: record the start as failed.
		w.mu.Lock()
		inst.Exit = &exitState{ExitCode: 128, Reason: "StartError", Message: err.Error(), FinishedAt: time.Now()}
		w.rec.Crashes[name] = w.k.backoff.crashes(w.rec.Crashes[name], 0)
		w.mu.Unlock()
		_ = w.k.cfg.saveRecord(w.rec)
		_ = removeCgroups(inst.Cgroups, time.Second)
		w.k.event(pod, corev1.EventTypeWarning, "Failed", "Error: %v", err)
		return
	}
	w.adoptInstance(ctx, pod, rt, inst, st, &spec, true)
	if st.Error == "" {
		w.k.event(pod, corev1.EventTypeNormal, "Started", "Started container %s", name)
		w.log.Info("container started", "container", name, "pid", st.PID, "restarts", inst.RestartCount)
	}
}

// prepare makes the instance's directories, cgroups and spec.
func (w *podWorker) prepare(ctx context.Context, pod *corev1.Pod, c *corev1.Container, binary string) (containerSpec, *instanceRecord, error) {
	cfg := w.k.cfg
	env, err := w.containerEnv(ctx, pod, c)
	if err != nil {
		return containerSpec{}, nil, err
	}
	restarts := 0
	if insts := w.rec.Containers[c.Name]; len(insts) > 0 {
		restarts = insts[len(insts)-1].RestartCount + 1
	}
	id := newID()
	inst := &instanceRecord{
		ID:           id,
		Name:         c.Name,
		RestartCount: restarts,
		Dir:          filepath.Join(cfg.podStateDir(w.rec.UID), "containers", id),
		LogPath:      filepath.Join(cfg.logDirOf(pod.Namespace, pod.Name, w.rec.UID), c.Name, fmt.Sprintf("%d.log", restarts)),
		Binary:       binary,
		CreatedAt:    time.Now(),
	}
	for _, d := range w.rec.Cgroups {
		inst.Cgroups = append(inst.Cgroups, filepath.Join(d, id))
	}
	for _, d := range []string{filepath.Join(inst.Dir, rootDirName), filepath.Dir(inst.LogPath)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return containerSpec{}, nil, err
		}
	}
	link := cfg.containerLogLink(pod.Namespace, pod.Name, c.Name, id)
	if err := os.MkdirAll(filepath.Dir(link), 0o755); err == nil {
		_ = os.Symlink(inst.LogPath, link)
	}
	if err := createCgroups(inst.Cgroups); err != nil {
		return containerSpec{}, nil, err
	}
	sec, err := securityOf(pod, c, w.k.cgroups.v2)
	if err != nil {
		_ = removeCgroups(inst.Cgroups, time.Second)
		return containerSpec{}, nil, err
	}
	hostname, _ := podHostname(pod, cfg.ClusterDomain)
	if pod.Spec.HostNetwork {
		hostname = cfg.NodeName
	}
	files := w.podFilesDir()
	spec, err := buildSpec(planInput{
		Pod:       pod,
		Container: c,
		Env:       env,
		Binary:    binary,
		BinDir:    cfg.BinDir,
		Volumes:   w.vols.dirs,
		Files: podFiles{
			ResolvConf: filepath.Join(files, "resolv.conf"),
			Hosts:      filepath.Join(files, "hosts"),
			Hostname:   filepath.Join(files, "hostname"),
		},
		NetNS:        w.rec.NetNS,
		Cgroups:      inst.Cgroups,
		Hostname:     hostname,
		ID:           id,
		Dir:          inst.Dir,
		LogPath:      inst.LogPath,
		RestartCount: restarts,
		InitArgs:     cfg.InitArgs,
		HostDirs:     w.k.hostDirs,
		Security:     sec,
	})
	if err != nil {
		_ = removeCgroups(inst.Cgroups, time.Second)
		return containerSpec{}, nil, err
	}
	if err := writeJSON(filepath.Join(inst.Dir, specFile), spec, 0o600); err != nil {
		return containerSpec{}, nil, err
	}
	return spec, inst, nil
}

// containerEnv fetches what the container's environment refers to and
// computes it.
func (w *podWorker) containerEnv(ctx context.Context, pod *corev1.Pod, c *corev1.Container) ([]string, error) {
	ec := w.k.envContext(w.rec.IPs)
	hostname, _ := podHostname(pod, w.k.cfg.ClusterDomain)
	if pod.Spec.HostNetwork {
		hostname = w.k.cfg.NodeName
	}
	ec.base = []string{"PATH=" + defaultPath, "HOSTNAME=" + hostname, "HOME=/root"}
	ec.services = w.k.serviceEnv(ctx, pod)
	return containerEnv(pod, c, ec, newAPIObjects(ctx, w.k.client, pod.Namespace))
}

func (k *Kubelet) envContext(podIPs []string) envContext {
	return envContext{
		hostIP:  k.cfg.NodeIP.String(),
		podIPs:  podIPs,
		nodeCPU: *resource.NewQuantity(int64(k.cpus), resource.DecimalSI),
		nodeMem: *resource.NewQuantity(k.memory, resource.BinarySI),
	}
}

// serviceEnv returns the service variables of a pod: the "kubernetes"
// Service's always, and with enableServiceLinks those of its namespace.
func (k *Kubelet) serviceEnv(ctx context.Context, pod *corev1.Pod) []string {
	var svcs []*corev1.Service
	links := pod.Spec.EnableServiceLinks == nil || *pod.Spec.EnableServiceLinks
	if links {
		list, err := k.client.CoreV1().Services(pod.Namespace).List(ctx, metav1.ListOptions{})
		if err == nil {
			for i := range list.Items {
				svcs = append(svcs, &list.Items[i])
			}
		}
	}
	var out []string
	if kube, err := k.client.CoreV1().Services(metav1.NamespaceDefault).Get(ctx, "kubernetes", metav1.GetOptions{}); err == nil {
		if pod.Namespace != metav1.NamespaceDefault || !links {
			out = serviceEnv([]*corev1.Service{kube})
		}
	}
	return append(out, serviceEnv(svcs)...)
}

// startMonitor starts a container's monitor in a new session and waits
// for it to report the container's start.
func (k *Kubelet) startMonitor(spec containerSpec) (startedState, error) {
	specPath := filepath.Join(spec.Dir, specFile)
	logf, err := os.OpenFile(filepath.Join(spec.Dir, monitorLog), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return startedState{}, err
	}
	defer logf.Close()
	statusR, statusW, err := os.Pipe()
	if err != nil {
		return startedState{}, err
	}
	defer statusR.Close()
	cmd := exec.Command("/proc/self/exe", append(slices.Clone(k.cfg.InitArgs), "monitor", specPath)...)
	cmd.Env = []string{"PATH=" + defaultPath}
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.ExtraFiles = []*os.File{statusW}
	// Its own session: signals to the kubelet's process group (Ctrl-C)
	// leave pods alone, and it outlives the kubelet.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	statusW.Close()
	if err != nil {
		return startedState{}, fmt.Errorf("starting the container's monitor: %w", err)
	}
	pid := cmd.Process.Pid
	// The kubelet reaps the monitor itself (procHandle.Wait), so that no
	// goroutine has to sit in cmd.Wait.
	_ = cmd.Process.Release()

	type result struct {
		st  startedState
		err error
	}
	res := make(chan result, 1)
	go func() {
		var st startedState
		line, err := bufio.NewReader(statusR).ReadBytes('\n')
		if err == nil || errors.Is(err, io.EOF) && len(line) > 0 {
			err = json.Unmarshal(line, &st)
		}
		res <- result{st, err}
	}()
	select {
	case r := <-res:
		if r.err != nil {
			// The monitor died without a word; its log says why.
			tail, _ := os.ReadFile(filepath.Join(spec.Dir, monitorLog))
			_ = syscall.Kill(pid, syscall.SIGKILL)
			var ws syscall.WaitStatus
			_, _ = syscall.Wait4(pid, &ws, 0, nil)
			return startedState{}, fmt.Errorf("container monitor failed: %s", strings.TrimSpace(lastLines(string(tail), 5)))
		}
		r.st.MonitorPID = pid
		return r.st, nil
	case <-time.After(30 * time.Second):
		_ = syscall.Kill(pid, syscall.SIGKILL)
		var ws syscall.WaitStatus
		_, _ = syscall.Wait4(pid, &ws, 0, nil)
		statusR.Close()
		<-res
		return startedState{}, errors.New("container monitor did not report within 30s")
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// adoptInstance takes charge of a running instance: its monitor (to learn
// of the exit), its process (for signals) and its probes. child says the
// monitor is this kubelet's child.
func (w *podWorker) adoptInstance(ctx context.Context, pod *corev1.Pod, rt *ctrRuntime, inst *instanceRecord, st startedState, spec *containerSpec, child bool) {
	w.mu.Lock()
	rt.inst = inst
	rt.spec = spec
	rt.exited = false
	rt.ready, rt.started, rt.livenessFailed = false, false, false
	rt.monitorDone = make(chan struct{})
	if st.PID != 0 {
		stCopy := st
		inst.Started = &stCopy
	}
	w.mu.Unlock()
	if err := w.k.cfg.saveRecord(w.rec); err != nil {
		w.log.Error("saving pod state", "err", err)
	}

	mon, err := openProc(st.MonitorPID, st.MonitorStart, child)
	if err != nil {
		// Already gone: the exit is on disk (or lost).
		if child {
			var ws syscall.WaitStatus
			_, _ = syscall.Wait4(st.MonitorPID, &ws, 0, nil)
		}
		w.mu.Lock()
		rt.exited = true
		close(rt.monitorDone)
		w.mu.Unlock()
		w.wake()
		return
	}
	rt.monitor = mon
	if st.PID != 0 {
		if p, err := openProc(st.PID, st.PIDStart, false); err == nil {
			rt.proc = p
		}
	}
	done := rt.monitorDone
	w.children.Go(func() {
		for {
			err := mon.Wait(ctx)
			if ctx.Err() != nil {
				return
			}
			if err == nil || mon.Exited() {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		w.mu.Lock()
		rt.exited = true
		w.mu.Unlock()
		close(done)
		w.wake()
	})

	pctx, cancel := context.WithCancel(ctx)
	rt.cancel = cancel
	if pod == nil || st.PID == 0 {
		return
	}
	c := findContainer(pod, inst.Name)
	if c == nil {
		return
	}
	if c.StartupProbe == nil {
		w.mu.Lock()
		rt.started = true
		rt.ready = c.ReadinessProbe == nil
		w.mu.Unlock()
	}
	podIP := ""
	if len(w.rec.IPs) > 0 {
		podIP = w.rec.IPs[0]
	}
	pr := &prober{podIP: podIP, container: c, exec: func(ctx context.Context, cmd []string, out io.Writer) (int, error) {
		t, err := w.execTarget(rt)
		if err != nil {
			return 0, err
		}
		return w.k.execIn(ctx, t, cmd, nil, nopWriteCloser{out}, nopWriteCloser{out}, false, nil)
	}}
	for kind, p := range map[probeKind]*corev1.Probe{
		startupProbe: c.StartupProbe, livenessProbe: c.LivenessProbe, readinessProbe: c.ReadinessProbe,
	} {
		if p != nil {
			w.children.Go(func() { w.runProbe(pctx, pod, rt, pr, kind, p) })
		}
	}
}

// runProbe runs one probe of an instance until ctx ends.
func (w *podWorker) runProbe(ctx context.Context, pod *corev1.Pod, rt *ctrRuntime, pr *prober, kind probeKind, p *corev1.Probe) {
	delay, period, timeout := probeTiming(p)
	tracker := newProbeTracker(kind, p)
	if kind != startupProbe {
		// Readiness and liveness wait for the startup probe.
		for {
			w.mu.Lock()
			started := rt.started
			w.mu.Unlock()
			if started {
				break
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	select {
	case <-ctx.Done():
		return
	case <-time.After(delay):
	}
	tick := time.NewTicker(period)
	defer tick.Stop()
	for {
		err := pr.run(ctx, p.ProbeHandler, timeout)
		if ctx.Err() != nil {
			return
		}
		ok, changed := tracker.observe(err == nil)
		if err != nil {
			w.k.event(pod, corev1.EventTypeWarning, "Unhealthy", "%s probe failed: %v", kind, err)
		}
		if changed {
			w.mu.Lock()
			switch kind {
			case readinessProbe:
				rt.ready = ok
			case livenessProbe:
				rt.livenessFailed = !ok
			case startupProbe:
				if ok {
					rt.started = true
					rt.ready = findContainer(pod, rt.inst.Name).ReadinessProbe == nil
				} else {
					rt.livenessFailed = true
				}
			}
			w.mu.Unlock()
			w.wake()
			if kind == startupProbe && ok {
				return // done: readiness and liveness take over
			}
		}
		if kind == startupProbe && !ok && tracker.failures >= tracker.failure {
			w.mu.Lock()
			rt.livenessFailed = true
			w.mu.Unlock()
			w.wake()
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// adoptRecord takes over a pod the previous kubelet ran: running
// instances are watched again, finished ones are read from disk.
func (w *podWorker) adoptRecord(ctx context.Context, pod *corev1.Pod) {
	rec := w.rec
	for name, insts := range rec.Containers {
		if len(insts) == 0 {
			continue
		}
		inst := insts[len(insts)-1]
		if inst.Exit != nil {
			continue
		}
		rt := &ctrRuntime{}
		w.mu.Lock()
		w.ctrs[name] = rt
		w.mu.Unlock()
		var st startedState
		if inst.Started != nil {
			st = *inst.Started
		} else if err := readJSON(filepath.Join(inst.Dir, stateFile), &st); err != nil {
			// Never reported as started. The exit may still be there.
			st = startedState{}
		}
		var spec containerSpec
		_ = readJSON(filepath.Join(inst.Dir, specFile), &spec)
		if st.MonitorPID == 0 || !alive(st.MonitorPID, st.MonitorStart) {
			w.mu.Lock()
			rt.inst = inst
			rt.spec = &spec
			rt.exited = true
			rt.monitorDone = make(chan struct{})
			close(rt.monitorDone)
			w.mu.Unlock()
			w.log.Info("container exited while the kubelet was away", "container", name)
			continue
		}
		w.adoptInstance(ctx, pod, rt, inst, st, &spec, false)
		w.log.Info("adopted container", "container", name, "pid", st.PID)
	}
	if pod != nil && rec.SandboxReady && rec.NetNS != "" {
		if ok, _ := isMountPoint(rec.NetNS); !ok {
			w.log.Warn("the pod's network namespace is gone; recreating the sandbox")
			w.locked(func() { rec.SandboxReady = false })
		} else if err := w.k.cni.check(ctx, w.network()); err != nil {
			w.log.Warn("CNI CHECK of adopted pod", "err", err)
			w.k.event(pod, corev1.EventTypeWarning, "NetworkCheckFailed", "%v", err)
		}
	}
}

type nopWriteCloser struct{ io.Writer }

func (nopWriteCloser) Close() error { return nil }
