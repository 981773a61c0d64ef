//lint:file-ignore SA1019 the reference HTTP/2 peer is golang.org/x/net/http2, whose types v0.62 marks deprecated in favour of net/http

package hbone_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"golang.org/x/net/http2"

	"github.com/cairnmesh/cairn/internal/pki"
	"github.com/cairnmesh/cairn/ztunnel/hbone"
)

// HBONE must interoperate with other HTTP/2 implementations (Istio's
// ztunnel is Rust's h2). These tests put golang.org/x/net/http2's client
// and server, an independent implementation, at the other end.

// Our server, x/net's client: a CONNECT tunnel carries several frames and
// window updates each way, and both half-closes.
func TestServerWithReferenceClient(t *testing.T) {
	e := newEnv(t)
	msg := make([]byte, 2<<20+5)
	rand.Read(msg)

	pr, pw := io.Pipe()
	addr := e.app.String()
	req := (&http.Request{Method: http.MethodConnect, URL: &url.URL{Host: addr}, Host: addr,
		Header: http.Header{}, Body: pr}).WithContext(context.Background())
	resp, err := h2Conn(t, e).RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d, want 200", resp.StatusCode)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := pw.Write(msg)
		if err == nil {
			err = pw.Close() // END_STREAM: the echo half-closes back
		}
		errc <- err
	}()
	got, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("echo returned %d bytes, want the %d sent", len(got), len(msg))
	}
}

// Our pool, x/net's server: a CONNECT handler that echoes the request body
// as the response; the tunnel works through Write/Read and through Pipe.
func TestPoolWithReferenceServer(t *testing.T) {
	e := newEnv(t)
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodConnect || r.Host != e.app.String() {
			http.Error(w, "unexpected request", http.StatusBadRequest)
			return
		}
		w.WriteHeader(http.StatusOK)
		rc := http.NewResponseController(w)
		rc.Flush()
		buf := make([]byte, 32<<10)
		for {
			n, err := r.Body.Read(buf)
			if n > 0 {
				w.Write(buf[:n])
				rc.Flush()
			}
			if err != nil {
				return
			}
		}
	})
	key := hbone.Key{Source: clientID, Destination: serverID, Address: startReferenceServer(t, e, handler)}

	msg := make([]byte, 3<<20+11)
	rand.Read(msg)
	t.Run("read-write", func(t *testing.T) {
		tun, err := e.pool.Dial(context.Background(), key, e.app)
		if err != nil {
			t.Fatal(err)
		}
		defer tun.Close()
		if got := roundTrip(t, tun, msg); !bytes.Equal(got, msg) {
			t.Fatalf("echo returned %d bytes, want the %d sent", len(got), len(msg))
		}
	})
	t.Run("pipe", func(t *testing.T) {
		tun, err := e.pool.Dial(context.Background(), key, e.app)
		if err != nil {
			t.Fatal(err)
		}
		defer tun.Close()
		// A TCP connection on loopback stands for the captured client.
		cl, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		client, err := net.Dial("tcp", cl.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer client.Close()
		server, err := cl.Accept()
		if err != nil {
			t.Fatal(err)
		}
		type result struct {
			sent, received int64
			err            error
		}
		piped := make(chan result, 1)
		go func() {
			s, r, err := tun.Pipe(context.Background(), server)
			piped <- result{s, r, err}
		}()
		go func() {
			client.Write(msg)
			client.(*net.TCPConn).CloseWrite()
		}()
		got, err := io.ReadAll(client)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, msg) {
			t.Fatalf("echo returned %d bytes, want the %d sent", len(got), len(msg))
		}
		r := <-piped
		if r.err != nil || r.sent != int64(len(msg)) || r.received != int64(len(msg)) {
			t.Errorf("Pipe: sent %d received %d err %v; want %d both, no error", r.sent, r.received, r.err, len(msg))
		}
	})
}

// startReferenceServer serves handler with x/net's HTTP/2 server behind
// mutual TLS as serverID, on loopback, until cleanup.
func startReferenceServer(t *testing.T, e *env, handler http.Handler) netip.AddrPort {
	t.Helper()
	cfg := pki.ServerConfig(e.ca.svid(t, serverID), e.ca.bundle, tlsconfig.AuthorizeAny())
	cfg.NextProtos = []string{"h2"}
	h2 := &http2.Server{MaxReadFrameSize: 1 << 20}
	return startApp(t, func(c net.Conn) {
		tc := tls.Server(c, cfg)
		if tc.Handshake() != nil {
			return
		}
		h2.ServeConn(tc, &http2.ServeConnOpts{Handler: handler})
	})
}
