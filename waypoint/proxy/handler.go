package proxy

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httputil"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/cairnmesh/cairn/waypoint/route"
	"github.com/cairnmesh/cairn/waypoint/state"
	"github.com/cairnmesh/cairn/waypoint/upstream"
)

// The causes of a request's end that the error handler tells apart.
var (
	errRouteTimeout  = errors.New("route timeout")
	errPerTryTimeout = errors.New("per-try timeout")
)

type handler struct {
	cfg    Config
	mirror *mirrorQueue
	rp     *httputil.ReverseProxy
}

func newHandler(cfg Config, mq *mirrorQueue) *handler {
	h := &handler{cfg: cfg, mirror: mq}
	h.rp = &httputil.ReverseProxy{
		Rewrite:   rewrite,
		Transport: h,
		// 0: a response of unknown length (streams, gRPC) is flushed at
		// every write, one of known length is written as it fills the
		// buffer. Headers are never flushed ahead of an empty body, so a
		// response without one (gRPC's trailers-only) leaves as one
		// HEADERS frame that ends the stream, as the endpoint sent it.
		FlushInterval:  0,
		BufferPool:     bufferPool{},
		ModifyResponse: modifyResponse,
		ErrorHandler:   h.proxyError,
		ErrorLog:       slog.NewLogLogger(cfg.Log.Handler(), slog.LevelDebug),
	}
	return h
}

// forwardCtx is one forwarded request's decision, for the RoundTrip that
// the ReverseProxy calls.
type forwardCtx struct {
	d       route.Decision
	snap    *state.Snapshot
	cluster *state.Cluster
	eps     []state.Endpoint
	h2      bool
	cancel  context.CancelCauseFunc
	timeout time.Duration

	mu      sync.Mutex // guards timer and done: the body reader starts the timer
	timer   *time.Timer
	stopped bool
}

type forwardKey struct{}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	info, _ := r.Context().Value(connInfoKey{}).(*connInfo)
	if info == nil {
		localReply(w, http.StatusInternalServerError, "no connection information")
		return
	}
	if len(r.Method)+len(r.RequestURI)+len(r.Proto)+2 > h.cfg.Limits.MaxRequestLineBytes {
		localReply(w, http.StatusRequestURITooLong, "")
		return
	}
	snap := h.cfg.State.Load()
	d := route.Decide(snap, route.Input{Dst: info.dst, PeerPrincipal: info.principal}, r, h.cfg.Rand)
	switch d.Outcome {
	case route.NoChain, route.TCP:
		localReply(w, http.StatusServiceUnavailable, "no HTTP filter chain for this destination")
		return
	case route.NoRouteTable:
		localReply(w, http.StatusServiceUnavailable, "route configuration not found")
		return
	case route.NoRoute:
		localReply(w, http.StatusNotFound, "")
		return
	}
	up := upgradeType(r.Header)
	if up == "h2c" {
		// An HTTP/1.1 client offering HTTP/2 (curl --http2): carry on in
		// HTTP/1.1, as Envoy does.
		r.Header.Del("Upgrade")
		r.Header.Del("Http2-Settings")
		r.Header.Del("Connection")
		up = ""
	}
	if up != "" && !d.Chain.HTTP.AllowsUpgrade(up) {
		localReply(w, http.StatusForbidden, "upgrade failed")
		return
	}
	switch d.Outcome {
	case route.Direct:
		route.ApplyHeaders(w.Header(), &d.Route.ResponseHeaders)
		dr := d.Route.Direct
		if len(dr.Body) > 0 {
			w.Header().Set("Content-Length", strconv.Itoa(len(dr.Body)))
			if w.Header().Get("Content-Type") == "" {
				w.Header().Set("Content-Type", "text/plain")
			}
		}
		w.WriteHeader(dr.Status)
		_, _ = w.Write(dr.Body)
	case route.Redirect:
		route.ApplyHeaders(w.Header(), &d.Route.ResponseHeaders)
		w.Header().Set("Location", d.Location)
		w.WriteHeader(d.Route.Redirect.Code)
	case route.Forward:
		h.forward(w, r, snap, d)
	}
}

func (h *handler) forward(w http.ResponseWriter, r *http.Request, snap *state.Snapshot, d route.Decision) {
	f := d.Route.Forward
	cluster := snap.Cluster(d.Cluster)
	if cluster == nil {
		localReply(w, f.NotFoundStatus, "")
		return
	}
	fw := &forwardCtx{d: d, snap: snap, cluster: cluster, eps: snap.Endpoints(cluster), timeout: f.Timeout}
	if len(fw.eps) == 0 {
		localReply(w, http.StatusServiceUnavailable, "no healthy upstream")
		return
	}
	switch cluster.Protocol {
	case state.ProtocolHTTP2:
		fw.h2 = true
	case state.ProtocolDownstream:
		fw.h2 = r.ProtoMajor == 2
	}
	if upgradeType(r.Header) != "" {
		fw.h2 = false // an upgrade is an HTTP/1.1 exchange
	}
	ctx, cancel := context.WithCancelCause(r.Context())
	defer cancel(nil)
	fw.cancel = cancel
	ctx = upstream.WithConnectTimeout(ctx, cluster.ConnectTimeout)
	ctx = context.WithValue(ctx, forwardKey{}, fw)
	r = r.WithContext(ctx)
	// Envoy's route timeout runs from the end of the request (its body
	// read) to the end of the response.
	if fw.timeout > 0 {
		if r.ContentLength == 0 || r.Body == nil || r.Body == http.NoBody {
			fw.startTimer()
		} else {
			r.Body = &eofNotify{ReadCloser: r.Body, onEOF: fw.startTimer}
		}
		defer fw.stopTimer()
	}
	if r.ProtoMajor == 1 && r.ContentLength != 0 {
		// Let the endpoint answer while the client still sends (HTTP/2
		// does so anyway).
		_ = http.NewResponseController(w).EnableFullDuplex()
	}
	h.rp.ServeHTTP(w, r)
}

