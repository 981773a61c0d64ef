package proxy_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"golang.org/x/net/http2"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/cairnmesh/cairn/waypoint/proxy"
	"github.com/cairnmesh/cairn/waypoint/state/envoytest"
)

const url = "http://echo.default.svc.cluster.local"

// TestForwardsWithHeaderMutations: a request goes to the route's cluster
// over a connection made for the endpoint's identity, with the route's
// request header mutations; the client sees the response mutations.
func TestForwardsWithHeaderMutations(t *testing.T) {
	w := newWaypoint(t)
	b := backend(t, "echo", func(rw http.ResponseWriter, _ *http.Request) bool {
		rw.Header().Set("X-Backend-Secret", "s")
		return false
	})
	r := envoytest.Prefix("/", "echo")
	r.RequestHeadersToAdd = []*corev3.HeaderValueOption{envoytest.Set("x-set", "1"), envoytest.Add("x-add", "2")}
	r.RequestHeadersToRemove = []string{"x-remove"}
	r.ResponseHeadersToAdd = []*corev3.HeaderValueOption{envoytest.Set("x-resp", "r")}
	r.ResponseHeadersToRemove = []string{"x-backend-secret"}
	w.cluster("echo", envoytest.HTTP1, b)
	w.routes(hcmv3.HttpConnectionManager_AUTO, r)

	c := w.client(vip)
	resp, got := get(t, c, "GET", url+"/a?b=c", nil, "x-set", "old", "x-add", "1", "x-remove", "gone")
	if resp.StatusCode != 200 || got.Backend != "echo" || got.URI != "/a?b=c" {
		t.Fatalf("status %d, backend %q, URI %q", resp.StatusCode, got.Backend, got.URI)
	}
	if v := got.Header.Values("X-Set"); len(v) != 1 || v[0] != "1" {
		t.Errorf("X-Set %v, want [1]", v)
	}
	if v := got.Header.Values("X-Add"); len(v) != 2 || v[0] != "1" || v[1] != "2" {
		t.Errorf("X-Add %v, want [1 2]", v)
	}
	if v := got.Header.Values("X-Remove"); len(v) != 0 {
		t.Errorf("X-Remove %v, want none", v)
	}
	if v := got.Header.Values("X-Forwarded-For"); len(v) != 0 {
		t.Errorf("X-Forwarded-For %v added", v)
	}
	if resp.Header.Get("X-Resp") != "r" || resp.Header.Get("X-Backend-Secret") != "" {
		t.Errorf("response headers %v", resp.Header)
	}
	_, got = get(t, c, "GET", url+"/?a=1;b=2", nil, "x-forwarded-for", "192.0.2.1", "forwarded", "for=192.0.2.1")
	if got.Header.Get("X-Forwarded-For") != "192.0.2.1" || got.Header.Get("Forwarded") != "for=192.0.2.1" {
		t.Errorf("the client's forwarding headers became %q, %q", got.Header.Values("X-Forwarded-For"), got.Header.Values("Forwarded"))
	}
	if got.URI != "/?a=1;b=2" {
		t.Errorf("the query became %q", got.URI)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.dialed) == 0 || w.dialed[0] != "spiffe://cluster.local/ns/backend/sa/echo" {
		t.Errorf("dialed %v, want the endpoint's identity", w.dialed)
	}
}

// TestWeightedBackendsPerRequest: a 90/10 split is chosen for each request
// on one connection; over 1000 requests each side stays within 4 sigma.
func TestWeightedBackendsPerRequest(t *testing.T) {
	w := newWaypoint(t)
	w.cluster("v1", envoytest.HTTP1, backend(t, "v1", nil))
	w.cluster("v2", envoytest.HTTP1, backend(t, "v2", nil))
	w.routes(hcmv3.HttpConnectionManager_AUTO, envoytest.Weighted("/", "v1", 90, "v2", 10))
	c := w.client(vip)
	counts := map[string]int{}
	const n = 1000
	for range n {
		_, got := get(t, c, "GET", url+"/", nil)
		counts[got.Backend]++
	}
	sigma := math.Sqrt(n * 0.9 * 0.1)
	if math.Abs(float64(counts["v1"])-900) > 4*sigma || counts["v1"]+counts["v2"] != n {
		t.Errorf("counts %v, want 900/100 ± %.0f", counts, 4*sigma)
	}
}

