//lint:file-ignore SA1019 HBONE is built on golang.org/x/net/http2 (a required library), whose types v0.62 marks deprecated in favour of net/http

package hbone_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/cairnmesh/cairn/internal/pki"
	"github.com/cairnmesh/cairn/ztunnel/hbone"
)

// tlsDial opens a TLS connection to e's server as clientID, offering protos.
func tlsDial(t *testing.T, e *env, protos ...string) *tls.Conn {
	t.Helper()
	cfg := pki.ClientConfig(e.ca.svid(t, clientID), e.ca.bundle, pki.AuthorizeIdentity(serverID))
	cfg.NextProtos = protos
	c, err := tls.Dial("tcp", e.hbone.String(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// h2Conn is a plain HTTP/2 client connection to e's server, for requests
// the pool never sends.
func h2Conn(t *testing.T, e *env) *http2.ClientConn {
	t.Helper()
	cc, err := (&http2.Transport{}).NewClientConn(tlsDial(t, e, "h2"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// rawAnswer is how a server answered rawRequest: a :status, or a reset of
// the stream, or a GOAWAY for the whole connection.
type rawAnswer struct {
	status string
	reset  http2.ErrCode
	goAway *http2.ErrCode
}

// rawRequest sends one HEADERS frame with exactly fields, bypassing any
// client library's checks, and returns the server's answer.
func rawRequest(t *testing.T, e *env, fields ...hpack.HeaderField) rawAnswer {
	t.Helper()
	c := tlsDial(t, e, "h2")
	c.SetDeadline(time.Now().Add(10 * time.Second)) // a safety net only
	if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(c, c)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	fr.MaxHeaderListSize = 1 << 20
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	// The server's SETTINGS raise the frame size a large block needs.
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		if sf, ok := f.(*http2.SettingsFrame); ok && !sf.IsAck() {
			fr.WriteSettingsAck()
			break
		}
	}
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	for _, f := range fields {
		enc.WriteField(f)
	}
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block.Bytes(), EndHeaders: true}); err != nil {
		t.Fatal(err)
	}
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			if f.StreamID == 1 {
				return rawAnswer{status: f.PseudoValue("status")}
			}
		case *http2.RSTStreamFrame:
			if f.StreamID == 1 {
				return rawAnswer{reset: f.ErrCode}
			}
		case *http2.GoAwayFrame:
			return rawAnswer{goAway: &f.ErrCode}
		}
	}
}

// expectRefusal checks the observer's single refusal.
func expectRefusal(t *testing.T, e *env, reason hbone.Reason, status int) hbone.Refusal {
	t.Helper()
	r := e.obs.waitRefusal(t)
	if r.Reason != reason || r.Status != status {
		t.Errorf("refusal %s/%d (%v), want %s/%d", r.Reason, r.Status, r.Err, reason, status)
	}
	if n := len(e.obs.Refusals()); n != 1 {
		t.Errorf("%d refusals, want 1", n)
	}
	if n := e.appDials.Load(); n != 0 {
		t.Errorf("the application was dialed %d times", n)
	}
	return r
}

// connect dials through the pool to authority and expects a StatusError.
func expectStatus(t *testing.T, e *env, authority netip.AddrPort, code int) *hbone.StatusError {
	t.Helper()
	tun, err := e.pool.Dial(context.Background(), e.key(), authority)
	if err == nil {
		tun.Close()
		t.Fatalf("CONNECT %s succeeded, want %d", authority, code)
	}
	var se *hbone.StatusError
	if !errors.As(err, &se) || se.Code != code {
		t.Fatalf("CONNECT %s: %v, want status %d", authority, err, code)
	}
	return se
}

func TestNonConnectRefused(t *testing.T) {
	e := newEnv(t)
	req, _ := http.NewRequest(http.MethodGet, "https://"+e.app.String()+"/", nil)
	resp, err := h2Conn(t, e).RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "CONNECT" {
		t.Errorf("GET: %d, Allow %q; want 405, CONNECT", resp.StatusCode, resp.Header.Get("Allow"))
	}
	r := expectRefusal(t, e, hbone.ReasonMethod, http.StatusMethodNotAllowed)
	if r.Peer.Identity != clientID {
		t.Errorf("refusal names peer %v, want %v", r.Peer.Identity, clientID)
	}
}

func TestMalformedAuthorityRefused(t *testing.T) {
	for _, authority := range []string{"reviews.shop.svc:9080", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:65536", "[::1]"} {
		t.Run(authority, func(t *testing.T) {
			e := newEnv(t)
			req := &http.Request{Method: http.MethodConnect, URL: &url.URL{Host: authority}, Host: authority, Header: http.Header{}}
			resp, err := h2Conn(t, e).RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadRequest {
				t.Errorf("status %d, want 400", resp.StatusCode)
			}
			expectRefusal(t, e, hbone.ReasonAuthority, http.StatusBadRequest)
		})
	}
}

// HTTP/2 itself resets a CONNECT without :authority before any handler.
func TestMissingAuthorityReset(t *testing.T) {
	e := newEnv(t)
	got := rawRequest(t, e, hpack.HeaderField{Name: ":method", Value: "CONNECT"})
	if got.reset != http2.ErrCodeProtocol {
		t.Errorf("answer %+v, want a PROTOCOL_ERROR reset", got)
	}
	if n := e.appDials.Load(); n != 0 {
		t.Errorf("the application was dialed %d times", n)
	}
}

// Header blocks over MaxHeaderBytes are refused by the HTTP/2 layer: 431
// when the fields add up to too much, a connection error when a single
// field alone exceeds the limit (HPACK refuses to decode it).
func TestOversizedHeadersRefused(t *testing.T) {
	manyFields := []hpack.HeaderField{{Name: "x-b3-padding", Value: strings.Repeat("a", 1<<10)}}
	for range 7 {
		manyFields = append(manyFields, manyFields[0])
	}
	for name, tc := range map[string]struct {
		fields []hpack.HeaderField
		check  func(rawAnswer) bool
	}{
		"many fields": {manyFields, func(a rawAnswer) bool { return a.status == "431" }},
		"one huge field": {
			[]hpack.HeaderField{{Name: "x-padding", Value: strings.Repeat("a", 16<<10)}},
			func(a rawAnswer) bool { return a.goAway != nil && *a.goAway == http2.ErrCodeCompression },
		},
	} {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t, func(_ *env, s *hbone.ServerConfig, _ *hbone.PoolConfig) { s.MaxHeaderBytes = 4 << 10 })
			fields := append([]hpack.HeaderField{
				{Name: ":method", Value: "CONNECT"},
				{Name: ":authority", Value: e.app.String()},
			}, tc.fields...)
			if got := rawRequest(t, e, fields...); !tc.check(got) {
				t.Errorf("answer %+v", got)
			}
			if n := e.appDials.Load(); n != 0 {
				t.Errorf("the application was dialed %d times", n)
			}
		})
	}
}

