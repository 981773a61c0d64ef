//lint:file-ignore SA1019 HBONE is built on golang.org/x/net/http2 (a required library), whose types v0.62 marks deprecated in favour of net/http

package hbone_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"runtime/metrics"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/cairnmesh/cairn/internal/pki"
	"github.com/cairnmesh/cairn/ztunnel/hbone"
)

// Bounds of FuzzServerConn. They are safety nets, not timing targets: a
// server that needs them has failed.
const (
	// fuzzConnWait bounds how long the server may take to end a connection
	// after the client's close_notify, and to end its goroutines after.
	fuzzConnWait = 10 * time.Second
	// fuzzHeapGrowth bounds how much one connection may grow the heap, on
	// top of a few times the input: what the peer makes the server hold.
	fuzzHeapGrowth = 64 << 20
	// fuzzMaxOutput bounds what the harness keeps of the server's answer.
	fuzzMaxOutput = 8 << 20
)

// FuzzServerConn drives the HBONE server from the first byte a client sends
// after the TLS handshake: the connection preface (unless preface is false,
// when data must bring its own), then data as it is: frames, HPACK blocks,
// CONNECT requests and their :authority, and whatever else. The client then
// half-closes (TLS close_notify) and reads what the server sent.
//
// The TLS handshake is real (resumed from a session ticket after the
// first), so the target goes through the server's public API only
// (NewServer, Serve, Close) and its test seams (newEnv), and stays valid
// however the server's HTTP/2 layer changes inside.
//
// The server runs for a pod at 127.0.0.1 whose Authorize allows even ports
// only; its Dial, whatever the :authority, connects to an echo application
// on loopback, except for port 9 where it fails. Invariants, for every
// input:
//   - no panic;
//   - the server ends the connection after the client's close_notify, and
//     every goroutine it started for it ends;
//   - the heap does not grow by more than fuzzHeapGrowth plus a few times
//     the input while the connection is served;
//   - what the server sends is HTTP/2: a SETTINGS frame first, then
//     frames that parse, no PUSH_PROMISE, HEADERS and DATA only on streams
//     the client opened, RST_STREAM only on streams it named, every
//     HEADERS with a :status;
//   - it dials only the pod's own address, only after Authorize allowed
//     that destination, and answers 200 no more often than it dialed;
//   - every tunnel the Observer saw open, it saw close.
func FuzzServerConn(f *testing.F) {
	for _, s := range serverSeeds(f) {
		f.Add(s.preface, s.settle, s.data)
	}

	h := newFuzzHarness(f)
	// The harness must reach a tunnel, or the fuzzer explores only the
	// refusals: the first seed is a CONNECT that the application echoes.
	// Tried a few times: on a busy machine settle may give up early.
	s := serverSeeds(f)[0]
	for try := 1; ; try++ {
		out := h.run(f, s.preface, s.settle, s.data)
		if countStatus(out, "200") == 1 && bytes.Contains(out, []byte("hello")) && bytes.Contains(out, []byte(" world")) {
			break
		}
		if try == 5 {
			f.Fatalf("the first seed did not get its tunnel and echo; the server answered %q", out)
		}
	}
	f.Fuzz(func(t *testing.T, preface, settle bool, data []byte) {
		h.run(t, preface, settle, data)
	})
}

// fuzzHarness is one server for every input of a fuzzing process.
type fuzzHarness struct {
	e         *env
	tlsConfig *tls.Config

	mu         sync.Mutex
	authorized map[netip.AddrPort]bool // what Authorize allowed
	dials      []string                // what Dial was asked for
}

func newFuzzHarness(f *testing.F) *fuzzHarness {
	h := &fuzzHarness{authorized: map[netip.AddrPort]bool{}}
	h.e = newEnv(f, func(e *env, s *hbone.ServerConfig, _ *hbone.PoolConfig) {
		s.Logger = nil // one line per refusal: too many for fuzzing
		s.Authorize = func(_ context.Context, _ hbone.Peer, dst netip.AddrPort) error {
			if dst.Port()%2 == 1 {
				return errors.New("odd ports are denied")
			}
			h.mu.Lock()
			h.authorized[dst] = true
			h.mu.Unlock()
			return nil
		}
		var d net.Dialer
		s.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			h.mu.Lock()
			h.dials = append(h.dials, addr)
			h.mu.Unlock()
			if strings.HasSuffix(addr, ":9") {
				return nil, errors.New("the application does not listen on port 9")
			}
			return d.DialContext(ctx, network, e.app.String())
		}
	})
	h.tlsConfig = pki.ClientConfig(h.e.ca.svid(f, clientID), h.e.ca.bundle, pki.AuthorizeIdentity(serverID))
	h.tlsConfig.NextProtos = []string{"h2"}
	h.tlsConfig.ClientSessionCache = tls.NewLRUClientSessionCache(1)
	return h
}

