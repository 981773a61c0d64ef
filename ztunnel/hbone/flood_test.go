//lint:file-ignore SA1019 HBONE is built on golang.org/x/net/http2 (a required library), whose types v0.62 marks deprecated in favour of net/http

package hbone_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/cairnmesh/cairn/internal/pki"
	"github.com/cairnmesh/cairn/ztunnel/hbone"
)

// floodFrames is how many frames a flooding peer sends at most: as many as
// the PING flood measured in the lab (ztunnel went from 20 to 372 MB RSS).
const floodFrames = 5_000_000

// floodHeapBound is the heap growth allowed while a peer floods a
// connection: the frames it makes the server owe are bounded (1000 at most,
// 20 bytes each), and nothing else it sends is kept. What is left is GC
// slack and the TLS and framing buffers of the two ends.
const floodHeapBound = 8 << 20

// rawPeer is an HBONE client with a valid mesh certificate that writes
// raw HTTP/2 frames and reads nothing unless told to: the hostile pod of
// issue 11.
type rawPeer struct {
	t   *testing.T
	tc  *tls.Conn
	bw  *bufio.Writer
	fr  *http2.Framer // writes into bw
	enc *hpack.Encoder
	blk bytes.Buffer
}

// newRawPeer connects to e's server from local (an address on loopback;
// invalid means any), does the TLS handshake and sends the client
// preface and an empty SETTINGS. Its socket's receive buffer is small, so
// that a server writing to it backs up soon.
func newRawPeer(t *testing.T, e *env, local netip.Addr) *rawPeer {
	t.Helper()
	d := net.Dialer{Timeout: 10 * time.Second}
	if local.IsValid() {
		d.LocalAddr = &net.TCPAddr{IP: local.AsSlice()}
	}
	raw, err := d.Dial("tcp", e.hbone.String())
	if err != nil {
		t.Fatal(err)
	}
	if err := raw.(*net.TCPConn).SetReadBuffer(4 << 10); err != nil {
		t.Fatal(err)
	}
	cfg := pki.ClientConfig(e.ca.svid(t, clientID), e.ca.bundle, pki.AuthorizeIdentity(serverID))
	cfg.NextProtos = []string{"h2"}
	tc := tls.Client(raw, cfg)
	t.Cleanup(func() { tc.Close() })
	tc.SetDeadline(time.Now().Add(60 * time.Second)) // a safety net only
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	p := &rawPeer{t: t, tc: tc, bw: bufio.NewWriterSize(tc, 64<<10)}
	p.fr = http2.NewFramer(p.bw, tc)
	p.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	p.enc = hpack.NewEncoder(&p.blk)
	io.WriteString(p.bw, http2.ClientPreface)
	p.fr.WriteSettings()
	if err := p.bw.Flush(); err != nil {
		t.Fatal(err)
	}
	return p
}

// connectBlock is an HPACK block of a CONNECT to authority.
func (p *rawPeer) connectBlock(authority string) []byte {
	p.blk.Reset()
	p.enc.WriteField(hpack.HeaderField{Name: ":method", Value: "CONNECT"})
	p.enc.WriteField(hpack.HeaderField{Name: ":authority", Value: authority})
	return append([]byte(nil), p.blk.Bytes()...)
}

// flood writes frames made by frame(i) for i up to n, flushing now and
// then, and never reads. It returns how many it wrote before a write
// failed (the server closed the connection), and the error.
func (p *rawPeer) flood(n int, frame func(i int) error) (int, error) {
	for i := range n {
		err := frame(i)
		if err == nil && i%256 == 255 {
			err = p.bw.Flush()
		}
		if err != nil {
			return i, err
		}
	}
	return n, p.bw.Flush()
}

// readUntilEnd reads frames until the connection ends and reports the
// GOAWAY error code it saw, if any.
func (p *rawPeer) readUntilEnd() *http2.ErrCode {
	var code *http2.ErrCode
	for {
		f, err := p.fr.ReadFrame()
		if err != nil {
			return code
		}
		if g, ok := f.(*http2.GoAwayFrame); ok {
			c := g.ErrCode
			code = &c
		}
	}
}