// TestLocalReplies: redirects, direct responses and the waypoint's own
// errors, as a client sees them.
func TestLocalReplies(t *testing.T) {
	w := newWaypoint(t)
	redirect := envoytest.Prefix("/redirect", "unused")
	redirect.Action = &routev3.Route_Redirect{Redirect: &routev3.RedirectAction{
		HostRedirect: "example.org", ResponseCode: routev3.RedirectAction_FOUND,
	}}
	redirect.ResponseHeadersToAdd = []*corev3.HeaderValueOption{envoytest.Set("x-resp", "r")}
	direct := envoytest.Prefix("/direct", "unused")
	direct.Action = &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{
		Status: 500, Body: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: "backend not resolved"}},
	}}
	notFound := envoytest.Prefix("/missing-cluster", "nope")
	notFound404 := envoytest.Prefix("/missing-404", "nope")
	notFound404.GetRoute().ClusterNotFoundResponseCode = routev3.RouteAction_NOT_FOUND
	w.apply(envoytest.Cluster("empty", envoytest.HTTP1), envoytest.Assignment("empty"))
	w.routes(hcmv3.HttpConnectionManager_AUTO, redirect, direct, notFound, notFound404, envoytest.Prefix("/empty", "empty"))
	c := w.client(vip)
	tests := []struct {
		path   string
		status int
		body   string
	}{
		{"/redirect/x", 302, ""},
		{"/direct", 500, "backend not resolved"},
		{"/missing-cluster", 503, ""},
		{"/missing-404", 404, ""},
		{"/empty", 503, "no healthy upstream"},
		{"/no-route", 404, ""},
	}
	for _, tc := range tests {
		resp, got := get(t, c, "GET", url+tc.path, nil)
		if resp.StatusCode != tc.status || got.Body != tc.body {
			t.Errorf("%s: %d %q, want %d %q", tc.path, resp.StatusCode, got.Body, tc.status, tc.body)
		}
		if tc.path == "/redirect/x" {
			if loc := resp.Header.Get("Location"); loc != "http://example.org/redirect/x" {
				t.Errorf("Location %q", loc)
			}
			if resp.Header.Get("X-Resp") != "r" {
				t.Error("response header mutation missing on the redirect")
			}
		}
	}
	// A destination the listener has no chain for is refused at hand-over.
	other := netip.MustParseAddrPort("10.96.0.99:80")
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if err := w.srv.ServeConn(a, other, client); !errors.Is(err, proxy.ErrNoChain) {
		t.Errorf("ServeConn to an unknown destination = %v, want ErrNoChain", err)
	}
}

// TestRewritesReachTheBackend: the path and Host the backend sees.
func TestRewritesReachTheBackend(t *testing.T) {
	w := newWaypoint(t)
	w.cluster("echo", envoytest.HTTP1, backend(t, "echo", nil))
	r := envoytest.Prefix("/prefix", "echo")
	r.GetRoute().PrefixRewrite = "/rewritten"
	r.GetRoute().HostRewriteSpecifier = &routev3.RouteAction_HostRewriteLiteral{HostRewriteLiteral: "new.example"}
	w.routes(hcmv3.HttpConnectionManager_AUTO, r)
	_, got := get(t, w.client(vip), "GET", url+"/prefix/one?x=%2F", nil)
	if got.URI != "/rewritten/one?x=%2F" || got.Host != "new.example" {
		t.Errorf("backend saw %q host %q", got.URI, got.Host)
	}
}

// TestRouteTimeout: a backend slower than the route timeout gets the
// client a 504 at the timeout.
func TestRouteTimeout(t *testing.T) {
	w := newWaypoint(t)
	w.cluster("slow", envoytest.HTTP1, backend(t, "slow", func(_ http.ResponseWriter, r *http.Request) bool {
		select {
		case <-r.Context().Done():
		case <-time.After(10 * time.Second):
		}
		return false
	}))
	r := envoytest.Prefix("/", "slow")
	r.GetRoute().Timeout = durationpb.New(200 * time.Millisecond)
	w.routes(hcmv3.HttpConnectionManager_AUTO, r)
	start := time.Now()
	resp, got := get(t, w.client(vip), "GET", url+"/", nil)
	if resp.StatusCode != 504 || got.Body != "upstream request timeout" {
		t.Errorf("%d %q, want 504", resp.StatusCode, got.Body)
	}
	if time.Since(start) > 8*time.Second {
		t.Errorf("the timeout did not cut the request short")
	}
}

