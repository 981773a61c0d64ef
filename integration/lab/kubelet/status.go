package kubelet

import (
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// This file computes pod status from what the kubelet knows, as a pure
// function, so that an unchanged status is recognised and not written.

// containerRuntimePrefix prefixes container IDs in the status, as
// containerd:// does.
const containerRuntimePrefix = "cairn://"

// instanceInfo is what status needs of one run of a container.
type instanceInfo struct {
	ID           string
	RestartCount int
	StartedAt    time.Time
	Exit         *exitState // nil while running
}

// waiting is why a container does not run now.
type waiting struct {
	Reason  string
	Message string
}

// ctrInfo is the kubelet's view of one container for status.
type ctrInfo struct {
	Name     string
	Image    string
	ImageID  string
	Current  *instanceInfo // the latest run; nil if none yet
	Previous *instanceInfo // the run before it
	Ready    bool
	Started  bool
	// Waiting is set when the container is not running and will be
	// (re)started: CrashLoopBackOff, ErrImagePull, PodInitializing, ...
	Waiting *waiting
}

// podInfo is the kubelet's view of a pod for status.
type podInfo struct {
	HostIP       string
	PodIPs       []string
	StartTime    time.Time
	SandboxReady bool
	Initialized  bool
	// Rejected fails the pod (admission): Reason and Message go to the
	// pod's status.
	Rejected *waiting
	// Failed is set when the pod failed for good (an init container
	// failed under restartPolicy Never).
	Failed bool
	Init   []ctrInfo
	Main   []ctrInfo
}

// podStatus computes the pod's status from old (the status in the API,
// for fields and conditions the kubelet does not own and for transition
// times) and what the kubelet knows.
func podStatus(pod *corev1.Pod, info podInfo, now time.Time) corev1.PodStatus {
	old := pod.Status
	st := *old.DeepCopy()
	st.HostIP = info.HostIP
	st.HostIPs = nil
	if info.HostIP != "" {
		st.HostIPs = []corev1.HostIP{{IP: info.HostIP}}
	}
	st.PodIP, st.PodIPs = "", nil
	if len(info.PodIPs) > 0 {
		st.PodIP = info.PodIPs[0]
		for _, ip := range info.PodIPs {
			st.PodIPs = append(st.PodIPs, corev1.PodIP{IP: ip})
		}
	}
	if st.StartTime == nil && !info.StartTime.IsZero() {
		t := metav1.NewTime(info.StartTime).Rfc3339Copy()
		st.StartTime = &t
	}
	if st.QOSClass == "" {
		st.QOSClass = qosClass(pod)
	}

	if info.Rejected != nil {
		st.Phase = corev1.PodFailed
		st.Reason = info.Rejected.Reason
		st.Message = info.Rejected.Message
		st.PodIP, st.PodIPs = "", nil
		st.Conditions = setCondition(st.Conditions, condition(corev1.PodReady, false, "PodFailed", "", now), now)
		return st
	}

	st.InitContainerStatuses = containerStatuses(info.Init, old.InitContainerStatuses)
	st.ContainerStatuses = containerStatuses(info.Main, old.ContainerStatuses)
	st.Phase = podPhase(pod, info)

	var notInit, notReady []string
	for _, c := range info.Init {
		if !(c.Current != nil && c.Current.Exit != nil && c.Current.Exit.ExitCode == 0) && !(isSidecar(pod, c.Name) && c.Started) {
			notInit = append(notInit, c.Name)
		}
	}
	for _, c := range info.Main {
		if !c.Ready {
			notReady = append(notReady, c.Name)
		}
	}
	for _, c := range info.Init {
		if isSidecar(pod, c.Name) && !c.Ready {
			notReady = append(notReady, c.Name)
		}
	}
	terminal := st.Phase == corev1.PodSucceeded || st.Phase == corev1.PodFailed

	conds := []corev1.PodCondition{
		condition(corev1.PodReadyToStartContainers, info.SandboxReady, "", "", now),
	}
	if info.Initialized {
		conds = append(conds, condition(corev1.PodInitialized, true, "", "", now))
	} else {
		conds = append(conds, condition(corev1.PodInitialized, false, "ContainersNotInitialized",
			fmt.Sprintf("containers with incomplete status: [%s]", strings.Join(notInit, " ")), now))
	}
	switch {
	case terminal:
		conds = append(conds,
			condition(corev1.ContainersReady, false, "PodCompleted", "", now),
			condition(corev1.PodReady, false, "PodCompleted", "", now))
	case len(notReady) > 0:
		msg := fmt.Sprintf("containers with unready status: [%s]", strings.Join(notReady, " "))
		conds = append(conds,
			condition(corev1.ContainersReady, false, "ContainersNotReady", msg, now),
			condition(corev1.PodReady, false, "ContainersNotReady", msg, now))
	default:
		conds = append(conds, condition(corev1.ContainersReady, true, "", "", now))
		if gates := unreadyGates(pod); len(gates) > 0 {
			conds = append(conds, condition(corev1.PodReady, false, "ReadinessGatesNotReady",
				fmt.Sprintf("corresponding condition of pod readiness gate %q does not exist or is not True", gates[0]), now))
		} else {
			conds = append(conds, condition(corev1.PodReady, true, "", "", now))
		}
	}
	for _, c := range conds {
		st.Conditions = setCondition(st.Conditions, c, now)
	}
	return st
}

// statusEqual reports whether two statuses are the same for the API.
func statusEqual(a, b corev1.PodStatus) bool { return apiequality.Semantic.DeepEqual(a, b) }

func condition(t corev1.PodConditionType, ok bool, reason, msg string, now time.Time) corev1.PodCondition {
	s := corev1.ConditionFalse
	if ok {
		s = corev1.ConditionTrue
	}
	return corev1.PodCondition{Type: t, Status: s, Reason: reason, Message: msg,
		LastTransitionTime: metav1.NewTime(now).Rfc3339Copy()}
}

// setCondition replaces or adds c, keeping the old transition time when
// the status did not change.
func setCondition(conds []corev1.PodCondition, c corev1.PodCondition, now time.Time) []corev1.PodCondition {
	for i := range conds {
		if conds[i].Type != c.Type {
			continue
		}
		if conds[i].Status == c.Status {
			c.LastTransitionTime = conds[i].LastTransitionTime
		}
		c.LastProbeTime = conds[i].LastProbeTime
		conds[i] = c
		return conds
	}
	return append(conds, c)
}

func unreadyGates(pod *corev1.Pod) []string {
	var out []string
	for _, g := range pod.Spec.ReadinessGates {
		ok := false
		for _, c := range pod.Status.Conditions {
			if c.Type == g.ConditionType && c.Status == corev1.ConditionTrue {
				ok = true
			}
		}
		if !ok {
			out = append(out, string(g.ConditionType))
		}
	}
	return out
}

func containerStatuses(cs []ctrInfo, old []corev1.ContainerStatus) []corev1.ContainerStatus {
	if len(cs) == 0 {
		return nil
	}
	out := make([]corev1.ContainerStatus, 0, len(cs))
	for _, c := range cs {
		s := corev1.ContainerStatus{Name: c.Name, Image: c.Image, ImageID: c.ImageID, Ready: c.Ready}
		started := c.Started
		s.Started = &started
		if i := slices.IndexFunc(old, func(o corev1.ContainerStatus) bool { return o.Name == c.Name }); i >= 0 {
			// Fields the kubelet does not compute survive.
			s.Resources = old[i].Resources
			s.AllocatedResources = old[i].AllocatedResources
			s.VolumeMounts = old[i].VolumeMounts
			s.User = old[i].User
		}
		switch cur := c.Current; {
		case cur == nil:
			s.State.Waiting = waitingState(c.Waiting, "ContainerCreating")
			s.Started = nil
			if c.Waiting == nil {
				s.Started = &started
			}
		case cur.Exit == nil:
			s.ContainerID = containerRuntimePrefix + cur.ID
			s.RestartCount = int32(cur.RestartCount)
			s.State.Running = &corev1.ContainerStateRunning{StartedAt: metav1.NewTime(cur.StartedAt).Rfc3339Copy()}
			if c.Previous != nil && c.Previous.Exit != nil {
				s.LastTerminationState.Terminated = terminated(c.Previous)
			}
		case c.Waiting != nil:
			s.ContainerID = containerRuntimePrefix + cur.ID
			s.RestartCount = int32(cur.RestartCount)
			s.State.Waiting = waitingState(c.Waiting, "")
			s.LastTerminationState.Terminated = terminated(cur)
		default:
			s.ContainerID = containerRuntimePrefix + cur.ID
			s.RestartCount = int32(cur.RestartCount)
			s.State.Terminated = terminated(cur)
			if c.Previous != nil && c.Previous.Exit != nil {
				s.LastTerminationState.Terminated = terminated(c.Previous)
			}
		}
		out = append(out, s)
	}
	return out
}

func waitingState(w *waiting, def string) *corev1.ContainerStateWaiting {
	if w == nil {
		return &corev1.ContainerStateWaiting{Reason: def}
	}
	return &corev1.ContainerStateWaiting{Reason: w.Reason, Message: w.Message}
}

func terminated(in *instanceInfo) *corev1.ContainerStateTerminated {
	e := in.Exit
	t := &corev1.ContainerStateTerminated{
		ExitCode:    int32(e.ExitCode),
		Signal:      int32(e.Signal),
		Reason:      e.Reason,
		Message:     e.Message,
		FinishedAt:  metav1.NewTime(e.FinishedAt).Rfc3339Copy(),
		ContainerID: containerRuntimePrefix + in.ID,
	}
	if !in.StartedAt.IsZero() {
		t.StartedAt = metav1.NewTime(in.StartedAt).Rfc3339Copy()
	}
	return t
}

// podPhase follows the kubelet's rules: Pending until every container
// has started, Running while any runs or will be restarted, Succeeded or
// Failed when all have terminated for good.
func podPhase(pod *corev1.Pod, info podInfo) corev1.PodPhase {
	if info.Failed {
		return corev1.PodFailed
	}
	if !info.Initialized {
		return corev1.PodPending
	}
	var running, waitingN, stopped, succeeded int
	for _, c := range info.Main {
		switch cur := c.Current; {
		case cur == nil:
			waitingN++
		case cur.Exit == nil:
			running++
		case c.Waiting != nil:
			stopped++ // exited, will restart
		default:
			stopped++
			if cur.Exit.ExitCode == 0 {
				succeeded++
			}
		}
	}
	switch {
	case waitingN > 0:
		return corev1.PodPending
	case running > 0:
		return corev1.PodRunning
	case stopped > 0:
		switch {
		case pod.Spec.RestartPolicy == corev1.RestartPolicyAlways || pod.Spec.RestartPolicy == "":
			return corev1.PodRunning
		case stopped == succeeded:
			return corev1.PodSucceeded
		case pod.Spec.RestartPolicy == corev1.RestartPolicyNever:
			return corev1.PodFailed
		}
		return corev1.PodRunning
	}
	return corev1.PodPending
}

// qosClass computes a pod's QoS class from its containers' resources.
func qosClass(pod *corev1.Pod) corev1.PodQOSClass {
	all := append(slices.Clone(pod.Spec.InitContainers), pod.Spec.Containers...)
	any, guaranteed := false, true
	for _, c := range all {
		for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
			req, hasReq := c.Resources.Requests[r]
			lim, hasLim := c.Resources.Limits[r]
			if hasReq || hasLim {
				any = true
			}
			if !hasLim || (hasReq && req.Cmp(lim) != 0) {
				guaranteed = false
			}
		}
	}
	switch {
	case !any:
		return corev1.PodQOSBestEffort
	case guaranteed:
		return corev1.PodQOSGuaranteed
	}
	return corev1.PodQOSBurstable
}

// isSidecar reports whether the named init container is a sidecar
// (restartPolicy Always): it keeps running next to the main containers.
func isSidecar(pod *corev1.Pod, name string) bool {
	for _, c := range pod.Spec.InitContainers {
		if c.Name == name {
			return c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways
		}
	}
	return false
}