func (fw *forwardCtx) startTimer() {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	if fw.timer == nil && !fw.stopped {
		fw.timer = time.AfterFunc(fw.timeout, func() { fw.cancel(errRouteTimeout) })
	}
}

func (fw *forwardCtx) stopTimer() {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	fw.stopped = true // no timer from a late EOF
	if fw.timer != nil {
		fw.timer.Stop()
	}
}

// forwardingHeaders are the headers the ReverseProxy takes out of every
// request before rewrite; the waypoint passes the client's on unchanged,
// as Envoy does without use_remote_address, and adds none of its own.
var forwardingHeaders = []string{"Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"}

// rewrite prepares the outbound request; RoundTrip does the rest once the
// endpoint is known.
func rewrite(pr *httputil.ProxyRequest) {
	pr.Out.URL.Scheme = "http"
	pr.Out.URL.Host = "upstream.waypoint.invalid" // the transport is per endpoint; the Host header is Out.Host
	// The query goes as the client sent it (the ReverseProxy drops the
	// parameters it cannot parse).
	pr.Out.URL.RawQuery = pr.In.URL.RawQuery
	for _, k := range forwardingHeaders {
		if v, ok := pr.In.Header[k]; ok {
			pr.Out.Header[k] = slices.Clone(v)
		}
	}
}

// modifyResponse applies the response header mutations: the split's, then
// the route's.
func modifyResponse(resp *http.Response) error {
	fw, _ := resp.Request.Context().Value(forwardKey{}).(*forwardCtx)
	if fw == nil {
		return nil
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		// The exchange is over; the upgraded connection is not bound by
		// the route timeout.
		fw.stopTimer()
	}
	if fw.d.Split != nil {
		route.ApplyHeaders(resp.Header, &fw.d.Split.ResponseHeaders)
	}
	route.ApplyHeaders(resp.Header, &fw.d.Route.ResponseHeaders)
	return nil
}

// proxyError answers a request that got no response from an endpoint,
// with Envoy's status codes and texts.
func (h *handler) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	cause := context.Cause(r.Context())
	var ce *upstream.ConnectError
	switch {
	case errors.Is(cause, errRouteTimeout):
		localReply(w, http.StatusGatewayTimeout, "upstream request timeout")
	case errors.Is(err, errPerTryTimeout):
		localReply(w, http.StatusGatewayTimeout, "upstream request timeout")
	case errors.Is(err, upstream.ErrNoEndpoint):
		localReply(w, http.StatusServiceUnavailable, "no healthy upstream")
	case r.Context().Err() != nil:
		// The client went away: nobody reads an answer.
		w.WriteHeader(499)
	case errors.As(err, &ce):
		localReply(w, http.StatusServiceUnavailable, "upstream connect error or disconnect/reset before headers. reset reason: connection failure")
	default:
		localReply(w, http.StatusBadGateway, "upstream connect error or disconnect/reset before headers. reset reason: connection termination")
	}
	h.cfg.Log.Debug("waypoint: request failed", "method", r.Method, "path", r.URL.Path, "err", err)
}

// localReply answers from the waypoint itself.
func localReply(w http.ResponseWriter, status int, body string) {
	hd := w.Header()
	if body != "" {
		hd.Set("Content-Type", "text/plain")
		hd.Set("Content-Length", strconv.Itoa(len(body)))
	}
	w.WriteHeader(status)
	if body != "" {
		_, _ = io.WriteString(w, body)
	}
}

// upgradeType is the protocol a request asks to upgrade to, lower case,
// or "".
func upgradeType(h http.Header) string {
	if !httpguts.HeaderValuesContainsToken(h["Connection"], "Upgrade") {
		return ""
	}
	return strings.ToLower(h.Get("Upgrade"))
}

// eofNotify calls onEOF once, when the body has been read to its end.
type eofNotify struct {
	io.ReadCloser
	onEOF func()
	once  sync.Once
}

func (e *eofNotify) Read(p []byte) (int, error) {
	n, err := e.ReadCloser.Read(p)
	if err == io.EOF {
		e.once.Do(e.onEOF)
	}
	return n, err
}

// bufferPool lends the ReverseProxy its 32 KiB copy buffers.
type bufferPool struct{}

var copyBuffers = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func (bufferPool) Get() []byte  { return *(copyBuffers.Get().(*[]byte)) }
func (bufferPool) Put(b []byte) { copyBuffers.Put(&b) }