// connGoroutines returns the stacks of the goroutines that serve a
// connection: those that run code of the server (package hbone,
// x/net/http2) or of the echo application, except the server's accept
// loop and the (unused) pool's, which stay. With no connection there is
// none.
func connGoroutines() []string {
	buf := make([]byte, 4<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		server := strings.Contains(g, "cairn/ztunnel/hbone.") || strings.Contains(g, "golang.org/x/net/http2") ||
			strings.Contains(g, "hbone_test.echo")
		stays := strings.Contains(g, "hbone.(*Server).Serve(") || strings.Contains(g, "hbone.(*Pool)")
		if server && !stays {
			out = append(out, g)
		}
	}
	return out
}

// run has one conversation with the server, checks it and returns what
// the server sent.
func (h *fuzzHarness) run(t testing.TB, preface, settle bool, data []byte) []byte {
	h.mu.Lock()
	clear(h.authorized)
	h.dials = h.dials[:0]
	h.mu.Unlock()
	opened, closed := openedCount(h.e.obs), len(h.e.obs.Closes())
	heapBefore := heapObjects()

	c, err := tls.DialWithDialer(&net.Dialer{Timeout: fuzzConnWait}, "tcp", h.e.hbone.String(), h.tlsConfig)
	if err != nil {
		t.Fatalf("TLS handshake with the server: %v", err)
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(fuzzConnWait)); err != nil {
		t.Fatal(err)
	}

	// Read everything the server sends, concurrently, as a client that
	// reads would.
	out := &limitedBuffer{max: fuzzMaxOutput}
	readDone := make(chan error, 1)
	go func() {
		_, err := io.Copy(out, c)
		readDone <- err
	}()

	if preface {
		data = slices.Concat([]byte(http2.ClientPreface), data)
	}
	// The server may stop reading and close at any point of the input
	// (that is one of its answers), so a failed write is no failure.
	_, err = c.Write(data)
	if err == nil && settle {
		// The PING is part of what the server reads: after an
		// incomplete frame it is read as the rest of that frame.
		data = slices.Concat(data, settlePingFrame())
		err = h.settle(c, data, out, readDone)
	}
	if err == nil {
		_ = c.CloseWrite()
	}

	// Wait for the server to end the connection, watching the heap.
	heapMax := heapObjects()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	var readErr error
wait:
	for {
		select {
		case readErr = <-readDone:
			break wait
		case <-tick.C:
			heapMax = max(heapMax, heapObjects())
		}
	}
	if readErr != nil && !isConnEnd(readErr) {
		t.Fatalf("the server did not end the connection within %v of the client's close_notify: %v", fuzzConnWait, readErr)
	}
	c.Close()
	if grown := int64(heapMax) - int64(heapBefore); grown > fuzzHeapGrowth+4*int64(len(data)) {
		t.Fatalf("the heap grew by %d bytes while serving %d bytes of input", grown, len(data))
	}
	h.waitIdle(t)

	checkServerOutput(t, data, out.Bytes())
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, addr := range h.dials {
		ap, err := netip.ParseAddrPort(addr)
		if err != nil || ap.Addr() != podIP || !h.authorized[ap] {
			t.Fatalf("the server dialed %q; want only the pod's address %v, after Authorize allowed it (allowed: %v)", addr, podIP, h.authorized)
		}
	}
	if ok := countStatus(out.Bytes(), "200"); ok > len(h.dials) {
		t.Fatalf("the server answered 200 %d times but dialed %d times", ok, len(h.dials))
	}
	if o, c := openedCount(h.e.obs)-opened, len(h.e.obs.Closes())-closed; o != c {
		t.Fatalf("the observer saw %d tunnels open and %d close", o, c)
	}
	return out.Bytes()
}

