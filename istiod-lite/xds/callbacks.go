package xds

import (
	"context"
	"log/slog"
	"sync"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// callbacks are go-control-plane's hooks into every stream: they
// authenticate delta streams, refuse state-of-the-world ones, and log,
// count and record every request and response. go-control-plane calls
// them synchronously on the stream's own goroutine.
type callbacks struct{ s *Server }

var _ server.Callbacks = (*callbacks)(nil)

// clientTable holds the open, authenticated delta streams.
type clientTable struct {
	mu       sync.RWMutex
	byStream map[int64]*client
}

func (t *clientTable) add(c *client) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.byStream[c.stream] = c
}

func (t *clientTable) remove(stream int64) *client {
	t.mu.Lock()
	defer t.mu.Unlock()
	c := t.byStream[stream]
	delete(t.byStream, stream)
	return c
}

func (t *clientTable) get(stream int64) *client {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.byStream[stream]
}

func (t *clientTable) all() []*client {
	t.mu.RLock()
	defer t.mu.RUnlock()
	out := make([]*client, 0, len(t.byStream))
	for _, c := range t.byStream {
		out = append(out, c)
	}
	return out
}

// client is one open delta stream.
type client struct {
	stream    int64
	identity  Identity
	peer      string
	connected time.Time

	mu    sync.Mutex
	node  string
	types map[string]*clientType
}

// clientType is what a client subscribed to and was sent, for one type.
type clientType struct {
	subscribed      map[string]struct{} // "*" for wildcard
	lastNonceSent   string
	lastVersionSent string
	lastAckedNonce  string
	lastNackedNonce string
	lastNackError   string
	responses       uint64
	resourcesSent   uint64
	removalsSent    uint64
	acks, nacks     uint64
}

func (c *client) typeLocked(url string) *clientType {
	ct := c.types[url]
	if ct == nil {
		ct = &clientType{subscribed: make(map[string]struct{})}
		c.types[url] = ct
	}
	return ct
}

func (cb *callbacks) refuse(reason string, err error) error {
	cb.s.metrics.refused.WithLabelValues(reason).Inc()
	return err
}

// warnRefused writes a warning about a refused stream or request, at the
// pace of the Server's RefusalLog: a client can make refusals as fast as it
// likes, and each one is counted in the metric anyway.
func (cb *callbacks) warnRefused(msg string, attrs ...any) {
	ok, suppressed := cb.s.refusalLog.Allow()
	if !ok {
		return
	}
	if suppressed > 0 {
		attrs = append(attrs, "suppressed_since_last", suppressed)
	}
	cb.s.log.Warn(msg, attrs...)
}

// OnDeltaStreamOpen authenticates the client of a new delta stream.
func (cb *callbacks) OnDeltaStreamOpen(ctx context.Context, stream int64, _ string) error {
	s := cb.s
	addr := ""
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		addr = p.Addr.String()
	}
	if !s.isReady() {
		s.log.Debug("refusing xDS stream before the initial state is set", "stream", stream, "peer", addr)
		return cb.refuse("not_ready", status.Error(codes.Unavailable, "xds: initial state not built yet, retry later"))
	}
	id, err := s.authenticator.Authenticate(ctx)
	if err != nil {
		reason := "unauthenticated"
		if status.Code(err) == codes.PermissionDenied {
			reason = "permission_denied"
		}
		cb.warnRefused("refusing xDS client", "stream", stream, "peer", addr, "reason", reason, "err", err)
		return cb.refuse(reason, refusal(err))
	}
	s.clients.add(&client{stream: stream, identity: id, peer: addr, connected: time.Now(), types: make(map[string]*clientType)})
	s.metrics.clients.Inc()
	s.log.Info("xDS client connected", "stream", stream, "identity", id.String(), "peer", addr)
	return nil
}

// OnDeltaStreamClosed forgets the client. It is also called for streams
// that OnDeltaStreamOpen refused.
func (cb *callbacks) OnDeltaStreamClosed(stream int64, node *core.Node) {
	cb.s.cache.closeStream(stream)
	c := cb.s.clients.remove(stream)
	if c == nil {
		return
	}
	cb.s.metrics.clients.Dec()
	cb.s.log.Info("xDS client disconnected", "stream", stream, "node", node.GetId(),
		"identity", c.identity.String(), "connected_for", time.Since(c.connected).Round(time.Millisecond))
}

