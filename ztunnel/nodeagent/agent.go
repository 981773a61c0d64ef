// Package nodeagent decides which pods of ztunnel's node are captured, and
// when. Pods reach it two ways: from cairn-cni when their sandbox is made
// (the netns path comes with the request, and the ADD waits for capture),
// and from a watch of the node's pods and namespaces, which captures pods
// that already ran when their namespace was enrolled, or before ztunnel
// started (Config.FindNetns finds their netns by what the pod cannot
// forge), and releases pods that leave the mesh or the node.
//
// What capture means (rules in the pod's netns, listeners, certificates) is
// the Capturer's business; the agent only keeps the set of captured pods
// equal to the set of enrolled, running pods of its node.
package nodeagent

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cairnmesh/cairn/internal/ambient/dataplane"
	"github.com/cairnmesh/cairn/internal/kubeclient"
	"github.com/cairnmesh/cairn/internal/kubewatch"
	"github.com/cairnmesh/cairn/ztunnel/cni"
)

// Pod is a pod as the Capturer needs it.
type Pod struct {
	Namespace      string
	Name           string
	UID            string
	ServiceAccount string
	IPs            []netip.Addr
	Netns          string // path of the pod's network namespace, as ztunnel sees it
}

func (p Pod) String() string { return p.Namespace + "/" + p.Name }

// Capturer puts pods in the mesh and takes them out.
type Capturer interface {
	// Capture captures the pod's traffic and returns when it is in place.
	// Called again for a pod already captured (same UID), it must succeed
	// without doing anything twice.
	Capture(ctx context.Context, pod Pod) error
	// Release undoes Capture. The netns may be gone already.
	Release(ctx context.Context, pod Pod) error
}

// Config configures an Agent.
type Config struct {
	Node string
	// Instance is ztunnel's pod name, for the Events it records.
	Instance string
	Kube     *kubeclient.Client
	Capturer Capturer
	// FindNetns returns the path of a running pod's network namespace, for
	// pods found by the watch (not announced by cairn-cni). It must find it
	// by what the pod cannot forge, never by an address the pod holds; a
	// *RefusedError says it will not name one (the agent records it on the
	// pod and retries), any other error that it found none yet.
	FindNetns func(pod Pod) (string, error)
	// CNIWait bounds how long a CNI ADD waits for the pod to appear in the
	// agent's watch before it asks the API server. Default 2 s.
	CNIWait time.Duration
	Log     *slog.Logger
}

// Agent keeps the node's enrolled pods captured. It implements cni.Handler.
type Agent struct {
	cfg   Config
	log   *slog.Logger
	pods  *kubewatch.Informer[kubeclient.Pod]       // this node's
	nss   *kubewatch.Informer[kubeclient.Namespace] // all, for their labels
	queue *queue

	// opMu serialises captures and releases from both paths (the watch
	// and cairn-cni), so one pod is never captured twice at once.
	opMu sync.Mutex

	mu       sync.Mutex
	captured map[string]Pod // by namespace/name
	synced   bool

	refused refusals
}

var _ cni.Handler = (*Agent)(nil)

// New builds an Agent; Run starts it.
func New(cfg Config) (*Agent, error) {
	if cfg.Node == "" || cfg.Kube == nil || cfg.Capturer == nil || cfg.FindNetns == nil {
		return nil, errors.New("nodeagent: Node, Kube, Capturer and FindNetns are required")
	}
	if cfg.CNIWait == 0 {
		cfg.CNIWait = 2 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	a := &Agent{cfg: cfg, log: cfg.Log, queue: newQueue(), captured: make(map[string]Pod)}
	enqueuePod := func(p *kubeclient.Pod) { a.queue.Add(p.Key()) }
	var err error
	a.pods, err = kubewatch.New(kubewatch.Config[kubeclient.Pod]{
		Client: cfg.Kube, Resource: kubeclient.Pods,
		Options: kubeclient.ListOptions{FieldSelector: "spec.nodeName=" + cfg.Node},
		Handler: kubewatch.Handler[kubeclient.Pod]{
			OnAdd: enqueuePod, OnUpdate: func(_, p *kubeclient.Pod) { enqueuePod(p) }, OnDelete: enqueuePod,
		},
		Log: cfg.Log.With("watch", "pods"),
	})
	if err != nil {
		return nil, fmt.Errorf("nodeagent: watching pods: %w", err)
	}
	// A namespace's labels decide for its pods: requeue them all.
	enqueueNamespace := func(ns *kubeclient.Namespace) {
		for _, p := range a.pods.List() {
			if p.Namespace == ns.Name {
				a.queue.Add(p.Key())
			}
		}
	}
	a.nss, err = kubewatch.New(kubewatch.Config[kubeclient.Namespace]{
		Client: cfg.Kube, Resource: kubeclient.Namespaces,
		Handler: kubewatch.Handler[kubeclient.Namespace]{
			OnAdd: enqueueNamespace, OnUpdate: func(_, ns *kubeclient.Namespace) { enqueueNamespace(ns) }, OnDelete: enqueueNamespace,
		},
		Log: cfg.Log.With("watch", "namespaces"),
	})
	if err != nil {
		return nil, fmt.Errorf("nodeagent: watching namespaces: %w", err)
	}
	return a, nil
}

// Run watches until ctx ends. Pods stay captured when it returns: a
// ztunnel that stops for an upgrade leaves the rules in place for the next
// one (released pods are those that leave the mesh, not the process).
func (a *Agent) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	defer a.queue.ShutDown()
	wg.Go(func() { _ = a.pods.Run(ctx) }) // returns nil when ctx ends
	wg.Go(func() { _ = a.nss.Run(ctx) })
	for _, synced := range []<-chan struct{}{a.pods.Synced(), a.nss.Synced()} {
		select {
		case <-synced:
		case <-ctx.Done():
			return fmt.Errorf("nodeagent: the pods and namespaces were not listed: %w", context.Cause(ctx))
		}
	}
	a.mu.Lock()
	a.synced = true
	a.mu.Unlock()
	wg.Go(func() {
		for a.next(ctx) {
		}
	})
	<-ctx.Done()
	return nil
}

