//lint:file-ignore SA1019 HBONE is built on golang.org/x/net/http2 (a required library), whose types v0.62 marks deprecated in favour of net/http

package hbone

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// HTTP/2 sizing.
//
// Frames: we accept DATA frames up to 64 KiB and send the largest the peer
// accepts, up to that. With one reader per connection writing each frame
// straight to its destination socket, bigger frames save little (a frame
// costs a header and a loop turn) but every connection keeps a read buffer
// the size of the largest frame.
//
// Windows: a stream may have streamWindow bytes in flight towards us. We
// return window as the bytes reach the destination socket, so the window
// bounds what we buffer for a destination that reads slower than its peer
// sends (nothing is buffered otherwise). It must cover the bandwidth-delay
// product as flow control sees it, and on busy cores the delay includes
// scheduling delays of milliseconds: 4 MiB is what the first version
// measured as enough for one stream at full speed on loopback. The
// connection window holds eight full stream windows: the point where a
// stalled stream starts to slow its neighbours.
const (
	maxFrameSize     = 64 << 10
	streamWindow     = 4 << 20
	connectionWindow = 8 * streamWindow
	// windowUpdateDivisor: consumed bytes are returned to the peer once
	// they reach this share of a window, not after every frame.
	windowUpdateDivisor = 4
	// maxConcurrentStreams is what a server accepts on one connection;
	// the pool opens fewer (PoolConfig.MaxStreamsPerConn).
	maxConcurrentStreams = 1000
	// headerTableSize is our HPACK decoder's dynamic table.
	headerTableSize = 4096
	// initialWindow is HTTP/2's window before SETTINGS say otherwise.
	initialWindow = 65535
)

// errUnprocessed fails a stream the server says it did not act on
// (RST_STREAM REFUSED_STREAM, or above the last stream of its GOAWAY): it
// is safe to send again, on another connection (RFC 9113 section 8.7).
var errUnprocessed = errors.New("hbone: the server refused the stream unprocessed")

// errConnClosed ends the streams of a connection that was closed on
// purpose.
var errConnClosed = errors.New("hbone: connection closed")

// conn is one HBONE connection, at either end: HTTP/2 framing over TLS,
// made for CONNECT tunnels and nothing else.
//
// Goroutines: one reader per connection (run by its owner: the Server's
// connection goroutine, or the Pool) reads every frame and delivers DATA
// itself, straight to the stream's destination socket when that takes it
// without blocking; a stream gets a goroutine of its own only while its
// destination is slower than its peer. Writes happen on the writer's own
// goroutine under wmu, several frames and TLS records gathered into one
// write. The reader does not write: the frames it owes (SETTINGS and PING
// acknowledgements, window updates, resets) are queued and written by the
// next writer, or by the connection's control writer if nobody writes. Its
// one exception is the last write before it closes the connection (a
// GOAWAY), bounded by lastWriteTimeout.
type conn struct {
	tc     *tls.Conn
	bc     *batchConn // under tc: gathers TLS records into one write
	client bool
	log    *slog.Logger

	fr *http2.Framer // reading side; the reader goroutine's only

	wmu  sync.Mutex
	wfr  *http2.Framer // writing side, into tc; under wmu
	henc *hpack.Encoder
	hbuf bytes.Buffer
	werr error // the first write error; every later write fails with it

	cmu     sync.Mutex
	control []controlFrame
	ctlWake chan struct{} // cap 1: control frames are waiting

	mu          sync.Mutex
	streams     map[uint32]*stream
	nextID      uint32 // client: the next stream ID
	lastPeerID  uint32 // server: the highest stream ID the peer opened
	sendWin     int64  // connection-level send window
	winWait     chan struct{}
	peerMaxSize uint32 // largest frame the peer accepts
	peerWindow  int32  // the peer's initial stream window
	peerStreams uint32 // the peer's stream limit
	recvUnacked int64  // connection-level bytes consumed and not returned
	handlers    int    // server: requests being served, reset or not
	goAwaySent  bool
	goAwayRecv  bool
	err         error         // why the connection ended; set once
	done        chan struct{} // closed when err is set

	// onGoAway is told once when the peer sends GOAWAY or the connection
	// ends (client side: the pool stops using it). It may run under wmu
	// and must not block.
	onGoAway   func()
	goAwayOnce sync.Once
	// onRequest is told of each new stream a client opens (server side),
	// on the reader goroutine: it must not block.
	onRequest func(*stream, request)
	br        *bufio.Reader
}

