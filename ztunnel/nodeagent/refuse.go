package nodeagent

import (
	"cmp"
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/cairnmesh/cairn/internal/kubeclient"
)

// RefusedError is what Config.FindNetns returns when it will not name a
// pod's network namespace because what it found could be an impostor's or
// is ambiguous, and what Capturer.Capture returns when it cannot capture
// a pod safely (the pod's conntrack cannot be set up to close a way
// around the rules, say). The agent logs it, records it as a Warning
// Event on the pod, and tries again later (with its back-off): the pod
// stays out of the mesh until it can be captured safely.
type RefusedError struct {
	// Reason is the Event's reason, in CamelCase: NetnsAmbiguous,
	// ConntrackLoosePickup, ...
	Reason string
	// Message says what was found, for the Event and the log.
	Message string
}

func (e *RefusedError) Error() string { return e.Message }

// Defaults of the refusal Events.
const (
	// eventTimeout bounds one Event's creation: the agent holds up other
	// pods' captures meanwhile.
	eventTimeout = 5 * time.Second
	// eventRepeat is how often the same refusal of the same pod is
	// recorded again while it lasts (it is logged at every retry).
	eventRepeat = 10 * time.Minute
)

// refusals remembers the last refusal Event of each pod of the node, so
// that a retry every few seconds does not flood the API server. It holds
// an entry per refused pod of the node only, and forgets it when the pod
// is captured, leaves the mesh or is gone.
type refusals struct {
	mu   sync.Mutex
	last map[string]refusal // by namespace/name
}

type refusal struct {
	what string // reason and message
	at   time.Time
}

// due reports whether a refusal of pod (namespace/name key, uid) with
// reason and message should be recorded now, and notes it if so.
func (r *refusals) due(key, uid, reason, message string, now time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.last == nil {
		r.last = make(map[string]refusal)
	}
	what := uid + "\x00" + reason + "\x00" + message
	if prev, ok := r.last[key]; ok && prev.what == what && now.Sub(prev.at) < eventRepeat {
		return false
	}
	r.last[key] = refusal{what: what, at: now}
	return true
}

func (r *refusals) forget(key string) {
	r.mu.Lock()
	delete(r.last, key)
	r.mu.Unlock()
}

// refuse logs a refusal of pod and records it as a Warning Event on the
// pod. A failure to record the Event is logged, not returned: the refusal
// stands either way.
func (a *Agent) refuse(ctx context.Context, pod *kubeclient.Pod, e *RefusedError) {
	a.log.Error("refusing to capture pod: it stays out of the mesh; will retry",
		"pod", pod.Key(), "uid", pod.UID, "reason", e.Reason, "err", e.Message)
	now := time.Now()
	if !a.refused.due(pod.Key(), pod.UID, e.Reason, e.Message, now) {
		return
	}
	ev := kubeclient.Event{
		ObjectMeta: kubeclient.ObjectMeta{
			// Unique per pod and moment, as client-go names its events.
			Name:      fmt.Sprintf("%s.%x", pod.Name, now.UnixNano()),
			Namespace: pod.Namespace,
		},
		InvolvedObject: kubeclient.ObjectReference{Kind: "Pod", APIVersion: "v1", Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID},
		Reason:         e.Reason,
		Message:        "ztunnel does not capture this pod: " + e.Message,
		Type:           kubeclient.EventWarning,
		Source:         kubeclient.EventSource{Component: "ztunnel", Host: a.cfg.Node},
		FirstTimestamp: now, LastTimestamp: now, Count: 1,
		ReportingController: "cairn.dev/ztunnel",
		ReportingInstance:   cmp.Or(a.cfg.Instance, a.cfg.Node),
	}
	ctx, cancel := context.WithTimeout(ctx, eventTimeout)
	defer cancel()
	if err := a.cfg.Kube.Create(ctx, kubeclient.Events, pod.Namespace, &ev); err != nil {
		a.log.Warn("recording the refusal as an event on the pod", "pod", pod.Key(), "err", err)
	}
}