// heapWatch samples the heap in use while a test runs.
type heapWatch struct {
	base uint64
	peak atomic.Uint64
	stop chan struct{}
	wg   sync.WaitGroup
}

func watchHeap() *heapWatch {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	h := &heapWatch{base: ms.HeapInuse, stop: make(chan struct{})}
	h.peak.Store(ms.HeapInuse)
	h.wg.Go(func() {
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-h.stop:
				return
			case <-tick.C:
			}
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > h.peak.Load() {
				h.peak.Store(ms.HeapInuse)
			}
		}
	})
	return h
}

// growth stops sampling and returns the largest growth seen.
func (h *heapWatch) growth() uint64 {
	close(h.stop)
	h.wg.Wait()
	return h.peak.Load() - h.base
}

// expectFlood checks that the server ended the connection of a flooding
// peer (which wrote sent of floodFrames frames) before the flood was over,
// reported it as a flood, and that the heap grew by less than
// floodHeapBound meanwhile.
func expectFlood(t *testing.T, e *env, h *heapWatch, sent int, err error) {
	t.Helper()
	growth := h.growth()
	t.Logf("the peer wrote %d frames before: %v; heap growth %.1f MiB", sent, err, float64(growth)/(1<<20))
	if err == nil || sent == floodFrames {
		t.Errorf("the connection took all %d frames: it should have been ended", floodFrames)
	}
	if growth > floodHeapBound {
		t.Errorf("heap grew by %.1f MiB while flooded, want under %.0f MiB", float64(growth)/(1<<20), float64(floodHeapBound)/(1<<20))
	}
	eventually(t, "the server to report the flood", func() bool {
		for _, r := range e.obs.Refusals() {
			if r.Reason == hbone.ReasonFlood {
				return true
			}
		}
		return false
	})
}

// A peer that never reads and floods PINGs makes the server owe one
// acknowledgement per PING: the queue of frames owed is bounded, and the
// connection ends once it is full (the lab measured 20 -> 372 MB of RSS
// and a connection that stayed open, before).
func TestPingFloodEndsConnection(t *testing.T) {
	e := newEnv(t)
	p := newRawPeer(t, e, netip.Addr{})
	h := watchHeap()
	var data [8]byte
	sent, err := p.flood(floodFrames, func(i int) error { return p.fr.WritePing(false, data) })
	expectFlood(t, e, h, sent, err)
}

// The other frames that make the server owe one, or cost it a decode for
// nothing, each flooded by a peer that never reads.
func TestFloodsEndConnection(t *testing.T) {
	for name, flood := range map[string]func(p *rawPeer, e *env) (int, error){
		"settings": func(p *rawPeer, _ *env) (int, error) {
			return p.flood(floodFrames, func(int) error { return p.fr.WriteSettings() })
		},
		"window updates": func(p *rawPeer, _ *env) (int, error) {
			return p.flood(floodFrames, func(int) error { return p.fr.WriteWindowUpdate(0, 1) })
		},
		"headers beyond the stream cap": func(p *rawPeer, e *env) (int, error) {
			block := p.connectBlock(e.app.String())
			return p.flood(floodFrames, func(i int) error {
				return p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: uint32(2*i + 1), BlockFragment: block, EndHeaders: true})
			})
		},
		"data on reset streams": func(p *rawPeer, e *env) (int, error) {
			p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: p.connectBlock(e.app.String()), EndHeaders: true})
			p.fr.WriteRSTStream(1, http2.ErrCodeCancel)
			return p.flood(floodFrames, func(int) error { return p.fr.WriteData(1, false, []byte{0}) })
		},
		"empty data": func(p *rawPeer, e *env) (int, error) {
			p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: p.connectBlock(e.app.String()), EndHeaders: true})
			return p.flood(floodFrames, func(int) error { return p.fr.WriteData(1, false, nil) })
		},
		"empty continuation": func(p *rawPeer, e *env) (int, error) {
			p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: p.connectBlock(e.app.String())})
			return p.flood(floodFrames, func(int) error { return p.fr.WriteContinuation(1, false, nil) })
		},
		"empty headers": func(p *rawPeer, _ *env) (int, error) {
			return p.flood(floodFrames, func(i int) error {
				return p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: uint32(2*i + 1), EndHeaders: true})
			})
		},
		"priority": func(p *rawPeer, _ *env) (int, error) {
			return p.flood(floodFrames, func(int) error { return p.fr.WritePriority(1, http2.PriorityParam{Weight: 1}) })
		},
	} {
		t.Run(name, func(t *testing.T) {
			release := make(chan struct{})
			defer close(release)
			e := newEnv(t, func(_ *env, s *hbone.ServerConfig, _ *hbone.PoolConfig) {
				// Requests wait, so that the stream cap fills up.
				s.Authorize = func(ctx context.Context, _ hbone.Peer, _ netip.AddrPort) error {
					select {
					case <-release:
					case <-ctx.Done():
					}
					return nil
				}
			})
			p := newRawPeer(t, e, netip.Addr{})
			h := watchHeap()
			sent, err := flood(p, e)
			expectFlood(t, e, h, sent, err)
		})
	}
}