// controlFrame is a frame the reader owes the peer.
type controlFrame struct {
	typ    http2.FrameType
	stream uint32
	val    uint32 // window increment or error code
	ping   [8]byte
}

func newConn(tc *tls.Conn, bc *batchConn, client bool, maxHeaderBytes int, log *slog.Logger) *conn {
	c := &conn{
		tc:          tc,
		bc:          bc,
		client:      client,
		log:         log,
		ctlWake:     make(chan struct{}, 1),
		streams:     make(map[uint32]*stream),
		nextID:      1,
		sendWin:     initialWindow,
		winWait:     make(chan struct{}),
		peerMaxSize: 16 << 10,
		peerWindow:  initialWindow,
		peerStreams: maxConcurrentStreams,
		done:        make(chan struct{}),
	}
	// Most reads are small frames: a buffer lets one TLS record's worth
	// of them come in with one read. Large payloads bypass it.
	c.br = bufio.NewReaderSize(tc, 16<<10)
	c.fr = http2.NewFramer(nil, c.br)
	c.fr.SetMaxReadFrameSize(maxFrameSize)
	c.fr.ReadMetaHeaders = hpack.NewDecoder(headerTableSize, nil)
	c.fr.MaxHeaderListSize = uint32(maxHeaderBytes)
	c.fr.SetReuseFrames()
	c.wfr = http2.NewFramer(tc, nil)
	c.henc = hpack.NewEncoder(&c.hbuf)
	return c
}

// start writes the connection preface: the client's magic, our SETTINGS
// and the connection window beyond the default.
func (c *conn) start() error {
	settings := []http2.Setting{
		{ID: http2.SettingMaxFrameSize, Val: maxFrameSize},
		{ID: http2.SettingInitialWindowSize, Val: streamWindow},
		{ID: http2.SettingMaxHeaderListSize, Val: c.fr.MaxHeaderListSize},
	}
	if c.client {
		settings = append(settings, http2.Setting{ID: http2.SettingEnablePush, Val: 0})
	} else {
		settings = append(settings, http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: maxConcurrentStreams})
	}
	return c.write(func() error {
		if c.client {
			if _, err := io.WriteString(c.tc, http2.ClientPreface); err != nil {
				return err
			}
		}
		if err := c.wfr.WriteSettings(settings...); err != nil {
			return err
		}
		return c.wfr.WriteWindowUpdate(0, connectionWindow-initialWindow)
	})
}

// readPreface reads a client's connection preface (server side).
func (c *conn) readPreface() error {
	buf := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(c.br, buf); err != nil {
		return fmt.Errorf("reading the client preface: %w", err)
	}
	if string(buf) != http2.ClientPreface {
		return fmt.Errorf("bad client preface %q", buf)
	}
	return nil
}

// write runs fn, which writes frames with c.wfr, then the control frames
// waiting, and sends everything in one write. A failed write fails the
// connection: a frame may have gone out in part.
func (c *conn) write(fn func() error) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.writeLocked(fn)
}

// writeLocked is write for a caller that holds wmu.
func (c *conn) writeLocked(fn func() error) error {
	if c.werr != nil {
		return c.werr
	}
	c.bc.gather()
	err := fn()
	if err == nil {
		err = c.writeControlLocked()
	}
	if ferr := c.bc.flush(); err == nil {
		err = ferr
	}
	if err != nil {
		c.werr = fmt.Errorf("hbone: writing: %w", err)
		c.fail(c.werr)
		return c.werr
	}
	return nil
}

