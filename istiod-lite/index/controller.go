package index

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"
	discoveryv1 "k8s.io/api/discovery/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	cairnclient "github.com/cairnmesh/cairn/apis/client/clientset/versioned"
	cairninformers "github.com/cairnmesh/cairn/apis/client/informers/externalversions"
	"github.com/cairnmesh/cairn/istiod-lite/model"
)

// Sink receives the model; the xDS server is one. SetInitial gets the
// first full set of each type, Update every change after it.
type Sink interface {
	SetInitial(typeURL string, all map[string]proto.Message) error
	Update(typeURL string, upserts map[string]proto.Message, removes []string) error
}

// Controller keeps a Sink up to date with the model of the cluster. The
// first build is complete (Sink.SetInitial); after it, each informer event
// marks its object dirty, and a rebuild (changes arriving during one are
// folded into the next) recomputes only the sources that depend on the
// dirty objects and hands on only the resources that differ. It also
// writes the policies' status conditions.
type Controller struct {
	kube     kubernetes.Interface
	security cairnclient.Interface
	sink     Sink
	cfg      model.Config
	root     string
	log      *slog.Logger

	kubeInformers     informers.SharedInformerFactory
	securityInformers cairninformers.SharedInformerFactory
	trigger           chan struct{}
	ready             atomic.Bool

	dirtyMu sync.Mutex
	dirty   map[source]struct{}

	mu    sync.Mutex
	parts map[source]part // the model, by source; written by Run's goroutine
}

// New returns a Controller; Run starts it.
func New(kube kubernetes.Interface, security cairnclient.Interface, sink Sink, cfg model.Config, log *slog.Logger) *Controller {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Controller{
		kube: kube, security: security, sink: sink, cfg: cfg, log: log,
		root:              cmp.Or(cfg.RootNamespace, model.DefaultRootNamespace),
		kubeInformers:     informers.NewSharedInformerFactory(kube, 0),
		securityInformers: cairninformers.NewSharedInformerFactory(security, 0),
		trigger:           make(chan struct{}, 1),
		dirty:             make(map[source]struct{}),
		parts:             make(map[source]part),
	}
	for kind, inf := range map[sourceKind]cache.SharedIndexInformer{
		kindNamespace:           c.kubeInformers.Core().V1().Namespaces().Informer(),
		kindPod:                 c.kubeInformers.Core().V1().Pods().Informer(),
		kindService:             c.kubeInformers.Core().V1().Services().Informer(),
		kindEndpointSlice:       c.kubeInformers.Discovery().V1().EndpointSlices().Informer(),
		kindAuthorizationPolicy: c.securityInformers.Security().V1().AuthorizationPolicies().Informer(),
		kindPeerAuthentication:  c.securityInformers.Security().V1().PeerAuthentications().Informer(),
	} {
		transform := dropManagedFields
		if kind == kindPod {
			transform = trimPod
		}
		// Both only fail on an informer that has started; these are new.
		_ = inf.SetTransform(transform)
		_, _ = inf.AddEventHandler(c.handler(kind))
	}
	return c
}

// PodInformer is the Controller's pod informer, for other users that can
// share it (the CA's node authorization). Pods in it keep only what the
// model and the CA read: metadata, node, service account, host network,
// container ports, phase, IPs and conditions. Add indexers before Run.
func (c *Controller) PodInformer() cache.SharedIndexInformer {
	return c.kubeInformers.Core().V1().Pods().Informer()
}

// handler marks the object of each event dirty.
func (c *Controller) handler(kind sourceKind) cache.ResourceEventHandler {
	note := func(obj any) {
		key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
		if err != nil {
			c.log.Error("informer event without a usable key", "error", err)
			return
		}
		ns, name, err := cache.SplitMetaNamespaceKey(key)
		if err != nil {
			c.log.Error("informer event with a malformed key", "key", key, "error", err)
			return
		}
		c.dirtyMu.Lock()
		c.dirty[source{kind: kind, namespace: ns, name: name}] = struct{}{}
		c.dirtyMu.Unlock()
		c.poke()
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    note,
		UpdateFunc: func(_, obj any) { note(obj) },
		DeleteFunc: note,
	}
}

func (c *Controller) takeDirty() map[source]struct{} {
	c.dirtyMu.Lock()
	defer c.dirtyMu.Unlock()
	d := c.dirty
	c.dirty = make(map[source]struct{})
	return d
}

