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
	"sync/atomic"
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
// connection window (connConfig.window, DefaultConnectionWindow) bounds
// what the whole connection buffers; where it holds several full stream
// windows, a stalled stream does not slow its neighbours.
const (
	maxFrameSize = 64 << 10
	streamWindow = 4 << 20
	// windowUpdateDivisor: consumed bytes are returned to the peer once
	// they reach this share of a window, not after every frame.
	windowUpdateDivisor = 4
	// maxConcurrentStreams is the stream limit we assume of a peer until
	// its SETTINGS say otherwise.
	maxConcurrentStreams = 1000
	// headerTableSize is our HPACK decoder's dynamic table.
	headerTableSize = 4096
	// initialWindow is HTTP/2's window before SETTINGS say otherwise.
	initialWindow = 65535
)

// Defaults of the per-connection limits (ServerConfig, PoolConfig).
const (
	// DefaultConnectionWindow is the connection-level receive window: the
	// most one connection holds for destinations slower than its peer.
	// Four stream windows, as Istio's ztunnel.
	DefaultConnectionWindow = 4 * streamWindow
	// DefaultMaxStreamsPerConnection is the streams a server serves at
	// once on one connection (SETTINGS_MAX_CONCURRENT_STREAMS); clients
	// open more connections beyond it. Pools, ours and Istio's, open 100.
	DefaultMaxStreamsPerConnection = 100
	// DefaultMaxControlFrames bounds the frames the reader owes the peer
	// (acknowledgements, resets, window updates) while nothing can be
	// written: a peer that makes us owe more ends the connection.
	DefaultMaxControlFrames = 1000
	// DefaultMaxIdleFrames bounds the frames in a row that carry nothing
	// (see conn.idleFrame): more end the connection.
	DefaultMaxIdleFrames = 1000
	// DefaultWriteTimeout bounds a write that the other end of a socket
	// does not take: a peer or an application that stops reading.
	DefaultWriteTimeout = time.Minute
	// DefaultServerIdleTimeout closes a server connection that has had
	// no stream for this long. It is longer than the pools' idle timeout
	// (DefaultIdleTimeout), so that clients close theirs first.
	DefaultServerIdleTimeout = 10 * time.Minute
)

