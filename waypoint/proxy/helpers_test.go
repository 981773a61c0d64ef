package proxy_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sync"
	"testing"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/proto"

	"github.com/cairnmesh/cairn/internal/spiffe"
	"github.com/cairnmesh/cairn/internal/xdsclient"
	"github.com/cairnmesh/cairn/waypoint/proxy"
	"github.com/cairnmesh/cairn/waypoint/state"
	"github.com/cairnmesh/cairn/waypoint/state/envoytest"
	"github.com/cairnmesh/cairn/waypoint/upstream"
)

var (
	vip    = netip.MustParseAddrPort("10.96.0.10:80")
	client = proxy.Peer{Identity: spiffe.Identity{TrustDomain: "cluster.local", Namespace: "client-ns", ServiceAccount: "client"}}
)

type lockedRand struct {
	mu sync.Mutex
	r  *rand.Rand
}

func (l *lockedRand) Uint64N(n uint64) uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.r.Uint64N(n)
}

// waypoint is a proxy.Server on loopback listeners, one per destination,
// each connection handed over as the HBONE server would hand a tunnel.
type waypoint struct {
	t      testing.TB
	store  *state.Store
	pool   *upstream.Pool
	srv    *proxy.Server
	mu     sync.Mutex
	dialed []string // identities the dialer was asked for
}

func newWaypoint(t testing.TB, tweak ...func(*proxy.Config)) *waypoint {
	t.Helper()
	w := &waypoint{t: t}
	w.store = state.NewStore(state.StoreConfig{})
	rnd := &lockedRand{r: rand.New(rand.NewPCG(7, 11))}
	pool, err := upstream.NewPool(upstream.Config{
		Rand: rnd,
		Dialer: upstream.DialerFunc(func(ctx context.Context, ep state.Endpoint) (net.Conn, error) {
			if ep.Identity == "" {
				return nil, errors.New("endpoint without an HBONE identity")
			}
			w.mu.Lock()
			w.dialed = append(w.dialed, ep.Identity)
			w.mu.Unlock()
			var d net.Dialer
			return d.DialContext(ctx, "tcp", ep.Address.String())
		}),
	})
	if err != nil {
		t.Fatal(err)
	}
	w.pool = pool
	cfg := proxy.Config{State: w.store, Upstream: pool, Rand: rnd}
	for _, f := range tweak {
		f(&cfg)
	}
	srv, err := proxy.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	w.srv = srv
	t.Cleanup(func() {
		_ = srv.Close()
		pool.Close()
	})
	return w
}

// apply applies resources, one update per type; any rejection fails.
func (w *waypoint) apply(ms ...proto.Message) {
	w.t.Helper()
	byType := map[string]map[string]proto.Message{}
	order := []string{}
	for _, m := range ms {
		url := xdsclient.TypeURLOf(m)
		if byType[url] == nil {
			byType[url] = map[string]proto.Message{}
			order = append(order, url)
		}
		byType[url][name(m)] = m
	}
	for _, url := range order {
		if err := w.store.Apply(xdsclient.Update{TypeURL: url, Resources: byType[url]}); err != nil {
			w.t.Fatalf("applying %s: %v", url, err)
		}
	}
}

func name(m proto.Message) string {
	type named interface{ GetName() string }
	type cla interface{ GetClusterName() string }
	if n, ok := m.(named); ok {
		return n.GetName()
	}
	return m.(cla).GetClusterName()
}

// routes makes vip an HTTP destination (codec) with these routes.
func (w *waypoint) routes(codec hcmv3.HttpConnectionManager_CodecType, routes ...*routev3.Route) {
	w.t.Helper()
	w.apply(envoytest.Listener("waypoint", envoytest.HTTPChain(vip, "r", codec, "websocket")))
	w.apply(envoytest.Routes("r", routes...))
}

// cluster adds a cluster with the backends as its endpoints.
func (w *waypoint) cluster(name string, p envoytest.Protocol, backends ...netip.AddrPort) {
	w.t.Helper()
	var eps []envoytest.Endpoint
	for _, b := range backends {
		eps = append(eps, envoytest.Endpoint{Addr: b, Identity: "spiffe://cluster.local/ns/backend/sa/" + name})
	}
	w.apply(envoytest.Cluster(name, p))
	w.apply(envoytest.Assignment(name, eps...))
}

// listen returns the address of a listener whose connections are tunnels
// to dst.
func (w *waypoint) listen(dst netip.AddrPort) string {
	w.t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		w.t.Fatal(err)
	}
	var wg sync.WaitGroup
	w.t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if err := w.srv.ServeConn(c, dst, client); err != nil {
				c.Close()
			}
		}
	}()
	return ln.Addr().String()
}

// client returns an HTTP/1.1 client whose every connection is a tunnel
// to dst; it does not follow redirects.
func (w *waypoint) client(dst netip.AddrPort) *http.Client {
	addr := w.listen(dst)
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", addr)
		},
		DisableCompression: true,
	}
	w.t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

// h2client is client with HTTP/2 prior knowledge.
func (w *waypoint) h2client(dst netip.AddrPort) *http.Client {
	c := w.client(dst)
	tr := c.Transport.(*http.Transport)
	tr.Protocols = new(http.Protocols)
	tr.Protocols.SetUnencryptedHTTP2(true)
	return c
}

// echoReply is what a test backend answers: what it received.
type echoReply struct {
	Backend string
	Method  string
	URI     string
	Host    string
	Proto   string
	Header  http.Header
	Body    string
}

// backend starts an HTTP/1.1 and h2c backend that answers echoReply (or
// calls h first, which may answer instead by returning true).
func backend(t testing.TB, name string, h func(w http.ResponseWriter, r *http.Request) bool) netip.AddrPort {
	t.Helper()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if h != nil && h(w, r) {
			return
		}
		body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		w.Header().Set("X-Backend", name)
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(echoReply{
			Backend: name, Method: r.Method, URI: r.RequestURI, Host: r.Host, Proto: r.Proto,
			Header: r.Header, Body: string(body),
		})
	}))
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetHTTP1(true)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	srv.Start()
	t.Cleanup(srv.Close)
	return netip.MustParseAddrPort(srv.Listener.Addr().String())
}

func get(t testing.TB, c *http.Client, method, url string, body io.Reader, header ...string) (*http.Response, echoReply) {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Add(header[i], header[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the body: %v", method, url, err)
	}
	var er echoReply
	if resp.Header.Get("Content-Type") == "application/json" {
		if err := json.Unmarshal(raw, &er); err != nil {
			t.Fatalf("decoding %q: %v", raw, err)
		}
	} else {
		er.Body = string(raw)
	}
	return resp, er
}