func (c *Controller) poke() {
	select {
	case c.trigger <- struct{}{}:
	default: // a rebuild is already pending
	}
}

// Ready reports whether the first full model has been handed to the sink.
func (c *Controller) Ready() bool { return c.ready.Load() }

// Last returns the current model (for debug endpoints).
func (c *Controller) Last() Result {
	c.mu.Lock()
	defer c.mu.Unlock()
	return assemble(c.parts)
}

// Run watches the cluster until ctx is done.
func (c *Controller) Run(ctx context.Context) error {
	defer c.kubeInformers.Shutdown()
	defer c.securityInformers.Shutdown()
	c.kubeInformers.Start(ctx.Done())
	c.securityInformers.Start(ctx.Done())
	for typ, ok := range c.kubeInformers.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return fmt.Errorf("informer for %v did not sync: %w", typ, context.Cause(ctx))
		}
	}
	for typ, ok := range c.securityInformers.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return fmt.Errorf("informer for %v did not sync: %w", typ, context.Cause(ctx))
		}
	}
	c.poke()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-c.trigger:
			var err error
			if c.ready.Load() {
				err = c.rebuildDirty(ctx)
			} else {
				err = c.rebuildAll(ctx)
			}
			if err != nil {
				c.log.Error("rebuilding the mesh model failed", "error", err)
			}
		}
	}
}

// rebuildAll builds the whole model and sets it as the sink's initial
// state. Until that succeeds, every rebuild is a full one.
func (c *Controller) rebuildAll(ctx context.Context) error {
	c.takeDirty() // all of it is rebuilt anyway
	in, err := c.inputs()
	if err != nil {
		return err
	}
	start := time.Now()
	v := c.newView()
	parts := make(map[source]part, len(in.Pods)+len(in.Services)+len(in.EndpointSlices))
	for _, list := range [][]source{
		sourcesOf(kindPod, in.Pods), sourcesOf(kindService, in.Services), sourcesOf(kindEndpointSlice, in.EndpointSlices),
		sourcesOf(kindAuthorizationPolicy, in.AuthorizationPolicies), sourcesOf(kindPeerAuthentication, in.PeerAuthentications),
	} {
		for _, s := range list {
			parts[s] = c.build(s, v)
		}
	}
	if err := v.err(); err != nil {
		return err
	}
	c.mu.Lock()
	prev := c.parts
	c.parts = parts
	c.mu.Unlock()
	next := assemble(parts)
	c.logNewlySkipped(assemble(prev).Skipped, next.Skipped)

	var errs []error
	for _, typeURL := range pushOrder(next.Resources) {
		all := next.Resources[typeURL]
		if err := c.sink.SetInitial(typeURL, all); err != nil {
			errs = append(errs, fmt.Errorf("setting the initial %s resources: %w", typeURL, err))
		}
	}
	c.log.Info("mesh model built", "took", time.Since(start),
		"addresses", len(next.Resources[model.AddressTypeURL]),
		"authorizations", len(next.Resources[model.AuthorizationTypeURL]))
	if len(errs) == 0 {
		c.ready.Store(true)
	}
	errs = append(errs, c.writeStatuses(ctx, next.Statuses))
	return errors.Join(errs...)
}

// rebuildDirty rebuilds the sources that depend on the dirty objects and
// pushes what changed.
func (c *Controller) rebuildDirty(ctx context.Context) error {
	dirty := c.takeDirty()
	if len(dirty) == 0 {
		return nil
	}
	v := c.newView()
	sources := c.dependents(dirty)
	changes := map[string]*Change{}
	var statuses []PolicyStatus
	c.mu.Lock()
	for s := range sources {
		next := c.build(s, v)
		prev := c.parts[s]
		diffPart(changes, s, prev, next)
		c.logNewlySkipped(prev.skipped, next.skipped)
		if next.status != nil {
			statuses = append(statuses, *next.status)
		}
		if next.resources == nil && next.skipped == nil && next.status == nil {
			delete(c.parts, s)
		} else {
			c.parts[s] = next
		}
	}
	c.mu.Unlock()
	errs := []error{v.err()}
	for _, typeURL := range pushOrder(changes) {
		ch := changes[typeURL]
		if ch.Empty() {
			continue
		}
		slices.Sort(ch.Removes)
		if err := c.sink.Update(typeURL, ch.Upserts, ch.Removes); err != nil {
			errs = append(errs, fmt.Errorf("pushing %s changes: %w", typeURL, err))
		}
	}
	errs = append(errs, c.writeStatuses(ctx, statuses))
	return errors.Join(errs...)
}

