package hbone_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/cairnmesh/cairn/ztunnel/hbone"
)

// The client's CloseWrite reaches the application as EOF (the echo app
// half-closes back only after it), and the application's half-close ends
// what the client reads. The observer sees the bytes of both directions.
func TestEchoHalfClose(t *testing.T) {
	logs := &lockedBuffer{}
	e := newEnv(t, func(_ *env, s *hbone.ServerConfig, _ *hbone.PoolConfig) {
		s.Logger = slog.New(slog.NewJSONHandler(logs, nil))
	})
	msg := make([]byte, 3<<20+17) // several frames and window updates
	rand.Read(msg)

	tun := e.dial(t)
	got := roundTrip(t, tun, msg)
	if !bytes.Equal(got, msg) {
		t.Fatalf("echo returned %d bytes, want the %d sent", len(got), len(msg))
	}
	tun.Close()

	eventually(t, "the server's close report", func() bool { return len(e.obs.Closes()) == 1 })
	tr := e.obs.Closes()[0]
	if tr.Received != int64(len(msg)) || tr.Sent != int64(len(msg)) {
		t.Errorf("observed received=%d sent=%d, want %d both", tr.Received, tr.Sent, len(msg))
	}
	if n := len(e.obs.Refusals()); n != 0 {
		t.Errorf("%d refusals, want none", n)
	}
	// One access-log line, naming the peer and the traffic.
	var line struct {
		Msg         string
		SrcIdentity string `json:"src_identity"`
		Dst         string
		Received    int64
		Sent        int64
	}
	if err := json.Unmarshal(logs.Bytes(), &line); err != nil {
		t.Fatalf("log %q: %v", logs.Bytes(), err)
	}
	if line.Msg != "connection closed" || line.SrcIdentity != clientID.String() || line.Dst != e.app.String() ||
		line.Received != int64(len(msg)) || line.Sent != int64(len(msg)) {
		t.Errorf("access log %+v", line)
	}
}

// lockedBuffer is a bytes.Buffer for concurrent writers.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.buf.Bytes())
}

// io.Copy through a tunnel uses its ReadFrom and WriteTo.
func TestTunnelWithIOCopy(t *testing.T) {
	e := newEnv(t)
	msg := make([]byte, 1<<20)
	rand.Read(msg)
	tun := e.dial(t)
	defer tun.Close()

	errc := make(chan error, 1)
	go func() {
		_, err := io.Copy(tun, bytes.NewReader(msg))
		if err == nil {
			err = tun.CloseWrite()
		}
		errc <- err
	}()
	var got bytes.Buffer
	if _, err := io.Copy(&got, tun); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Bytes(), msg) {
		t.Fatalf("got %d bytes back, want %d", got.Len(), len(msg))
	}
}

// An application that speaks first and half-closes: the client reads its
// greeting and then EOF, and may still send; the application reads what
// it sends and then EOF. Each direction ends on its own, as with TCP.
func TestApplicationHalfCloseLeavesClientSending(t *testing.T) {
	greeting := []byte("220 ready, and done\r\n")
	appRead := make(chan []byte, 1)
	app := startApp(t, func(c net.Conn) {
		c.Write(greeting)
		c.(*net.TCPConn).CloseWrite()
		b, _ := io.ReadAll(c)
		appRead <- b
	})
	e := newEnv(t)
	tun, err := e.pool.Dial(context.Background(), e.key(), app)
	if err != nil {
		t.Fatal(err)
	}
	defer tun.Close()
	got, err := io.ReadAll(tun)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, greeting) {
		t.Fatalf("read %q, want %q", got, greeting)
	}
	late := []byte("QUIT after the server's end\r\n")
	if _, err := tun.Write(late); err != nil {
		t.Fatalf("writing after the application's end: %v", err)
	}
	if err := tun.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if b := <-appRead; !bytes.Equal(b, late) {
		t.Fatalf("application read %q, want %q", b, late)
	}
	eventually(t, "the server's close report", func() bool { return len(e.obs.Closes()) == 1 })
	if tr := e.obs.Closes()[0]; tr.Sent != int64(len(greeting)) || tr.Received != int64(len(late)) {
		t.Errorf("observed sent=%d received=%d, want %d and %d", tr.Sent, tr.Received, len(greeting), len(late))
	}
}

func TestTunnelAfterClose(t *testing.T) {
	e := newEnv(t)
	tun := e.dial(t)
	if err := tun.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := tun.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Write after Close: %v, want net.ErrClosed", err)
	}
	if _, err := tun.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Read after Close: %v, want net.ErrClosed", err)
	}
	if err := tun.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := tun.SetDeadline(time.Now()); !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("SetDeadline: %v, want ErrUnsupported", err)
	}
	if got, want := tun.RemoteAddr().String(), e.app.String(); got != want {
		t.Errorf("RemoteAddr %s, want the authority %s", got, want)
	}
	var _ net.Conn = tun
	var _ interface{ CloseWrite() error } = tun
	if !errors.Is(tun.SetReadDeadline(time.Now()), hbone.ErrDeadlineUnsupported) {
		t.Error("SetReadDeadline did not return ErrDeadlineUnsupported")
	}
}

// An application that reads nothing for a while: what the client sends
// in many small writes queues on the server (bounded by the stream's
// window, which holds the client back) and arrives whole and in order once
// the application reads.
func TestSlowApplicationGetsEverythingInOrder(t *testing.T) {
	got := make(chan []byte, 1)
	release := make(chan struct{})
	app := startApp(t, func(c net.Conn) {
		<-release
		b, _ := io.ReadAll(c)
		got <- b
	})
	e := newEnv(t)
	tun, err := e.pool.Dial(context.Background(), e.key(), app)
	if err != nil {
		t.Fatal(err)
	}
	defer tun.Close()
	// More than the stream window and every socket buffer on the way
	// can hold.
	msg := make([]byte, 16<<20)
	rand.Read(msg)
	sent := make(chan error, 1)
	go func() {
		for p := msg; len(p) > 0; p = p[min(len(p), 4000):] {
			if _, err := tun.Write(p[:min(len(p), 4000)]); err != nil {
				sent <- err
				return
			}
		}
		sent <- tun.CloseWrite()
	}()
	select {
	case err := <-sent:
		t.Fatalf("the client sent everything (%v) while the application read nothing: flow control did not hold it back", err)
	case <-time.After(200 * time.Millisecond): // long enough to fill the window
	}
	close(release)
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	if b := <-got; !bytes.Equal(b, msg) {
		t.Fatalf("application read %d bytes, not the %d sent in order", len(b), len(msg))
	}
}
