// Package xds serves the mesh's own resource types (workload Addresses and
// Authorizations for ztunnel) over delta ADS with go-control-plane.
//
// go-control-plane's ADS server runs the streams; the resources come from
// deltaCache, this package's ConfigWatcher, which keeps each type's
// resources marshaled once, versioned by a hash of their content, and
// answers each client with only what it lacks. The model feeds changes
// with Update; a debouncer merges them (a quiet period, bounded by a
// maximum delay, one push at a time), drops upserts equal to what the cache
// holds, and hands the rest to the cache, so clients receive only the
// changed resources and removals as deltas. State-of-the-world streams are
// refused: their replies cannot signal deletions for these types.
//
// The package does not know Kubernetes: clients are authenticated by an
// injected Authenticator, and the resources are opaque proto messages.
//
// Why not go-control-plane's LinearCache: in v0.14.0 it compares every
// client's known versions with every resource of the type, under its lock,
// when a push notifies a watch and again when the client's ACK re-creates
// it, and clones each client's version map per response. A push of one
// changed resource among 10k to 100 clients took 0.7-2.6 s at p99 that way;
// deltaCache's cost grows with clients x changed resources instead
// (BenchmarkPush1Of10kTo100Clients measures it).
package xds

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/server/delta/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/semaphore"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/cairnmesh/cairn/internal/lograte"
)

// Defaults of Config.
const (
	DefaultDebounce = 100 * time.Millisecond
	DefaultMaxDelay = time.Second
	// DefaultMaxSubscriptions bounds the resource names one stream may
	// subscribe to per type. A ztunnel subscribes to one, the wildcard.
	DefaultMaxSubscriptions = 4096
	// DefaultMaxResourceNameLength bounds the length of a subscribed name.
	// The longest names istiod-lite makes are a workload's
	// "<cluster>//Pod/<namespace>/<name>" (about 340 bytes with
	// Kubernetes' own limits) and a Service's "<namespace>/<hostname>".
	DefaultMaxResourceNameLength = 1024
)

// DefaultRefusalLog is the default pace of the warning lines about refused
// streams: 10 at once, then one a second; the rest are only counted
// (cairn_xds_refused_streams_total).
func DefaultRefusalLog() *lograte.Limiter { return lograte.New(time.Second, 10) }

// ErrUnknownType is returned for a type URL the Server was not configured with.
var ErrUnknownType = errors.New("xds: unknown type URL")

// Config configures a Server. It is read once by New.
type Config struct {
	// TypeURLs are the resource types served, such as
	// type.googleapis.com/cairn.workload.v1.Address, in delivery order:
	// each client is sent a type's changes only after every change of the
	// types before it that was pushed with or before them (Authorizations
	// before the Addresses that depend on them). Required.
	TypeURLs []string
	// Debounce is the quiet period: a batch is pushed once no change has
	// arrived for this long. Zero means DefaultDebounce.
	Debounce time.Duration
	// MaxDelay bounds how long a change waits under a steady stream of
	// other changes. Zero means DefaultMaxDelay.
	MaxDelay time.Duration
	// Authenticator identifies the client of each stream. Required: there is
	// no unauthenticated mode.
	Authenticator Authenticator
	// Logger receives the server's logs; nil discards them.
	Logger *slog.Logger
	// Registerer receives the Prometheus metrics; nil keeps them private.
	Registerer prometheus.Registerer
	// SendBudget bounds the bytes of responses being sent at once, over
	// all clients (see throttledADS). Zero means DefaultSendBudget.
	SendBudget int64
	// MaxSubscriptions bounds the resource names a stream may subscribe
	// to, per type; a request beyond it ends the stream with
	// codes.ResourceExhausted. Zero means DefaultMaxSubscriptions.
	MaxSubscriptions int
	// MaxResourceNameLength bounds the length of a subscribed resource
	// name; a longer one ends the stream with codes.InvalidArgument. Zero
	// means DefaultMaxResourceNameLength.
	MaxResourceNameLength int
	// RefusalLog paces the warning lines about refused streams (each
	// refusal is counted in cairn_xds_refused_streams_total anyway). Nil
	// means DefaultRefusalLog().
	RefusalLog *lograte.Limiter
}

