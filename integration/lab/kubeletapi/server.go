package kubeletapi

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"
)

// Finder is an optional interface of a Runtime. With it, the server answers
// 404 for an unknown pod or container before it upgrades an exec or
// port-forward connection, and sends the headers of a followed log right
// away. Without it, such errors reach the client inside the stream.
type Finder interface {
	// Find returns nil if the pod (container == "") or the container runs
	// on this node, and an error wrapping ErrNotFound if it does not.
	Find(ctx context.Context, namespace, pod, container string) error
}

// Config configures a Server. Zero durations take the defaults below.
type Config struct {
	Runtime Runtime // required

	// Addr is the address to listen on, e.g. "198.18.0.2:10250".
	Addr string
	// Listener, if set, is used instead of Addr: for instance one bound
	// from inside a node's network namespace. Serve closes it.
	Listener net.Listener

	// The serving certificate: Certificate, or else CertPEM and KeyPEM.
	Certificate *tls.Certificate
	CertPEM     []byte
	KeyPEM      []byte

	// ClientCAs verifies client certificates; every connection must
	// present one (the API server uses --kubelet-client-certificate).
	ClientCAs *x509.CertPool // required

	Logger *slog.Logger // nil discards logs

	// StreamIdleTimeout closes an exec or port-forward connection that
	// carried no data for this long (kubelet default 4h).
	StreamIdleTimeout time.Duration
	// StreamCreationTimeout bounds how long the client may take to open
	// the streams of an exec or port-forward session (default 30s).
	StreamCreationTimeout time.Duration
	// ShutdownTimeout is how long Serve lets open requests and sessions
	// finish once its context is done, before it cancels them (default
	// 3s); a second later it closes the connections still open.
	ShutdownTimeout time.Duration
}

// errShuttingDown is the cause of the request contexts a shutdown cancels.
var errShuttingDown = errors.New("kubelet API is shutting down")

const (
	// reportDelay is how long a forced shutdown lets cancelled handlers
	// report to their clients before it closes their connections.
	reportDelay = time.Second

	defaultStreamIdleTimeout     = 4 * time.Hour
	defaultStreamCreationTimeout = 30 * time.Second
	defaultShutdownTimeout       = 3 * time.Second
)

// Server serves the kubelet API of one node over HTTPS.
type Server struct {
	cfg      Config
	rt       Runtime
	log      *slog.Logger
	ln       net.Listener
	http     *http.Server
	handler  http.Handler
	baseCtx  context.Context         // parent of every request context
	stopReqs context.CancelCauseFunc // cancels baseCtx

	mu       sync.Mutex
	stopping bool                  // no new requests are admitted
	hijacked map[net.Conn]struct{} // upgraded connections, closed on force-stop
	inflight sync.WaitGroup        // running handlers, including upgraded ones
	served   bool
}

// NewServer validates cfg and binds cfg.Addr (unless cfg.Listener is
// set), so that a bad address fails at startup. Call Serve to serve, or
// Close if Serve is never called.
func NewServer(cfg Config) (*Server, error) {
	if cfg.Runtime == nil {
		return nil, errors.New("kubeletapi: Config.Runtime is required")
	}
	if cfg.ClientCAs == nil {
		return nil, errors.New("kubeletapi: Config.ClientCAs is required")
	}
	cert, err := servingCert(cfg)
	if err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.StreamIdleTimeout <= 0 {
		cfg.StreamIdleTimeout = defaultStreamIdleTimeout
	}
	if cfg.StreamCreationTimeout <= 0 {
		cfg.StreamCreationTimeout = defaultStreamCreationTimeout
	}
	if cfg.ShutdownTimeout <= 0 {
		cfg.ShutdownTimeout = defaultShutdownTimeout
	}

	s := &Server{
		cfg:      cfg,
		rt:       cfg.Runtime,
		log:      cfg.Logger.With("component", "kubeletapi"),
		hijacked: map[net.Conn]struct{}{},
	}
	s.baseCtx, s.stopReqs = context.WithCancelCause(context.Background())
	s.handler = s.routes()

	s.ln = cfg.Listener
	if s.ln == nil {
		if s.ln, err = net.Listen("tcp", cfg.Addr); err != nil {
			s.stopReqs(nil)
			return nil, fmt.Errorf("kubeletapi: listening on %q: %w", cfg.Addr, err)
		}
	}
	s.http = &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return s.baseCtx },
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		TLSConfig: &tls.Config{
			MinVersion:   tls.VersionTLS12,
			Certificates: []tls.Certificate{cert},
			// Every route requires a client certificate, /healthz included:
			// the API server always presents one, and refusing others in
			// the handshake leaves no route that can forget the check.
			ClientAuth: tls.RequireAndVerifyClientCert,
			ClientCAs:  cfg.ClientCAs,
		},
	}
	return s, nil
}