// TestRetryOn5xx: with retry_on 5xx, a request that an endpoint answers
// 503 is retried on another endpoint, body and all.
func TestRetryOn5xx(t *testing.T) {
	w := newWaypoint(t)
	var bad atomic.Int32
	failing := backend(t, "failing", func(rw http.ResponseWriter, r *http.Request) bool {
		_, _ = io.Copy(io.Discard, r.Body)
		bad.Add(1)
		rw.WriteHeader(503)
		return true
	})
	w.cluster("echo", envoytest.HTTP1, failing, backend(t, "good", nil))
	r := envoytest.Prefix("/", "echo")
	r.GetRoute().RetryPolicy = &routev3.RetryPolicy{RetryOn: "5xx", NumRetries: wrapperspb.UInt32(2),
		RetryBackOff: &routev3.RetryPolicy_RetryBackOff{BaseInterval: durationpb.New(time.Millisecond)}}
	w.routes(hcmv3.HttpConnectionManager_AUTO, r)
	c := w.client(vip)
	for i := range 20 {
		resp, got := get(t, c, "POST", url+"/", strings.NewReader(fmt.Sprintf("body-%d", i)))
		if resp.StatusCode != 200 || got.Body != fmt.Sprintf("body-%d", i) {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, got.Body)
		}
	}
	if bad.Load() == 0 {
		t.Error("the failing endpoint was never tried: the retry was not exercised")
	}
	// Without the policy, the 503s reach the client.
	r.GetRoute().RetryPolicy = nil
	w.routes(hcmv3.HttpConnectionManager_AUTO, r)
	failures := 0
	for range 20 {
		if resp, _ := get(t, c, "GET", url+"/", nil); resp.StatusCode == 503 {
			failures++
		}
	}
	if failures == 0 {
		t.Error("no 503 without a retry policy: the test cannot tell retries apart")
	}
}

// TestPerTryTimeoutRetries: an endpoint that hangs costs one per-try
// timeout, then the retry goes to the other endpoint.
func TestPerTryTimeoutRetries(t *testing.T) {
	w := newWaypoint(t)
	hang := backend(t, "hang", func(_ http.ResponseWriter, r *http.Request) bool {
		<-r.Context().Done()
		return true
	})
	w.cluster("echo", envoytest.HTTP1, hang, backend(t, "good", nil))
	r := envoytest.Prefix("/", "echo")
	r.GetRoute().RetryPolicy = &routev3.RetryPolicy{RetryOn: "5xx", NumRetries: wrapperspb.UInt32(1),
		PerTryTimeout: durationpb.New(100 * time.Millisecond),
		RetryBackOff:  &routev3.RetryPolicy_RetryBackOff{BaseInterval: durationpb.New(time.Millisecond)}}
	w.routes(hcmv3.HttpConnectionManager_AUTO, r)
	c := w.client(vip)
	for range 10 {
		if resp, got := get(t, c, "GET", url+"/", nil); resp.StatusCode != 200 || got.Backend != "good" {
			t.Fatalf("%d from %q", resp.StatusCode, got.Backend)
		}
	}
}

