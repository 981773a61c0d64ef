// Package echo is the sample application of the lab and the end-to-end tests:
// a server that answers HTTP/1.1, h2c, gRPC and raw TCP with the name of the
// pod that served the request and what arrived (method, path, host, headers),
// so a test can see which backend it reached and what the mesh changed.
package echo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"

	"github.com/cairnmesh/cairn/integration/apps/echo/echopb"
)

// Config says where the server listens and who it is. A zero port turns that
// protocol off.
type Config struct {
	Pod       string
	Namespace string
	// HTTPPort serves HTTP/1.1 and HTTP/2 without TLS (h2c).
	HTTPPort int
	GRPCPort int
	// TCPPort greets with one line naming the pod, then echoes every byte.
	TCPPort int
	// Address is the IP to bind; empty means all.
	Address string
	Logger  *slog.Logger
}

// Response is the JSON body of every HTTP answer.
type Response struct {
	Pod        string              `json:"pod"`
	Namespace  string              `json:"namespace"`
	Method     string              `json:"method"`
	Path       string              `json:"path"`
	Query      string              `json:"query,omitempty"`
	Host       string              `json:"host"`
	Proto      string              `json:"proto"`
	RemoteAddr string              `json:"remoteAddr"`
	Headers    map[string][]string `json:"headers"`
}

// Handler answers every HTTP request with a Response. Two query parameters
// shape the answer: status=<code> sets the status code and delay=<duration>
// waits before answering (bounded by the request's context).
func Handler(pod, namespace string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		status := http.StatusOK
		if s := r.URL.Query().Get("status"); s != "" {
			code, err := strconv.Atoi(s)
			if err != nil || code < 100 || code > 599 {
				http.Error(w, fmt.Sprintf("echo: status %q is not an HTTP status code", s), http.StatusBadRequest)
				return
			}
			status = code
		}
		if d := r.URL.Query().Get("delay"); d != "" {
			delay, err := time.ParseDuration(d)
			if err != nil || delay < 0 {
				http.Error(w, fmt.Sprintf("echo: delay %q is not a duration", d), http.StatusBadRequest)
				return
			}
			select {
			case <-time.After(delay):
			case <-r.Context().Done():
				return
			}
		}
		// Drain the body so that HTTP/1.1 keep-alive works for POSTs.
		_, _ = io.Copy(io.Discard, r.Body)
		body, err := json.Marshal(Response{
			Pod:        pod,
			Namespace:  namespace,
			Method:     r.Method,
			Path:       r.URL.Path,
			Query:      r.URL.RawQuery,
			Host:       r.Host,
			Proto:      r.Proto,
			RemoteAddr: r.RemoteAddr,
			Headers:    r.Header,
		})
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Echo-Pod", pod)
		w.WriteHeader(status)
		_, _ = w.Write(append(body, '\n'))
	})
}

// GRPCService implements echopb.EchoServer.
type GRPCService struct {
	echopb.UnimplementedEchoServer
	Pod, Namespace string
}

// Echo answers with the message, the serving pod and the metadata received.
func (s *GRPCService) Echo(ctx context.Context, req *echopb.EchoRequest) (*echopb.EchoResponse, error) {
	resp := &echopb.EchoResponse{
		Message:   req.GetMessage(),
		Pod:       s.Pod,
		Namespace: s.Namespace,
		Metadata:  map[string]string{},
	}
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		for k, v := range md {
			resp.Metadata[k] = strings.Join(v, ", ")
		}
	}
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		resp.Peer = p.Addr.String()
	}
	return resp, nil
}

// Greeting is the first line the TCP echo writes on every connection.
func Greeting(pod, namespace string, remote net.Addr) string {
	return fmt.Sprintf("echo pod=%s namespace=%s peer=%s\n", pod, namespace, remote)
}

// ServeTCP greets each connection and then echoes it until the client closes
// its side; it returns when ln is closed.
func ServeTCP(ln net.Listener, pod, namespace string, log *slog.Logger) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		conn, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("accepting TCP: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer conn.Close()
			if _, err := io.WriteString(conn, Greeting(pod, namespace, conn.RemoteAddr())); err != nil {
				log.Debug("tcp greeting failed", "peer", conn.RemoteAddr(), "error", err)
				return
			}
			if _, err := io.Copy(conn, conn); err != nil {
				log.Debug("tcp echo ended", "peer", conn.RemoteAddr(), "error", err)
			}
			if tc, ok := conn.(*net.TCPConn); ok {
				_ = tc.CloseWrite()
			}
		}()
	}
}

// Run serves every configured protocol until ctx is done, then shuts down.
func Run(ctx context.Context, cfg Config) error {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	listen := func(port int) (net.Listener, error) {
		ln, err := net.Listen("tcp", net.JoinHostPort(cfg.Address, strconv.Itoa(port)))
		if err != nil {
			return nil, fmt.Errorf("listening on port %d: %w", port, err)
		}
		return ln, nil
	}

	var (
		closers []func()
		errs    = make(chan error, 3)
		running int
	)
	defer func() {
		for _, c := range closers {
			c()
		}
	}()

	if cfg.HTTPPort != 0 {
		ln, err := listen(cfg.HTTPPort)
		if err != nil {
			return err
		}
		var protocols http.Protocols
		protocols.SetHTTP1(true)
		protocols.SetUnencryptedHTTP2(true)
		srv := &http.Server{
			Handler:           Handler(cfg.Pod, cfg.Namespace),
			Protocols:         &protocols,
			ReadHeaderTimeout: 10 * time.Second,
		}
		closers = append(closers, func() {
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = srv.Shutdown(sctx)
		})
		running++
		go func() {
			if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
				errs <- fmt.Errorf("serving HTTP: %w", err)
				return
			}
			errs <- nil
		}()
		log.Info("serving HTTP/1.1 and h2c", "addr", ln.Addr())
	}
	if cfg.GRPCPort != 0 {
		ln, err := listen(cfg.GRPCPort)
		if err != nil {
			return err
		}
		gs := grpc.NewServer()
		echopb.RegisterEchoServer(gs, &GRPCService{Pod: cfg.Pod, Namespace: cfg.Namespace})
		closers = append(closers, gs.GracefulStop)
		running++
		go func() {
			if err := gs.Serve(ln); err != nil {
				errs <- fmt.Errorf("serving gRPC: %w", err)
				return
			}
			errs <- nil
		}()
		log.Info("serving gRPC", "addr", ln.Addr())
	}
	if cfg.TCPPort != 0 {
		ln, err := listen(cfg.TCPPort)
		if err != nil {
			return err
		}
		closers = append(closers, func() { _ = ln.Close() })
		running++
		go func() { errs <- ServeTCP(ln, cfg.Pod, cfg.Namespace, log) }()
		log.Info("serving TCP echo", "addr", ln.Addr())
	}
	if running == 0 {
		return errors.New("no port configured: set at least one of the HTTP, gRPC and TCP ports")
	}

	select {
	case <-ctx.Done():
		return nil
	case err := <-errs:
		// One server stopped on its own: that is a failure of the app.
		if err == nil {
			err = errors.New("a server stopped unexpectedly")
		}
		return err
	}
}
