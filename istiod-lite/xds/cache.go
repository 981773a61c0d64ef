package xds

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"

	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
)

// deltaCache is the go-control-plane ConfigWatcher behind the ADS server.
// It serves delta watches only, for the configured types, at a cost per
// push proportional to clients x changed resources (never x all resources):
//
//   - Each type keeps its resources already marshaled, with a content hash
//     as version, and a log of the names each recent push changed.
//   - Each (stream, type) keeps the versions the client holds, in the
//     map the server stores as the subscription's returned resources, and
//     the push sequence number the client is current with. A push looks only
//     at the names it changed; an ACK that re-opens a watch looks only at the
//     names changed since the client's last response (from the log). Only a
//     first request, a subscription change, or a client further behind than
//     the log compares everything.
//
// The known-versions map is shared with go-control-plane's Subscription,
// which edits it when a client unsubscribes. That is safe: the cache edits
// it only under mu and while the stream has an open watch or is inside
// CreateDeltaWatch, and the server edits it only on the stream's goroutine
// after cancelling the watch (which takes mu) and before creating the next
// one. go-control-plane passes the map back untouched otherwise.
//
// The stream of a request is learned from the callbacks: the server calls
// OnStreamDeltaRequest and then CreateDeltaWatch with the same request, on
// the stream's goroutine.
//
// Types are delivered in order: a stream gets a response of a type only
// once it has been sent every change of the types before it in order (the
// Server's TypeURLs), so a ztunnel never holds a workload Address before
// the Authorizations that were pushed with or before it. A response held
// back that way waits in the stream's open watch and goes out right after
// the earlier type's response, when the client's ACK (or NACK) of that
// type opens its next watch. The server's response channel keeps the two
// in that order.
type deltaCache struct {
	mu      sync.Mutex
	types   map[string]*typeCache // fixed after newDeltaCache
	order   []string              // delivery order
	rank    map[string]int        // index in order
	streams map[int64]map[string]*clientState

	reqMu sync.Mutex
	reqs  map[*discoverygrpc.DeltaDiscoveryRequest]int64 // seen by the callbacks, not yet watched
}

// Bounds of a type's change log. A client that fell further behind gets a
// full comparison, which costs O(resources) once.
const (
	changeLogPushes = 256
	changeLogNames  = 65536
)

type typeCache struct {
	url       string
	seq       uint64 // number of pushes so far
	resources map[string]*discoverygrpc.Resource
	log       []changeSet // oldest first, consecutive seqs
	logNames  int
	watches   map[*deltaWatch]struct{}
}

// changeSet is the names one push updated or removed.
type changeSet struct {
	seq   uint64
	names []string
}

// clientState is what one stream holds of one type.
type clientState struct {
	known   map[string]string // name -> version the client holds
	seq     uint64            // the type's seq that known reflects
	started bool
	watch   *deltaWatch // the open watch, if any
}

type deltaWatch struct {
	stream int64
	state  *clientState
	req    *cache.DeltaRequest
	sub    cache.Subscription
	out    chan cache.DeltaResponse
	// full: compare everything the client may need (a first request, a
	// subscription change), not only what changed since state.seq.
	full bool
	// replyEmpty: answer even with nothing to send (a wildcard
	// subscription's first request: it tells the client it holds all).
	replyEmpty bool
}

var _ cache.Cache = (*deltaCache)(nil)

// newDeltaCache serves typeURLs, delivered to each stream in that order.
func newDeltaCache(typeURLs []string) *deltaCache {
	c := &deltaCache{
		types:   make(map[string]*typeCache, len(typeURLs)),
		order:   typeURLs,
		rank:    make(map[string]int, len(typeURLs)),
		streams: make(map[int64]map[string]*clientState),
		reqs:    make(map[*discoverygrpc.DeltaDiscoveryRequest]int64),
	}
	for i, url := range typeURLs {
		c.rank[url] = i
		c.types[url] = &typeCache{
			url:       url,
			resources: make(map[string]*discoverygrpc.Resource),
			watches:   make(map[*deltaWatch]struct{}),
		}
	}
	return c
}

// noteRequest records which stream a request came on; CreateDeltaWatch
// takes it.
func (c *deltaCache) noteRequest(stream int64, req *discoverygrpc.DeltaDiscoveryRequest) {
	c.reqMu.Lock()
	defer c.reqMu.Unlock()
	c.reqs[req] = stream
}

func (c *deltaCache) takeRequest(req *discoverygrpc.DeltaDiscoveryRequest) (int64, bool) {
	c.reqMu.Lock()
	defer c.reqMu.Unlock()
	stream, ok := c.reqs[req]
	delete(c.reqs, req)
	return stream, ok
}

// closeStream forgets a stream. go-control-plane cancels its watches first.
func (c *deltaCache) closeStream(stream int64) {
	c.reqMu.Lock()
	for req, s := range c.reqs {
		if s == stream {
			delete(c.reqs, req)
		}
	}
	c.reqMu.Unlock()
	c.mu.Lock()
	defer c.mu.Unlock()
	for url, cs := range c.streams[stream] {
		if cs.watch != nil {
			delete(c.types[url].watches, cs.watch)
		}
	}
	delete(c.streams, stream)
}