// TestMirror: a mirror gets a copy (body included, Host with -shadow), and
// a mirror that never answers neither slows the requests nor piles up:
// beyond the queue, copies are dropped.
func TestMirror(t *testing.T) {
	release := make(chan struct{})
	w := newWaypoint(t, func(c *proxy.Config) {
		c.Limits.MirrorQueue = 2
		c.Limits.MirrorWorkers = 1
		c.Limits.MirrorTimeout = 30 * time.Second
	})
	copies := make(chan echoReply, 10)
	mirror := backend(t, "mirror", func(rw http.ResponseWriter, r *http.Request) bool {
		body, _ := io.ReadAll(r.Body)
		if r.URL.Path == "/hang" {
			select {
			case <-release:
			case <-r.Context().Done():
			}
			return true
		}
		copies <- echoReply{Host: r.Host, URI: r.RequestURI, Body: string(body)}
		return true
	})
	t.Cleanup(func() { close(release) }) // before the backends close: they wait for their handlers
	w.cluster("echo", envoytest.HTTP1, backend(t, "echo", nil))
	w.cluster("mirror", envoytest.HTTP1, mirror)
	r := envoytest.Prefix("/", "echo")
	r.GetRoute().RequestMirrorPolicies = []*routev3.RouteAction_RequestMirrorPolicy{{Cluster: "mirror"}}
	w.routes(hcmv3.HttpConnectionManager_AUTO, r)
	c := w.client(vip)

	resp, got := get(t, c, "POST", url+"/copy", strings.NewReader("payload"))
	if resp.StatusCode != 200 || got.Backend != "echo" {
		t.Fatalf("%d from %q", resp.StatusCode, got.Backend)
	}
	select {
	case m := <-copies:
		if m.Host != "echo.default.svc.cluster.local-shadow" || m.URI != "/copy" || m.Body != "payload" {
			t.Errorf("mirror got %+v", m)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the mirror got no copy")
	}

	start := time.Now()
	for range 20 {
		if resp, _ := get(t, c, "GET", url+"/hang", nil); resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("20 requests took %v with a hanging mirror", d)
	}
	if _, dropped := w.srv.MirrorStats(); dropped == 0 {
		t.Error("no mirror copy was dropped: the queue is not bounded")
	}
}

// TestLeastRequestAvoidsTheBusyEndpoint: with one endpoint holding every
// request it gets and another answering at once, least request sends
// almost everything to the idle one (round robin would split evenly).
func TestLeastRequestAvoidsTheBusyEndpoint(t *testing.T) {
	release := make(chan struct{})
	w := newWaypoint(t)
	var held atomic.Int32
	busy := backend(t, "busy", func(_ http.ResponseWriter, r *http.Request) bool {
		held.Add(1)
		select {
		case <-release:
		case <-r.Context().Done():
		}
		return false
	})
	w.cluster("echo", envoytest.HTTP1, busy, backend(t, "idle", nil))
	w.routes(hcmv3.HttpConnectionManager_AUTO, envoytest.Prefix("/", "echo"))
	c := w.client(vip)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer close(release)
	const n = 40
	idle := 0
	for range n {
		done := make(chan string, 1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := c.Get(url + "/")
			if err != nil {
				done <- "error"
				return
			}
			resp.Body.Close()
			done <- resp.Header.Get("X-Backend")
		}()
		before := held.Load()
		// Either the idle endpoint answers, or the busy one took it.
		deadline := time.After(10 * time.Second)
	wait:
		for {
			select {
			case b := <-done:
				if b == "idle" {
					idle++
				}
				break wait
			case <-deadline:
				t.Fatal("request neither answered nor held")
			case <-time.After(5 * time.Millisecond):
				if held.Load() > before {
					break wait
				}
			}
		}
	}
	if busyGot := n - idle; busyGot > 4 {
		t.Errorf("the busy endpoint got %d of %d requests, want at most 4", busyGot, n)
	}
}

// TestLimits: oversized headers and request lines, malformed requests and
// idle connections are answered or closed, never crash the waypoint.
func TestLimits(t *testing.T) {
	w := newWaypoint(t, func(c *proxy.Config) {
		c.Limits.MaxHeaderBytes = 8 << 10
		c.Limits.MaxRequestLineBytes = 2 << 10
		c.Limits.IdleTimeout = 300 * time.Millisecond
	})
	w.cluster("echo", envoytest.HTTP1, backend(t, "echo", nil))
	w.routes(hcmv3.HttpConnectionManager_HTTP1, envoytest.Prefix("/", "echo"))
	addr := w.listen(vip)
	raw := func(req string) string {
		t.Helper()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(c, req); err != nil {
			t.Fatal(err)
		}
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			t.Fatalf("reading the status line: %v", err)
		}
		return strings.TrimSpace(line)
	}
	big := strings.Repeat("a", 16<<10) // net/http allows 4 KiB over MaxHeaderBytes
	if got := raw("GET / HTTP/1.1\r\nHost: echo\r\nX-Big: " + big + "\r\n\r\n"); !strings.Contains(got, " 431 ") {
		t.Errorf("oversized header: %q, want 431", got)
	}
	if got := raw("GET /" + strings.Repeat("p", 3<<10) + " HTTP/1.1\r\nHost: echo\r\n\r\n"); !strings.Contains(got, " 414 ") {
		t.Errorf("long request line: %q, want 414", got)
	}
	if got := raw("GARBAGE\r\n\r\n"); !strings.Contains(got, " 400 ") {
		t.Errorf("malformed request: %q, want 400", got)
	}
	if got := raw("GET / HTTP/1.1\r\nHost: echo\r\n\r\n"); !strings.Contains(got, " 200 ") {
		t.Errorf("a valid request after the bad ones: %q", got)
	}
	// An idle connection is closed after IdleTimeout.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, _ = io.WriteString(c, "GET / HTTP/1.1\r\nHost: echo\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	start := time.Now()
	if _, err := br.ReadByte(); err != io.EOF {
		t.Errorf("idle connection: read %v, want EOF", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("idle connection closed after %v", d)
	}
}

// TestLargeBodyIsStreamed: the backend receives the start of a 20 MiB
// upload before the client has sent the rest (nothing buffers the whole
// body), and all of it arrives.
func TestLargeBodyIsStreamed(t *testing.T) {
	w := newWaypoint(t)
	started := make(chan struct{})
	var once sync.Once
	w.cluster("echo", envoytest.HTTP1, backend(t, "sink", func(rw http.ResponseWriter, r *http.Request) bool {
		buf := make([]byte, 64<<10)
		total := 0
		for {
			n, err := r.Body.Read(buf)
			total += n
			if total >= 1<<20 {
				once.Do(func() { close(started) })
			}
			if err != nil {
				break
			}
		}
		fmt.Fprint(rw, total)
		return true
	}))
	w.routes(hcmv3.HttpConnectionManager_AUTO, envoytest.Prefix("/", "echo"))
	pr, pw := io.Pipe()
	go func() {
		chunk := bytes.Repeat([]byte("x"), 1<<20)
		_, _ = pw.Write(chunk)
		select {
		case <-started:
		case <-time.After(20 * time.Second):
			pw.CloseWithError(fmt.Errorf("the backend did not see the first MiB before the rest was sent"))
			return
		}
		for range 19 {
			if _, err := pw.Write(chunk); err != nil {
				return
			}
		}
		pw.Close()
	}()
	resp, got := get(t, w.client(vip), "POST", url+"/upload", pr)
	if resp.StatusCode != 200 || got.Body != fmt.Sprint(20<<20) {
		t.Errorf("%d %q, want all %d bytes", resp.StatusCode, got.Body, 20<<20)
	}
}

// TestHTTP2BothWays: an h2c client through an HTTP/2 chain to an h2c
// cluster stays HTTP/2 end to end; "use downstream" follows the client.
func TestHTTP2BothWays(t *testing.T) {
	w := newWaypoint(t)
	b := backend(t, "echo", nil)
	w.cluster("h2", envoytest.HTTP2, b)
	w.cluster("down", envoytest.Downstream, b)
	w.routes(hcmv3.HttpConnectionManager_AUTO, envoytest.Prefix("/h2", "h2"), envoytest.Prefix("/down", "down"))
	h2 := w.h2client(vip)
	h1 := w.client(vip)
	for _, tc := range []struct {
		c         *http.Client
		path      string
		client    string
		upstream  string
		clientTag string
	}{
		{h2, "/h2", "HTTP/2.0", "HTTP/2.0", "h2c"},
		{h1, "/h2", "HTTP/1.1", "HTTP/2.0", "h1"},
		{h2, "/down", "HTTP/2.0", "HTTP/2.0", "h2c"},
		{h1, "/down", "HTTP/1.1", "HTTP/1.1", "h1"},
	} {
		resp, got := get(t, tc.c, "GET", url+tc.path, nil)
		if resp.Proto != tc.client || got.Proto != tc.upstream {
			t.Errorf("%s %s: client %s upstream %s, want %s %s", tc.clientTag, tc.path, resp.Proto, got.Proto, tc.client, tc.upstream)
		}
	}
}

// TestTCPChain: a tcp_proxy chain carries bytes both ways.
func TestTCPChain(t *testing.T) {
	w := newWaypoint(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = io.Copy(c, c)
	}()
	tcpDst := netip.MustParseAddrPort("10.96.0.10:9090")
	w.cluster("tcp", envoytest.HTTP1, netip.MustParseAddrPort(ln.Addr().String()))
	w.apply(envoytest.Listener("waypoint", envoytest.TCPChain(tcpDst, "tcp")))
	c, err := net.Dial("tcp", w.listen(tcpDst))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "ping"); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Errorf("read %q, %v", buf, err)
	}
}