func TestMisdirectedRefused(t *testing.T) {
	e := newEnv(t)
	se := expectStatus(t, e, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), e.app.Port()), http.StatusForbidden)
	if !strings.Contains(se.Reason, string(hbone.ReasonMisdirected)) {
		t.Errorf("reason %q, want it to say %s", se.Reason, hbone.ReasonMisdirected)
	}
	expectRefusal(t, e, hbone.ReasonMisdirected, http.StatusForbidden)
}

func TestAuthorizationDenied(t *testing.T) {
	var mu sync.Mutex
	var asked []hbone.Peer
	var dsts []netip.AddrPort
	e := newEnv(t, func(_ *env, s *hbone.ServerConfig, _ *hbone.PoolConfig) {
		s.Authorize = func(_ context.Context, peer hbone.Peer, dst netip.AddrPort) error {
			mu.Lock()
			defer mu.Unlock()
			asked, dsts = append(asked, peer), append(dsts, dst)
			return errors.New("no policy allows shop/frontend")
		}
	})
	se := expectStatus(t, e, e.app, http.StatusForbidden)
	if !strings.Contains(se.Reason, string(hbone.ReasonDenied)) {
		t.Errorf("reason %q, want it to say %s", se.Reason, hbone.ReasonDenied)
	}
	r := expectRefusal(t, e, hbone.ReasonDenied, http.StatusForbidden)
	if r.Destination != e.app {
		t.Errorf("refusal destination %v, want %v", r.Destination, e.app)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(asked) != 1 || asked[0].Identity != clientID || !asked[0].Addr.Addr().IsLoopback() || dsts[0] != e.app {
		t.Errorf("Authorize saw %+v -> %v, want %v from loopback -> %v", asked, dsts, clientID, e.app)
	}
}

func TestApplicationDialFailure(t *testing.T) {
	e := newEnv(t, func(_ *env, s *hbone.ServerConfig, _ *hbone.PoolConfig) {
		s.Dial = func(context.Context, string, string) (net.Conn, error) {
			return nil, errors.New("connection refused (test)")
		}
	})
	expectStatus(t, e, e.app, http.StatusServiceUnavailable)
	r := e.obs.waitRefusal(t)
	if r.Reason != hbone.ReasonDial || r.Status != http.StatusServiceUnavailable {
		t.Errorf("refusal %s/%d, want %s/503", r.Reason, r.Status, hbone.ReasonDial)
	}
}

func TestForeignClientCertificateRefused(t *testing.T) {
	e := newEnv(t, func(_ *env, _ *hbone.ServerConfig, p *hbone.PoolConfig) {
		p.Certificate = newCA(t).certs(t) // same trust domain name, other root
	})
	_, err := e.pool.Dial(context.Background(), e.key(), e.app)
	if err == nil {
		t.Fatal("Dial succeeded with a certificate from a foreign CA")
	}
	var se *hbone.StatusError
	if errors.As(err, &se) {
		t.Errorf("got status %d; the TLS layer must refuse", se.Code)
	}
	r := expectRefusal(t, e, hbone.ReasonHandshake, 0)
	if r.Err == nil || !strings.Contains(r.Err.Error(), "certificate") {
		t.Errorf("refusal error %v, want a certificate error", r.Err)
	}
}

func TestPlaintextRefused(t *testing.T) {
	e := newEnv(t)
	c, err := net.Dial("tcp", e.hbone.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second)) // a safety net only
	io.WriteString(c, "CONNECT 127.0.0.1:80 HTTP/1.1\r\nHost: 127.0.0.1:80\r\n\r\n")
	// The server answers with at most a TLS alert, then closes.
	if _, err := io.ReadAll(c); err != nil {
		t.Fatalf("reading until close: %v", err)
	}
	expectRefusal(t, e, hbone.ReasonHandshake, 0)
}