// pushOrder lists the type URLs of m with Authorizations first: the sink
// delivers types in the order their changes reach it within a batch, and
// a ztunnel must never hold an Address before the policies that apply to
// it.
func pushOrder[V any](m map[string]V) []string {
	urls := make([]string, 0, len(m))
	for u := range m {
		urls = append(urls, u)
	}
	slices.SortFunc(urls, func(a, b string) int {
		return cmp.Or(cmp.Compare(pushRank(a), pushRank(b)), cmp.Compare(a, b))
	})
	return urls
}

func pushRank(typeURL string) int {
	if typeURL == model.AuthorizationTypeURL {
		return 0
	}
	return 1
}

// diffPart adds to changes what turns a source's previous part into its
// next one.
func diffPart(changes map[string]*Change, s source, prev, next part) {
	typeURL := s.kind.typeURL()
	ch := changes[typeURL]
	if ch == nil {
		ch = &Change{Upserts: map[string]proto.Message{}}
		changes[typeURL] = ch
	}
	for name, msg := range next.resources {
		if old, ok := prev.resources[name]; !ok || !proto.Equal(old, msg) {
			ch.Upserts[name] = msg
		}
	}
	for name := range prev.resources {
		if _, ok := next.resources[name]; !ok {
			ch.Removes = append(ch.Removes, name)
		}
	}
}

// dependents are the sources whose parts may change when the dirty
// objects did: the objects themselves, and whatever reads them through
// the view.
func (c *Controller) dependents(dirty map[source]struct{}) map[source]struct{} {
	out := make(map[source]struct{}, len(dirty))
	podsOf := func(namespace string) {
		if namespace == c.root {
			namespace = metav1.NamespaceAll // root policies apply everywhere
		}
		pods, _ := c.kubeInformers.Core().V1().Pods().Lister().Pods(namespace).List(labels.Everything())
		for _, s := range sourcesOf(kindPod, pods) {
			out[s] = struct{}{}
		}
	}
	for s := range dirty {
		switch s.kind {
		case kindPod, kindEndpointSlice:
			out[s] = struct{}{}
		case kindNamespace: // enrolment labels
			podsOf(s.name)
		case kindService: // workloads list the Services that select them
			out[s] = struct{}{}
			podsOf(s.namespace)
			slicesOf, _ := c.kubeInformers.Discovery().V1().EndpointSlices().Lister().EndpointSlices(s.namespace).List(
				labels.SelectorFromSet(labels.Set{discoveryv1.LabelServiceName: s.name}))
			for _, x := range sourcesOf(kindEndpointSlice, slicesOf) {
				out[x] = struct{}{}
			}
		case kindAuthorizationPolicy: // workloads list the policies that select them
			out[s] = struct{}{}
			podsOf(s.namespace)
		case kindPeerAuthentication: // and a policy inherits from the others
			out[s] = struct{}{}
			ns := s.namespace
			if ns == c.root {
				ns = metav1.NamespaceAll
			}
			pas, _ := c.securityInformers.Security().V1().PeerAuthentications().Lister().PeerAuthentications(ns).List(labels.Everything())
			for _, x := range sourcesOf(kindPeerAuthentication, pas) {
				out[x] = struct{}{}
			}
			podsOf(s.namespace)
		}
	}
	return out
}

// build builds a source's part from the current informer state; a source
// that no longer exists gives an empty part.
func (c *Controller) build(s source, v *listerView) part {
	kube, sec := c.kubeInformers, c.securityInformers
	switch s.kind {
	case kindPod:
		if pod, err := kube.Core().V1().Pods().Lister().Pods(s.namespace).Get(s.name); err == nil {
			return buildPod(pod, v, c.cfg)
		}
	case kindService:
		if svc, err := kube.Core().V1().Services().Lister().Services(s.namespace).Get(s.name); err == nil {
			return buildService(svc, c.cfg)
		}
	case kindEndpointSlice:
		if slice, err := kube.Discovery().V1().EndpointSlices().Lister().EndpointSlices(s.namespace).Get(s.name); err == nil {
			return buildEndpointSlice(slice, v, c.cfg)
		}
	case kindAuthorizationPolicy:
		if ap, err := sec.Security().V1().AuthorizationPolicies().Lister().AuthorizationPolicies(s.namespace).Get(s.name); err == nil {
			return buildAuthorizationPolicy(ap, v)
		}
	case kindPeerAuthentication:
		if pa, err := sec.Security().V1().PeerAuthentications().Lister().PeerAuthentications(s.namespace).Get(s.name); err == nil {
			return buildPeerAuthentication(pa, v)
		}
	}
	return part{}
}

