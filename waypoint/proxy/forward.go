package proxy

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"

	"github.com/cairnmesh/cairn/waypoint/route"
	"github.com/cairnmesh/cairn/waypoint/state"
	"github.com/cairnmesh/cairn/waypoint/upstream"
)

var _ http.RoundTripper = (*handler)(nil)

// RoundTrip sends the outbound request the ReverseProxy prepared to an
// endpoint of the decided cluster: header mutations and rewrites, mirrors,
// then attempts (a retry policy allows more than one) each on an endpoint
// picked for it.
func (h *handler) RoundTrip(out *http.Request) (*http.Response, error) {
	fw, _ := out.Context().Value(forwardKey{}).(*forwardCtx)
	if fw == nil {
		return nil, errors.New("waypoint: request without a routing decision")
	}
	d := &fw.d
	if d.Split != nil {
		route.ApplyHeaders(out.Header, &d.Split.RequestHeaders)
	}
	route.ApplyHeaders(out.Header, &d.Route.RequestHeaders)
	if d.Rewritten {
		setPath(out.URL, d.RawPath)
	}
	if d.Host != "" {
		out.Host = d.Host
	}

	f := d.Route.Forward
	retry := f.Retry
	attempts := 1
	if retry != nil {
		attempts += retry.NumRetries
	}
	hasBody := out.Body != nil && out.Body != http.NoBody
	var rec *recorder
	if hasBody && (attempts > 1 || len(d.Mirrors) > 0) {
		rec = &recorder{src: out.Body, limit: h.cfg.Limits.MaxBufferedBodyBytes}
	}
	if len(d.Mirrors) > 0 {
		h.mirror.submit(out, fw.snap, d.Mirrors, rec)
	}

	ctx := out.Context()
	var prev *upstream.Endpoint
	for i := 0; ; i++ {
		ep, err := h.cfg.Upstream.Pick(fw.cluster, fw.eps, prev)
		if err != nil {
			return nil, err
		}
		actx, cancel := ctx, context.CancelFunc(func() {})
		if retry != nil && retry.PerTryTimeout > 0 {
			actx, cancel = context.WithTimeoutCause(ctx, retry.PerTryTimeout, errPerTryTimeout)
		}
		req := out.WithContext(actx)
		var body *attemptBody
		if rec != nil {
			body = rec.attempt()
			req.Body = body
		}
		done := ep.Begin()
		resp, err := ep.Transport(fw.h2).RoundTrip(req)
		if err != nil && context.Cause(actx) == errPerTryTimeout {
			err = errPerTryTimeout
		}
		last := i+1 >= attempts || ctx.Err() != nil || (hasBody && (rec == nil || !rec.replayable()))
		if !last && retriable(retry, resp, err) {
			if resp != nil {
				drainClose(resp.Body)
			}
			if body != nil {
				body.abandon()
			}
			done()
			cancel()
			prev = ep
			if !backoff(ctx, h.cfg.Rand, i, retry.BaseInterval, retry.MaxInterval) {
				return nil, context.Cause(ctx)
			}
			continue
		}
		if err != nil {
			done()
			cancel()
			return nil, err
		}
		resp.Body = finishOnClose(resp.Body, func() { done(); cancel() })
		return resp, nil
	}
}

// retriable says whether a retry policy retries this outcome of an
// attempt (Envoy's retry_on conditions).
func retriable(rp *state.Retry, resp *http.Response, err error) bool {
	if rp == nil {
		return false
	}
	if err != nil {
		var ce *upstream.ConnectError
		switch {
		case errors.Is(err, errPerTryTimeout):
			return rp.On&(state.Retry5xx|state.RetryGatewayError) != 0
		case errors.As(err, &ce):
			return rp.On&(state.Retry5xx|state.RetryGatewayError|state.RetryConnectFailure|state.RetryReset) != 0
		case errors.Is(err, upstream.ErrNoEndpoint):
			return false
		default:
			// A reset or disconnect before the response (HTTP/2's
			// REFUSED_STREAM that Go's transport did not retry itself
			// comes here too).
			return rp.On&(state.Retry5xx|state.RetryGatewayError|state.RetryReset|state.RetryRefusedStream) != 0
		}
	}
	code := resp.StatusCode
	switch {
	case rp.On&state.Retry5xx != 0 && code >= 500:
		return true
	case rp.On&state.RetryGatewayError != 0 && (code == 502 || code == 503 || code == 504):
		return true
	case rp.On&state.RetryRetriable4xx != 0 && code == http.StatusConflict:
		return true
	case rp.On&state.RetryRetriableStatusCodes != 0:
		for _, c := range rp.StatusCodes {
			if c == code {
				return true
			}
		}
	}
	return false
}

