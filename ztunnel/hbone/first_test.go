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
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"golang.org/x/sys/unix"

	"github.com/cairnmesh/cairn/internal/pki"
	"github.com/cairnmesh/cairn/ztunnel/hbone"
)

// tcpPair returns both ends of a loopback TCP connection: client stands
// for the application in the pod, server for ztunnel's captured end.
func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	client, err = net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err = l.Accept()
	if err != nil {
		client.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		client.Close()
		server.Close()
	})
	return client, server
}

// waitReadable returns once c has bytes to read (the kernel has moved the
// client's write across loopback), without taking them.
func waitReadable(t *testing.T, c net.Conn) {
	t.Helper()
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var buf [1]byte
	err = rc.Read(func(fd uintptr) bool {
		n, _, _ := unix.Recvfrom(int(fd), buf[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		return n > 0
	})
	if err != nil {
		t.Fatal(err)
	}
}

// A client that speaks first has its first bytes carried right behind the
// CONNECT: a server that reads the request body before it answers (which
// waits forever for a client that holds them until the 200) gets them, and
// the tunnel then carries the rest both ways.
func TestFirstBytesGoWithTheConnect(t *testing.T) {
	e := newEnv(t)
	hello := []byte("GET / HTTP/1.1\r\nHost: shop\r\n\r\n")
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got := make([]byte, len(hello))
		if _, err := io.ReadFull(r.Body, got); err != nil || !bytes.Equal(got, hello) {
			http.Error(w, "first bytes missing", http.StatusBadRequest)
			return
		}
		w.WriteHeader(http.StatusOK)
		w.Write(got)
		rc := http.NewResponseController(w)
		rc.Flush()
		io.Copy(w, r.Body) // the rest, then the end
	})
	key := hbone.Key{Source: clientID, Destination: serverID, Address: startReferenceServer(t, e, handler)}

	client, captured := tcpPair(t)
	if _, err := client.Write(hello); err != nil {
		t.Fatal(err)
	}
	waitReadable(t, captured)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	tun, err := e.pool.DialFor(ctx, key, e.app, captured)
	if err != nil {
		t.Fatalf("DialFor: %v (a server that reads first never answers unless the first bytes came with the CONNECT)", err)
	}
	defer tun.Close()
	piped := make(chan error, 1)
	var sent, received int64
	go func() {
		var err error
		sent, received, err = tun.Pipe(context.Background(), captured)
		piped <- err
	}()
	more := []byte("and the rest")
	if _, err := client.Write(more); err != nil {
		t.Fatal(err)
	}
	client.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(client)
	if err != nil {
		t.Fatal(err)
	}
	if want := append(append([]byte{}, hello...), more...); !bytes.Equal(got, want) {
		t.Fatalf("client got %q, want %q", got, want)
	}
	if err := <-piped; err != nil {
		t.Fatalf("Pipe: %v", err)
	}
	if n := int64(len(hello) + len(more)); sent != n || received != n {
		t.Errorf("Pipe counted %d sent and %d received, want %d each (the first bytes included)", sent, received, n)
	}
}

// Our server holds first bytes until it has authorized the CONNECT and
// connected to the application, then hands them over in order.
func TestFirstBytesReachTheApplicationInOrder(t *testing.T) {
	e := newEnv(t)
	client, captured := tcpPair(t)
	first := bytes.Repeat([]byte("first "), 1000)
	if _, err := client.Write(first); err != nil {
		t.Fatal(err)
	}
	waitReadable(t, captured)
	tun, err := e.pool.DialFor(context.Background(), e.key(), e.app, captured)
	if err != nil {
		t.Fatal(err)
	}
	defer tun.Close()
	go tun.Pipe(context.Background(), captured)
	rest := bytes.Repeat([]byte("rest "), 100000)
	go func() {
		client.Write(rest)
		client.(*net.TCPConn).CloseWrite()
	}()
	got, err := io.ReadAll(client)
	if err != nil {
		t.Fatal(err)
	}
	if want := append(append([]byte{}, first...), rest...); !bytes.Equal(got, want) {
		t.Fatalf("the echo returned %d bytes, want the %d sent, in order", len(got), len(want))
	}
}

