// Package kubewatch keeps a local copy of the objects of one Kubernetes
// resource up to date with a list followed by watches, and tells a handler
// what changed: the part of client-go's informers that ztunnel needs, on
// kubeclient's minimal objects.
//
// A watch resumes from the resource version of the last event it saw,
// bookmarks included, so that the API server's periodic ends of a watch
// cost no list. When that version has expired (410 Gone: the watch cache
// or etcd moved on) the informer lists again and reports the difference
// between its copy and the new list as adds, updates and deletes. Failed
// requests are retried with exponential back-off until the context ends.
package kubewatch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cairnmesh/cairn/internal/kubeclient"
	"github.com/cairnmesh/cairn/internal/retry"
)

// Handler receives the changes of the informer's objects, one at a time
// and in order, from the goroutine that runs the informer: it must not
// block for long (ztunnel's only queues a key). Nil funcs are skipped. The
// objects are shared with the informer's copy and must not be modified.
type Handler[T any] struct {
	OnAdd    func(obj *T)
	OnUpdate func(old, obj *T)
	OnDelete func(obj *T)
}

// Config configures an Informer.
type Config[T any] struct {
	Client   *kubeclient.Client
	Resource kubeclient.Resource
	Options  kubeclient.ListOptions
	Handler  Handler[T]
	Log      *slog.Logger
	// WatchTimeout is how long the API server keeps one watch open before
	// it ends it and the informer resumes. Zero means a random duration
	// between 5 and 10 minutes, as client-go's reflector has it, so that
	// the watches of many nodes do not all restart together.
	WatchTimeout time.Duration
	// Backoff paces retries after failures; zero means 200 ms doubling
	// up to 30 s.
	Backoff retry.Backoff
}

// Informer holds the objects of one resource that Config.Options select.
type Informer[T any] struct {
	cfg Config[T]
	log *slog.Logger

	mu    sync.RWMutex
	items map[string]*T

	rv         string // resource version to watch from; empty: list first
	synced     chan struct{}
	syncedOnce sync.Once
	lists      atomic.Int64 // lists done, for tests
}

