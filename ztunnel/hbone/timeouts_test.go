//lint:file-ignore SA1019 HBONE is built on golang.org/x/net/http2 (a required library), whose types v0.62 marks deprecated in favour of net/http

package hbone_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/cairnmesh/cairn/ztunnel/hbone"
)

// stuckBound is how long a test waits for a timeout of 200 ms to act: a
// safety net for a loaded machine, not a timing target.
const stuckBound = 20 * time.Second

// A client that opens a tunnel to an application that sends without end,
// grants every window, and then stops reading: the server's writes to it
// back up, and after WriteTimeout the connection ends and the application
// is let go, instead of a writer holding the connection for ever.
func TestPeerThatStopsReadingIsCut(t *testing.T) {
	appDone := make(chan error, 1)
	e := newEnv(t, func(e *env, s *hbone.ServerConfig, _ *hbone.PoolConfig) {
		s.WriteTimeout = 200 * time.Millisecond
	})
	e.app = startApp(t, func(c net.Conn) {
		_, err := io.Copy(c, zeros{})
		appDone <- err
	})
	p := newRawPeer(t, e, netip.Addr{})
	p.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1<<31 - 1})
	p.fr.WriteWindowUpdate(0, 1<<31-1-65535)
	p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: p.connectBlock(e.app.String()), EndHeaders: true})
	if err := p.bw.Flush(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-appDone:
		if err == nil {
			t.Error("the application's writes ended cleanly; the tunnel should have broken")
		}
	case <-time.After(stuckBound):
		t.Fatal("the application is still sending to a client that stopped reading")
	}
	eventually(t, "the tunnel reported closed", func() bool { return len(e.obs.Closes()) == 1 })
}

// An application that stops reading: what the client sends is queued up
// to the stream's window, then the server's write to the application
// waits; after WriteTimeout the stream is reset and the client's write
// fails, instead of the queue and its goroutine staying for ever.
func TestApplicationThatStopsReadingIsCut(t *testing.T) {
	e := newEnv(t, func(e *env, s *hbone.ServerConfig, _ *hbone.PoolConfig) {
		s.WriteTimeout = 200 * time.Millisecond
	})
	hold := make(chan struct{})
	defer close(hold)
	e.app = startApp(t, func(c net.Conn) { <-hold })
	tun := e.dial(t)
	defer tun.Close()
	sent := make(chan error, 1)
	go func() {
		buf := make([]byte, 64<<10)
		for {
			if _, err := tun.Write(buf); err != nil {
				sent <- err
				return
			}
		}
	}()
	select {
	case err := <-sent:
		t.Logf("the client's write failed: %v", err)
	case <-time.After(stuckBound):
		t.Fatal("the client is still writing to an application that stopped reading")
	}
	closes := func() []hbone.Traffic {
		eventually(t, "the tunnel reported closed", func() bool { return len(e.obs.Closes()) == 1 })
		return e.obs.Closes()
	}()
	if closes[0].Received == 0 {
		t.Error("the application received nothing before the tunnel was cut")
	}
}

// A connection that has had no stream for IdleTimeout is closed with a
// GOAWAY; one with a tunnel open stays.
func TestIdleConnectionClosed(t *testing.T) {
	e := newEnv(t, func(e *env, s *hbone.ServerConfig, _ *hbone.PoolConfig) {
		s.IdleTimeout = 100 * time.Millisecond
	})
	p := newRawPeer(t, e, netip.Addr{})
	if code := p.readUntilEnd(); code == nil || *code != http2.ErrCodeNo {
		t.Errorf("an idle connection ended with GOAWAY %v, want NO_ERROR", code)
	}

	tun := e.dial(t)
	time.Sleep(300 * time.Millisecond) // three idle timeouts, with a tunnel open
	if got := roundTrip(t, tun, []byte("still here")); string(got) != "still here" {
		t.Errorf("echo %q", got)
	}
	tun.Close()
	eventually(t, "the pool to see its idle connection closed", func() bool { return e.pool.OpenConns() == 0 })
}

// A client that starts a TLS handshake and stops half way is dropped
// after HandshakeTimeout, like one that sends nothing.
func TestHalfHandshakeDropped(t *testing.T) {
	e := newEnv(t, func(_ *env, s *hbone.ServerConfig, _ *hbone.PoolConfig) {
		s.HandshakeTimeout = 200 * time.Millisecond
	})
	c, err := net.Dial("tcp", e.hbone.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(stuckBound)) // a safety net only
	// A handshake record header announcing 512 bytes, and 5 of them.
	c.Write([]byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03})
	if _, err := io.ReadAll(c); err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatal("the server kept a half-done handshake open")
		}
	}
	r := expectRefusal(t, e, hbone.ReasonHandshake, 0)
	var ne net.Error
	if !errors.As(r.Err, &ne) || !ne.Timeout() {
		t.Errorf("refusal error %v, want a timeout", r.Err)
	}
}

// DATA beyond the connection window breaks flow control: the window is
// what bounds the memory a connection holds, so it is enforced, not only
// advertised. The requests wait in Authorize, so that nothing is
// consumed and no window returned.
func TestConnectionWindowEnforced(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	e := newEnv(t, func(e *env, s *hbone.ServerConfig, _ *hbone.PoolConfig) {
		s.ConnectionWindow = 64 << 10
		s.Authorize = func(ctx context.Context, _ hbone.Peer, _ netip.AddrPort) error {
			select {
			case <-release:
			case <-ctx.Done():
			}
			return nil
		}
	})
	p := newRawPeer(t, e, netip.Addr{})
	chunk := make([]byte, 16<<10)
	for id := uint32(1); id <= 9; id += 2 { // five streams, 16 KiB each: 80 KiB
		p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: p.connectBlock(e.app.String()), EndHeaders: true})
		p.fr.WriteData(id, false, chunk)
	}
	if err := p.bw.Flush(); err != nil {
		t.Fatal(err)
	}
	if code := p.readUntilEnd(); code == nil || *code != http2.ErrCodeFlowControl {
		t.Errorf("GOAWAY %v, want FLOW_CONTROL_ERROR", code)
	}
}
