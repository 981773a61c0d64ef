package kubelet

import (
	"bytes"
	"context"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/cairnmesh/cairn/integration/lab/kubeletapi"
)

func TestBackoff(t *testing.T) {
	b := backoff{base: 10 * time.Second, max: 5 * time.Minute, reset: 10 * time.Minute}
	var got []time.Duration
	crashes := 0
	for range 8 {
		crashes = b.crashes(crashes, time.Second)
		got = append(got, b.delay(crashes))
	}
	want := []time.Duration{0, 10 * time.Second, 20 * time.Second, 40 * time.Second, 80 * time.Second, 160 * time.Second, 5 * time.Minute, 5 * time.Minute}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("delays %v, want %v", got, want)
		}
	}
	// Ten minutes up: back to an immediate restart.
	if c := b.crashes(crashes, 10*time.Minute); b.delay(c) != 0 {
		t.Errorf("after a long run: delay %v", b.delay(c))
	}
}

func TestProbeTracker(t *testing.T) {
	p := &corev1.Probe{SuccessThreshold: 2, FailureThreshold: 2}
	r := newProbeTracker(readinessProbe, p)
	steps := []struct {
		ok, want, changed bool
	}{
		{true, false, false}, // one success of two
		{true, true, true},
		{false, true, false}, // one failure of two
		{true, true, false},
		{false, true, false},
		{false, false, true},
		{false, false, false},
	}
	for i, s := range steps {
		got, changed := r.observe(s.ok)
		if got != s.want || changed != s.changed {
			t.Fatalf("readiness step %d: got %v/%v, want %v/%v", i, got, changed, s.want, s.changed)
		}
	}
	l := newProbeTracker(livenessProbe, &corev1.Probe{})
	if !l.ok {
		t.Fatal("liveness starts failed")
	}
	for i, want := range []bool{true, true, false} { // default failureThreshold 3
		if got, _ := l.observe(false); got != want {
			t.Fatalf("liveness failure %d: %v", i+1, got)
		}
	}
	delay, period, timeout := probeTiming(&corev1.Probe{})
	if delay != 0 || period != 10*time.Second || timeout != time.Second {
		t.Errorf("defaults %v %v %v", delay, period, timeout)
	}
}

