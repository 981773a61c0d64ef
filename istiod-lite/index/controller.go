package index

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"
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

// Controller keeps a Sink up to date with the model of the cluster: every
// change of a watched object triggers a rebuild (changes arriving during a
// rebuild are folded into the next one), and only the resources that
// differ are handed on. It also writes the policies' status conditions.
type Controller struct {
	kube     kubernetes.Interface
	security cairnclient.Interface
	sink     Sink
	cfg      model.Config
	log      *slog.Logger

	kubeInformers     informers.SharedInformerFactory
	securityInformers cairninformers.SharedInformerFactory
	trigger           chan struct{}
	ready             atomic.Bool

	mu   sync.Mutex
	last Result
}

// New returns a Controller; Run starts it.
func New(kube kubernetes.Interface, security cairnclient.Interface, sink Sink, cfg model.Config, log *slog.Logger) *Controller {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Controller{
		kube: kube, security: security, sink: sink, cfg: cfg, log: log,
		kubeInformers:     informers.NewSharedInformerFactory(kube, 0),
		securityInformers: cairninformers.NewSharedInformerFactory(security, 0),
		trigger:           make(chan struct{}, 1),
	}
	handler := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { c.poke() },
		UpdateFunc: func(any, any) { c.poke() },
		DeleteFunc: func(any) { c.poke() },
	}
	for _, inf := range []cache.SharedIndexInformer{
		c.kubeInformers.Core().V1().Namespaces().Informer(),
		c.kubeInformers.Core().V1().Pods().Informer(),
		c.kubeInformers.Core().V1().Services().Informer(),
		c.kubeInformers.Discovery().V1().EndpointSlices().Informer(),
		c.securityInformers.Security().V1().AuthorizationPolicies().Informer(),
		c.securityInformers.Security().V1().PeerAuthentications().Informer(),
	} {
		// AddEventHandler only fails on a stopped informer; these are new.
		_, _ = inf.AddEventHandler(handler)
	}
	return c
}

func (c *Controller) poke() {
	select {
	case c.trigger <- struct{}{}:
	default: // a rebuild is already pending
	}
}

// Ready reports whether the first full model has been handed to the sink.
func (c *Controller) Ready() bool { return c.ready.Load() }

// Last returns the most recently built model (for debug endpoints).
func (c *Controller) Last() Result {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.last
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
			if err := c.rebuild(ctx); err != nil {
				c.log.Error("rebuilding the mesh model failed", "error", err)
			}
		}
	}
}

func (c *Controller) rebuild(ctx context.Context) error {
	in, err := c.inputs()
	if err != nil {
		return err
	}
	start := time.Now()
	next := Build(in, c.cfg)

	c.mu.Lock()
	prev := c.last
	c.last = next
	c.mu.Unlock()

	c.logNewlySkipped(prev.Skipped, next.Skipped)
	var errs []error
	if !c.ready.Load() {
		for typeURL, all := range next.Resources {
			if err := c.sink.SetInitial(typeURL, all); err != nil {
				errs = append(errs, fmt.Errorf("setting the initial %s resources: %w", typeURL, err))
			}
		}
		c.log.Info("mesh model built", "took", time.Since(start),
			"addresses", len(next.Resources[model.AddressTypeURL]),
			"authorizations", len(next.Resources[model.AuthorizationTypeURL]))
	} else {
		for typeURL, ch := range Diff(prev.Resources, next.Resources) {
			if err := c.sink.Update(typeURL, ch.Upserts, ch.Removes); err != nil {
				errs = append(errs, fmt.Errorf("pushing %s changes: %w", typeURL, err))
			}
		}
	}
	if len(errs) == 0 {
		c.ready.Store(true)
	}
	errs = append(errs, c.writeStatuses(ctx, next.Statuses))
	return errors.Join(errs...)
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
