package kubelet

import (
	"time"

	corev1 "k8s.io/api/core/v1"
)

// ctrRun is what decide needs to know about one container now.
type ctrRun struct {
	Running bool
	// Started: the running instance passed its startup probe (or has
	// none).
	Started bool
	// Exit is the latest instance's exit, when it is not running.
	Exit *exitState
	// Ever: an instance has been created.
	Ever bool
	// RetryAt: no (re)start before this time (back-off).
	RetryAt time.Time
	// LivenessFailed: the running instance failed its liveness (or
	// startup) probe and must be killed.
	LivenessFailed bool
}

// decision is what to do next for a pod's containers.
type decision struct {
	Start       []string // containers (init or main) to start now
	Kill        []string // running containers to kill (failed liveness)
	Initialized bool     // every init container has done its part
	Failed      bool     // the pod has failed for good
	Done        bool     // every container has stopped for good
	// Waiting is why a container that is not running waits.
	Waiting map[string]waiting
	// Wake is the earliest back-off expiry, zero if none.
	Wake time.Time
}

// decide computes the next actions for a pod from the state of its
// containers: init containers one at a time and in order (sidecars, with
// restartPolicy Always, keep running), then all main containers, with
// restarts by the pod's restartPolicy after their back-off.
func decide(pod *corev1.Pod, runs map[string]ctrRun, now time.Time) decision {
	d := decision{Initialized: true, Waiting: map[string]waiting{}}
	policy := pod.Spec.RestartPolicy
	if policy == "" {
		policy = corev1.RestartPolicyAlways
	}
	wake := func(t time.Time) {
		if d.Wake.IsZero() || t.Before(d.Wake) {
			d.Wake = t
		}
	}
	// start starts c now or, in back-off, says why it waits.
	start := func(name string, r ctrRun) {
		if now.Before(r.RetryAt) {
			wake(r.RetryAt)
			if r.Ever {
				d.Waiting[name] = waiting{Reason: "CrashLoopBackOff",
					Message: "back-off " + r.RetryAt.Sub(now).Round(time.Second).String() + " restarting failed container=" + name + " pod=" + pod.Name + "_" + pod.Namespace + "(" + string(pod.UID) + ")"}
			}
			return
		}
		d.Start = append(d.Start, name)
	}

	for _, c := range pod.Spec.InitContainers {
		r := runs[c.Name]
		if isSidecar(pod, c.Name) {
			if r.Running && r.LivenessFailed {
				d.Kill = append(d.Kill, c.Name)
			}
			if !r.Running {
				start(c.Name, r)
			}
			if !(r.Running && r.Started) {
				d.Initialized = false
				break
			}
			continue
		}
		if !r.Running && r.Exit != nil && r.Exit.ExitCode == 0 {
			continue
		}
		d.Initialized = false
		switch {
		case r.Running:
		case r.Exit != nil && policy == corev1.RestartPolicyNever:
			d.Failed = true
		default:
			start(c.Name, r)
		}
		break
	}

	if d.Failed {
		d.Done = true
		d.Start = nil
		return d
	}
	if !d.Initialized {
		for _, c := range pod.Spec.Containers {
			d.Waiting[c.Name] = waiting{Reason: "PodInitializing"}
		}
		return d
	}

	stoppedForGood := 0
	for _, c := range pod.Spec.Containers {
		r := runs[c.Name]
		switch {
		case r.Running:
			if r.LivenessFailed {
				d.Kill = append(d.Kill, c.Name)
			}
		case !r.Ever:
			start(c.Name, r)
		case r.Exit == nil:
			// Created but its exit is not known yet: wait.
		case policy == corev1.RestartPolicyAlways,
			policy == corev1.RestartPolicyOnFailure && r.Exit.ExitCode != 0:
			start(c.Name, r)
		default:
			stoppedForGood++
		}
	}
	if stoppedForGood == len(pod.Spec.Containers) {
		d.Done = true
		d.Start = nil
		for _, c := range pod.Spec.InitContainers {
			if isSidecar(pod, c.Name) && runs[c.Name].Running {
				d.Kill = append(d.Kill, c.Name)
			}
		}
	}
	return d
}