func TestDecide(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	exit := func(code int) *exitState { return &exitState{ExitCode: code, FinishedAt: now.Add(-time.Second)} }
	pod := testPod()
	pod.Spec.InitContainers = []corev1.Container{{Name: "init1"}, {Name: "init2"}}
	pod.Spec.Containers = []corev1.Container{{Name: "a"}, {Name: "b"}}

	d := decide(pod, map[string]ctrRun{}, now)
	if !equalStrings(d.Start, "init1") || d.Initialized || d.Waiting["a"].Reason != "PodInitializing" {
		t.Errorf("fresh pod: %+v", d)
	}
	d = decide(pod, map[string]ctrRun{"init1": {Ever: true, Exit: exit(0)}}, now)
	if !equalStrings(d.Start, "init2") {
		t.Errorf("after init1: %+v", d)
	}
	d = decide(pod, map[string]ctrRun{"init1": {Ever: true, Exit: exit(0)}, "init2": {Ever: true, Running: true}}, now)
	if len(d.Start) != 0 || d.Initialized {
		t.Errorf("init2 running: %+v", d)
	}
	done := map[string]ctrRun{"init1": {Ever: true, Exit: exit(0)}, "init2": {Ever: true, Exit: exit(0)}}
	d = decide(pod, done, now)
	if !equalStrings(d.Start, "a", "b") || !d.Initialized {
		t.Errorf("init done: %+v", d)
	}

	// A failed init container: retried after its back-off, or the pod
	// fails under Never.
	failed := map[string]ctrRun{"init1": {Ever: true, Exit: exit(1), RetryAt: now.Add(5 * time.Second)}}
	d = decide(pod, failed, now)
	if len(d.Start) != 0 || !d.Wake.Equal(now.Add(5*time.Second)) || d.Waiting["init1"].Reason != "CrashLoopBackOff" {
		t.Errorf("init back-off: %+v", d)
	}
	never := pod.DeepCopy()
	never.Spec.RestartPolicy = corev1.RestartPolicyNever
	if d = decide(never, failed, now); !d.Failed || !d.Done {
		t.Errorf("init failed under Never: %+v", d)
	}

	// Main containers by restart policy.
	runs := func(a, b ctrRun) map[string]ctrRun {
		m := map[string]ctrRun{"a": a, "b": b}
		for k, v := range done {
			m[k] = v
		}
		return m
	}
	running := ctrRun{Ever: true, Running: true, Started: true}
	for _, tc := range []struct {
		policy     corev1.RestartPolicy
		b          ctrRun
		wantStart  []string
		wantDone   bool
		wantReason string
	}{
		{corev1.RestartPolicyAlways, ctrRun{Ever: true, Exit: exit(0)}, []string{"b"}, false, ""},
		{corev1.RestartPolicyOnFailure, ctrRun{Ever: true, Exit: exit(0)}, nil, false, ""},
		{corev1.RestartPolicyOnFailure, ctrRun{Ever: true, Exit: exit(2)}, []string{"b"}, false, ""},
		{corev1.RestartPolicyNever, ctrRun{Ever: true, Exit: exit(2)}, nil, false, ""},
		{corev1.RestartPolicyAlways, ctrRun{Ever: true, Exit: exit(2), RetryAt: now.Add(time.Second)}, nil, false, "CrashLoopBackOff"},
	} {
		p := pod.DeepCopy()
		p.Spec.RestartPolicy = tc.policy
		d := decide(p, runs(running, tc.b), now)
		if !equalStrings(d.Start, tc.wantStart...) || d.Done != tc.wantDone || d.Waiting["b"].Reason != tc.wantReason {
			t.Errorf("%s, b=%+v: %+v", tc.policy, tc.b, d)
		}
	}
	// All stopped for good: done.
	p := pod.DeepCopy()
	p.Spec.RestartPolicy = corev1.RestartPolicyNever
	if d := decide(p, runs(ctrRun{Ever: true, Exit: exit(0)}, ctrRun{Ever: true, Exit: exit(1)}), now); !d.Done {
		t.Errorf("all exited under Never: %+v", d)
	}
	// A sidecar (restartPolicy Always init container) starts, and the
	// next init container waits until it has started; it keeps running.
	side := pod.DeepCopy()
	side.Spec.InitContainers[0].RestartPolicy = ptr.To(corev1.ContainerRestartPolicyAlways)
	if d := decide(side, map[string]ctrRun{}, now); !equalStrings(d.Start, "init1") || d.Initialized {
		t.Errorf("sidecar first: %+v", d)
	}
	sideUp := map[string]ctrRun{"init1": {Ever: true, Running: true, Started: true}, "init2": {Ever: true, Exit: exit(0)}}
	if d := decide(side, sideUp, now); !equalStrings(d.Start, "a", "b") || !d.Initialized {
		t.Errorf("sidecar running: %+v", d)
	}
	// A failed liveness probe kills.
	if d := decide(pod, runs(ctrRun{Ever: true, Running: true, LivenessFailed: true}, running), now); !equalStrings(d.Kill, "a") {
		t.Errorf("liveness: %+v", d)
	}
}

func equalStrings(got []string, want ...string) bool {
	if len(got) != len(want) {
		return false
	}
	for i := range got {
		if got[i] != want[i] {
			return false
		}
	}
	return true
}