// logNewlySkipped names, once, each object (or part of one) that the model
// leaves out, with the reason, so a user can find why it has no effect.
func (c *Controller) logNewlySkipped(prev, next []model.Skipped) {
	seen := make(map[model.Skipped]bool, len(prev))
	for _, s := range prev {
		seen[s] = true
	}
	for _, s := range next {
		if !seen[s] {
			c.log.Info("left out of the mesh model", "object", s.Object, "reason", s.Reason)
		}
	}
}

func (c *Controller) inputs() (Inputs, error) {
	var in Inputs
	var errs []error
	all := labels.Everything()
	var err error
	in.Namespaces, err = c.kubeInformers.Core().V1().Namespaces().Lister().List(all)
	errs = append(errs, err)
	in.Pods, err = c.kubeInformers.Core().V1().Pods().Lister().List(all)
	errs = append(errs, err)
	in.Services, err = c.kubeInformers.Core().V1().Services().Lister().List(all)
	errs = append(errs, err)
	in.EndpointSlices, err = c.kubeInformers.Discovery().V1().EndpointSlices().Lister().List(all)
	errs = append(errs, err)
	in.AuthorizationPolicies, err = c.securityInformers.Security().V1().AuthorizationPolicies().Lister().List(all)
	errs = append(errs, err)
	in.PeerAuthentications, err = c.securityInformers.Security().V1().PeerAuthentications().Lister().List(all)
	errs = append(errs, err)
	if err := errors.Join(errs...); err != nil {
		return Inputs{}, fmt.Errorf("listing from informers: %w", err)
	}
	return in, nil
}

// writeStatuses sets each policy's conditions where they differ from what
// the object already says. A policy deleted meanwhile is skipped.
func (c *Controller) writeStatuses(ctx context.Context, statuses []PolicyStatus) error {
	var errs []error
	for _, st := range statuses {
		switch st.Kind {
		case "AuthorizationPolicy":
			cur, err := c.securityInformers.Security().V1().AuthorizationPolicies().Lister().AuthorizationPolicies(st.Namespace).Get(st.Name)
			if err != nil {
				continue
			}
			if conds, changed := mergeConditions(cur.Status.Conditions, st); changed {
				upd := cur.DeepCopy()
				upd.Status.Conditions = conds
				upd.Status.ObservedGeneration = st.Generation
				if _, err := c.security.SecurityV1().AuthorizationPolicies(st.Namespace).UpdateStatus(ctx, upd, metav1.UpdateOptions{}); err != nil {
					errs = append(errs, fmt.Errorf("writing status of AuthorizationPolicy %s/%s: %w", st.Namespace, st.Name, err))
				}
			}
		case "PeerAuthentication":
			cur, err := c.securityInformers.Security().V1().PeerAuthentications().Lister().PeerAuthentications(st.Namespace).Get(st.Name)
			if err != nil {
				continue
			}
			if conds, changed := mergeConditions(cur.Status.Conditions, st); changed {
				upd := cur.DeepCopy()
				upd.Status.Conditions = conds
				upd.Status.ObservedGeneration = st.Generation
				if _, err := c.security.SecurityV1().PeerAuthentications(st.Namespace).UpdateStatus(ctx, upd, metav1.UpdateOptions{}); err != nil {
					errs = append(errs, fmt.Errorf("writing status of PeerAuthentication %s/%s: %w", st.Namespace, st.Name, err))
				}
			}
		}
	}
	return errors.Join(errs...)
}

// mergeConditions applies the wanted conditions to the current ones and
// says whether anything a user would see changed.
func mergeConditions(current []metav1.Condition, st PolicyStatus) ([]metav1.Condition, bool) {
	conds := make([]metav1.Condition, len(current))
	copy(conds, current)
	changed := false
	for _, want := range st.Conditions {
		want.ObservedGeneration = st.Generation
		old := apimeta.FindStatusCondition(conds, want.Type)
		if old != nil && old.Status == want.Status && old.Reason == want.Reason &&
			old.Message == want.Message && old.ObservedGeneration == want.ObservedGeneration {
			continue
		}
		apimeta.SetStatusCondition(&conds, want)
		changed = true
	}
	return conds, changed
}