// queueControl queues a frame the reader owes and makes sure a writer
// sends it soon.
func (c *conn) queueControl(f controlFrame) {
	c.cmu.Lock()
	c.control = append(c.control, f)
	c.cmu.Unlock()
	select {
	case c.ctlWake <- struct{}{}:
	default:
	}
}

// controlWriter writes queued control frames when no other writer does.
// It ends with the connection.
func (c *conn) controlWriter() {
	for {
		select {
		case <-c.done:
			return
		case <-c.ctlWake:
		}
		c.cmu.Lock()
		n := len(c.control)
		c.cmu.Unlock()
		if n == 0 {
			continue // an earlier writer sent them
		}
		if err := c.write(func() error { return nil }); err != nil {
			return
		}
	}
}

func (c *conn) writeControlLocked() error {
	c.cmu.Lock()
	frames := c.control
	c.control = nil
	c.cmu.Unlock()
	for _, f := range frames {
		var err error
		switch f.typ {
		case http2.FrameSettings:
			err = c.wfr.WriteSettingsAck()
		case http2.FramePing:
			err = c.wfr.WritePing(true, f.ping)
		case http2.FrameWindowUpdate:
			err = c.wfr.WriteWindowUpdate(f.stream, f.val)
		case http2.FrameRSTStream:
			err = c.wfr.WriteRSTStream(f.stream, http2.ErrCode(f.val))
		case http2.FrameGoAway:
			c.mu.Lock()
			last := c.lastPeerID
			c.mu.Unlock()
			err = c.wfr.WriteGoAway(last, http2.ErrCode(f.val), nil)
		}
		if err != nil {
			return err
		}
	}
	if cap(frames) <= 64 {
		c.cmu.Lock()
		if c.control == nil {
			c.control = frames[:0]
		}
		c.cmu.Unlock()
	}
	return nil
}

// writeHeaders encodes fields (pseudo-headers first) as one HEADERS frame.
// The caller holds wmu. Our header blocks are tiny: they always fit the
// smallest frame a peer may set.
func (c *conn) writeHeaders(id uint32, end bool, fields ...hpack.HeaderField) error {
	c.hbuf.Reset()
	for _, f := range fields {
		if err := c.henc.WriteField(f); err != nil {
			return err
		}
	}
	return c.wfr.WriteHeaders(http2.HeadersFrameParam{
		StreamID:      id,
		BlockFragment: c.hbuf.Bytes(),
		EndStream:     end,
		EndHeaders:    true,
	})
}

// fail ends the connection with err: every stream fails, waiting writers
// wake, the TCP connection closes. The first error sticks.
func (c *conn) fail(err error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = err
	close(c.done)
	streams := c.streams
	c.streams = map[uint32]*stream{}
	close(c.winWait)
	c.winWait = make(chan struct{})
	c.mu.Unlock()
	for _, st := range streams {
		st.failed(err)
	}
	// Closing TCP under TLS ends a reader or a writer stuck on a peer
	// that stopped reading, without waiting to send close_notify.
	c.tc.NetConn().Close()
	c.noteGoAway()
}

func (c *conn) noteGoAway() {
	if c.onGoAway != nil {
		c.goAwayOnce.Do(c.onGoAway)
	}
}

// connError ends the connection after telling the peer why.
func (c *conn) connError(code http2.ErrCode, err error) error {
	c.queueControl(controlFrame{typ: http2.FrameGoAway, val: uint32(code)})
	c.lastWrite()
	err = fmt.Errorf("hbone: %v: %w", code, err)
	c.fail(err)
	return err
}