func TestPodStatus(t *testing.T) {
	t0 := time.Date(2026, 11, 22, 1, 0, 0, 500_000_000, time.UTC)
	pod := testPod()
	pod.Spec.InitContainers = []corev1.Container{{Name: "init", Image: "cairn/echoserver:v1"}}
	pod.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodScheduled, Status: corev1.ConditionTrue}}
	info := podInfo{
		HostIP: "198.18.0.11", PodIPs: []string{"198.18.1.5"}, StartTime: t0, SandboxReady: true, Initialized: true,
		Init: []ctrInfo{{Name: "init", Image: "cairn/echoserver:v1",
			Current: &instanceInfo{ID: "i1", StartedAt: t0, Exit: &exitState{ExitCode: 0, Reason: "Completed", FinishedAt: t0.Add(time.Second)}}}},
		Main: []ctrInfo{{Name: "app", Image: "cairn/echoserver:v1", Ready: true, Started: true,
			Current:  &instanceInfo{ID: "c2", RestartCount: 1, StartedAt: t0.Add(3 * time.Second)},
			Previous: &instanceInfo{ID: "c1", StartedAt: t0.Add(time.Second), Exit: &exitState{ExitCode: 3, Reason: "Error", FinishedAt: t0.Add(2 * time.Second)}}}},
	}
	st := podStatus(pod, info, t0.Add(4*time.Second))
	if st.Phase != corev1.PodRunning || st.PodIP != "198.18.1.5" || st.HostIP != "198.18.0.11" || len(st.PodIPs) != 1 || len(st.HostIPs) != 1 {
		t.Fatalf("status: %+v", st)
	}
	cs := st.ContainerStatuses[0]
	if cs.State.Running == nil || cs.RestartCount != 1 || cs.ContainerID != "cairn://c2" || !cs.Ready ||
		cs.LastTerminationState.Terminated == nil || cs.LastTerminationState.Terminated.ExitCode != 3 {
		t.Errorf("container status: %+v", cs)
	}
	if st.InitContainerStatuses[0].State.Terminated == nil || st.InitContainerStatuses[0].State.Terminated.Reason != "Completed" {
		t.Errorf("init status: %+v", st.InitContainerStatuses[0])
	}
	for _, want := range []corev1.PodConditionType{corev1.PodScheduled, corev1.PodReadyToStartContainers, corev1.PodInitialized, corev1.ContainersReady, corev1.PodReady} {
		found := false
		for _, c := range st.Conditions {
			if c.Type == want && c.Status == corev1.ConditionTrue {
				found = true
			}
		}
		if !found {
			t.Errorf("condition %s is not True: %+v", want, st.Conditions)
		}
	}
	// Times are whole seconds, as the API stores them.
	if st.StartTime.Nanosecond() != 0 || cs.State.Running.StartedAt.Nanosecond() != 0 {
		t.Errorf("sub-second times: %v %v", st.StartTime, cs.State.Running.StartedAt)
	}

	// What the API would give back: the same status, so nothing to write,
	// even a little later.
	pod.Status = *st.DeepCopy()
	again := podStatus(pod, info, t0.Add(20*time.Second))
	if !statusEqual(again, pod.Status) {
		t.Errorf("an unchanged pod computes a different status")
	}
	// Readiness lost: Ready goes False with a new transition time.
	info.Main[0].Ready = false
	later := podStatus(pod, info, t0.Add(30*time.Second))
	if statusEqual(later, pod.Status) {
		t.Fatal("a readiness change is not a status change")
	}
	for _, c := range later.Conditions {
		if c.Type == corev1.PodReady && (c.Status != corev1.ConditionFalse || !c.LastTransitionTime.Equal(ptr.To(metav1.NewTime(t0.Add(30*time.Second)).Rfc3339Copy()))) {
			t.Errorf("Ready: %+v", c)
		}
		if c.Type == corev1.PodInitialized && !c.LastTransitionTime.Equal(ptr.To(metav1.NewTime(t0.Add(4*time.Second)).Rfc3339Copy())) {
			t.Errorf("Initialized kept no transition time: %+v", c)
		}
	}

	// Crash loop: waiting with the last termination.
	info.Main[0].Current.Exit = &exitState{ExitCode: 1, Reason: "Error", FinishedAt: t0.Add(31 * time.Second)}
	info.Main[0].Waiting = &waiting{Reason: "CrashLoopBackOff", Message: "back-off"}
	st = podStatus(pod, info, t0.Add(32*time.Second))
	cs = st.ContainerStatuses[0]
	if cs.State.Waiting == nil || cs.State.Waiting.Reason != "CrashLoopBackOff" || cs.LastTerminationState.Terminated.ExitCode != 1 || st.Phase != corev1.PodRunning {
		t.Errorf("crash loop: phase %s %+v", st.Phase, cs)
	}

	// Never restarted, exited 0: Succeeded, not Ready.
	pod.Spec.RestartPolicy = corev1.RestartPolicyNever
	info.Main[0].Waiting = nil
	info.Main[0].Current.Exit.ExitCode = 0
	if st = podStatus(pod, info, t0.Add(40*time.Second)); st.Phase != corev1.PodSucceeded {
		t.Errorf("phase %s, want Succeeded", st.Phase)
	}

	// Rejected at admission.
	st = podStatus(testPod(), podInfo{HostIP: "198.18.0.11", Rejected: &waiting{Reason: "UnsupportedVolume", Message: "nfs"}}, t0)
	if st.Phase != corev1.PodFailed || st.Reason != "UnsupportedVolume" || st.Message != "nfs" {
		t.Errorf("rejected: %+v", st)
	}
}