// waitIdle waits until the server's goroutines for the connection have
// ended, so that no input leaks into the next one.
func (h *fuzzHarness) waitIdle(t testing.TB) {
	deadline := time.Now().Add(fuzzConnWait)
	for {
		g := connGoroutines()
		if len(g) == 0 {
			return
		}
		if time.Now().After(deadline) {
			msg := fmt.Sprintf("%d goroutines of the server outlived the connection by %v:\n\n%s",
				len(g), fuzzConnWait, strings.Join(g, "\n\n"))
			// Said now as well: the server's Close, at cleanup, waits for
			// these goroutines, so the test may only end at its timeout.
			fmt.Fprintln(os.Stderr, msg)
			t.Fatal(msg)
		}
		time.Sleep(100 * time.Microsecond) // poll interval
	}
}

// isConnEnd reports whether err is how a read ends when the server closed
// the connection: EOF, a reset, or the close_notify of TLS.
func isConnEnd(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return false
	}
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || strings.Contains(err.Error(), "connection reset") ||
		strings.Contains(err.Error(), "broken pipe")
}

// settlePing is the payload of the PING that settle sends.
var settlePing = [8]byte{'s', 'e', 't', 't', 'l', 'e', 'd', '?'}

// settlePingFrame is the PING frame that settle sends.
func settlePingFrame() []byte {
	var b bytes.Buffer
	_ = http2.NewFramer(&b, nil).WritePing(false, settlePing)
	return b.Bytes()
}

// Bounds of settle. Reaching them is no failure: a stream may wait for
// input that the harness does not send, or the machine may be slow.
const (
	settleQuiet = 50 * time.Millisecond
	settleMax   = 2 * time.Second
)

// settle lets the server act on in (the input and settle's PING) before
// the client closes, so that tunnels carry their data to the application
// and back (closing at once ends them all). It sends a PING after the
// input and waits for its
// acknowledgement, which the server's reader sends only once it has read
// what came before, and then until the server has ended every stream the
// client ended (the application echoes and closes). It stops waiting when
// the server has been quiet for settleQuiet, when it ends the connection
// (putting the read's result back), and after settleMax in any case.
func (h *fuzzHarness) settle(c *tls.Conn, in []byte, out *limitedBuffer, readDone chan error) error {
	if _, err := c.Write(settlePingFrame()); err != nil {
		return err
	}
	var ack bytes.Buffer
	if err := http2.NewFramer(&ack, nil).WritePing(true, settlePing); err != nil {
		return err
	}
	clientEnded := clientStreams(in).ended
	deadline := time.Now().Add(settleMax)
	acked, size, quietSince := false, out.Len(), time.Now()
	for time.Now().Before(deadline) {
		select {
		case err := <-readDone:
			readDone <- err
			return nil
		case <-time.After(time.Millisecond):
		}
		// Quiet for settleQuiet, acknowledged or not (a server that
		// waits for the rest of a frame never acknowledges): done.
		n := out.Len()
		if n == size {
			if time.Since(quietSince) >= settleQuiet {
				return nil
			}
			continue
		}
		size, quietSince = n, time.Now()
		if acked = acked || out.Contains(ack.Bytes()); !acked {
			continue
		}
		serverEnded := serverStreams(out.Bytes())
		done := true
		for id := range clientEnded {
			done = done && serverEnded[id]
		}
		if done {
			return nil
		}
	}
	return nil
}

// serverStreams returns the streams the server has ended (END_STREAM or
// RST_STREAM) in out so far.
func serverStreams(out []byte) map[uint32]bool {
	ended := map[uint32]bool{}
	fr := http2.NewFramer(nil, bytes.NewReader(out))
	fr.SetMaxReadFrameSize(1<<24 - 1)
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return ended
		}
		switch f := f.(type) {
		case *http2.RSTStreamFrame:
			ended[f.StreamID] = true
		case *http2.DataFrame:
			ended[f.StreamID] = ended[f.StreamID] || f.StreamEnded()
		case *http2.HeadersFrame:
			ended[f.StreamID] = ended[f.StreamID] || f.StreamEnded()
		}
	}
}

// limitedBuffer keeps the first max bytes written to it and discards the
// rest, so that a server that answers without end cannot exhaust the test.
// It is safe for one writer and concurrent readers.
type limitedBuffer struct {
	mu  sync.Mutex
	b   bytes.Buffer
	max int
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if room := l.max - l.b.Len(); room > 0 {
		l.b.Write(p[:min(room, len(p))])
	}
	return len(p), nil
}

func (l *limitedBuffer) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Len()
}

func (l *limitedBuffer) Contains(p []byte) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return bytes.Contains(l.b.Bytes(), p)
}