// Server serves the configured types over delta ADS. Create it with New,
// register it on a gRPC server with Register, and run its debouncer with Run.
type Server struct {
	log           *slog.Logger
	debounce      time.Duration
	maxDelay      time.Duration
	sendBudget    int64
	authenticator Authenticator
	metrics       *metrics
	types         map[string]*typeState // fixed after New
	typeURLs      []string              // sorted
	order         []string              // delivery order, as configured
	maxSubs       int
	maxNameLen    int
	refusalLog    *lograte.Limiter
	cache         *deltaCache
	ads           server.Server
	clients       clientTable

	// streamsCtx ends every open stream when Run returns.
	streamsCtx    context.Context
	cancelStreams context.CancelFunc

	// mu guards the changes waiting for the next push.
	mu          sync.Mutex
	pending     map[string]*batch
	firstQueued time.Time // oldest change in pending
	lastQueued  time.Time // newest change in pending
	wake        chan struct{}

	// pushMu lets one push at a time reach the caches. It guards the
	// current/initialized/version fields of every typeState. Take it
	// before mu.
	pushMu sync.Mutex

	ready     chan struct{}
	readyOnce sync.Once
}

// typeState is what the Server keeps per type URL.
type typeState struct {
	url   string
	label string // metric label: the message name

	// Guarded by Server.pushMu.
	current     map[string]entry // what the cache holds
	initialized bool
	version     uint64 // number of UpdateResources calls: the cache's version

	// queued maps recent cache versions to when the first change of their
	// batch was queued, for the push latency metric.
	queuedMu sync.Mutex
	queued   map[string]time.Time
}

// entry is a resource the cache holds.
type entry struct {
	msg     proto.Message
	wire    *discoverygrpc.Resource // as sent: marshaled, with its content version
	version uint64                  // cache version of its last change
	changed time.Time
}

// batch is the changes of one type waiting for the next push; a name is in
// at most one of the two maps.
type batch struct {
	upserts map[string]proto.Message
	removes map[string]struct{}
}