// A peer that reads gets the reason: GOAWAY ENHANCE_YOUR_CALM. It sends
// just over the limit of frames that carry nothing, so that the server
// has read everything when it closes.
func TestFloodGetsEnhanceYourCalm(t *testing.T) {
	e := newEnv(t)
	p := newRawPeer(t, e, netip.Addr{})
	sent, err := p.flood(hbone.DefaultMaxIdleFrames+1, func(int) error { return p.fr.WriteWindowUpdate(0, 1) })
	if err != nil {
		t.Fatalf("flooding: %v after %d frames", err, sent)
	}
	if code := p.readUntilEnd(); code == nil || *code != http2.ErrCodeEnhanceYourCalm {
		t.Errorf("GOAWAY %v, want ENHANCE_YOUR_CALM", code)
	}
}

// Frames that carry nothing are fine in moderation: a connection whose
// peer sends up to the limit of them between useful frames lives on.
func TestUsefulFramesResetTheIdleCount(t *testing.T) {
	e := newEnv(t)
	tun := e.dial(t)
	defer tun.Close()
	p := newRawPeer(t, e, netip.Addr{})
	block := p.connectBlock(e.app.String())
	for round := range 5 {
		id := uint32(2*round + 1)
		if err := p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block, EndHeaders: true}); err != nil {
			t.Fatal(err)
		}
		if _, err := p.flood(hbone.DefaultMaxIdleFrames-1, func(int) error { return p.fr.WriteWindowUpdate(0, 1) }); err != nil {
			t.Fatal(err)
		}
	}
	// The server has answered every CONNECT: the connection is alive.
	p.fr.WritePing(false, [8]byte{1})
	p.bw.Flush()
	for {
		f, err := p.fr.ReadFrame()
		if err != nil {
			t.Fatalf("the connection ended: %v", err)
		}
		if g, ok := f.(*http2.GoAwayFrame); ok {
			t.Fatalf("GOAWAY %v", g.ErrCode)
		}
		if ping, ok := f.(*http2.PingFrame); ok && ping.IsAck() {
			break
		}
	}
	for _, r := range e.obs.Refusals() {
		if r.Reason == hbone.ReasonFlood {
			t.Errorf("refused as a flood: %v", r.Err)
		}
	}
}

// While one peer floods, the server goes on serving the others.
func TestTrafficFlowsDuringFlood(t *testing.T) {
	e := newEnv(t)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	defer func() { close(stop); wg.Wait() }()
	for range 2 {
		p := newRawPeer(t, e, netip.Addr{})
		wg.Go(func() {
			var data [8]byte
			p.flood(floodFrames, func(int) error {
				select {
				case <-stop:
					return errors.New("stopped")
				default:
				}
				return p.fr.WritePing(false, data)
			})
		})
	}
	for i := range 20 {
		tun := e.dial(t)
		msg := []byte("during the flood " + string(rune('a'+i)))
		if got := roundTrip(t, tun, msg); !bytes.Equal(got, msg) {
			t.Fatalf("echo %q, want %q", got, msg)
		}
		tun.Close()
	}
}