// CreateWatch refuses state-of-the-world requests; the callbacks refuse
// them earlier with the reason.
func (c *deltaCache) CreateWatch(*cache.Request, cache.Subscription, chan cache.Response) (func(), error) {
	return nil, errors.New("xds: state-of-the-world xDS is not served")
}

// Fetch refuses REST requests; the callbacks refuse them earlier.
func (c *deltaCache) Fetch(context.Context, *cache.Request) (cache.Response, error) {
	return nil, errors.New("xds: REST fetch is not served")
}

// CreateDeltaWatch answers at once when the client lacks something it
// subscribed to, and otherwise parks a watch that the next relevant push
// answers. A response held back by delivery order is parked too.
func (c *deltaCache) CreateDeltaWatch(req *cache.DeltaRequest, sub cache.Subscription, out chan cache.DeltaResponse) (func(), error) {
	stream, ok := c.takeRequest(req)
	if !ok {
		return nil, errors.New("xds: request reached the cache without passing the stream callbacks")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	tc, ok := c.types[req.GetTypeUrl()]
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrUnknownType, req.GetTypeUrl())
	}
	byType := c.streams[stream]
	if byType == nil {
		byType = make(map[string]*clientState)
		c.streams[stream] = byType
	}
	cs := byType[tc.url]
	if cs == nil {
		cs = &clientState{}
		byType[tc.url] = cs
	}
	if cs.watch != nil { // the server cancels before re-watching; be safe anyway
		delete(tc.watches, cs.watch)
		cs.watch = nil
	}
	cs.known = sub.ReturnedResources()
	if cs.known == nil {
		cs.known = make(map[string]string)
	}
	w := &deltaWatch{
		stream: stream, state: cs, req: req, sub: sub, out: out,
		full: !cs.started || len(req.GetResourceNamesSubscribe()) > 0 || len(req.GetResourceNamesUnsubscribe()) > 0,
		// A wildcard subscription's first request (no nonce) is answered
		// even when empty: it tells the client it holds the full state.
		replyEmpty: sub.IsWildcard() && req.GetResponseNonce() == "",
	}
	cs.started = true
	if !c.heldBack(stream, tc.url) {
		if resp := tc.evaluate(w); resp != nil {
			out <- resp
			c.release(stream, tc.url)
			return nil, nil
		}
	}
	cs.watch = w
	tc.watches[w] = struct{}{}
	c.release(stream, tc.url)
	return func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		if cs.watch == w {
			cs.watch = nil
		}
		delete(tc.watches, w)
	}, nil
}

// heldBack reports whether a response of type url to stream must wait: the
// stream has not been sent every change of a type before url in delivery
// order (that type's response is in flight, not yet ACKed). Called with mu
// held.
func (c *deltaCache) heldBack(stream int64, url string) bool {
	byType := c.streams[stream]
	for _, earlier := range c.order[:c.rank[url]] {
		if cs := byType[earlier]; cs != nil && cs.started && cs.seq < c.types[earlier].seq {
			return true
		}
	}
	return false
}

// release answers the stream's open watches of the types after url in
// delivery order that were held back and no longer are. Called with mu
// held, right after url's response (if any) went to the stream's channel,
// so that theirs follow it.
func (c *deltaCache) release(stream int64, url string) {
	byType := c.streams[stream]
	for _, later := range c.order[c.rank[url]+1:] {
		cs := byType[later]
		if cs == nil || cs.watch == nil || c.heldBack(stream, later) {
			continue
		}
		tc, w := c.types[later], cs.watch
		if cs.seq == tc.seq && !w.full && !w.replyEmpty {
			continue // not held: nothing waits
		}
		if resp := tc.evaluate(w); resp != nil {
			w.out <- resp // the watch's one response: the slot is free
			delete(tc.watches, w)
			cs.watch = nil
		}
	}
}

// update applies one push to a type and answers the open watches it
// concerns. upserts hold marshaled resources with their versions.
func (c *deltaCache) update(url string, upserts []*discoverygrpc.Resource, removes []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	tc := c.types[url]
	tc.seq++
	names := make([]string, 0, len(upserts)+len(removes))
	for _, r := range upserts {
		tc.resources[r.GetName()] = r
		names = append(names, r.GetName())
	}
	for _, name := range removes {
		delete(tc.resources, name)
		names = append(names, name)
	}
	tc.record(changeSet{seq: tc.seq, names: names})
	for w := range tc.watches {
		if c.heldBack(w.stream, url) {
			continue // release answers it, from the change log
		}
		var resp cache.DeltaResponse
		if w.state.seq+1 == tc.seq && !w.full && !w.replyEmpty {
			resp = tc.respond(w, names, false)
		} else { // it was held back over earlier pushes
			resp = tc.evaluate(w)
		}
		if resp == nil {
			continue
		}
		// Each stream has at most one response per type in flight (the
		// watch closes with it), and New checks that the server's
		// per-stream channel has a slot for every type: this never blocks.
		w.out <- resp
		delete(tc.watches, w)
		w.state.watch = nil
	}
}