// TestConfigChangeAppliesToOpenConnections: a new route applies to the
// next request on a connection opened before it.
func TestConfigChangeAppliesToOpenConnections(t *testing.T) {
	w := newWaypoint(t)
	w.cluster("v1", envoytest.HTTP1, backend(t, "v1", nil))
	w.cluster("v2", envoytest.HTTP1, backend(t, "v2", nil))
	w.routes(hcmv3.HttpConnectionManager_AUTO, envoytest.Prefix("/", "v1"))
	c := w.client(vip)
	if _, got := get(t, c, "GET", url+"/", nil); got.Backend != "v1" {
		t.Fatalf("backend %q", got.Backend)
	}
	w.apply(envoytest.Routes("r", envoytest.Prefix("/", "v2")))
	if _, got := get(t, c, "GET", url+"/", nil); got.Backend != "v2" {
		t.Errorf("after the change: backend %q, want v2", got.Backend)
	}
}

func BenchmarkRequestPath(b *testing.B) {
	w := newWaypoint(b)
	payload := bytes.Repeat([]byte("x"), 1024)
	w.cluster("echo", envoytest.HTTP1, backend(b, "echo", func(rw http.ResponseWriter, _ *http.Request) bool {
		_, _ = rw.Write(payload)
		return true
	}))
	w.routes(hcmv3.HttpConnectionManager_HTTP1, envoytest.Weighted("/", "echo", 1), envoytest.Prefix("/", "echo"))
	c := w.client(vip)
	req, err := http.NewRequestWithContext(context.Background(), "GET", url+"/bench", nil)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		resp, err := c.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			b.Fatal(resp.Status)
		}
	}
}

