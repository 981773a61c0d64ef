package kubeletapi

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"
)

// serveContainerLogs answers GET /containerLogs/{namespace}/{pod}/{container}.
func (s *Server) serveContainerLogs(w http.ResponseWriter, r *http.Request) {
	ns, pod, ctr := r.PathValue("namespace"), r.PathValue("pod"), r.PathValue("container")
	opts, err := parseLogOptions(r.URL.Query(), time.Now())
	if err != nil {
		s.httpError(w, r, http.StatusBadRequest, err)
		return
	}
	if !s.find(w, r, ns, pod, ctr) {
		return
	}
	lw := &logWriter{w: w}
	defer lw.close()
	if _, ok := s.rt.(Finder); ok && opts.Follow {
		// The container exists: send the headers now, so a client
		// following a quiet container sees the stream open.
		lw.start()
	}
	err = s.rt.ContainerLogs(r.Context(), ns, pod, ctr, opts, lw)
	switch {
	case err == nil:
		lw.start()
	case r.Context().Err() != nil:
		// The client went away or the server is stopping.
	case !lw.hasStarted():
		s.httpError(w, r, statusOf(err), fmt.Errorf("logs of container %q of pod %s/%s: %w", ctr, ns, pod, err))
	default:
		// Too late for a status; the client sees the stream end.
		s.log.Warn("streaming logs", "namespace", ns, "pod", pod, "container", ctr, "err", err)
	}
}

// logWriter sends the response headers on the first write (so an error
// before any output can still become a status) and flushes every write.
// It is safe for concurrent use, and refuses writes once the handler is
// done with the response.
type logWriter struct {
	mu      sync.Mutex
	w       http.ResponseWriter
	started bool
	closed  bool
}

var errLogStreamClosed = errors.New("log stream closed")

func (l *logWriter) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
}

func (l *logWriter) start() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.startLocked()
}

func (l *logWriter) hasStarted() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.started
}

func (l *logWriter) startLocked() {
	if l.started {
		return
	}
	l.started = true
	l.w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	l.w.Header().Set("X-Content-Type-Options", "nosniff")
	l.w.WriteHeader(http.StatusOK)
	http.NewResponseController(l.w).Flush() //nolint:errcheck // best effort
}

func (l *logWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return 0, errLogStreamClosed
	}
	l.startLocked()
	n, err := l.w.Write(p)
	if err != nil {
		return n, fmt.Errorf("writing logs: %w", err)
	}
	if err := http.NewResponseController(l.w).Flush(); err != nil {
		return n, fmt.Errorf("flushing logs: %w", err)
	}
	return n, nil
}

// parseLogOptions reads the query of /containerLogs as the kubelet does
// (the API server sends follow, previous, timestamps, tailLines,
// limitBytes, sinceSeconds, sinceTime and stream) and validates it like
// the API's PodLogOptions. sinceSeconds becomes a SinceTime before now.
func parseLogOptions(q url.Values, now time.Time) (LogOptions, error) {
	var opts LogOptions
	var err error
	if opts.Follow, err = boolParam(q, "follow"); err != nil {
		return LogOptions{}, err
	}
	if opts.Previous, err = boolParam(q, "previous"); err != nil {
		return LogOptions{}, err
	}
	if opts.Timestamps, err = boolParam(q, "timestamps"); err != nil {
		return LogOptions{}, err
	}
	if opts.TailLines, err = intParam(q, "tailLines", 0); err != nil {
		return LogOptions{}, err
	}
	if opts.LimitBytes, err = intParam(q, "limitBytes", 1); err != nil {
		return LogOptions{}, err
	}
	sinceSeconds, err := intParam(q, "sinceSeconds", 1)
	if err != nil {
		return LogOptions{}, err
	}
	if v := q.Get("sinceTime"); v != "" {
		t, err := time.Parse(time.RFC3339, v)
		if err != nil {
			return LogOptions{}, fmt.Errorf("query parameter sinceTime=%q is not an RFC 3339 time: %w", v, err)
		}
		opts.SinceTime = &t
	}
	if sinceSeconds != nil {
		if opts.SinceTime != nil {
			return LogOptions{}, errors.New("at most one of sinceTime and sinceSeconds may be set")
		}
		t := now.Add(-time.Duration(*sinceSeconds) * time.Second)
		opts.SinceTime = &t
	}
	switch v := q.Get("stream"); v {
	case "", "All":
	default:
		return LogOptions{}, fmt.Errorf("query parameter stream=%q is not supported: the lab keeps stdout and stderr as one stream", v)
	}
	return opts, nil
}

func boolParam(q url.Values, name string) (bool, error) {
	v := q.Get(name)
	if v == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, fmt.Errorf("query parameter %s=%q is not a boolean", name, v)
	}
	return b, nil
}

func intParam(q url.Values, name string, minimum int64) (*int64, error) {
	v := q.Get(name)
	if v == "" {
		return nil, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return nil, fmt.Errorf("query parameter %s=%q is not an integer", name, v)
	}
	if n < minimum {
		return nil, fmt.Errorf("query parameter %s=%d must be at least %d", name, n, minimum)
	}
	return &n, nil
}