// setPath sets a URL's path from its escaped form.
func setPath(u *url.URL, raw string) {
	if p, err := url.PathUnescape(raw); err == nil {
		u.Path, u.RawPath = p, raw
	} else {
		u.Path, u.RawPath = raw, ""
	}
}

// drainClose reads a little of a response that is thrown away (so its
// connection can be reused) and closes it.
func drainClose(b io.ReadCloser) {
	_, _ = io.CopyN(io.Discard, b, 4<<10)
	_ = b.Close()
}

// finishOnClose calls fin once when the body is closed (or read to its
// end). An upgraded connection's body is also written to, so it keeps
// its Write.
func finishOnClose(b io.ReadCloser, fin func()) io.ReadCloser {
	fb := finishBody{ReadCloser: b, fin: fin, once: new(sync.Once)}
	if w, ok := b.(io.ReadWriteCloser); ok {
		return &finishRWBody{finishBody: fb, w: w}
	}
	return &fb
}

type finishBody struct {
	io.ReadCloser
	fin  func()
	once *sync.Once
}

func (f *finishBody) Close() error {
	err := f.ReadCloser.Close()
	f.once.Do(f.fin)
	return err
}

type finishRWBody struct {
	finishBody
	w io.ReadWriteCloser
}

func (f *finishRWBody) Write(p []byte) (int, error) { return f.w.Write(p) }

// recorder keeps the first limit bytes of a request body so that a retry
// can send them again and a mirror can send them too. Reads of the source
// happen under its lock only, so an attempt that is abandoned while its
// transport still reads cannot race the next one.
type recorder struct {
	mu       sync.Mutex
	src      io.ReadCloser
	limit    int
	buf      []byte
	overflow bool  // more than limit bytes were read: no replay
	eof      bool  // the source is finished
	err      error // the source's error, if not EOF
	onEOF    func(body []byte)
}

func (r *recorder) replayable() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return !r.overflow
}

// setOnEOF registers the one function called with the whole body once the
// source is read to its end without overflowing (at once if it already
// is).
func (r *recorder) setOnEOF(f func(body []byte)) {
	r.mu.Lock()
	if r.eof && r.err == nil && !r.overflow {
		r.mu.Unlock()
		f(r.buf)
		return
	}
	r.onEOF = f
	r.mu.Unlock()
}

func (r *recorder) attempt() *attemptBody { return &attemptBody{rec: r} }

// readAt copies the body from offset pos into p for attempt a, reading
// the source when pos is at the end of the record. The record stops
// growing once it passes limit (by at most one read); from then on the
// one attempt still reading gets the source's bytes unrecorded.
func (r *recorder) readAt(a *attemptBody, p []byte) (int, error) {
	r.mu.Lock()
	if a.pos < len(r.buf) {
		n := copy(p, r.buf[a.pos:])
		r.mu.Unlock()
		return n, nil
	}
	if r.eof {
		err := r.err
		r.mu.Unlock()
		if err == nil {
			err = io.EOF
		}
		return 0, err
	}
	if a.abandoned.Load() {
		r.mu.Unlock()
		return 0, errors.New("waypoint: attempt abandoned")
	}
	if a.pos > len(r.buf) && !r.overflow {
		r.mu.Unlock()
		return 0, errors.New("waypoint: request body record lost its place")
	}
	n, err := r.src.Read(p)
	if n > 0 && !r.overflow {
		r.buf = append(r.buf, p[:n]...)
		if len(r.buf) > r.limit {
			r.overflow = true
		}
	}
	var fire func(body []byte)
	if err != nil {
		r.eof = true
		if err != io.EOF {
			r.err = err
		} else if !r.overflow && r.onEOF != nil {
			fire, r.onEOF = r.onEOF, nil
		}
	}
	r.mu.Unlock()
	if fire != nil {
		fire(r.buf)
	}
	return n, err
}

// attemptBody is one attempt's view of the recorded body.
type attemptBody struct {
	rec       *recorder
	pos       int // only the attempt's transport reads and moves it
	abandoned atomic.Bool
}

func (a *attemptBody) Read(p []byte) (int, error) {
	n, err := a.rec.readAt(a, p)
	a.pos += n
	return n, err
}

func (a *attemptBody) Close() error { return nil }

// abandon makes the attempt's further reads of the source fail: a new
// attempt reads from here on.
func (a *attemptBody) abandon() { a.abandoned.Store(true) }