// closed reports whether the connection has ended, and why.
func (c *conn) closed() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// readLoop reads frames until the connection fails, and returns why.
func (c *conn) readLoop() error {
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				c.resetStream(se.StreamID, se.Code, fmt.Errorf("hbone: peer's frame: %w", se))
				continue
			}
			var ce http2.ConnectionError
			switch {
			case errors.As(err, &ce):
				return c.connError(http2.ErrCode(ce), err)
			case errors.Is(err, http2.ErrFrameTooLarge):
				return c.connError(http2.ErrCodeFrameSize, err)
			}
			if cerr := c.closed(); cerr != nil {
				return cerr
			}
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			err = fmt.Errorf("hbone: reading: %w", err)
			c.fail(err)
			return err
		}
		if err := c.handle(f); err != nil {
			var ce http2.ConnectionError
			if errors.As(err, &ce) {
				return c.connError(http2.ErrCode(ce), err)
			}
			c.fail(err)
			return err
		}
	}
}

// handle processes one frame on the reader goroutine. A returned error is
// a connection error.
func (c *conn) handle(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.DataFrame:
		return c.onData(f)
	case *http2.MetaHeadersFrame:
		return c.onHeaders(f)
	case *http2.SettingsFrame:
		return c.onSettings(f)
	case *http2.WindowUpdateFrame:
		return c.onWindowUpdate(f)
	case *http2.RSTStreamFrame:
		if st := c.stream(f.StreamID); st != nil {
			err := fmt.Errorf("hbone: stream reset by peer: %w", http2.StreamError{StreamID: f.StreamID, Code: f.ErrCode})
			if f.ErrCode == http2.ErrCodeRefusedStream {
				err = fmt.Errorf("%w: %w", errUnprocessed, err)
			}
			st.failed(err)
			c.forget(st)
		}
		return nil
	case *http2.PingFrame:
		if !f.IsAck() {
			c.queueControl(controlFrame{typ: http2.FramePing, ping: f.Data})
		}
		return nil
	case *http2.GoAwayFrame:
		c.onGoAwayFrame(f)
		return nil
	case *http2.PushPromiseFrame:
		return http2.ConnectionError(http2.ErrCodeProtocol)
	default:
		// PRIORITY and unknown frame types carry nothing for us.
		return nil
	}
}

func (c *conn) onSettings(f *http2.SettingsFrame) error {
	if f.IsAck() {
		return nil
	}
	if err := f.ForeachSetting(func(s http2.Setting) error { return s.Valid() }); err != nil {
		return err
	}
	// Lock order: wmu before mu, as writers take them.
	if v, ok := f.Value(http2.SettingHeaderTableSize); ok {
		c.wmu.Lock()
		c.henc.SetMaxDynamicTableSizeLimit(v)
		c.wmu.Unlock()
	}
	c.mu.Lock()
	if v, ok := f.Value(http2.SettingMaxFrameSize); ok {
		c.peerMaxSize = v
	}
	if v, ok := f.Value(http2.SettingMaxConcurrentStreams); ok {
		c.peerStreams = v
	}
	if v, ok := f.Value(http2.SettingInitialWindowSize); ok {
		// A new initial window moves every stream's send window by the
		// difference (RFC 9113 section 6.9.2).
		delta := int64(v) - int64(c.peerWindow)
		c.peerWindow = int32(v)
		for _, st := range c.streams {
			st.sendWin += delta
		}
		c.wakeSendersLocked()
	}
	c.mu.Unlock()
	c.queueControl(controlFrame{typ: http2.FrameSettings})
	return nil
}

// maxWindow is the largest flow-control window HTTP/2 allows.
const maxWindow = 1<<31 - 1

func (c *conn) onWindowUpdate(f *http2.WindowUpdateFrame) error {
	c.mu.Lock()
	var overflow *stream
	if f.StreamID == 0 {
		c.sendWin += int64(f.Increment)
		if c.sendWin > maxWindow {
			c.mu.Unlock()
			return http2.ConnectionError(http2.ErrCodeFlowControl)
		}
	} else if st := c.streams[f.StreamID]; st != nil {
		st.sendWin += int64(f.Increment)
		if st.sendWin > maxWindow {
			overflow = st
		}
	}
	c.wakeSendersLocked()
	c.mu.Unlock()
	if overflow != nil {
		c.resetStream(overflow.id, http2.ErrCodeFlowControl, errors.New("hbone: peer's window update overflows the window"))
	}
	return nil
}

