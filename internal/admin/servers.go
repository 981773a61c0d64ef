package admin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"
)

// DefaultIdleTimeout closes the operator endpoints' keep-alive connections
// that send no request for this long.
const DefaultIdleTimeout = 2 * time.Minute

// headerTimeout bounds how long a client may take to send a request's
// headers.
const headerTimeout = 10 * time.Second

// Endpoint is one HTTP server of a proxy.
type Endpoint struct {
	Name string
	// Addr is listened on with SO_REUSEPORT, unless Listener is set (a
	// socket the caller opened, such as a Unix socket).
	Addr     string
	Listener net.Listener
	Handler  http.Handler
	// WriteTimeout bounds writing a response: an endpoint that answers
	// anyone on the node's network sets it, so that a client that stops
	// reading does not hold a goroutine and its buffers. 0: none.
	WriteTimeout time.Duration
	// IdleTimeout closes keep-alive connections idle this long. 0: none
	// (net/http's default).
	IdleTimeout time.Duration
}

// Servers are listening endpoints, ready to serve.
type Servers struct {
	list []namedServer
}

type namedServer struct {
	name string
	ln   net.Listener
	srv  *http.Server
}

// Listen opens every endpoint's listener. On an error it closes those it
// opened, and the callers' too.
func Listen(ctx context.Context, eps []Endpoint) (*Servers, error) {
	s := &Servers{}
	for _, ep := range eps {
		ln := ep.Listener
		if ln == nil {
			var err error
			if ln, err = ListenReusePort(ctx, ep.Addr); err != nil {
				s.closeListeners()
				for _, rest := range eps {
					if rest.Listener != nil {
						_ = rest.Listener.Close()
					}
				}
				return nil, fmt.Errorf("%s server: %w", ep.Name, err)
			}
		}
		s.list = append(s.list, namedServer{name: ep.Name, ln: ln, srv: &http.Server{
			Handler: ep.Handler, ReadHeaderTimeout: headerTimeout,
			WriteTimeout: ep.WriteTimeout, IdleTimeout: ep.IdleTimeout,
		}})
	}
	return s, nil
}

// Serve serves every endpoint in g until Close.
func (s *Servers) Serve(g *errgroup.Group) {
	for _, ns := range s.list {
		g.Go(func() error {
			if err := ns.srv.Serve(ns.ln); !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("%s server: %w", ns.name, err)
			}
			return nil
		})
	}
}

// Close closes every server and its connections; Serve's goroutines return.
func (s *Servers) Close() {
	for _, ns := range s.list {
		_ = ns.srv.Close()
		_ = ns.ln.Close() // in case Serve never ran
	}
}

func (s *Servers) closeListeners() {
	for _, ns := range s.list {
		_ = ns.ln.Close()
	}
}

// ListenReusePort listens on TCP with SO_REUSEPORT: during a rolling update
// the new proxy (host network) binds the node's ports while the old one
// still has them.
func ListenReusePort(ctx context.Context, addr string) (net.Listener, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		}); err != nil {
			return err
		}
		return serr
	}}
	return lc.Listen(ctx, "tcp", addr)
}
