package kubeca

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listersv1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"github.com/cairnmesh/cairn/internal/pki"
)

// EnrolledLabel selects the namespaces that get the trust bundle.
const EnrolledLabel = "istio.io/dataplane-mode=ambient"

// AuthoritySink receives the CA to sign with (ca.Server does).
type AuthoritySink interface{ SetAuthority(*pki.CA) }

// Controller keeps the CA's root and trust bundle: it loads (or creates)
// the CA Secret, publishes the bundle ConfigMap in its own namespace and every enrolled
// namespace, keeps those ConfigMaps up to date, and follows changes of the
// Secret. On every change it publishes the new bundle everywhere before
// the new CA signs, so a root added to ca.crt is trusted by all before
// any certificate from it is issued.
type Controller struct {
	Client        kubernetes.Interface
	Namespace     string // DefaultNamespace if empty
	SecretName    string // DefaultSecretName if empty
	ConfigMapName string // DefaultConfigMapName if empty
	TrustDomain   string
	Sink          AuthoritySink
	Logger        *slog.Logger // slog.Default() if nil

	bundle atomic.Pointer[string] // PEM of the roots
	ready  atomic.Bool
	ns     listersv1.NamespaceLister
	cms    listersv1.ConfigMapLister
	queue  workqueue.TypedRateLimitingInterface[string]
}

// Ready reports whether the bundle has been published and the CA handed to
// the sink.
func (c *Controller) Ready() bool { return c.ready.Load() }

// Bundle returns the PEM trust bundle being published ("" before Run
// loaded it).
func (c *Controller) Bundle() string {
	if p := c.bundle.Load(); p != nil {
		return *p
	}
	return ""
}

func (c *Controller) defaults() {
	if c.Namespace == "" {
		c.Namespace = DefaultNamespace
	}
	if c.SecretName == "" {
		c.SecretName = DefaultSecretName
	}
	if c.ConfigMapName == "" {
		c.ConfigMapName = DefaultConfigMapName
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Run runs the controller until ctx is done.
func (c *Controller) Run(ctx context.Context) error {
	if c.Client == nil || c.Sink == nil {
		return errors.New("kubeca.Controller: Client and Sink are required")
	}
	c.defaults()
	caObj, roots, err := EnsureRoot(ctx, c.Client, c.Namespace, c.SecretName, c.TrustDomain, c.Logger)
	if err != nil {
		return err
	}
	c.setBundle(signingFirst(caObj, roots))

	sel, _ := labels.Parse(EnrolledLabel)
	nsFactory := informers.NewSharedInformerFactoryWithOptions(c.Client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = sel.String() }))
	cmFactory := informers.NewSharedInformerFactoryWithOptions(c.Client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", c.ConfigMapName).String()
		}))
	secFactory := informers.NewSharedInformerFactoryWithOptions(c.Client, 0, informers.WithNamespace(c.Namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", c.SecretName).String()
		}))
	nsInf := nsFactory.Core().V1().Namespaces()
	cmInf := cmFactory.Core().V1().ConfigMaps()
	secInf := secFactory.Core().V1().Secrets()
	c.ns, c.cms = nsInf.Lister(), cmInf.Lister()
	c.queue = workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.NewTypedItemExponentialFailureRateLimiter[string](100*time.Millisecond, 30*time.Second),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: "cairn-root-cert"})

	enqueueNS := func(obj any) {
		if m, err := metaOf(obj); err == nil {
			c.queue.Add(m.GetName())
		}
	}
	enqueueCM := func(obj any) {
		if m, err := metaOf(obj); err == nil {
			c.queue.Add(m.GetNamespace())
		}
	}
	secrets := make(chan struct{}, 1)
	poke := func(any) {
		select {
		case secrets <- struct{}{}:
		default:
		}
	}
	if _, err := nsInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: enqueueNS, UpdateFunc: func(_, n any) { enqueueNS(n) },
	}); err != nil {
		return err
	}
	if _, err := cmInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		UpdateFunc: func(_, n any) { enqueueCM(n) }, DeleteFunc: enqueueCM,
	}); err != nil {
		return err
	}
	if _, err := secInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: poke, UpdateFunc: func(_, n any) { poke(n) },
	}); err != nil {
		return err
	}
	nsFactory.Start(ctx.Done())
	cmFactory.Start(ctx.Done())
	secFactory.Start(ctx.Done())
	defer nsFactory.Shutdown()
	defer cmFactory.Shutdown()
	defer secFactory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), nsInf.Informer().HasSynced, cmInf.Informer().HasSynced, secInf.Informer().HasSynced) {
		return ctx.Err()
	}

	var wg sync.WaitGroup
	defer wg.Wait()
	defer c.queue.ShutDown()
	wg.Go(func() {
		for c.processNext(ctx) {
		}
	})

	// First publication, then signing.
	if err := c.publishAll(ctx); err != nil {
		return err
	}
	c.Sink.SetAuthority(caObj)
	c.ready.Store(true)
	c.Logger.Info("CA ready", "roots", len(roots), "signing", caObj.Cert.Subject.String())

	// The Secret may have changed since EnsureRoot read it: the first
	// event (the informer's add) reloads it, and only a real change of the
	// signing certificate or the roots acts.
	secLister := secInf.Lister().Secrets(c.Namespace)
	var lastRV string
	signing := caObj.Cert
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-secrets:
		}
		s, err := secLister.Get(c.SecretName)
		if err != nil || s.ResourceVersion == lastRV {
			continue
		}
		lastRV = s.ResourceVersion
		newCA, newRoots, err := LoadSecret(s)
		if err != nil {
			c.Logger.Error("ignoring changed CA secret; still signing with the previous CA", "error", err)
			continue
		}
		before := c.Bundle()
		c.setBundle(signingFirst(newCA, newRoots))
		if newCA.Cert.Equal(signing) && c.Bundle() == before {
			continue
		}
		if !strings.Contains(before, string(pki.EncodeCertPEM(newCA.Root()))) {
			c.Logger.Warn("the new signing certificate chains to a root that was not in the trust bundle: "+
				"proxies that have not received the new bundle yet refuse certificates from it. "+
				"Add the new root to "+SecretBundle+" first, wait until every node has it, then switch the signer",
				"root", newCA.Root().Subject.String())
		}
		if err := c.publishAll(ctx); err != nil {
			return err
		}
		c.Sink.SetAuthority(newCA)
		signing = newCA.Cert
		c.Logger.Info("CA secret changed: bundle published, new CA signing", "roots", len(newRoots), "signing", newCA.Cert.Subject.String())
	}
}