// evaluate compares what the watch's client holds with the cache: all of
// it for a full comparison, else the names changed since the client's
// last response (all of it when the log does not reach back that far). It
// returns the response to send, or nil.
func (tc *typeCache) evaluate(w *deltaWatch) cache.DeltaResponse {
	full := w.full
	var candidates []string
	if !full {
		candidates, full = tc.changedSince(w.state.seq)
	}
	if full {
		candidates = tc.allCandidates(w.state.known, w.sub)
	}
	resp := tc.respond(w, candidates, w.replyEmpty)
	w.full, w.replyEmpty = false, false
	return resp
}

// version is the type's push count, as the responses' system version.
func (tc *typeCache) version() string { return strconv.FormatUint(tc.seq, 10) }

func (tc *typeCache) record(cs changeSet) {
	tc.log = append(tc.log, cs)
	tc.logNames += len(cs.names)
	drop := 0
	for len(tc.log)-drop > changeLogPushes || (tc.logNames > changeLogNames && len(tc.log)-drop > 1) {
		tc.logNames -= len(tc.log[drop].names)
		drop++
	}
	if drop > 0 {
		tc.log = append(tc.log[:0:0], tc.log[drop:]...)
	}
}

// changedSince lists the names changed after push seq, or says that the
// log does not reach back that far (full).
func (tc *typeCache) changedSince(seq uint64) (names []string, full bool) {
	if seq == tc.seq {
		return nil, false
	}
	if len(tc.log) == 0 || tc.log[0].seq > seq+1 {
		return nil, true
	}
	for i := len(tc.log) - 1; i >= 0 && tc.log[i].seq > seq; i-- {
		names = append(names, tc.log[i].names...)
	}
	return names, false
}

// allCandidates is every name a client may need to hear about: all
// resources (or all it subscribed to) and all it holds.
func (tc *typeCache) allCandidates(known map[string]string, sub cache.Subscription) []string {
	var names []string
	if sub.IsWildcard() {
		names = make([]string, 0, len(tc.resources)+len(known))
		for name := range tc.resources {
			names = append(names, name)
		}
	} else {
		for name := range sub.SubscribedResources() {
			names = append(names, name)
		}
	}
	for name := range known {
		names = append(names, name)
	}
	return names
}

// respond compares what the watch's client holds with the cache for the
// candidate names (duplicates allowed), and returns the response that
// brings the client up to date, or nil when there is nothing to send
// (unless replyEmpty). It records the response in the client's state.
func (tc *typeCache) respond(w *deltaWatch, candidates []string, replyEmpty bool) cache.DeltaResponse {
	cs := w.state
	var resources []*discoverygrpc.Resource
	var removed []string
	wildcard := w.sub.IsWildcard()
	subscribed := w.sub.SubscribedResources()
	for _, name := range candidates {
		r, exists := tc.resources[name]
		if exists && !wildcard {
			_, exists = subscribed[name]
		}
		held, has := cs.known[name]
		switch {
		case exists && (!has || held != r.GetVersion()):
			resources = append(resources, r)
			cs.known[name] = r.GetVersion()
		case !exists && has:
			removed = append(removed, name)
			delete(cs.known, name)
		}
	}
	cs.seq = tc.seq
	if len(resources) == 0 && len(removed) == 0 && !replyEmpty {
		return nil
	}
	return &deltaResponse{
		req: w.req,
		resp: &discoverygrpc.DeltaDiscoveryResponse{
			TypeUrl:           tc.url,
			SystemVersionInfo: tc.version(),
			Resources:         resources,
			RemovedResources:  removed,
		},
		known: cs.known,
	}
}

// deltaResponse is a response built by deltaCache. Its resources are shared
// between the clients' responses and never modified.
type deltaResponse struct {
	req   *cache.DeltaRequest
	resp  *discoverygrpc.DeltaDiscoveryResponse
	known map[string]string
}

var _ cache.DeltaResponse = (*deltaResponse)(nil)

func (r *deltaResponse) GetDeltaDiscoveryResponse() (*discoverygrpc.DeltaDiscoveryResponse, error) {
	return r.resp, nil
}
func (r *deltaResponse) GetDeltaRequest() *discoverygrpc.DeltaDiscoveryRequest { return r.req }
func (r *deltaResponse) GetSystemVersion() (string, error)                     { return r.resp.GetSystemVersionInfo(), nil }
func (r *deltaResponse) GetResponseVersion() string                            { return r.resp.GetSystemVersionInfo() }
func (r *deltaResponse) GetNextVersionMap() map[string]string                  { return r.known }
func (r *deltaResponse) GetReturnedResources() map[string]string               { return r.known }
func (r *deltaResponse) GetContext() context.Context                           { return context.Background() }
