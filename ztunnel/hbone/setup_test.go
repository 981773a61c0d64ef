package hbone_test

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/cairnmesh/cairn/internal/pki"
	"github.com/cairnmesh/cairn/internal/spiffe"
	"github.com/cairnmesh/cairn/ztunnel/hbone"
)

const trustDomain = "cluster.local"

var (
	clientID = spiffe.Identity{TrustDomain: trustDomain, Namespace: "shop", ServiceAccount: "frontend"}
	serverID = spiffe.Identity{TrustDomain: trustDomain, Namespace: "shop", ServiceAccount: "reviews"}
	otherID  = spiffe.Identity{TrustDomain: trustDomain, Namespace: "shop", ServiceAccount: "ratings"}
	podIP    = netip.MustParseAddr("127.0.0.1")
)

// TestMain fails the run if any goroutine of this package or of HTTP/2
// outlives the tests: every one must have an owner that ends it.
func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if err := checkGoroutines(10 * time.Second); err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = 1
		}
	}
	os.Exit(code)
}

func checkGoroutines(wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		leaked := leakedGoroutines()
		if len(leaked) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("leaked goroutines:\n\n%s", strings.Join(leaked, "\n\n"))
		}
		time.Sleep(10 * time.Millisecond) // poll interval
	}
}

func leakedGoroutines() []string {
	buf := make([]byte, 4<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "leakedGoroutines") {
			continue
		}
		if strings.Contains(g, "cairn/ztunnel/hbone") || strings.Contains(g, "golang.org/x/net/http2") {
			out = append(out, g)
		}
	}
	return out
}

// eventually polls cond until it holds, failing after a generous bound.
// The bound is a safety net, not a timing target.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// ca is a throwaway certificate authority for one test.
type ca struct {
	ca     *pki.CA
	bundle *x509bundle.Bundle
}

func newCA(t testing.TB) *ca {
	t.Helper()
	root, err := pki.NewRoot(trustDomain, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	b, err := pki.NewBundle(trustDomain, []*x509.Certificate{root.Root()})
	if err != nil {
		t.Fatal(err)
	}
	return &ca{ca: root, bundle: b}
}

func (c *ca) svid(t testing.TB, id spiffe.Identity) *x509svid.SVID {
	t.Helper()
	key, err := pki.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := c.ca.Sign(key.Public(), id, pki.LeafOptions{TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	s, err := pki.NewSVID([]*x509.Certificate{leaf, c.ca.Cert}, key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// certs hands out one SVID per source identity, as the pool's provider.
func (c *ca) certs(t testing.TB) func(spiffe.Identity) (x509svid.Source, error) {
	var mu sync.Mutex
	byID := map[spiffe.Identity]x509svid.Source{}
	return func(id spiffe.Identity) (x509svid.Source, error) {
		mu.Lock()
		defer mu.Unlock()
		if s, ok := byID[id]; ok {
			return s, nil
		}
		s := c.svid(t, id)
		byID[id] = s
		return s, nil
	}
}

// startApp runs a TCP application on loopback; serve handles each
// connection. It is stopped, and its goroutines waited for, at cleanup.
func startApp(t testing.TB, serve func(net.Conn)) netip.AddrPort {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]struct{}{}
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = struct{}{}
			mu.Unlock()
			wg.Go(func() {
				defer c.Close()
				serve(c)
			})
		}
	})
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return l.Addr().(*net.TCPAddr).AddrPort()
}

// echo copies everything back and half-closes when the client has.
func echo(c net.Conn) {
	io.Copy(c, c)
	c.(*net.TCPConn).CloseWrite()
	io.Copy(io.Discard, c)
}

// recorder is an Observer that keeps what it saw.
type recorder struct {
	mu       sync.Mutex
	opened   int
	closed   []hbone.Traffic
	refusals []hbone.Refusal
}

func (r *recorder) Opened(hbone.Connection) {
	r.mu.Lock()
	r.opened++
	r.mu.Unlock()
}

func (r *recorder) Closed(_ hbone.Connection, tr hbone.Traffic) {
	r.mu.Lock()
	r.closed = append(r.closed, tr)
	r.mu.Unlock()
}

func (r *recorder) Refused(f hbone.Refusal) {
	r.mu.Lock()
	r.refusals = append(r.refusals, f)
	r.mu.Unlock()
}

func (r *recorder) Refusals() []hbone.Refusal {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]hbone.Refusal(nil), r.refusals...)
}