// Bytes returns what was kept; call it once the writer is done.
func (l *limitedBuffer) Bytes() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Bytes()
}

func heapObjects() uint64 {
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// inputStreams are the streams of the client's input: those it named in
// any frame, those it opened with HEADERS, and those it ended (END_STREAM)
// without resetting them.
type inputStreams struct{ named, opened, ended map[uint32]bool }

// clientStreams reads the client's input as leniently as any server would
// (large frames, any header list), so that it sees at least the streams
// the server saw.
func clientStreams(data []byte) inputStreams {
	streams := inputStreams{named: map[uint32]bool{}, opened: map[uint32]bool{}, ended: map[uint32]bool{}}
	data, ok := bytes.CutPrefix(data, []byte(http2.ClientPreface))
	if !ok {
		return streams
	}
	fr := http2.NewFramer(nil, bytes.NewReader(data))
	fr.SetMaxReadFrameSize(1<<24 - 1)
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				streams.named[se.StreamID] = true // the server may reset it
				continue
			}
			return streams
		}
		id := f.Header().StreamID
		streams.named[id] = true
		switch f := f.(type) {
		case *http2.HeadersFrame:
			streams.opened[id] = true
			if f.StreamEnded() {
				streams.ended[id] = true
			}
		case *http2.DataFrame:
			if f.StreamEnded() && streams.opened[id] {
				streams.ended[id] = true
			}
		case *http2.RSTStreamFrame:
			delete(streams.ended, id)
		}
	}
}

// checkServerOutput checks that out, what the server sent, is HTTP/2.
func checkServerOutput(t testing.TB, in, out []byte) {
	t.Helper()
	if len(out) == 0 {
		return // refused before HTTP/2 started, or said nothing
	}
	client := clientStreams(in)
	opened := client.opened
	fr := http2.NewFramer(nil, bytes.NewReader(out))
	fr.SetMaxReadFrameSize(1<<24 - 1)
	fr.ReadMetaHeaders = hpack.NewDecoder(1<<20, nil)
	fr.MaxHeaderListSize = 1 << 24
	for i := 0; ; i++ {
		f, err := fr.ReadFrame()
		if errors.Is(err, io.EOF) || len(out) >= fuzzMaxOutput && errors.Is(err, io.ErrUnexpectedEOF) {
			return
		}
		if err != nil {
			t.Fatalf("frame %d of the server's answer does not parse: %v\nanswer: %q", i, err, out)
		}
		if sf, ok := f.(*http2.SettingsFrame); i == 0 && (!ok || sf.IsAck()) {
			t.Fatalf("the server's first frame is %v, not its SETTINGS", f.Header())
		}
		id := f.Header().StreamID
		switch f := f.(type) {
		case *http2.PushPromiseFrame:
			t.Fatalf("the server sent PUSH_PROMISE")
		case *http2.MetaHeadersFrame:
			if !opened[id] {
				t.Fatalf("the server sent HEADERS on stream %d, which the client did not open", id)
			}
			if s := f.PseudoValue("status"); len(s) != 3 || s < "100" || s > "599" {
				t.Fatalf("the server answered stream %d with :status %q", id, s)
			}
		case *http2.DataFrame:
			if !opened[id] {
				t.Fatalf("the server sent DATA on stream %d, which the client did not open", id)
			}
		case *http2.RSTStreamFrame:
			// Also for a stream the client did not open: DATA on a
			// stream that is closed is a stream error (RFC 9113 5.1).
			if !client.named[id] {
				t.Fatalf("the server reset stream %d, which the client never named", id)
			}
		}
	}
}

// countStatus counts the HEADERS of out with :status s.
func countStatus(out []byte, s string) int {
	fr := http2.NewFramer(nil, bytes.NewReader(out))
	fr.SetMaxReadFrameSize(1<<24 - 1)
	fr.ReadMetaHeaders = hpack.NewDecoder(1<<20, nil)
	fr.MaxHeaderListSize = 1 << 24
	n := 0
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return n
		}
		if mh, ok := f.(*http2.MetaHeadersFrame); ok && mh.PseudoValue("status") == s {
			n++
		}
	}
}

type serverSeed struct {
	preface, settle bool
	data            []byte
}