// New returns an informer; Run fills it. T must be one of kubeclient's
// objects (a struct embedding kubeclient.ObjectMeta).
func New[T any](cfg Config[T]) (*Informer[T], error) {
	if _, ok := any(new(T)).(kubeclient.Object); !ok {
		var zero T
		return nil, fmt.Errorf("kubewatch: %T does not embed kubeclient.ObjectMeta", zero)
	}
	if cfg.Client == nil || cfg.Resource.Name == "" {
		return nil, errors.New("kubewatch: Client and Resource are required")
	}
	if cfg.Backoff.Base == 0 {
		cfg.Backoff = retry.Backoff{Base: 200 * time.Millisecond, Max: 30 * time.Second}
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Informer[T]{
		cfg:    cfg,
		log:    log.With("resource", cfg.Resource.Name),
		items:  make(map[string]*T),
		synced: make(chan struct{}),
	}, nil
}

func meta[T any](obj *T) *kubeclient.ObjectMeta { return any(obj).(kubeclient.Object).Meta() }

// Get returns the object with key namespace/name (name for cluster-scoped
// objects).
func (in *Informer[T]) Get(key string) (*T, bool) {
	in.mu.RLock()
	defer in.mu.RUnlock()
	obj, ok := in.items[key]
	return obj, ok
}

// List returns the objects, in no particular order.
func (in *Informer[T]) List() []*T {
	in.mu.RLock()
	defer in.mu.RUnlock()
	out := make([]*T, 0, len(in.items))
	for _, obj := range in.items {
		out = append(out, obj)
	}
	return out
}

// Synced is closed once the first list has been handled.
func (in *Informer[T]) Synced() <-chan struct{} { return in.synced }

// Run lists and watches until ctx ends, then returns nil. Failures are
// logged and retried; the objects stay as last seen meanwhile. Run must not
// run twice at once; run again after it returned, it resumes from the last
// resource version it saw.
func (in *Informer[T]) Run(ctx context.Context) error {
	backoff := in.cfg.Backoff
	for {
		err := in.step(ctx)
		if ctx.Err() != nil {
			return nil
		}
		var progress *progressError
		switch {
		case err == nil: // the server ended the watch: resume at once
			backoff.Reset()
			continue
		case kubeclient.IsGone(err):
			// Not a failure: the version we hold is too old to resume
			// from. List now; the back-off is for errors.
			in.log.Info("resource version expired; listing again", "resource_version", in.rv, "err", err)
			in.rv = ""
			continue
		case errors.As(err, &progress):
			backoff.Reset() // the watch worked for a while
			err = progress.err
		}
		wait := backoff.Next()
		in.log.Warn("list or watch failed; retrying", "err", err, "in", wait, "failures", backoff.Failures())
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
}

// progressError is a watch failure after at least one event.
type progressError struct{ err error }

func (e *progressError) Error() string { return e.err.Error() }
func (e *progressError) Unwrap() error { return e.err }

// step lists if needed, then watches once.
func (in *Informer[T]) step(ctx context.Context) error {
	if in.rv == "" {
		if err := in.relist(ctx); err != nil {
			return err
		}
	}
	return in.watch(ctx)
}

// relist replaces the objects with a new list and reports the difference.
func (in *Informer[T]) relist(ctx context.Context) error {
	items, rv, err := kubeclient.List[T](ctx, in.cfg.Client, in.cfg.Resource, in.cfg.Options)
	if err != nil {
		return err
	}
	in.lists.Add(1)
	fresh := make(map[string]*T, len(items))
	for i := range items {
		fresh[meta(&items[i]).Key()] = &items[i]
	}
	in.mu.Lock()
	old := in.items
	in.items = fresh
	in.mu.Unlock()

	h := in.cfg.Handler
	for key, obj := range old {
		if _, ok := fresh[key]; !ok && h.OnDelete != nil {
			h.OnDelete(obj)
		}
	}
	for key, obj := range fresh {
		prev, ok := old[key]
		switch {
		case !ok:
			if h.OnAdd != nil {
				h.OnAdd(obj)
			}
		case meta(prev).ResourceVersion != meta(obj).ResourceVersion:
			if h.OnUpdate != nil {
				h.OnUpdate(prev, obj)
			}
		}
	}
	in.rv = rv
	in.syncedOnce.Do(func() { close(in.synced) })
	in.log.Debug("listed", "objects", len(fresh), "resource_version", rv)
	return nil
}

// watch watches from in.rv until the server ends the watch (nil) or it
// fails. A failure after some events comes as a *progressError.
func (in *Informer[T]) watch(ctx context.Context) error {
	timeout := in.cfg.WatchTimeout
	if timeout == 0 {
		timeout = 5*time.Minute + rand.N(5*time.Minute)
	}
	// The server ends the watch after timeout; ending it ourselves a
	// little later covers a server that does not.
	wctx, cancel := context.WithTimeout(ctx, timeout+30*time.Second)
	defer cancel()
	w, err := in.cfg.Client.Watch(wctx, in.cfg.Resource, in.cfg.Options, in.rv, timeout)
	if err != nil {
		return err
	}
	defer w.Close()
	events := 0
	for {
		typ, raw, err := w.Next()
		switch {
		case errors.Is(err, io.EOF) || (err != nil && wctx.Err() != nil && ctx.Err() == nil):
			in.log.Debug("watch ended", "events", events, "resource_version", in.rv)
			return nil
		case err != nil && events > 0:
			return &progressError{err}
		case err != nil:
			return err
		}
		if err := in.apply(typ, raw); err != nil {
			return fmt.Errorf("watch of %s: %w", in.cfg.Resource.Name, err)
		}
		events++
	}
}

// apply handles one watch event.
func (in *Informer[T]) apply(typ kubeclient.EventType, raw json.RawMessage) error {
	obj := new(T)
	if err := json.Unmarshal(raw, obj); err != nil {
		return fmt.Errorf("decoding %s event: %w", typ, err)
	}
	m := meta(obj)
	if typ == kubeclient.Bookmark {
		in.rv = m.ResourceVersion
		return nil
	}
	key := m.Key()
	in.mu.Lock()
	prev, had := in.items[key]
	switch typ {
	case kubeclient.Added, kubeclient.Modified:
		in.items[key] = obj
	case kubeclient.Deleted:
		delete(in.items, key)
	default:
		in.mu.Unlock()
		return fmt.Errorf("unknown watch event type %q", typ)
	}
	in.mu.Unlock()
	in.rv = m.ResourceVersion

	h := in.cfg.Handler
	switch {
	case typ == kubeclient.Deleted:
		if h.OnDelete != nil {
			h.OnDelete(obj)
		}
	case had:
		if h.OnUpdate != nil {
			h.OnUpdate(prev, obj)
		}
	default:
		if h.OnAdd != nil {
			h.OnAdd(obj)
		}
	}
	return nil
}