// Synced reports whether the agent has seen its node's pods once.
func (a *Agent) Synced() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.synced
}

// Captured lists the captured pods, for debug pages.
func (a *Agent) Captured() []Pod {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]Pod, 0, len(a.captured))
	for _, p := range a.captured {
		out = append(out, p)
	}
	slices.SortFunc(out, func(x, y Pod) int { return strings.Compare(x.String(), y.String()) })
	return out
}

func (a *Agent) next(ctx context.Context) bool {
	key, ok := a.queue.Get()
	if !ok {
		return false
	}
	defer a.queue.Done(key)
	if err := a.reconcile(ctx, key); err != nil {
		a.log.Warn("capturing pod failed; will retry", "pod", key, "err", err)
		a.queue.Retry(key)
		return true
	}
	a.queue.Forget(key)
	return true
}

// reconcile makes one pod's capture match what it should be.
func (a *Agent) reconcile(ctx context.Context, key string) error {
	a.opMu.Lock()
	defer a.opMu.Unlock()
	pod, exists := a.pods.Get(key)
	a.mu.Lock()
	have, captured := a.captured[key]
	a.mu.Unlock()

	want := exists && a.wanted(pod)
	if !want {
		a.refused.forget(key)
	}
	switch {
	case want && captured && have.UID == pod.UID:
		return nil
	case want:
		if captured { // same name, new pod
			if err := a.release(ctx, key, have); err != nil {
				return err
			}
		}
		p := podOf(pod)
		if len(p.IPs) == 0 {
			return nil // no IP yet: the update that brings one requeues it
		}
		netns, err := a.cfg.FindNetns(p)
		var refused *RefusedError
		if errors.As(err, &refused) {
			a.refuse(ctx, pod, refused)
		}
		if err != nil {
			return fmt.Errorf("finding the network namespace of %s: %w", key, err)
		}
		p.Netns = netns
		if err := a.capture(ctx, key, p, pod); err != nil {
			return err
		}
		a.refused.forget(key)
		return nil
	case captured:
		return a.release(ctx, key, have)
	}
	return nil
}

// wanted says whether a pod of the node should be captured: enrolled, and
// neither finished nor being deleted.
func (a *Agent) wanted(pod *kubeclient.Pod) bool {
	if pod.DeletionTimestamp != nil || pod.Status.Phase == kubeclient.PodSucceeded || pod.Status.Phase == kubeclient.PodFailed {
		return false
	}
	var nsLabels map[string]string // nil while the namespace is unknown
	if ns, ok := a.nss.Get(pod.Namespace); ok {
		nsLabels = ns.Labels
	}
	return dataplane.Enrolled(pod.Labels, pod.Spec.HostNetwork, nsLabels)
}

func (a *Agent) capture(ctx context.Context, key string, p Pod, pod *kubeclient.Pod) error {
	if err := a.cfg.Capturer.Capture(ctx, p); err != nil {
		var refused *RefusedError
		if errors.As(err, &refused) {
			a.refuse(ctx, pod, refused)
		}
		return fmt.Errorf("capturing %s: %w", key, err)
	}
	a.mu.Lock()
	a.captured[key] = p
	a.mu.Unlock()
	a.log.Info("pod captured", "pod", key, "netns", p.Netns, "ips", p.IPs)
	return nil
}

func (a *Agent) release(ctx context.Context, key string, p Pod) error {
	if err := a.cfg.Capturer.Release(ctx, p); err != nil {
		return fmt.Errorf("releasing %s: %w", key, err)
	}
	a.mu.Lock()
	if cur, ok := a.captured[key]; ok && cur.UID == p.UID {
		delete(a.captured, key)
	}
	a.mu.Unlock()
	a.log.Info("pod released", "pod", key)
	return nil
}

func podOf(pod *kubeclient.Pod) Pod {
	p := Pod{Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID, ServiceAccount: cmp.Or(pod.Spec.ServiceAccountName, "default")}
	for _, ip := range pod.Status.PodIPs {
		if addr, err := netip.ParseAddr(ip.IP); err == nil {
			p.IPs = append(p.IPs, addr)
		}
	}
	return p
}