// TestHTTP2StreamLimitIsAdvertised: an HTTP/2 client is told how many
// requests it may have in flight on the connection (--max-concurrent-streams).
func TestHTTP2StreamLimitIsAdvertised(t *testing.T) {
	w := newWaypoint(t, func(c *proxy.Config) { c.Limits.MaxConcurrentStreams = 3 })
	w.cluster("echo", envoytest.HTTP2, backend(t, "echo", nil))
	w.routes(hcmv3.HttpConnectionManager_HTTP2, envoytest.Prefix("/", "echo"))
	c, err := net.Dial("tcp", w.listen(vip))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(c, c)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("no SETTINGS from the server: %v", err)
		}
		sf, ok := f.(*http2.SettingsFrame)
		if !ok || sf.IsAck() {
			continue
		}
		v, ok := sf.Value(http2.SettingMaxConcurrentStreams)
		if !ok || v != 3 {
			t.Errorf("SETTINGS_MAX_CONCURRENT_STREAMS = %d (sent %v), want 3", v, ok)
		}
		return
	}
}

// TestSplitHeaderMutations: a backend's own header mutations (Gateway API
// filters on a backendRef) apply to the requests that split sends it,
// before the route's.
func TestSplitHeaderMutations(t *testing.T) {
	w := newWaypoint(t)
	w.cluster("v1", envoytest.HTTP1, backend(t, "v1", nil))
	r := envoytest.Weighted("/", "v1", 1)
	cw := r.GetRoute().GetWeightedClusters().GetClusters()[0]
	cw.RequestHeadersToAdd = []*corev3.HeaderValueOption{envoytest.Set("x-split", "split"), envoytest.Add("x-both", "split")}
	cw.ResponseHeadersToAdd = []*corev3.HeaderValueOption{envoytest.Set("x-split-resp", "1")}
	r.RequestHeadersToAdd = []*corev3.HeaderValueOption{envoytest.Add("x-both", "route")}
	w.routes(hcmv3.HttpConnectionManager_AUTO, r)
	resp, got := get(t, w.client(vip), "GET", url+"/", nil)
	if v := got.Header.Values("X-Split"); len(v) != 1 || v[0] != "split" {
		t.Errorf("X-Split %v", v)
	}
	if v := got.Header.Values("X-Both"); len(v) != 2 || v[0] != "split" || v[1] != "route" {
		t.Errorf("X-Both %v, want [split route]", v)
	}
	if resp.Header.Get("X-Split-Resp") != "1" {
		t.Errorf("response headers %v", resp.Header)
	}
}
