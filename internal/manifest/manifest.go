// Package manifest applies Kubernetes YAML to a cluster with server-side
// apply through the dynamic client, and waits for CustomResourceDefinitions
// to become usable. Test harnesses, the lab and `cairnctl install` share it.
package manifest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
)

// DefaultFieldManager is the server-side apply field manager used when
// Options.FieldManager is empty.
const DefaultFieldManager = "cairn"

// Options configures an Applier.
type Options struct {
	// FieldManager names the owner of the applied fields. Default
	// DefaultFieldManager.
	FieldManager string
	// Namespace is used for namespaced objects that have none. Default
	// "default".
	Namespace string
	// NoForce leaves conflicts with other field managers as errors instead
	// of taking the fields over (kubectl apply --server-side without
	// --force-conflicts).
	NoForce bool
	// Logger gets one Debug line per applied object. Default: discard.
	Logger *slog.Logger
}

// Applier applies objects to one cluster.
type Applier struct {
	client dynamic.Interface
	mapper *restmapper.DeferredDiscoveryRESTMapper
	opts   Options
	log    *slog.Logger
}

// New returns an Applier for the cluster cfg points at.
func New(cfg *rest.Config, opts Options) (*Applier, error) {
	client, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("creating dynamic client: %w", err)
	}
	disco, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("creating discovery client: %w", err)
	}
	return NewWithClients(client, disco, opts), nil
}

// NewWithClients returns an Applier that uses the given clients.
func NewWithClients(client dynamic.Interface, disco discovery.DiscoveryInterface, opts Options) *Applier {
	if opts.FieldManager == "" {
		opts.FieldManager = DefaultFieldManager
	}
	if opts.Namespace == "" {
		opts.Namespace = metav1.NamespaceDefault
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	return &Applier{
		client: client,
		mapper: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(disco)),
		opts:   opts,
		log:    opts.Logger.With("component", "manifest"),
	}
}

// InNamespace returns an Applier that puts namespaced objects without a
// namespace into ns. It shares a's clients and discovery cache.
func (a *Applier) InNamespace(ns string) *Applier {
	b := *a
	b.opts.Namespace = ns
	return &b
}

// Client returns the dynamic client the Applier uses.
func (a *Applier) Client() dynamic.Interface { return a.client }

// Decode splits multi-document YAML (or JSON) into objects. Empty documents
// are skipped and a List's items are returned as separate objects. Every
// object must have apiVersion and kind.
func Decode(data []byte) ([]*unstructured.Unstructured, error) {
	dec := yaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	var objs []*unstructured.Unstructured
	for doc := 1; ; doc++ {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) {
				return objs, nil
			}
			return nil, fmt.Errorf("decoding document %d: %w", doc, err)
		}
		if len(m) == 0 {
			continue // empty document, e.g. only comments
		}
		u := &unstructured.Unstructured{Object: m}
		if u.GetAPIVersion() == "" || u.GetKind() == "" {
			return nil, fmt.Errorf("document %d: apiVersion and kind are required", doc)
		}
		if u.IsList() {
			list, err := u.ToList()
			if err != nil {
				return nil, fmt.Errorf("document %d: %w", doc, err)
			}
			for i := range list.Items {
				objs = append(objs, &list.Items[i])
			}
			continue
		}
		objs = append(objs, u)
	}
}

// Apply applies every object in data (see Decode) in order and returns the
// objects as the server stored them.
func (a *Applier) Apply(ctx context.Context, data []byte) ([]*unstructured.Unstructured, error) {
	objs, err := Decode(data)
	if err != nil {
		return nil, err
	}
	return a.ApplyObjects(ctx, objs)
}

// ApplyFiles applies the files in order, each as Apply does.
func (a *Applier) ApplyFiles(ctx context.Context, paths ...string) ([]*unstructured.Unstructured, error) {
	var all []*unstructured.Unstructured
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			return all, fmt.Errorf("applying %s: %w", p, err)
		}
		objs, err := a.Apply(ctx, data)
		all = append(all, objs...)
		if err != nil {
			return all, fmt.Errorf("applying %s: %w", p, err)
		}
	}
	return all, nil
}

// ApplyObjects applies objs in order and stops at the first error.
func (a *Applier) ApplyObjects(ctx context.Context, objs []*unstructured.Unstructured) ([]*unstructured.Unstructured, error) {
	applied := make([]*unstructured.Unstructured, 0, len(objs))
	for _, obj := range objs {
		out, err := a.ApplyObject(ctx, obj)
		if err != nil {
			return applied, err
		}
		applied = append(applied, out)
	}
	return applied, nil
}

// ApplyObject applies one object with server-side apply. A kind the
// discovery cache doesn't know (e.g. of a CRD created a moment ago) makes
// it refresh the cache and try once more.
func (a *Applier) ApplyObject(ctx context.Context, obj *unstructured.Unstructured) (*unstructured.Unstructured, error) {
	gvk := obj.GroupVersionKind()
	desc := describe(obj)
	if obj.GetName() == "" {
		return nil, fmt.Errorf("applying %s: server-side apply needs metadata.name", desc)
	}
	mapping, err := a.mapping(gvk)
	if err != nil {
		return nil, fmt.Errorf("applying %s: %w", desc, err)
	}
	obj = obj.DeepCopy()
	var ri dynamic.ResourceInterface
	if mapping.Scope.Name() == meta.RESTScopeNameNamespace {
		ns := obj.GetNamespace()
		if ns == "" {
			ns = a.opts.Namespace
			obj.SetNamespace(ns)
		}
		ri = a.client.Resource(mapping.Resource).Namespace(ns)
	} else {
		obj.SetNamespace("")
		ri = a.client.Resource(mapping.Resource)
	}
	out, err := ri.Apply(ctx, obj.GetName(), obj, metav1.ApplyOptions{
		FieldManager: a.opts.FieldManager,
		Force:        !a.opts.NoForce,
	})
	if err != nil {
		return nil, fmt.Errorf("applying %s: %w", desc, err)
	}
	a.log.Debug("applied", "object", desc)
	return out, nil
}

// mapping resolves gvk to a resource, resetting the discovery cache and
// retrying once if the kind is unknown.
func (a *Applier) mapping(gvk schema.GroupVersionKind) (*meta.RESTMapping, error) {
	m, err := a.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if meta.IsNoMatchError(err) {
		a.mapper.Reset()
		m, err = a.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	}
	if err != nil {
		if meta.IsNoMatchError(err) {
			return nil, fmt.Errorf("%w (if it comes from a CRD, apply the CRD and WaitForCRDs first)", err)
		}
		return nil, err
	}
	return m, nil
}

func describe(obj *unstructured.Unstructured) string {
	var b strings.Builder
	b.WriteString(obj.GetKind())
	b.WriteByte(' ')
	if ns := obj.GetNamespace(); ns != "" {
		b.WriteString(ns)
		b.WriteByte('/')
	}
	b.WriteString(obj.GetName())
	return b.String()
}