// serverSeeds are the conversations the fuzzer starts from: tunnels that
// work, each refusal, and the frames a client may send around them.
func serverSeeds(t testing.TB) []serverSeed {
	frames := func(write func(fr *http2.Framer, enc func(...string) []byte)) []byte {
		var buf, block bytes.Buffer
		fr := http2.NewFramer(&buf, nil)
		henc := hpack.NewEncoder(&block)
		enc := func(kv ...string) []byte {
			block.Reset()
			for i := 0; i+1 < len(kv); i += 2 {
				if err := henc.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]}); err != nil {
					t.Fatal(err)
				}
			}
			return bytes.Clone(block.Bytes())
		}
		write(fr, enc)
		return buf.Bytes()
	}
	connect := func(authority string) func(*http2.Framer, func(...string) []byte) {
		return func(fr *http2.Framer, enc func(...string) []byte) {
			fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 20})
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: enc(":method", "CONNECT", ":authority", authority), EndHeaders: true})
			fr.WriteData(1, false, []byte("hello"))
			fr.WriteData(1, true, []byte(" world"))
		}
	}
	own := netip.AddrPortFrom(podIP, 8080).String()
	big := strings.Repeat("x", 20<<10)
	seeds := []serverSeed{
		{true, true, frames(connect(own))},
		{true, false, frames(connect(own))},
		{true, true, frames(connect(netip.AddrPortFrom(podIP, 8081).String()))}, // denied
		{true, true, frames(connect("[::ffff:127.0.0.1]:8080"))},
		{true, true, frames(connect("127.0.0.2:8080"))}, // another pod
		{true, true, frames(connect("127.0.0.1:9"))},    // dial fails
		{true, true, frames(connect("reviews.default:8080"))},
		{true, true, frames(func(fr *http2.Framer, enc func(...string) []byte) {
			fr.WriteSettings()
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: enc(":method", "GET", ":scheme", "https", ":path", "/", ":authority", own), EndHeaders: true, EndStream: true})
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: enc(":method", "CONNECT", ":authority", own, ":path", "/"), EndHeaders: true})
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 5, BlockFragment: enc(":method", "CONNECT"), EndHeaders: true})
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 7, BlockFragment: enc(":method", "CONNECT", ":authority", own, ":protocol", "websocket"), EndHeaders: true})
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 9, BlockFragment: enc(":method", "CONNECT", ":authority", own, "x-big", big), EndHeaders: true})
		})},
		{true, true, frames(func(fr *http2.Framer, enc func(...string) []byte) {
			fr.WriteSettings(http2.Setting{ID: http2.SettingMaxFrameSize, Val: 1 << 14}, http2.Setting{ID: http2.SettingHeaderTableSize, Val: 0})
			fr.WriteSettingsAck()
			fr.WritePing(false, [8]byte{1, 2, 3, 4, 5, 6, 7, 8})
			fr.WriteWindowUpdate(0, 1<<20)
			fr.WritePriority(1, http2.PriorityParam{StreamDep: 3, Weight: 7})
			block := enc(":method", "CONNECT", ":authority", own)
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block[:1]})
			fr.WriteContinuation(1, false, block[1:2])
			fr.WriteContinuation(1, true, block[2:])
			fr.WriteWindowUpdate(1, 1000)
			fr.WriteData(1, false, nil)
			fr.WriteRSTStream(1, http2.ErrCodeCancel)
			fr.WriteData(1, true, []byte("after reset"))
			fr.WriteGoAway(0, http2.ErrCodeNo, []byte("bye"))
		})},
		{true, true, frames(func(fr *http2.Framer, enc func(...string) []byte) {
			fr.WriteSettings()
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: enc(":method", "CONNECT", ":authority", own), EndHeaders: true})
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: enc(":method", "CONNECT", ":authority", own), EndHeaders: true})
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 2, BlockFragment: enc(":method", "CONNECT", ":authority", own), EndHeaders: true})
		})},
		{true, true, frames(func(fr *http2.Framer, enc func(...string) []byte) {
			fr.WriteSettings()
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: enc(":method", "CONNECT", ":authority", own), EndHeaders: true})
			fr.WriteData(1, false, bytes.Repeat([]byte("d"), 16<<10))
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: enc("trailer", "x"), EndHeaders: true, EndStream: true})
			fr.WriteRawFrame(0xfa, 0, 0, []byte("unknown frame type"))
			fr.WriteRawFrame(http2.FrameSettings, 0, 0, []byte{1, 2, 3})
		})},
		{true, true, nil},
		{false, false, []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")},
		{false, false, []byte("GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n")},
		{false, false, nil},
	}
	return seeds
}

// openedCount returns how many tunnels r saw open.
func openedCount(r *recorder) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.opened
}