func TestHTTP1OverTLSRefused(t *testing.T) {
	for name, protos := range map[string][]string{"alpn http/1.1": {"http/1.1"}, "no alpn": nil} {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t)
			c := tlsDial(t, e, protos...)
			c.SetDeadline(time.Now().Add(10 * time.Second)) // a safety net only
			io.WriteString(c, "CONNECT 127.0.0.1:80 HTTP/1.1\r\nHost: 127.0.0.1:80\r\n\r\n")
			if b, _ := io.ReadAll(c); len(b) != 0 {
				t.Errorf("server answered %q", b)
			}
			expectRefusal(t, e, hbone.ReasonALPN, 0)
		})
	}
}

// A client that connects and sends nothing is dropped after the handshake
// timeout, even though the certificate wait is much longer.
func TestSilentClientDropped(t *testing.T) {
	e := newEnv(t, func(_ *env, s *hbone.ServerConfig, _ *hbone.PoolConfig) {
		s.HandshakeTimeout = 20 * time.Millisecond
		s.CertificateWait = time.Hour
	})
	c, err := net.Dial("tcp", e.hbone.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second)) // a safety net only
	if _, err := io.ReadAll(c); err != nil {
		t.Fatalf("reading until close: %v", err)
	}
	r := expectRefusal(t, e, hbone.ReasonHandshake, 0)
	var ne net.Error
	if !errors.As(r.Err, &ne) || !ne.Timeout() {
		t.Errorf("refusal error %v, want a timeout", r.Err)
	}
}

// sourceWatch is a certificate source that reports when it is first asked.
type sourceWatch struct {
	pki.Source
	once  sync.Once
	asked chan struct{}
}