func (r *recorder) Closes() []hbone.Traffic {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]hbone.Traffic(nil), r.closed...)
}

// waitRefusal waits for the first refusal and returns it.
func (r *recorder) waitRefusal(t testing.TB) hbone.Refusal {
	t.Helper()
	eventually(t, "a refusal", func() bool { return len(r.Refusals()) > 0 })
	return r.Refusals()[0]
}

// env is a Server for one pod (podIP, identity serverID) in front of an
// application, and a Pool for clientID, all on loopback.
type env struct {
	ca       *ca
	server   *hbone.Server
	hbone    netip.AddrPort // the server's listener
	app      netip.AddrPort // the application
	obs      *recorder
	appDials atomic.Int32 // onward dials by the server
	pool     *hbone.Pool
	dials    atomic.Int32 // TCP dials by the pool
}

// option adjusts an env's configs before anything starts; e.ca exists.
type option func(e *env, s *hbone.ServerConfig, p *hbone.PoolConfig)

func newEnv(t testing.TB, opts ...option) *env {
	t.Helper()
	e := &env{ca: newCA(t), obs: &recorder{}}
	e.app = startApp(t, echo)
	scfg := hbone.ServerConfig{
		Certificate: e.ca.svid(t, serverID),
		Bundle:      e.ca.bundle,
		Addrs:       []netip.Addr{podIP},
		Observer:    e.obs,
		Logger:      testLogger(t),
	}
	var d net.Dialer
	pcfg := hbone.PoolConfig{
		Certificate: e.ca.certs(t),
		Bundle:      e.ca.bundle,
		Logger:      testLogger(t),
		Dialer: func(ctx context.Context, network, addr string) (net.Conn, error) {
			e.dials.Add(1)
			return d.DialContext(ctx, network, addr)
		},
	}
	for _, o := range opts {
		o(e, &scfg, &pcfg)
	}
	dial := scfg.Dial
	if dial == nil {
		dial = d.DialContext
	}
	scfg.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		e.appDials.Add(1)
		return dial(ctx, network, addr)
	}
	e.server, e.hbone = startServer(t, scfg)
	pool, err := hbone.NewPool(pcfg)
	if err != nil {
		t.Fatal(err)
	}
	e.pool = pool
	t.Cleanup(func() { pool.Close() })
	return e
}

// startServer serves cfg on a loopback listener until cleanup.
func startServer(t testing.TB, cfg hbone.ServerConfig) (*hbone.Server, netip.AddrPort) {
	t.Helper()
	s, err := hbone.NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(l) }()
	t.Cleanup(func() {
		s.Close()
		if err := <-served; !errors.Is(err, hbone.ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	})
	return s, l.Addr().(*net.TCPAddr).AddrPort()
}

func (e *env) key() hbone.Key {
	return hbone.Key{Source: clientID, Destination: serverID, Address: e.hbone}
}

func (e *env) dial(t testing.TB) *hbone.Tunnel {
	t.Helper()
	tun, err := e.pool.Dial(context.Background(), e.key(), e.app)
	if err != nil {
		t.Fatal(err)
	}
	return tun
}

// testLogger writes through t.Log when -v is given, so failures come with
// the server's log lines; otherwise it discards.
func testLogger(t testing.TB) *slog.Logger {
	if !testing.Verbose() {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// roundTrip writes msg, half-closes and reads until EOF.
func roundTrip(t testing.TB, c *hbone.Tunnel, msg []byte) []byte {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(msg)
		if err == nil {
			err = c.CloseWrite()
		}
		errc <- err
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("reading: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("writing: %v", err)
	}
	return got
}