func (c *conn) wakeSendersLocked() {
	close(c.winWait)
	c.winWait = make(chan struct{})
}

func (c *conn) onGoAwayFrame(f *http2.GoAwayFrame) {
	c.mu.Lock()
	c.goAwayRecv = true
	var refused []*stream
	if c.client {
		// Streams the server never saw: it will not answer them.
		for id, st := range c.streams {
			if id > f.LastStreamID {
				refused = append(refused, st)
				delete(c.streams, id)
			}
		}
	}
	c.mu.Unlock()
	for _, st := range refused {
		st.failed(fmt.Errorf("%w: the server is going away (%v)", errUnprocessed, f.ErrCode))
	}
	if f.ErrCode != http2.ErrCodeNo {
		c.log.Debug("hbone peer sent GOAWAY", "code", f.ErrCode, "debug", string(f.DebugData()))
	}
	c.noteGoAway()
	c.maybeCloseIdle()
}

// goAway tells the peer that no new streams will be served (server side,
// graceful shutdown); the connection closes once its streams have ended.
func (c *conn) goAway() {
	c.mu.Lock()
	if c.goAwaySent || c.err != nil {
		c.mu.Unlock()
		return
	}
	c.goAwaySent = true
	c.mu.Unlock()
	c.queueControl(controlFrame{typ: http2.FrameGoAway, val: uint32(http2.ErrCodeNo)})
	c.maybeCloseIdle()
}

// maybeCloseIdle closes a connection that is going away and has no
// streams left.
func (c *conn) maybeCloseIdle() {
	c.mu.Lock()
	idle := len(c.streams) == 0 && (c.goAwaySent || c.goAwayRecv) && c.err == nil
	c.mu.Unlock()
	if idle {
		c.lastWrite()
		c.close()
	}
}

// lastWriteTimeout bounds the final write before a connection closes (a
// GOAWAY): a peer that does not read must not hold the closing up.
const lastWriteTimeout = time.Second

// lastWrite sends the frames still queued, giving up after
// lastWriteTimeout.
func (c *conn) lastWrite() {
	_ = c.tc.NetConn().SetWriteDeadline(time.Now().Add(lastWriteTimeout))
	_ = c.write(func() error { return nil })
}

// close ends the connection and fails its streams.
func (c *conn) close() {
	c.fail(errConnClosed)
}

// stream returns the open stream id, or nil.
func (c *conn) stream(id uint32) *stream {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.streams[id]
}

// forget removes a finished stream.
func (c *conn) forget(st *stream) {
	c.mu.Lock()
	if c.streams[st.id] == st {
		delete(c.streams, st.id)
	}
	c.mu.Unlock()
	c.maybeCloseIdle()
}

// resetStream resets stream id with code, failing our side of it.
func (c *conn) resetStream(id uint32, code http2.ErrCode, err error) {
	if st := c.stream(id); st != nil {
		st.failed(err)
		c.forget(st)
	}
	c.queueControl(controlFrame{typ: http2.FrameRSTStream, stream: id, val: uint32(code)})
}