// New builds a Server. It serves nothing until Register, and pushes nothing
// until Run.
func New(cfg Config) (*Server, error) {
	if len(cfg.TypeURLs) == 0 {
		return nil, errors.New("xds: no type URLs configured")
	}
	if cfg.Authenticator == nil {
		return nil, errors.New("xds: no Authenticator configured")
	}
	if cfg.Debounce < 0 || cfg.MaxDelay < 0 || cfg.SendBudget < 0 || cfg.MaxSubscriptions < 0 || cfg.MaxResourceNameLength < 0 {
		return nil, errors.New("xds: negative debounce, max delay, send budget, subscription limit or name length")
	}
	s := &Server{
		log:           cfg.Logger,
		debounce:      orDefault(cfg.Debounce, DefaultDebounce),
		maxDelay:      orDefault(cfg.MaxDelay, DefaultMaxDelay),
		sendBudget:    cmp.Or(cfg.SendBudget, DefaultSendBudget),
		authenticator: cfg.Authenticator,
		types:         make(map[string]*typeState, len(cfg.TypeURLs)),
		pending:       make(map[string]*batch),
		wake:          make(chan struct{}, 1),
		ready:         make(chan struct{}),
		clients:       clientTable{byStream: make(map[int64]*client)},
		maxSubs:       cmp.Or(cfg.MaxSubscriptions, DefaultMaxSubscriptions),
		maxNameLen:    cmp.Or(cfg.MaxResourceNameLength, DefaultMaxResourceNameLength),
		refusalLog:    cfg.RefusalLog,
	}
	if s.refusalLog == nil {
		s.refusalLog = DefaultRefusalLog()
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.maxDelay < s.debounce {
		s.maxDelay = s.debounce
	}
	var err error
	if s.metrics, err = newMetrics(cfg.Registerer); err != nil {
		return nil, fmt.Errorf("xds: registering metrics: %w", err)
	}
	// go-control-plane's delta server gives each stream a response channel
	// of 2*UnknownType slots, and deltaCache sends to it while holding its
	// lock. Each type has at most one response in flight per stream, so
	// with no more types than slots a stalled client never blocks the cache.
	if limit := 2 * int(types.UnknownType); len(cfg.TypeURLs) > limit {
		return nil, fmt.Errorf("xds: %d type URLs configured, at most %d can be served without a stalled client blocking the others", len(cfg.TypeURLs), limit)
	}
	for _, url := range cfg.TypeURLs {
		if _, dup := s.types[url]; dup {
			return nil, fmt.Errorf("xds: type URL %s configured twice", url)
		}
		if !strings.HasPrefix(url, "type.googleapis.com/") {
			return nil, fmt.Errorf("xds: type URL %s does not start with type.googleapis.com/", url)
		}
		ts := &typeState{
			url:     url,
			label:   strings.TrimPrefix(url, "type.googleapis.com/"),
			current: make(map[string]entry),
			queued:  make(map[string]time.Time),
		}
		s.types[url] = ts
		s.typeURLs = append(s.typeURLs, url)
	}
	s.order = slices.Clone(s.typeURLs)
	slices.Sort(s.typeURLs)
	s.cache = newDeltaCache(s.order)
	s.streamsCtx, s.cancelStreams = context.WithCancel(context.Background())
	s.ads = server.NewServer(s.streamsCtx, s.cache, &callbacks{s: s}, delta.WithLogger(gcpLogger{s.log}))
	return s, nil
}

func orDefault(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

// Register serves the Aggregated Discovery Service on g. Only its delta
// method is useful; state-of-the-world streams are refused.
func (s *Server) Register(g *grpc.Server) {
	discoverygrpc.RegisterAggregatedDiscoveryServiceServer(g, &throttledADS{
		Server: s.ads, budget: semaphore.NewWeighted(s.sendBudget), max: s.sendBudget,
	})
}

// Ready is closed once SetInitial has been called for every configured type.
// Until then new streams are refused with codes.Unavailable, so a client's
// first response always holds the full state.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Run pushes debounced changes until ctx is done, then ends the open
// streams. It always returns nil.
func (s *Server) Run(ctx context.Context) error {
	defer s.cancelStreams()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		s.mu.Lock()
		empty := len(s.pending) == 0
		due := s.lastQueued.Add(s.debounce)
		if limit := s.firstQueued.Add(s.maxDelay); limit.Before(due) {
			due = limit
		}
		s.mu.Unlock()
		if empty {
			select {
			case <-ctx.Done():
				return nil
			case <-s.wake:
				continue
			}
		}
		if wait := time.Until(due); wait > 0 {
			timer.Reset(wait)
			select {
			case <-ctx.Done():
				return nil
			case <-timer.C:
				continue // a change may have arrived meanwhile: recompute due
			}
		}
		s.flush()
	}
}

// Update queues changes of one type: upserts by resource name, and names to
// remove. Changes are merged with those already queued (the last one of a
// name wins; a name both upserted and removed in one call is removed) and
// pushed after the debounce. The Server keeps the messages:
// the caller must not modify them afterwards.
func (s *Server) Update(typeURL string, upserts map[string]proto.Message, removes []string) error {
	if _, ok := s.types[typeURL]; !ok {
		return fmt.Errorf("%w: %s", ErrUnknownType, typeURL)
	}
	if err := checkUpserts(upserts); err != nil {
		return err
	}
	if len(upserts) == 0 && len(removes) == 0 {
		return nil
	}
	now := time.Now()
	s.mu.Lock()
	b := s.pending[typeURL]
	if b == nil {
		b = &batch{upserts: make(map[string]proto.Message, len(upserts)), removes: make(map[string]struct{}, len(removes))}
		s.pending[typeURL] = b
	}
	for name, msg := range upserts {
		b.upserts[name] = msg
		delete(b.removes, name)
	}
	for _, name := range removes {
		b.removes[name] = struct{}{}
		delete(b.upserts, name)
	}
	if s.firstQueued.IsZero() {
		s.firstQueued = now
	}
	s.lastQueued = now
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
	return nil
}

// SetInitial sets the full state of one type, right away (no debounce):
// resources of all that differ from what the cache holds are pushed, and
// the cache's resources missing from all are removed. Changes of the type
// queued before the call are dropped, since all supersedes them. Ready
// closes once every type has had its SetInitial. It can be called again
// later, for a full resync. As with Update, the Server keeps the messages.
func (s *Server) SetInitial(typeURL string, all map[string]proto.Message) error {
	ts, ok := s.types[typeURL]
	if !ok {
		return fmt.Errorf("%w: %s", ErrUnknownType, typeURL)
	}
	if err := checkUpserts(all); err != nil {
		return err
	}
	s.pushMu.Lock()
	s.mu.Lock()
	delete(s.pending, typeURL)
	if len(s.pending) == 0 {
		s.firstQueued, s.lastQueued = time.Time{}, time.Time{}
	}
	s.mu.Unlock()
	removes := make(map[string]struct{})
	for name := range ts.current {
		if _, keep := all[name]; !keep {
			removes[name] = struct{}{}
		}
	}
	s.apply(ts, &batch{upserts: all, removes: removes}, time.Now())
	ts.initialized = true
	allSet := true
	for _, t := range s.types {
		allSet = allSet && t.initialized
	}
	s.pushMu.Unlock()
	if allSet {
		s.readyOnce.Do(func() {
			s.log.Info("initial state set", "types", len(s.types))
			close(s.ready)
		})
	}
	return nil
}

func (s *Server) isReady() bool {
	select {
	case <-s.ready:
		return true
	default:
		return false
	}
}

func checkUpserts(upserts map[string]proto.Message) error {
	for name, msg := range upserts {
		if name == "" {
			return errors.New("xds: upsert with an empty resource name")
		}
		if msg == nil || !msg.ProtoReflect().IsValid() {
			return fmt.Errorf("xds: upsert of %s with a nil message", name)
		}
	}
	return nil
}

// flush applies every queued change: one push per type with changes.
func (s *Server) flush() {
	s.pushMu.Lock()
	defer s.pushMu.Unlock()
	s.mu.Lock()
	pending, queued := s.pending, s.firstQueued
	s.pending = make(map[string]*batch)
	s.firstQueued, s.lastQueued = time.Time{}, time.Time{}
	s.mu.Unlock()
	// In delivery order: the cache holds a stream's later types back only
	// while it owes that stream an earlier type's change, so a batch's
	// Authorizations must reach the cache before its Addresses.
	for _, url := range s.order {
		if b := pending[url]; b != nil {
			s.apply(s.types[url], b, queued)
		}
	}
}

// apply pushes one batch to the type's cache, without the upserts equal to
// what the cache holds and the removals of what it does not hold. Called
// with pushMu held.
func (s *Server) apply(ts *typeState, b *batch, queued time.Time) {
	toUpdate := make(map[string]*discoverygrpc.Resource, len(b.upserts))
	var toDelete []string
	var unchanged, invalid int
	for name, msg := range b.upserts {
		if old, ok := ts.current[name]; ok && proto.Equal(old.msg, msg) {
			unchanged++
			continue
		}
		wire, err := marshal(ts.url, name, msg)
		if err != nil {
			invalid++
			s.log.Error("dropping resource that does not marshal", "type", ts.label, "name", name, "err", err)
			continue
		}
		toUpdate[name] = wire
	}
	for name := range b.removes {
		if _, ok := ts.current[name]; ok {
			toDelete = append(toDelete, name)
		}
	}
	if unchanged > 0 {
		s.metrics.unchanged.WithLabelValues(ts.label).Add(float64(unchanged))
	}
	if invalid > 0 {
		s.metrics.invalid.WithLabelValues(ts.label).Add(float64(invalid))
	}
	if len(toUpdate) == 0 && len(toDelete) == 0 {
		s.log.Debug("nothing changed", "type", ts.label, "unchanged", unchanged)
		return
	}

	ts.version++
	ts.noteQueued(ts.version, queued)
	start := time.Now()
	wires := make([]*discoverygrpc.Resource, 0, len(toUpdate))
	for name, wire := range toUpdate {
		wires = append(wires, wire)
		ts.current[name] = entry{msg: b.upserts[name], wire: wire, version: ts.version, changed: start}
	}
	for _, name := range toDelete {
		delete(ts.current, name)
	}
	s.cache.update(ts.url, wires, toDelete)
	took := time.Since(start)
	s.metrics.pushes.WithLabelValues(ts.label).Inc()
	s.metrics.pushDuration.WithLabelValues(ts.label).Observe(took.Seconds())
	s.log.Debug("pushed", "type", ts.label, "version", ts.version,
		"updated", len(toUpdate), "removed", len(toDelete), "unchanged", unchanged, "took", took)
}

// marshal gives a resource its wire form, once for all clients. The version
// is a hash of the deterministic encoding, so it survives a restart of
// istiod-lite: a reconnecting client that sends the versions it holds is
// sent only what really changed.
func marshal(typeURL, name string, msg proto.Message) (*discoverygrpc.Resource, error) {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(msg)
	if err != nil {
		return nil, fmt.Errorf("marshaling %s: %w", name, err)
	}
	if got := "type.googleapis.com/" + string(msg.ProtoReflect().Descriptor().FullName()); got != typeURL {
		return nil, fmt.Errorf("%s is a %s, not a %s", name, got, typeURL)
	}
	sum := sha256.Sum256(b)
	return &discoverygrpc.Resource{
		Name:     name,
		Version:  hex.EncodeToString(sum[:16]),
		Resource: &anypb.Any{TypeUrl: typeURL, Value: b},
	}, nil
}

// versionString is the system version of a type's responses: the number of
// pushes so far.
func versionString(v uint64) string { return strconv.FormatUint(v, 10) }

// recentVersions bounds typeState.queued.
const recentVersions = 64

func (ts *typeState) noteQueued(version uint64, queued time.Time) {
	ts.queuedMu.Lock()
	defer ts.queuedMu.Unlock()
	ts.queued[versionString(version)] = queued
	delete(ts.queued, versionString(version-recentVersions))
}

// queuedAt says when the first change of the batch that made the given
// cache version was queued.
func (ts *typeState) queuedAt(version string) (time.Time, bool) {
	ts.queuedMu.Lock()
	defer ts.queuedMu.Unlock()
	t, ok := ts.queued[version]
	return t, ok
}
