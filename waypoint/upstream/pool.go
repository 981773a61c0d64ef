// Package upstream picks the endpoint of a cluster for each request
// (least request: the less loaded of two random endpoints, or round robin)
// and holds the HTTP connections to each endpoint, made through an injected
// Dialer (HBONE in the waypoint, plain TCP in tests) and reused across
// requests.
package upstream

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cairnmesh/cairn/waypoint/state"
)

// Dialer opens a connection to an endpoint. The waypoint's dials HBONE to
// ep.Address's IP at ep.TunnelPort, expects ep.Identity, and asks for
// ep.Address as the CONNECT authority; an endpoint without an identity
// must be refused there.
type Dialer interface {
	DialEndpoint(ctx context.Context, ep state.Endpoint) (net.Conn, error)
}

// DialerFunc adapts a function to a Dialer.
type DialerFunc func(ctx context.Context, ep state.Endpoint) (net.Conn, error)

// DialEndpoint calls f.
func (f DialerFunc) DialEndpoint(ctx context.Context, ep state.Endpoint) (net.Conn, error) {
	return f(ctx, ep)
}

// Rand is the randomness of the endpoint choice; it must be safe for
// concurrent use.
type Rand interface {
	Uint64N(n uint64) uint64
}

// Config configures a Pool. Zero values take the defaults.
type Config struct {
	Dialer Dialer
	Rand   Rand
	// MaxIdleConnsPerEndpoint bounds the idle HTTP/1.1 connections kept
	// per endpoint (default 16).
	MaxIdleConnsPerEndpoint int
	// IdleConnTimeout closes a connection idle that long (default 90 s).
	IdleConnTimeout time.Duration
	// MaxResponseHeaderBytes bounds an endpoint's response headers
	// (default 60 KiB, Envoy's default header limit).
	MaxResponseHeaderBytes int64
	// MaxConcurrentStreams bounds the requests on one HTTP/2 connection to
	// an endpoint; more open another connection (default 100).
	MaxConcurrentStreams int
}

func (c Config) withDefaults() (Config, error) {
	if c.Dialer == nil {
		return c, errors.New("upstream: a Dialer is required")
	}
	if c.Rand == nil {
		return c, errors.New("upstream: a Rand is required")
	}
	if c.MaxIdleConnsPerEndpoint <= 0 {
		c.MaxIdleConnsPerEndpoint = 16
	}
	if c.IdleConnTimeout <= 0 {
		c.IdleConnTimeout = 90 * time.Second
	}
	if c.MaxResponseHeaderBytes <= 0 {
		c.MaxResponseHeaderBytes = 60 << 10
	}
	if c.MaxConcurrentStreams <= 0 {
		c.MaxConcurrentStreams = 100
	}
	return c, nil
}

// Pool holds the per-endpoint state: requests in flight (for least
// request) and HTTP transports. Endpoints are found by state.Endpoint.Key,
// so they outlive the snapshots that name them; Retain drops the others.
type Pool struct {
	cfg Config
	eps sync.Map // Key -> *Endpoint
}

// NewPool returns an empty Pool.
func NewPool(cfg Config) (*Pool, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	return &Pool{cfg: cfg}, nil
}

// Endpoint is the Pool's state for one endpoint.
type Endpoint struct {
	ep       state.Endpoint
	pool     *Pool
	inflight atomic.Int64
	rt       [2]atomic.Pointer[http.Transport] // HTTP/1.1, HTTP/2, made on first use
}

// Endpoint returns the endpoint's description.
func (e *Endpoint) Endpoint() state.Endpoint { return e.ep }

// InFlight is the number of requests to the endpoint not yet finished.
func (e *Endpoint) InFlight() int64 { return e.inflight.Load() }

// Begin counts a request in flight; call the returned func once when it is
// finished (its response body closed, or it failed).
func (e *Endpoint) Begin() (done func()) {
	e.inflight.Add(1)
	var once sync.Once
	return func() { once.Do(func() { e.inflight.Add(-1) }) }
}

// Transport returns the endpoint's transport for a protocol (h2: HTTP/2
// with prior knowledge, else HTTP/1.1).
func (e *Endpoint) Transport(h2 bool) http.RoundTripper {
	i := 0
	if h2 {
		i = 1
	}
	if t := e.rt[i].Load(); t != nil {
		return t
	}
	t := e.pool.newTransport(e.ep, h2)
	if !e.rt[i].CompareAndSwap(nil, t) {
		return e.rt[i].Load() // another request made it first; t has no connection yet
	}
	return t
}

func (e *Endpoint) closeIdle() {
	for i := range e.rt {
		if t := e.rt[i].Load(); t != nil {
			t.CloseIdleConnections()
		}
	}
}

type connectTimeoutKey struct{}

// WithConnectTimeout returns a context whose dials (of requests made with
// it) give up after d: the cluster's connect_timeout.
func WithConnectTimeout(ctx context.Context, d time.Duration) context.Context {
	return context.WithValue(ctx, connectTimeoutKey{}, d)
}