// onData delivers a DATA frame. Flow control counts the whole payload,
// padding included; the connection's share of padding and of frames for
// streams already gone is returned at once.
func (c *conn) onData(f *http2.DataFrame) error {
	size := int64(f.Length)
	c.mu.Lock()
	st := c.streams[f.StreamID]
	unknown := st == nil && f.StreamID > c.highestID()
	c.mu.Unlock()
	if unknown {
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	data := f.Data()
	if pad := size - int64(len(data)); pad > 0 {
		c.consumed(nil, pad)
	}
	if st == nil {
		c.consumed(nil, int64(len(data)))
		c.queueControl(controlFrame{typ: http2.FrameRSTStream, stream: f.StreamID, val: uint32(http2.ErrCodeStreamClosed)})
		return nil
	}
	if err := st.receive(data, f.StreamEnded()); err != nil {
		c.consumed(nil, int64(len(data)))
		c.resetStream(st.id, http2.ErrCodeFlowControl, err)
	}
	return nil
}

// highestID is the highest stream ID opened so far on either side.
// Caller holds mu.
func (c *conn) highestID() uint32 {
	if c.client {
		return c.nextID - 2
	}
	return c.lastPeerID
}

// consumed returns n bytes of window to the peer: the connection's, and
// st's when st is not nil. Updates are coalesced until a quarter of the
// window is due.
func (c *conn) consumed(st *stream, n int64) {
	if n <= 0 {
		return
	}
	c.mu.Lock()
	c.recvUnacked += n
	var connInc int64
	if c.recvUnacked >= connectionWindow/windowUpdateDivisor {
		connInc, c.recvUnacked = c.recvUnacked, 0
	}
	c.mu.Unlock()
	if connInc > 0 {
		c.queueControl(controlFrame{typ: http2.FrameWindowUpdate, val: uint32(connInc)})
	}
	if st != nil {
		if inc := st.returnWindow(n); inc > 0 {
			c.queueControl(controlFrame{typ: http2.FrameWindowUpdate, stream: st.id, val: uint32(inc)})
		}
	}
}

// reserveSend waits until st may send at least one byte and takes up to
// want bytes of both send windows. It fails when the stream or the
// connection fails.
func (c *conn) reserveSend(st *stream, want int) (int, error) {
	for {
		if st.isReset() {
			return 0, st.rerr
		}
		c.mu.Lock()
		if c.err != nil {
			err := c.err
			c.mu.Unlock()
			return 0, err
		}
		n := min(int64(want), c.sendWin, st.sendWin, int64(c.peerMaxSize), maxFrameSize)
		if n > 0 {
			c.sendWin -= n
			st.sendWin -= n
			c.mu.Unlock()
			return int(n), nil
		}
		wait := c.winWait
		c.mu.Unlock()
		select {
		case <-wait:
		case <-st.resetCh:
			return 0, st.resetErr()
		}
	}
}

// batchConn sits under TLS and gathers the records of one write call of
// ours into a single write to the socket: crypto/tls writes every record
// (16 KiB at most) on its own, and a frame is many records.
//
// When the connection is a socket, reads and the gathered writes go
// through a rawSocket.
type batchConn struct {
	net.Conn
	rs        *rawSocket
	mu        sync.Mutex
	gathering bool
	buf       []byte
}

func newBatchConn(c net.Conn) *batchConn {
	return &batchConn{Conn: c, rs: newRawSocket(c)}
}

func (b *batchConn) Read(p []byte) (int, error) {
	if b.rs != nil {
		return b.rs.Read(p)
	}
	return b.Conn.Read(p)
}

// out is where gathered bytes go.
func (b *batchConn) out(p []byte) (int, error) {
	if b.rs != nil {
		return b.rs.Write(p)
	}
	return b.Conn.Write(p)
}

// largeBatch: a batch buffer grown past this goes back to the pool after
// its write, so an idle connection holds only a small one.
const largeBatch = 64 << 10

var batchBuffers = sync.Pool{New: func() any { b := make([]byte, 0, maxFrameSize+4<<10); return &b }}

func (b *batchConn) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.gathering {
		return b.out(p)
	}
	if len(b.buf)+len(p) > cap(b.buf) && cap(b.buf) < largeBatch {
		bp := batchBuffers.Get().(*[]byte)
		b.buf = append((*bp)[:0], b.buf...)
	}
	b.buf = append(b.buf, p...)
	return len(p), nil
}

// gather starts collecting writes.
func (b *batchConn) gather() {
	b.mu.Lock()
	b.gathering = true
	b.mu.Unlock()
}

// flush writes what was gathered and stops gathering.
func (b *batchConn) flush() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.gathering = false
	if len(b.buf) == 0 {
		return nil
	}
	_, err := b.out(b.buf)
	if cap(b.buf) >= largeBatch {
		buf := b.buf[:0]
		batchBuffers.Put(&buf)
		b.buf = nil
	} else {
		b.buf = b.buf[:0]
	}
	return err
}