func servingCert(cfg Config) (tls.Certificate, error) {
	switch {
	case cfg.Certificate != nil && (cfg.CertPEM != nil || cfg.KeyPEM != nil):
		return tls.Certificate{}, errors.New("kubeletapi: set Config.Certificate or CertPEM/KeyPEM, not both")
	case cfg.Certificate != nil:
		return *cfg.Certificate, nil
	case cfg.CertPEM == nil || cfg.KeyPEM == nil:
		return tls.Certificate{}, errors.New("kubeletapi: a serving certificate is required (Config.Certificate or CertPEM and KeyPEM)")
	}
	cert, err := tls.X509KeyPair(cfg.CertPEM, cfg.KeyPEM)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("kubeletapi: loading serving certificate: %w", err)
	}
	return cert, nil
}

// Addr is the address the server listens on.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Handler is the server's HTTP handler, without TLS; for tests.
func (s *Server) Handler() http.Handler { return s.handler }

// Close releases the listener of a server whose Serve was never called.
func (s *Server) Close() error {
	s.mu.Lock()
	served := s.served
	s.mu.Unlock()
	if served {
		return nil
	}
	s.stopReqs(nil)
	return s.ln.Close()
}

// Serve serves HTTPS until ctx is done, then shuts down: it stops
// accepting, lets open requests and sessions (log streams, exec,
// port-forward) finish for up to Config.ShutdownTimeout, then cancels the
// rest and closes their connections. It returns once every handler has
// returned. Serve may be called once.
func (s *Server) Serve(ctx context.Context) error {
	s.mu.Lock()
	if s.served {
		s.mu.Unlock()
		return errors.New("kubeletapi: Serve called twice")
	}
	s.served = true
	s.mu.Unlock()

	addr := s.ln.Addr().String()
	s.log.Info("serving kubelet API", "addr", addr)
	errc := make(chan error, 1)
	go func() { errc <- s.http.ServeTLS(s.ln, "", "") }()

	var serveErr error
	select {
	case err := <-errc:
		errc = nil
		serveErr = fmt.Errorf("kubeletapi: serving on %s: %w", addr, err)
	case <-ctx.Done():
	}

	// Graceful: no new requests; wait for open ones until the deadline.
	s.mu.Lock()
	s.stopping = true
	s.mu.Unlock()
	grace, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
	defer cancel()
	if err := s.http.Shutdown(grace); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		s.log.Warn("shutting down", "err", err)
	}
	done := make(chan struct{})
	go func() { s.inflight.Wait(); close(done) }()
	select {
	case <-done:
	case <-grace.Done():
		// Forced: cancel every request context, so Runtime calls return
		// and their handlers can tell the clients why; then close the
		// connections left, including the upgraded ones that http.Server
		// no longer tracks.
		s.log.Info("shutdown deadline passed; cancelling open sessions")
		s.stopReqs(errShuttingDown)
		select {
		case <-done:
		case <-time.After(reportDelay):
		}
		s.http.Close() //nolint:errcheck // closing anyway
		s.mu.Lock()
		for c := range s.hijacked {
			c.Close() //nolint:errcheck // closing anyway
		}
		s.mu.Unlock()
		<-done
	}
	s.stopReqs(errShuttingDown)
	if errc != nil {
		<-errc // http.ErrServerClosed
	}
	s.log.Info("stopped kubelet API", "addr", addr)
	return serveErr
}

// admit registers a request as in flight, unless the server is stopping.
func (s *Server) admit() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopping {
		return false
	}
	s.inflight.Add(1)
	return true
}

func (s *Server) trackHijacked(c net.Conn) {
	s.mu.Lock()
	s.hijacked[c] = struct{}{}
	s.mu.Unlock()
}

func (s *Server) forgetHijacked(c net.Conn) {
	s.mu.Lock()
	delete(s.hijacked, c)
	s.mu.Unlock()
}