func (p *Pool) newTransport(ep state.Endpoint, h2 bool) *http.Transport {
	t := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			if d, ok := ctx.Value(connectTimeoutKey{}).(time.Duration); ok && d > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, d)
				defer cancel()
			}
			c, err := p.cfg.Dialer.DialEndpoint(ctx, ep)
			if err != nil {
				return nil, &ConnectError{Endpoint: ep.Address.String(), Err: err}
			}
			return c, nil
		},
		MaxIdleConnsPerHost:    p.cfg.MaxIdleConnsPerEndpoint,
		IdleConnTimeout:        p.cfg.IdleConnTimeout,
		MaxResponseHeaderBytes: p.cfg.MaxResponseHeaderBytes,
		// The client's Accept-Encoding goes through untouched and the
		// body comes back as the endpoint sent it.
		DisableCompression: true,
		Protocols:          new(http.Protocols),
	}
	if h2 {
		t.Protocols.SetUnencryptedHTTP2(true)
		t.HTTP2 = &http.HTTP2Config{MaxConcurrentStreams: p.cfg.MaxConcurrentStreams}
	} else {
		t.Protocols.SetHTTP1(true)
	}
	return t
}

// ConnectError is a failure to connect to an endpoint (a retry_on
// "connect-failure").
type ConnectError struct {
	Endpoint string
	Err      error
}

func (e *ConnectError) Error() string {
	return fmt.Sprintf("connecting to %s: %v", e.Endpoint, e.Err)
}

func (e *ConnectError) Unwrap() error { return e.Err }

// ErrNoEndpoint is returned when a cluster has no usable endpoint.
var ErrNoEndpoint = errors.New("no healthy upstream")

func (p *Pool) get(ep *state.Endpoint) *Endpoint {
	if v, ok := p.eps.Load(ep.Key); ok {
		return v.(*Endpoint)
	}
	v, _ := p.eps.LoadOrStore(ep.Key, &Endpoint{ep: *ep, pool: p})
	return v.(*Endpoint)
}

// Pick chooses the endpoint of c for one request among eps (the cluster's
// usable endpoints), leaving out the endpoint skip (a retry's previous
// one) when there is another. LEAST_REQUEST draws ChoiceCount distinct
// endpoints at random and takes the one with the fewest requests in
// flight (power of two choices); ROUND_ROBIN takes the next in turn.
func (p *Pool) Pick(c *state.Cluster, eps []state.Endpoint, skip *Endpoint) (*Endpoint, error) {
	n := len(eps)
	switch {
	case n == 0:
		return nil, ErrNoEndpoint
	case n == 1:
		return p.get(&eps[0]), nil
	}
	if c.LB == state.LBRoundRobin {
		i := int(c.NextRR() % uint64(n))
		e := p.get(&eps[i])
		if e == skip {
			e = p.get(&eps[(i+1)%n])
		}
		return e, nil
	}
	choices := min(c.ChoiceCount, n)
	var best *Endpoint
	// Distinct draws: a partial Fisher-Yates over indexes, without
	// allocating for the usual two choices.
	var small [8]int
	var idx []int
	if n <= len(small) {
		idx = small[:n]
	} else {
		idx = make([]int, n)
	}
	for i := range idx {
		idx[i] = i
	}
	for k := 0; k < choices; k++ {
		j := k + int(p.cfg.Rand.Uint64N(uint64(n-k)))
		idx[k], idx[j] = idx[j], idx[k]
		e := p.get(&eps[idx[k]])
		if e == skip {
			continue
		}
		if best == nil || e.inflight.Load() < best.inflight.Load() {
			best = e
		}
	}
	if best == nil {
		// Every draw was the skipped endpoint (only with one choice left).
		for i := range eps {
			if e := p.get(&eps[i]); e != skip {
				return e, nil
			}
		}
		return skip, nil
	}
	return best, nil
}

// Retain forgets the endpoints whose keys are not in live and closes
// their idle connections (requests in flight finish on theirs).
func (p *Pool) Retain(live map[string]bool) {
	p.eps.Range(func(k, v any) bool {
		if !live[k.(string)] {
			p.eps.Delete(k)
			v.(*Endpoint).closeIdle()
		}
		return true
	})
}

// Close closes every idle connection.
func (p *Pool) Close() {
	p.eps.Range(func(_, v any) bool {
		v.(*Endpoint).closeIdle()
		return true
	})
}

// Dial opens a plain connection to an endpoint (for a TCP filter chain),
// giving up after timeout (no limit if 0).
func (p *Pool) Dial(ctx context.Context, e *Endpoint, timeout time.Duration) (net.Conn, error) {
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	c, err := p.cfg.Dialer.DialEndpoint(ctx, e.ep)
	if err != nil {
		return nil, &ConnectError{Endpoint: e.ep.Address.String(), Err: err}
	}
	return c, nil
}