// A refused CONNECT drops the first bytes that came with it, and gives the
// connection its window back: a connection that carried refusals worth more
// than its whole window (32 MiB) still carries an allowed tunnel.
func TestRefusedFirstBytesReturnTheWindow(t *testing.T) {
	var allow atomic.Bool
	e := newEnv(t, func(_ *env, s *hbone.ServerConfig, _ *hbone.PoolConfig) {
		s.Authorize = func(context.Context, hbone.Peer, netip.AddrPort) error {
			if allow.Load() {
				return nil
			}
			return errors.New("denied by the test")
		}
	})
	client, captured := tcpPair(t)
	chunk := bytes.Repeat([]byte{'x'}, 16<<10)
	const refusals = 2300 // 2300 x 16 KiB = 36.8 MiB
	for i := range refusals {
		if _, err := client.Write(chunk); err != nil {
			t.Fatal(err)
		}
		waitReadable(t, captured)
		_, err := e.pool.DialFor(context.Background(), e.key(), e.app, captured)
		var se *hbone.StatusError
		if !errors.As(err, &se) || se.Code != http.StatusForbidden {
			t.Fatalf("dial %d: %v, want a 403 refusal", i, err)
		}
	}
	if e.appDials.Load() != 0 {
		t.Fatalf("the server dialed the application %d times for refused requests", e.appDials.Load())
	}
	if got := e.pool.PooledConns(e.key()); got != 1 {
		t.Fatalf("%d pooled connections, want the one that carried every refusal", got)
	}

	allow.Store(true)
	tun := e.dial(t)
	defer tun.Close()
	msg := bytes.Repeat([]byte("after the refusals "), 10000)
	// A stalled tunnel would wait forever: closing it fails the read.
	stall := time.AfterFunc(10*time.Second, func() { tun.Close() })
	defer stall.Stop()
	if got := roundTrip(t, tun, msg); !bytes.Equal(got, msg) {
		t.Fatalf("echo returned %d bytes, want %d", len(got), len(msg))
	}
}

// A CONNECT the server refuses unprocessed (REFUSED_STREAM) goes again,
// first bytes included: during a rolling restart of the destination's
// ztunnel a CONNECT can cross its GOAWAY, and the app must not see a
// failure for it. The server here is raw HTTP/2 frames: it refuses the
// first stream and accepts the next.
func TestRefusedStreamIsSentAgain(t *testing.T) {
	e := newEnv(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	cfg := pki.ServerConfig(e.ca.svid(t, serverID), e.ca.bundle, tlsconfig.AuthorizeAny())
	cfg.NextProtos = []string{"h2"}
	type seen struct {
		streams []uint32
		data    []byte // DATA of the accepted stream
	}
	got := make(chan seen, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		tc := tls.Server(c, cfg)
		preface := make([]byte, len(http2.ClientPreface))
		if _, err := io.ReadFull(tc, preface); err != nil {
			return
		}
		fr := http2.NewFramer(tc, tc)
		fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
		fr.WriteSettings()
		var s seen
		var accepted uint32
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				return
			}
			switch f := f.(type) {
			case *http2.MetaHeadersFrame:
				s.streams = append(s.streams, f.StreamID)
				if len(s.streams) == 1 {
					fr.WriteRSTStream(f.StreamID, http2.ErrCodeRefusedStream)
					continue
				}
				accepted = f.StreamID
				var hb bytes.Buffer
				hpack.NewEncoder(&hb).WriteField(hpack.HeaderField{Name: ":status", Value: "200"})
				fr.WriteHeaders(http2.HeadersFrameParam{StreamID: f.StreamID, BlockFragment: hb.Bytes(), EndHeaders: true})
			case *http2.DataFrame:
				if f.StreamID == accepted && accepted != 0 {
					s.data = append(s.data, f.Data()...)
					got <- s
					return
				}
			}
		}
	}()

	client, captured := tcpPair(t)
	if _, err := client.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	waitReadable(t, captured)
	key := hbone.Key{Source: clientID, Destination: serverID, Address: l.Addr().(*net.TCPAddr).AddrPort()}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	tun, err := e.pool.DialFor(ctx, key, e.app, captured)
	if err != nil {
		t.Fatalf("DialFor after one refusal: %v", err)
	}
	defer tun.Close()
	select {
	case s := <-got:
		if len(s.streams) != 2 || string(s.data) != "hello" {
			t.Errorf("the server saw streams %v and %q on the accepted one, want two streams and the first bytes again", s.streams, s.data)
		}
	case <-ctx.Done():
		t.Fatal("the first bytes never reached the accepted stream")
	}
}