// routes builds the handler. Paths follow the kubelet's; the {uid} forms
// are accepted and the uid ignored (the Runtime names pods by namespace and
// name only, and the API server itself sends the short forms).
func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		io.WriteString(w, "ok") //nolint:errcheck // client gone
	})
	mux.HandleFunc("GET /containerLogs/{namespace}/{pod}/{container}", s.serveContainerLogs)
	for _, m := range []string{"GET", "POST"} {
		mux.HandleFunc(m+" /exec/{namespace}/{pod}/{container}", s.serveExec)
		mux.HandleFunc(m+" /exec/{namespace}/{pod}/{uid}/{container}", s.serveExec)
		mux.HandleFunc(m+" /attach/{namespace}/{pod}/{container}", s.serveAttach)
		mux.HandleFunc(m+" /attach/{namespace}/{pod}/{uid}/{container}", s.serveAttach)
		mux.HandleFunc(m+" /portForward/{namespace}/{pod}", s.servePortForward)
		mux.HandleFunc(m+" /portForward/{namespace}/{pod}/{uid}", s.servePortForward)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !s.admit() {
			http.Error(w, "kubelet API is shutting down", http.StatusServiceUnavailable)
			return
		}
		defer s.inflight.Done()
		rec := &recorder{ResponseWriter: w, srv: s}
		defer rec.forget()
		start := time.Now()
		mux.ServeHTTP(rec, r)
		s.accessLog(r, rec, time.Since(start))
	})
}

// accessLog writes one line per request, at Debug for health checks.
func (s *Server) accessLog(r *http.Request, rec *recorder, d time.Duration) {
	level := slog.LevelInfo
	if r.URL.Path == "/healthz" {
		level = slog.LevelDebug
	}
	if !s.log.Enabled(r.Context(), level) {
		return
	}
	attrs := []slog.Attr{
		slog.String("method", r.Method),
		slog.String("path", r.URL.Path),
		slog.Int("status", rec.status()),
		slog.Duration("duration", d),
		slog.String("src", r.RemoteAddr),
	}
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		attrs = append(attrs, slog.String("client", r.TLS.PeerCertificates[0].Subject.CommonName))
	}
	s.log.LogAttrs(r.Context(), level, "request", attrs...)
}

// httpError answers a request that has not been upgraded and logs why.
func (s *Server) httpError(w http.ResponseWriter, r *http.Request, code int, err error) {
	level := slog.LevelWarn
	if code >= 500 {
		level = slog.LevelError
	}
	s.log.Log(r.Context(), level, "request failed", "path", r.URL.Path, "status", code, "err", err)
	http.Error(w, err.Error(), code)
}

// statusOf maps a Runtime error to an HTTP status.
func statusOf(err error) int {
	if errors.Is(err, ErrNotFound) {
		return http.StatusNotFound
	}
	return http.StatusInternalServerError
}

// find asks the Runtime, if it is a Finder, whether the target exists and
// answers the request if it does not. It returns false if it answered.
func (s *Server) find(w http.ResponseWriter, r *http.Request, namespace, pod, container string) bool {
	f, ok := s.rt.(Finder)
	if !ok {
		return true
	}
	if err := f.Find(r.Context(), namespace, pod, container); err != nil {
		what := fmt.Sprintf("pod %s/%s", namespace, pod)
		if container != "" {
			what = fmt.Sprintf("container %q of pod %s/%s", container, namespace, pod)
		}
		s.httpError(w, r, statusOf(err), fmt.Errorf("%s: %w", what, err))
		return false
	}
	return true
}

// recorder remembers the response status for the access log and registers
// hijacked connections with the server, so a forced shutdown can close
// them. It has no Unwrap on purpose: the streaming libraries must hijack
// through it.
type recorder struct {
	http.ResponseWriter
	srv  *Server
	code int
	conn net.Conn
}

func (r *recorder) WriteHeader(code int) {
	if r.code == 0 {
		r.code = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(p []byte) (int, error) {
	if r.code == 0 {
		r.code = http.StatusOK
	}
	return r.ResponseWriter.Write(p)
}

func (r *recorder) Flush() {
	r.FlushError() //nolint:errcheck // http.Flusher has no error
}

// FlushError is what http.ResponseController.Flush calls.
func (r *recorder) FlushError() error {
	if r.code == 0 {
		r.code = http.StatusOK
	}
	return http.NewResponseController(r.ResponseWriter).Flush()
}

func (r *recorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, rw, err := http.NewResponseController(r.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, fmt.Errorf("hijacking connection: %w", err)
	}
	if r.code == 0 {
		r.code = http.StatusSwitchingProtocols
	}
	r.conn = c
	r.srv.trackHijacked(c)
	return c, rw, nil
}

func (r *recorder) forget() {
	if r.conn != nil {
		r.srv.forgetHijacked(r.conn)
	}
}

func (r *recorder) status() int {
	if r.code == 0 {
		return http.StatusOK
	}
	return r.code
}