func (s *sourceWatch) GetX509SVID() (*x509svid.SVID, error) {
	s.once.Do(func() { close(s.asked) })
	return s.Source.GetX509SVID()
}

// A connection that arrives before the pod's certificate waits for it.
func TestHandshakeWaitsForCertificate(t *testing.T) {
	src := &sourceWatch{asked: make(chan struct{})}
	e := newEnv(t, func(_ *env, s *hbone.ServerConfig, _ *hbone.PoolConfig) { s.Certificate = src })
	type result struct {
		tun *hbone.Tunnel
		err error
	}
	done := make(chan result, 1)
	go func() {
		tun, err := e.pool.Dial(context.Background(), e.key(), e.app)
		done <- result{tun, err}
	}()
	<-src.asked
	src.Set(e.ca.svid(t, serverID))
	r := <-done
	if r.err != nil {
		t.Fatalf("Dial: %v", r.err)
	}
	defer r.tun.Close()
	if got := roundTrip(t, r.tun, []byte("late")); string(got) != "late" {
		t.Errorf("echoed %q", got)
	}
}

func TestHandshakeGivesUpWithoutCertificate(t *testing.T) {
	e := newEnv(t, func(_ *env, s *hbone.ServerConfig, _ *hbone.PoolConfig) {
		s.Certificate = &pki.Source{}
		s.CertificateWait = 20 * time.Millisecond
	})
	if _, err := e.pool.Dial(context.Background(), e.key(), e.app); err == nil {
		t.Fatal("Dial succeeded with a server that has no certificate")
	}
	r := expectRefusal(t, e, hbone.ReasonHandshake, 0)
	if r.Err == nil || !strings.Contains(r.Err.Error(), "no certificate") {
		t.Errorf("refusal error %v, want it to say there was no certificate", r.Err)
	}
}

// Shutdown whose context ends with streams still open closes them.
func TestShutdownForcesAfterContext(t *testing.T) {
	e := newEnv(t)
	tun := e.dial(t)
	defer tun.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := e.server.Shutdown(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Shutdown: %v, want context.Canceled", err)
	}
	if _, err := io.ReadAll(tun); err == nil {
		t.Error("tunnel ended cleanly; a forced shutdown must break it")
	}
	eventually(t, "the server to report the closed connection", func() bool { return len(e.obs.Closes()) == 1 })
}

func TestShutdownIdle(t *testing.T) {
	e := newEnv(t)
	tun := e.dial(t)
	roundTrip(t, tun, []byte("x"))
	tun.Close()
	// The pool's connection is idle: GOAWAY makes the pool close it.
	if err := e.server.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the pool to drop the connection", func() bool { return e.pool.OpenConns() == 0 })
}

func TestNewServerValidates(t *testing.T) {
	ca := newCA(t)
	good := hbone.ServerConfig{Certificate: ca.svid(t, serverID), Bundle: ca.bundle, Addrs: []netip.Addr{podIP}}
	for name, mutate := range map[string]func(*hbone.ServerConfig){
		"no certificate": func(c *hbone.ServerConfig) { c.Certificate = nil },
		"no bundle":      func(c *hbone.ServerConfig) { c.Bundle = nil },
		"no addresses":   func(c *hbone.ServerConfig) { c.Addrs = nil },
		"bad address":    func(c *hbone.ServerConfig) { c.Addrs = []netip.Addr{{}} },
	} {
		cfg := good
		mutate(&cfg)
		if _, err := hbone.NewServer(cfg); err == nil {
			t.Errorf("%s: NewServer succeeded", name)
		}
	}
	if _, err := hbone.NewServer(good); err != nil {
		t.Errorf("valid config: %v", err)
	}
}