// connConfig bounds one connection.
type connConfig struct {
	maxHeaderBytes int
	window         int64  // connection-level receive window
	maxStreams     uint32 // server: streams served at once
	maxControl     int    // frames owed to the peer
	maxIdleFrames  int32  // frames in a row that carry nothing
	writeTimeout   time.Duration
	idleTimeout    time.Duration // server: no streams for this long closes it; 0: never
	adm            *admission    // server: the node-wide limits
}

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
//
// Bounds (flood.go): the queue of frames owed holds at most maxControl
// frames, and at most maxIdleFrames frames in a row may carry nothing; a
// peer beyond either gets GOAWAY ENHANCE_YOUR_CALM and the connection
// ends. Every write that the peer does not take at once is bounded by
// writeTimeout.
type conn struct {
	tc     *tls.Conn
	bc     *batchConn // under tc: gathers TLS records into one write
	client bool
	cfg    connConfig
	log    *slog.Logger

	fr *http2.Framer // reading side; the reader goroutine's only

	wmu  sync.Mutex
	wfr  *http2.Framer // writing side, into tc; under wmu
	henc *hpack.Encoder
	hbuf bytes.Buffer
	werr error // the first write error; every later write fails with it

	cmu     sync.Mutex
	control []controlFrame
	flood   error         // set when the peer flooded us: only the GOAWAY is owed now
	ctlWake chan struct{} // cap 1: control frames are waiting

	// idleFrames counts frames in a row that carry nothing; the reader
	// adds, and anything useful (our DATA included) resets it.
	idleFrames atomic.Int32

	mu          sync.Mutex
	streams     map[uint32]*stream
	nextID      uint32 // client: the next stream ID
	lastPeerID  uint32 // server: the highest stream ID the peer opened
	sendWin     int64  // connection-level send window
	winWait     chan struct{}
	peerMaxSize uint32 // largest frame the peer accepts
	peerWindow  int32  // the peer's initial stream window
	peerStreams uint32 // the peer's stream limit
	recvWin     int64  // connection-level: what the peer may still send
	// peerTableSize is the peer's SETTINGS_HEADER_TABLE_SIZE, for the
	// encoder's next header block when peerTableSizeSet.
	peerTableSize    uint32
	peerTableSizeSet bool
	recvUnacked      int64     // connection-level bytes consumed and not returned
	handlers         int       // server: requests being served, reset or not
	lastActive       time.Time // when the last stream or request ended
	goAwaySent       bool
	goAwayRecv       bool
	err              error         // why the connection ended; set once
	done             chan struct{} // closed when err is set

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

func newConn(tc *tls.Conn, bc *batchConn, client bool, cfg connConfig, log *slog.Logger) *conn {
	c := &conn{
		tc:          tc,
		bc:          bc,
		client:      client,
		cfg:         cfg,
		log:         log,
		ctlWake:     make(chan struct{}, 1),
		streams:     make(map[uint32]*stream),
		nextID:      1,
		sendWin:     initialWindow,
		winWait:     make(chan struct{}),
		peerMaxSize: 16 << 10,
		peerWindow:  initialWindow,
		peerStreams: maxConcurrentStreams,
		recvWin:     cfg.window,
		lastActive:  time.Now(),
		done:        make(chan struct{}),
	}
	// Most reads are small frames: a buffer lets one TLS record's worth
	// of them come in with one read. Large payloads bypass it.
	c.br = bufio.NewReaderSize(tc, 16<<10)
	c.fr = http2.NewFramer(nil, &frameMeter{r: c.br, c: c})
	c.fr.SetMaxReadFrameSize(maxFrameSize)
	c.fr.ReadMetaHeaders = hpack.NewDecoder(headerTableSize, nil)
	c.fr.MaxHeaderListSize = uint32(cfg.maxHeaderBytes)
	c.fr.SetReuseFrames()
	c.wfr = http2.NewFramer(tc, nil)
	c.henc = hpack.NewEncoder(&c.hbuf)
	bc.writeTimeout.Store(int64(cfg.writeTimeout))
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
		settings = append(settings, http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: c.cfg.maxStreams})
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
		if inc := c.cfg.window - initialWindow; inc > 0 {
			return c.wfr.WriteWindowUpdate(0, uint32(inc))
		}
		return nil
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
// sends it soon. A peer that makes us owe more than maxControl frames
// while nothing can be written (it does not read) is flooding us: the
// frames owed are dropped for a GOAWAY ENHANCE_YOUR_CALM, and the
// connection ends (endFlood, by the reader or the control writer).
func (c *conn) queueControl(f controlFrame) {
	c.cmu.Lock()
	switch {
	case c.flood != nil:
		// Ending: nothing is owed but the GOAWAY.
	case len(c.control) >= c.cfg.maxControl:
		c.setFloodLocked(fmt.Errorf("%w: more than %d frames owed to a peer that does not read them", errFlood, c.cfg.maxControl))
	default:
		c.control = append(c.control, f)
	}
	c.cmu.Unlock()
	select {
	case c.ctlWake <- struct{}{}:
	default:
	}
}

// controlWriter writes queued control frames when no other writer does,
// and closes a server connection that stays without streams for
// idleTimeout. It ends with the connection.
func (c *conn) controlWriter() {
	var idle <-chan time.Time
	var timer *time.Timer
	if c.cfg.idleTimeout > 0 {
		timer = time.NewTimer(c.cfg.idleTimeout)
		defer timer.Stop()
		idle = timer.C
	}
	for {
		select {
		case <-c.done:
			return
		case <-idle:
			if left := c.idleLeft(); left > 0 {
				timer.Reset(left)
			} else {
				c.log.Debug("hbone connection idle: closing it", "idle_timeout", c.cfg.idleTimeout)
				c.goAway() // closes it now, or when a stream that just came ends
			}
			continue
		case <-c.ctlWake:
		}
		if err := c.flooded(); err != nil {
			c.endFlood(err)
			return
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

// idleLeft is how much longer a server connection may stay without
// streams before it is closed; at most 0 when that time has come.
func (c *conn) idleLeft() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.streams) > 0 || c.handlers > 0 {
		return c.cfg.idleTimeout
	}
	return c.cfg.idleTimeout - time.Since(c.lastActive)
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
	c.mu.Lock()
	size, set := c.peerTableSize, c.peerTableSizeSet
	c.peerTableSizeSet = false
	c.mu.Unlock()
	if set {
		c.henc.SetMaxDynamicTableSizeLimit(size)
	}
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
				if err := c.idleFrame(); err != nil {
					return c.endFlood(err)
				}
				continue
			}
			var ce http2.ConnectionError
			switch {
			case errors.Is(err, errFlood):
				return c.endFlood(err)
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
		err = c.handle(f)
		if err == nil {
			// A writer may have found the queue of frames owed full.
			err = c.flooded()
		}
		if err != nil {
			var ce http2.ConnectionError
			switch {
			case errors.Is(err, errFlood):
				return c.endFlood(err)
			case errors.As(err, &ce):
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
		if err := c.onSettings(f); err != nil {
			return err
		}
		return c.idleFrame()
	case *http2.WindowUpdateFrame:
		if err := c.onWindowUpdate(f); err != nil {
			return err
		}
		return c.idleFrame()
	case *http2.RSTStreamFrame:
		if st := c.stream(f.StreamID); st != nil {
			err := fmt.Errorf("hbone: stream reset by peer: %w", http2.StreamError{StreamID: f.StreamID, Code: f.ErrCode})
			if f.ErrCode == http2.ErrCodeRefusedStream {
				err = fmt.Errorf("%w: %w", errUnprocessed, err)
			}
			st.failed(err)
			c.forget(st)
		}
		return c.idleFrame()
	case *http2.PingFrame:
		if !f.IsAck() {
			// Not counted: keepalives may be all a quiet connection
			// carries. What we owe for them is bounded by maxControl.
			c.queueControl(controlFrame{typ: http2.FramePing, ping: f.Data})
			return nil
		}
		return c.idleFrame() // we never send PING
	case *http2.GoAwayFrame:
		c.onGoAwayFrame(f)
		return c.idleFrame()
	case *http2.PushPromiseFrame:
		return http2.ConnectionError(http2.ErrCodeProtocol)
	default:
		// PRIORITY and unknown frame types carry nothing for us.
		return c.idleFrame()
	}
}

func (c *conn) onSettings(f *http2.SettingsFrame) error {
	if f.IsAck() {
		return nil
	}
	if err := f.ForeachSetting(func(s http2.Setting) error { return s.Valid() }); err != nil {
		return err
	}
	c.mu.Lock()
	if v, ok := f.Value(http2.SettingHeaderTableSize); ok {
		// The encoder is the writers': the next header block we write
		// takes it (writeHeaders). The reader must not wait for wmu,
		// which a writer holds while the peer does not read.
		c.peerTableSize, c.peerTableSizeSet = v, true
	}
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
	c.bc.closeBy(time.Now().Add(lastWriteTimeout))
	_ = c.write(func() error { return nil })
}

// close ends the connection and fails its streams.
func (c *conn) close() {
	c.fail(errConnClosed)
}

// takeBuffer counts n bytes queued for a slow destination against the
// node's limits (server side), and reports whether they fit.
func (c *conn) takeBuffer(n int64) bool {
	return c.cfg.adm == nil || c.cfg.adm.takeBuffer(n)
}

// freeBuffer counts n queued bytes gone.
func (c *conn) freeBuffer(n int64) {
	if c.cfg.adm != nil && n > 0 {
		c.cfg.adm.freeBuffer(n)
	}
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
		c.lastActive = time.Now()
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
// streams already gone is returned at once. A peer that sends beyond the
// connection window breaks flow control (a connection error): the window
// is what bounds the memory one connection may hold.
func (c *conn) onData(f *http2.DataFrame) error {
	size := int64(f.Length)
	c.mu.Lock()
	if size > c.recvWin {
		c.mu.Unlock()
		return http2.ConnectionError(http2.ErrCodeFlowControl)
	}
	c.recvWin -= size
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
		if size == 0 {
			return nil // counted by the frameMeter if it did not end the stream
		}
		return c.idleFrame()
	}
	if err := st.receive(data, f.StreamEnded()); err != nil {
		c.consumed(nil, int64(len(data)))
		c.resetStream(st.id, http2.ErrCodeFlowControl, err)
		return c.idleFrame()
	}
	switch {
	case len(data) > 0:
		c.busy()
	case size > 0 && !f.StreamEnded():
		return c.idleFrame() // padding alone
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
	if c.recvUnacked >= c.cfg.window/windowUpdateDivisor {
		connInc, c.recvUnacked = c.recvUnacked, 0
		c.recvWin += connInc
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
			c.busy() // the peer's WINDOW_UPDATEs answer our DATA
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
//
// Writes the socket does not take at once wait at most writeTimeout (none
// while it is 0: during the TLS handshake, which has a deadline of its
// own); once closeBy has set the connection's last deadline, no write
// waits past it.
type batchConn struct {
	net.Conn
	rs        *rawSocket
	mu        sync.Mutex
	gathering bool
	buf       []byte

	writeTimeout atomic.Int64 // a time.Duration
	closing      atomic.Bool
	closeAt      atomic.Int64 // UnixNano; set before closing
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

// out is where gathered bytes go. A socket gets them without a deadline
// when it takes them at once, which is nearly always (setting one costs
// more than the write of a small frame), and with one otherwise.
func (b *batchConn) out(p []byte) (int, error) {
	if b.closing.Load() {
		_ = b.Conn.SetWriteDeadline(time.Unix(0, b.closeAt.Load()))
		return b.write(p)
	}
	timeout := time.Duration(b.writeTimeout.Load())
	if timeout <= 0 {
		return b.write(p)
	}
	if b.rs == nil {
		if err := b.Conn.SetWriteDeadline(time.Now().Add(timeout)); err != nil {
			return 0, err
		}
		return b.Conn.Write(p)
	}
	n, err := b.rs.writeNow(p)
	if err != nil || n == len(p) {
		return n, err
	}
	// The peer is not taking our bytes as fast as we send them.
	if err := b.Conn.SetWriteDeadline(time.Now().Add(timeout)); err != nil {
		return n, err
	}
	if b.closing.Load() { // closeBy came in between: its deadline stands
		_ = b.Conn.SetWriteDeadline(time.Unix(0, b.closeAt.Load()))
	}
	m, err := b.rs.Write(p[n:])
	if err == nil && !b.closing.Load() {
		// An expired deadline would fail the next writeNow at once.
		err = b.Conn.SetWriteDeadline(time.Time{})
	}
	return n + m, err
}

func (b *batchConn) write(p []byte) (int, error) {
	if b.rs != nil {
		return b.rs.Write(p)
	}
	return b.Conn.Write(p)
}

// closeBy bounds every write from now on by t, those waiting included:
// the connection's last write (a GOAWAY) must not wait on a peer that does
// not read.
func (b *batchConn) closeBy(t time.Time) {
	b.closeAt.Store(t.UnixNano())
	b.closing.Store(true)
	_ = b.Conn.SetWriteDeadline(t)
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