// signingFirst orders the roots to publish: the root the CA signs under
// first, then the others as the Secret lists them. Proxies read the first
// root as the one new certificates come from: when a switch of the signer
// brings another root first, they renew the certificates they hold from
// the old root (see internal/identity), so that the old root can be removed
// from the bundle without any peer holding a certificate the others refuse.
func signingFirst(ca *pki.CA, roots []*x509.Certificate) []*x509.Certificate {
	root := ca.Root()
	out := make([]*x509.Certificate, 0, len(roots))
	for _, r := range roots {
		if r.Equal(root) {
			out = append(out, r)
		}
	}
	for _, r := range roots {
		if !r.Equal(root) {
			out = append(out, r)
		}
	}
	return out
}

func (c *Controller) setBundle(roots []*x509.Certificate) {
	b := string(pki.EncodeCertsPEM(roots...))
	c.bundle.Store(&b)
}

// publishAll writes the current bundle to every enrolled namespace and
// retries until all have it or ctx is done.
func (c *Controller) publishAll(ctx context.Context) error {
	for delay := 100 * time.Millisecond; ; delay = min(2*delay, 5*time.Second) {
		nss, err := c.ns.List(labels.Everything())
		if err != nil {
			return err
		}
		errs := []error{c.reconcile(ctx, c.Namespace)}
		for _, ns := range nss {
			if err := c.reconcile(ctx, ns.Name); err != nil {
				errs = append(errs, err)
			}
		}
		if errors.Join(errs...) == nil {
			return nil
		}
		c.Logger.Warn("publishing trust bundle; retrying", "error", errors.Join(errs...), "after", delay)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
	}
}

func (c *Controller) processNext(ctx context.Context) bool {
	ns, quit := c.queue.Get()
	if quit {
		return false
	}
	defer c.queue.Done(ns)
	if err := c.reconcile(ctx, ns); err != nil {
		c.Logger.Warn("publishing trust bundle", "namespace", ns, "error", err)
		c.queue.AddRateLimited(ns)
		return true
	}
	c.queue.Forget(ns)
	return true
}

// reconcile makes the bundle ConfigMap of an enrolled namespace hold the
// current bundle. Namespaces that are not enrolled or are going away are
// left alone.
func (c *Controller) reconcile(ctx context.Context, name string) error {
	bundle := c.Bundle()
	if bundle == "" {
		return nil
	}
	// The control plane's own namespace gets the bundle too: ztunnel runs
	// there and verifies istiod-lite with it.
	if name != c.Namespace {
		ns, err := c.ns.Get(name)
		if apierrors.IsNotFound(err) || (err == nil && ns.DeletionTimestamp != nil) {
			return nil
		}
		if err != nil {
			return err
		}
	}
	cms := c.Client.CoreV1().ConfigMaps(name)
	cm, err := c.cms.ConfigMaps(name).Get(c.ConfigMapName)
	if apierrors.IsNotFound(err) {
		_, err = cms.Create(ctx, &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: c.ConfigMapName, Namespace: name,
				Labels: map[string]string{"app.kubernetes.io/managed-by": "istiod-lite"}},
			Data: map[string]string{ConfigMapKey: bundle},
		}, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			// The lister is behind: read and compare the real object.
			cm, err = cms.Get(ctx, c.ConfigMapName, metav1.GetOptions{})
		} else {
			return ignoreTerminating(err, name)
		}
	}
	if err != nil {
		return err
	}
	if cm.Data[ConfigMapKey] == bundle {
		return nil
	}
	cm = cm.DeepCopy()
	if cm.Data == nil {
		cm.Data = map[string]string{}
	}
	cm.Data[ConfigMapKey] = bundle
	_, err = cms.Update(ctx, cm, metav1.UpdateOptions{})
	return ignoreTerminating(err, name)
}

func ignoreTerminating(err error, ns string) error {
	if err == nil || apierrors.HasStatusCause(err, corev1.NamespaceTerminatingCause) || apierrors.IsNotFound(err) {
		return nil
	}
	return fmt.Errorf("bundle ConfigMap in %s: %w", ns, err)
}

func metaOf(obj any) (metav1.Object, error) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	m, ok := obj.(metav1.Object)
	if !ok {
		return nil, fmt.Errorf("unexpected object %T", obj)
	}
	return m, nil
}