// TestRevokeEndsAnOpenTunnel: the context Authorize received ends the
// tunnel through Revoke (a policy that changed): the client sees the end,
// the application connection closes, and the tunnel is reported closed.
func TestRevokeEndsAnOpenTunnel(t *testing.T) {
	var mu sync.Mutex
	var tunnels []context.Context
	e := newEnv(t, func(_ *env, s *hbone.ServerConfig, _ *hbone.PoolConfig) {
		s.Authorize = func(ctx context.Context, _ hbone.Peer, _ netip.AddrPort) error {
			mu.Lock()
			defer mu.Unlock()
			tunnels = append(tunnels, ctx)
			return nil
		}
	})
	tun := e.dial(t)
	defer tun.Close()
	if got := roundTrip(t, tun, []byte("before")); string(got) != "before" {
		t.Fatalf("echo %q", got)
	}
	mu.Lock()
	ctx := tunnels[0]
	mu.Unlock()
	if hbone.Revoke(context.Background()) {
		t.Error("Revoke claimed a context that is no tunnel's")
	}
	if !hbone.Revoke(ctx) {
		t.Fatal("Revoke did not know the tunnel's context")
	}
	buf := make([]byte, 16)
	if n, err := tun.Read(buf); err == nil {
		t.Errorf("read %q after revocation, want the end of the tunnel", buf[:n])
	}
	eventually(t, "the revoked tunnel reported closed", func() bool { return len(e.obs.Closes()) == 1 })
}

// A client that opens streams and resets each at once (the HTTP/2 "rapid
// reset" attack) gets no more requests served at a time than the stream
// limit, the rest are refused, and a reset request never reaches the
// application.
func TestRapidResetIsBounded(t *testing.T) {
	const limit = hbone.DefaultMaxStreamsPerConnection
	var mu sync.Mutex
	running, most := 0, 0
	release := make(chan struct{})
	e := newEnv(t, func(_ *env, s *hbone.ServerConfig, _ *hbone.PoolConfig) {
		s.Authorize = func(ctx context.Context, _ hbone.Peer, _ netip.AddrPort) error {
			mu.Lock()
			running++
			most = max(most, running)
			mu.Unlock()
			<-release
			mu.Lock()
			running--
			mu.Unlock()
			return nil
		}
	})
	c := tlsDial(t, e, "h2")
	c.SetDeadline(time.Now().Add(30 * time.Second)) // a safety net only
	io.WriteString(c, http2.ClientPreface)
	fr := http2.NewFramer(c, c)
	fr.WriteSettings()
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	enc.WriteField(hpack.HeaderField{Name: ":method", Value: "CONNECT"})
	enc.WriteField(hpack.HeaderField{Name: ":authority", Value: e.app.String()})
	const streams = limit + 200
	refused := make(chan int, 1)
	go func() {
		n := 0
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				refused <- n
				return
			}
			if r, ok := f.(*http2.RSTStreamFrame); ok && r.ErrCode == http2.ErrCodeRefusedStream {
				if n++; n == streams-limit {
					refused <- n
					return
				}
			}
		}
	}()
	for i := range streams {
		id := uint32(2*i + 1)
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block.Bytes(), EndHeaders: true})
		fr.WriteRSTStream(id, http2.ErrCodeCancel)
	}
	if n := <-refused; n != streams-limit {
		t.Errorf("%d streams refused, want %d", n, streams-limit)
	}
	close(release)
	mu.Lock()
	got := most
	mu.Unlock()
	if got > limit {
		t.Errorf("%d requests served at once, want at most %d", got, limit)
	}
	eventually(t, "the released requests to finish", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return running == 0
	})
	if n := e.appDials.Load(); n != 0 {
		t.Errorf("reset requests dialed the application %d times", n)
	}
}

// The application dial knows the client: ztunnel connects to the app from
// the client's address with it.
func TestDialKnowsThePeer(t *testing.T) {
	var mu sync.Mutex
	var seen []hbone.Peer
	e := newEnv(t, func(_ *env, s *hbone.ServerConfig, _ *hbone.PoolConfig) {
		var d net.Dialer
		s.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			if p, ok := hbone.PeerFrom(ctx); ok {
				mu.Lock()
				seen = append(seen, p)
				mu.Unlock()
			}
			return d.DialContext(ctx, network, addr)
		}
	})
	tun := e.dial(t)
	defer tun.Close()
	if got := roundTrip(t, tun, []byte("who")); string(got) != "who" {
		t.Fatalf("echo %q", got)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 1 || seen[0].Identity != clientID || !seen[0].Addr.Addr().IsLoopback() {
		t.Errorf("Dial saw peers %+v, want %v from loopback", seen, clientID)
	}
}