func TestQOSClass(t *testing.T) {
	pod := testPod()
	if q := qosClass(pod); q != corev1.PodQOSBestEffort {
		t.Errorf("%s", q)
	}
	pod.Spec.Containers[0].Resources.Requests = corev1.ResourceList{corev1.ResourceCPU: *resourceQ("100m")}
	if q := qosClass(pod); q != corev1.PodQOSBurstable {
		t.Errorf("%s", q)
	}
	rl := corev1.ResourceList{corev1.ResourceCPU: *resourceQ("1"), corev1.ResourceMemory: *resourceQ("64Mi")}
	pod.Spec.Containers[0].Resources = corev1.ResourceRequirements{Requests: rl, Limits: rl}
	if q := qosClass(pod); q != corev1.PodQOSGuaranteed {
		t.Errorf("%s", q)
	}
}

func TestLogs(t *testing.T) {
	var file bytes.Buffer
	clock := time.Date(2026, 11, 22, 1, 0, 0, 0, time.UTC)
	w := &criWriter{w: &file, now: func() time.Time { clock = clock.Add(time.Second); return clock }}
	long := strings.Repeat("x", maxLogLine+10)
	if err := w.copyStream("stdout", strings.NewReader("one\ntwo\n"+long+"\nlast-no-newline")); err != nil {
		t.Fatal(err)
	}
	if err := w.copyStream("stderr", strings.NewReader("oops\n")); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(file.String(), "\n"), "\n")
	if len(lines) != 6 || !strings.HasPrefix(lines[0], "2026-11-22T01:00:01Z stdout F one") ||
		!strings.Contains(lines[2], " stdout P ") || !strings.Contains(lines[5], " stderr F oops") {
		t.Fatalf("CRI log:\n%s", file.String())
	}

	path := t.TempDir() + "/0.log"
	if err := writeFileAtomic(path, file.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	read := func(opts kubeletapi.LogOptions) string {
		var out bytes.Buffer
		if err := readLog(context.Background(), path, opts, &out, func() bool { return true }); err != nil {
			t.Fatal(err)
		}
		return out.String()
	}
	if got := read(kubeletapi.LogOptions{}); got != "one\ntwo\n"+long+"\nlast-no-newline\noops\n" {
		t.Errorf("all: %q", got)
	}
	if got := read(kubeletapi.LogOptions{TailLines: ptr.To(int64(2))}); got != "last-no-newline\noops\n" {
		t.Errorf("tail 2: %q", got)
	}
	if got := read(kubeletapi.LogOptions{LimitBytes: ptr.To(int64(6))}); got != "one\ntw" {
		t.Errorf("limit 6: %q", got)
	}
	since := time.Date(2026, 11, 22, 1, 0, 2, 0, time.UTC)
	if got := read(kubeletapi.LogOptions{SinceTime: &since, Timestamps: true, TailLines: ptr.To(int64(100))}); !strings.HasPrefix(got, "2026-11-22T01:00:02Z two\n") {
		t.Errorf("since with timestamps: %q", got[:min(len(got), 80)])
	}

	// Follow: lines written later arrive, and the read ends once the
	// container is done.
	var out syncBuffer
	done := make(chan struct{})
	finished := make(chan error, 1)
	go func() {
		finished <- readLog(context.Background(), path, kubeletapi.LogOptions{Follow: true, TailLines: ptr.To(int64(1))}, &out,
			func() bool {
				select {
				case <-done:
					return true
				default:
					return false
				}
			})
	}()
	for start := time.Now(); !strings.Contains(out.String(), "oops") && time.Since(start) < 5*time.Second; {
		time.Sleep(10 * time.Millisecond)
	}
	f, err := openAppend(path)
	if err != nil {
		t.Fatal(err)
	}
	w2 := &criWriter{w: f, now: time.Now}
	_ = w2.entry("stdout", "F", []byte("later"))
	f.Close()
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(out.String(), "later\n") && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	close(done)
	if err := <-finished; err != nil || out.String() != "oops\nlater\n" {
		t.Errorf("follow: %q, %v", out.String(), err)
	}
}

func resourceQ(s string) *resource.Quantity { q := resource.MustParse(s); return &q }

func openAppend(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
