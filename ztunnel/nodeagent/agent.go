// Package nodeagent decides which pods of ztunnel's node are captured, and
// when. Pods reach it two ways: from cairn-cni when their sandbox is made
// (the netns path comes with the request, and the ADD waits for capture),
// and from a watch of the node's pods and namespaces, which captures pods
// that already ran when their namespace was enrolled (their netns is found
// by their IP) and releases pods that leave the mesh or the node.
//
// What capture means (rules in the pod's netns, listeners, certificates) is
// the Capturer's business; the agent only keeps the set of captured pods
// equal to the set of enrolled, running pods of its node.
package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"github.com/cairnmesh/cairn/internal/ambient"
	"github.com/cairnmesh/cairn/ztunnel/cni"
)

// Pod is a pod as the Capturer needs it.
type Pod struct {
	Namespace      string
	Name           string
	UID            types.UID
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
	Node     string
	Kube     kubernetes.Interface
	Capturer Capturer
	// FindNetns returns the path of the network namespace that holds ip,
	// for pods found running (not announced by cairn-cni).
	FindNetns func(ip netip.Addr) (string, error)
	// CNIWait bounds how long a CNI ADD waits for the pod to appear in the
	// agent's watch before it asks the API server. Default 2 s.
	CNIWait time.Duration
	Log     *slog.Logger
}

// Agent keeps the node's enrolled pods captured. It implements cni.Handler.
type Agent struct {
	cfg       Config
	log       *slog.Logger
	factory   informers.SharedInformerFactory
	nsFactory informers.SharedInformerFactory
	pods      cache.SharedIndexInformer
	nss       cache.SharedIndexInformer
	queue     workqueue.TypedRateLimitingInterface[string]

	// opMu serialises captures and releases from both paths (the watch
	// and cairn-cni), so one pod is never captured twice at once.
	opMu sync.Mutex

	mu       sync.Mutex
	captured map[string]Pod // by namespace/name
	synced   bool
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
	a := &Agent{
		cfg: cfg,
		log: cfg.Log,
		factory: informers.NewSharedInformerFactoryWithOptions(cfg.Kube, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", cfg.Node).String()
		})),
		nsFactory: informers.NewSharedInformerFactory(cfg.Kube, 0),
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedItemExponentialFailureRateLimiter[string](100*time.Millisecond, 30*time.Second),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "ztunnel-pods"}),
		captured: make(map[string]Pod),
	}
	a.pods = a.factory.Core().V1().Pods().Informer()
	a.nss = a.nsFactory.Core().V1().Namespaces().Informer()
	enqueuePod := func(obj any) {
		if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
			a.queue.Add(key)
		}
	}
	if _, err := a.pods.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: enqueuePod, UpdateFunc: func(_, o any) { enqueuePod(o) }, DeleteFunc: enqueuePod,
	}); err != nil {
		return nil, fmt.Errorf("nodeagent: watching pods: %w", err)
	}
	enqueueNamespace := func(obj any) {
		ns, ok := obj.(*corev1.Namespace)
		if !ok {
			if t, isTomb := obj.(cache.DeletedFinalStateUnknown); isTomb {
				ns, ok = t.Obj.(*corev1.Namespace)
			}
		}
		if !ok {
			return
		}
		pods, _ := a.factory.Core().V1().Pods().Lister().Pods(ns.Name).List(labels.Everything())
		for _, p := range pods {
			a.queue.Add(p.Namespace + "/" + p.Name)
		}
	}
	if _, err := a.nss.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: enqueueNamespace, UpdateFunc: func(_, o any) { enqueueNamespace(o) }, DeleteFunc: enqueueNamespace,
	}); err != nil {
		return nil, fmt.Errorf("nodeagent: watching namespaces: %w", err)
	}
	return a, nil
}

// Run watches until ctx ends. Pods stay captured when it returns: a
// ztunnel that stops for an upgrade leaves the rules in place for the next
// one (released pods are those that leave the mesh, not the process).
func (a *Agent) Run(ctx context.Context) error {
	defer a.queue.ShutDown()
	a.factory.Start(ctx.Done())
	a.nsFactory.Start(ctx.Done())
	defer a.factory.Shutdown()
	defer a.nsFactory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), a.pods.HasSynced, a.nss.HasSynced) {
		return fmt.Errorf("nodeagent: informers did not sync: %w", context.Cause(ctx))
	}
	a.mu.Lock()
	a.synced = true
	a.mu.Unlock()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for a.next(ctx) {
		}
	}()
	<-ctx.Done()
	a.queue.ShutDown()
	<-done
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
	slices.SortFunc(out, func(x, y Pod) int {
		if x.String() < y.String() {
			return -1
		}
		if x.String() > y.String() {
			return 1
		}
		return 0
	})
	return out
}

func (a *Agent) next(ctx context.Context) bool {
	key, quit := a.queue.Get()
	if quit {
		return false
	}
	defer a.queue.Done(key)
	if err := a.reconcile(ctx, key); err != nil {
		a.log.Warn("capturing pod failed; will retry", "pod", key, "err", err)
		a.queue.AddRateLimited(key)
		return true
	}
	a.queue.Forget(key)
	return true
}

// reconcile makes one pod's capture match what it should be.
func (a *Agent) reconcile(ctx context.Context, key string) error {
	a.opMu.Lock()
	defer a.opMu.Unlock()
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return nil // not a key of ours
	}
	pod, err := a.factory.Core().V1().Pods().Lister().Pods(ns).Get(name)
	if apierrors.IsNotFound(err) {
		pod = nil
	} else if err != nil {
		return fmt.Errorf("reading pod %s: %w", key, err)
	}
	a.mu.Lock()
	have, captured := a.captured[key]
	a.mu.Unlock()

	want := pod != nil && a.wanted(pod)
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
		if p.Netns, err = a.cfg.FindNetns(p.IPs[0]); err != nil {
			return fmt.Errorf("finding the network namespace of %s (%s): %w", key, p.IPs[0], err)
		}
		return a.capture(ctx, key, p)
	case captured:
		return a.release(ctx, key, have)
	}
	return nil
}

// wanted says whether a pod of the node should be captured: enrolled, and
// neither finished nor being deleted.
func (a *Agent) wanted(pod *corev1.Pod) bool {
	if pod.DeletionTimestamp != nil || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return false
	}
	ns, err := a.nsFactory.Core().V1().Namespaces().Lister().Get(pod.Namespace)
	if err != nil {
		ns = nil
	}
	return ambient.Enrolled(pod, ns)
}

func (a *Agent) capture(ctx context.Context, key string, p Pod) error {
	if err := a.cfg.Capturer.Capture(ctx, p); err != nil {
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

func podOf(pod *corev1.Pod) Pod {
	p := Pod{Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID, ServiceAccount: cmpOr(pod.Spec.ServiceAccountName, "default")}
	for _, ip := range pod.Status.PodIPs {
		if addr, err := netip.ParseAddr(ip.IP); err == nil {
			p.IPs = append(p.IPs, addr)
		}
	}
	return p
}

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