// OnStreamDeltaRequest records a subscription change, an ACK or a NACK.
func (cb *callbacks) OnStreamDeltaRequest(stream int64, req *discoverygrpc.DeltaDiscoveryRequest) error {
	s := cb.s
	c := s.clients.get(stream)
	if c == nil {
		return status.Error(codes.Internal, "xds: request on an unknown stream")
	}
	url := req.GetTypeUrl()
	ts, known := s.types[url]
	if !known {
		cb.warnRefused("refusing request for an unknown type", "stream", stream, "identity", c.identity.String(), "type", url)
		return cb.refuse("unknown_type", status.Errorf(codes.InvalidArgument,
			"xds: type %q is not served here; served types: %v", url, s.typeURLs))
	}
	for _, name := range req.GetResourceNamesSubscribe() {
		if len(name) > s.maxNameLen {
			cb.warnRefused("refusing a subscription to an over-long name", "stream", stream, "identity", c.identity.String(),
				"type", ts.label, "length", len(name))
			return cb.refuse("name_too_long", status.Errorf(codes.InvalidArgument,
				"xds: subscription to a %s name of %d bytes; names are at most %d bytes (istiod-lite --xds-max-resource-name-length)",
				ts.label, len(name), s.maxNameLen))
		}
	}

	c.mu.Lock()
	if id := req.GetNode().GetId(); id != "" {
		c.node = id
	}
	node := c.node
	ct := c.typeLocked(url)
	if req.GetResponseNonce() == "" && len(ct.subscribed) == 0 && len(req.GetResourceNamesSubscribe()) == 0 {
		ct.subscribed["*"] = struct{}{} // legacy wildcard: a first request without names
	}
	// Unsubscriptions first: a request may swap names. The subscription
	// set is checked before go-control-plane stores it (after this
	// callback), so a refused request leaves nothing behind.
	for _, name := range req.GetResourceNamesUnsubscribe() {
		delete(ct.subscribed, name)
	}
	for _, name := range req.GetResourceNamesSubscribe() {
		if _, ok := ct.subscribed[name]; !ok && len(ct.subscribed) >= s.maxSubs {
			n := len(ct.subscribed)
			c.mu.Unlock()
			cb.warnRefused("refusing xDS subscriptions beyond the limit", "stream", stream, "identity", c.identity.String(),
				"type", ts.label, "subscribed", n, "limit", s.maxSubs)
			return cb.refuse("too_many_subscriptions", status.Errorf(codes.ResourceExhausted,
				"xds: stream subscribes to more than %d %s names (istiod-lite --xds-max-subscriptions); subscribe to \"*\" for all of them",
				s.maxSubs, ts.label))
		}
		ct.subscribed[name] = struct{}{}
	}
	nonce := req.GetResponseNonce()
	nack := req.GetErrorDetail()
	switch {
	case nonce == "":
	case nack != nil:
		ct.nacks++
		ct.lastNackedNonce = nonce
		ct.lastNackError = nack.GetMessage()
	default:
		ct.acks++
		ct.lastAckedNonce = nonce
	}
	c.mu.Unlock()

	switch {
	case nonce == "":
		s.log.Debug("xDS subscription", "stream", stream, "node", node, "type", ts.label,
			"subscribe", len(req.GetResourceNamesSubscribe()), "unsubscribe", len(req.GetResourceNamesUnsubscribe()),
			"known", len(req.GetInitialResourceVersions()))
	case nack != nil:
		s.metrics.nacks.WithLabelValues(ts.label).Inc()
		s.log.Warn("xDS NACK", "stream", stream, "node", node, "identity", c.identity.String(),
			"type", ts.label, "nonce", nonce, "error", nack.GetMessage())
	default:
		s.metrics.acks.WithLabelValues(ts.label).Inc()
		if s.log.Enabled(context.Background(), slog.LevelDebug) {
			s.log.Debug("xDS ACK", "stream", stream, "node", node, "type", ts.label, "nonce", nonce)
		}
	}
	s.cache.noteRequest(stream, req)
	return nil
}

// OnStreamDeltaResponse records what is about to be sent and observes the
// push latency.
func (cb *callbacks) OnStreamDeltaResponse(stream int64, req *discoverygrpc.DeltaDiscoveryRequest, resp *discoverygrpc.DeltaDiscoveryResponse) {
	s := cb.s
	url := resp.GetTypeUrl()
	ts := s.types[url]
	if c := s.clients.get(stream); c != nil {
		c.mu.Lock()
		ct := c.typeLocked(url)
		ct.responses++
		ct.resourcesSent += uint64(len(resp.GetResources()))
		ct.removalsSent += uint64(len(resp.GetRemovedResources()))
		ct.lastNonceSent = resp.GetNonce()
		ct.lastVersionSent = resp.GetSystemVersionInfo()
		c.mu.Unlock()
	}
	// A first response carries whatever exists: it measures the connection,
	// not a push.
	if ts != nil && req.GetResponseNonce() != "" {
		if queued, ok := ts.queuedAt(resp.GetSystemVersionInfo()); ok {
			s.metrics.pushLatency.WithLabelValues(ts.label).Observe(time.Since(queued).Seconds())
		}
	}
	if s.log.Enabled(context.Background(), slog.LevelDebug) {
		s.log.Debug("xDS response", "stream", stream, "type", url, "nonce", resp.GetNonce(),
			"version", resp.GetSystemVersionInfo(), "resources", len(resp.GetResources()), "removed", len(resp.GetRemovedResources()))
	}
}

// State-of-the-world: refused, with the reason.

func (cb *callbacks) OnStreamOpen(context.Context, int64, string) error { return nil }
func (cb *callbacks) OnStreamClosed(int64, *core.Node)                  {}

func (cb *callbacks) OnStreamRequest(stream int64, req *discoverygrpc.DiscoveryRequest) error {
	cb.warnRefused("refusing state-of-the-world xDS request", "stream", stream, "node", req.GetNode().GetId(), "type", req.GetTypeUrl())
	return cb.refuse("sotw", status.Errorf(codes.Unimplemented,
		"xds: state-of-the-world xDS is not served (type %q): use delta ADS (DeltaAggregatedResources), "+
			"since state-of-the-world replies for these types cannot signal removed resources", req.GetTypeUrl()))
}

func (cb *callbacks) OnStreamResponse(context.Context, int64, *discoverygrpc.DiscoveryRequest, *discoverygrpc.DiscoveryResponse) {
}

func (cb *callbacks) OnFetchRequest(context.Context, *discoverygrpc.DiscoveryRequest) error {
	return status.Error(codes.Unimplemented, "xds: REST fetch is not served: use delta ADS")
}

func (cb *callbacks) OnFetchResponse(*discoverygrpc.DiscoveryRequest, *discoverygrpc.DiscoveryResponse) {
}
