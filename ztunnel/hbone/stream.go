//lint:file-ignore SA1019 HBONE is built on golang.org/x/net/http2 (a required library), whose types v0.62 marks deprecated in favour of net/http

package hbone

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"golang.org/x/net/http2"
)

// stream is one CONNECT tunnel on a conn.
//
// Receiving: the connection's reader hands each DATA payload to receive.
// Once a sink (the TCP connection at our end of the tunnel) is attached,
// receive writes the payload to it at once if the socket takes it without
// blocking, which is nearly always; what it does not take is queued and a
// drain goroutine writes it out, blocking, while the reader goes on with
// other streams. Without a sink, Read takes from the queue. Window is
// returned to the peer as bytes leave the queue, so the queue never holds
// more than one stream window.
//
// Sending: the writer's goroutine sends DATA frames itself (send, or
// pipe's loop reading the sink), waiting for window when there is none.
type stream struct {
	c  *conn
	id uint32

	sendWin int64 // guarded by c.mu

	// resetCh closes when the stream fails: reset by either side, or the
	// connection ended. rerr says why.
	resetCh   chan struct{}
	resetOnce sync.Once
	rerr      error

	// resp carries the response status to a client's openStream.
	resp chan int

	mu        sync.Mutex
	wake      chan struct{} // cap 1: the queue, the end or a failure changed
	queue     []chunk
	queued    int
	recvWin   int64 // what the peer may still send
	unacked   int64 // bytes consumed since the last window update
	recvEnd   bool  // the peer ended its side (END_STREAM)
	delivered bool  // ... and that end has been passed on
	recvDone  chan struct{}
	sink      net.Conn
	raw       *rawSocket // the sink's, if it is a socket
	draining  bool       // a drain goroutine owns writes to the sink
	drainWG   sync.WaitGroup
	down      int64 // bytes delivered to the sink or to Read
	sendEnd   bool  // we ended our side
	sinkErr   error // writing to the sink failed
}

// chunk is queued received data in a pooled buffer.
type chunk struct {
	buf  *[]byte
	data []byte
}

var chunkBuffers = sync.Pool{New: func() any { b := make([]byte, maxFrameSize); return &b }}

func newStream(c *conn, id uint32) *stream {
	return &stream{
		c:        c,
		id:       id,
		resetCh:  make(chan struct{}),
		resp:     make(chan int, 1),
		wake:     make(chan struct{}, 1),
		recvWin:  streamWindow,
		recvDone: make(chan struct{}),
	}
}

func (st *stream) signal() {
	select {
	case st.wake <- struct{}{}:
	default:
	}
}

// failed ends the stream with err: its waiters wake, its sink closes.
func (st *stream) failed(err error) {
	st.resetOnce.Do(func() {
		st.rerr = err
		close(st.resetCh)
		st.mu.Lock()
		sink := st.sink
		var dropped int64
		if sink != nil && !st.draining {
			// Nobody will write it out. Without a sink a reader may
			// still take what came before the reset (a refusal's body).
			dropped = st.dropQueueLocked()
		}
		st.mu.Unlock()
		st.c.consumed(nil, dropped)
		st.signal()
		if sink != nil {
			// Ends a pipe blocked reading the sink, and a drain
			// blocked writing it.
			_ = sink.Close()
		}
	})
}

func (st *stream) resetErr() error {
	<-st.resetCh
	return st.rerr
}

func (st *stream) isReset() bool {
	select {
	case <-st.resetCh:
		return true
	default:
		return false
	}
}

// cancel resets the stream from our side with code. The RST_STREAM is
// queued like the reader's frames, not written here: cancel also runs on
// the reader, which must never wait on a peer that does not read.
func (st *stream) cancel(code http2.ErrCode, why error) {
	if st.isReset() {
		return
	}
	st.failed(fmt.Errorf("%w: %w", errStreamCancelled, why))
	st.c.queueControl(controlFrame{typ: http2.FrameRSTStream, stream: st.id, val: uint32(code)})
	st.c.forget(st)
}

// receive takes a DATA payload on the reader goroutine. It must not block.
// The returned error is a stream error (the peer broke flow control).
func (st *stream) receive(data []byte, end bool) error {
	var consumed int64
	st.mu.Lock()
	switch {
	case st.recvEnd:
		st.mu.Unlock()
		return errors.New("DATA after the end of the stream")
	case int64(len(data)) > st.recvWin:
		st.mu.Unlock()
		return fmt.Errorf("DATA beyond the window (%d bytes, %d allowed)", len(data), st.recvWin)
	}
	st.recvWin -= int64(len(data))
	if st.isReset() || st.sinkErr != nil {
		// Nobody will read it: give the connection its window back.
		st.mu.Unlock()
		st.c.consumed(nil, int64(len(data)))
		return nil
	}
	if len(data) > 0 && st.queued == 0 && st.raw != nil && !st.draining {
		n, err := st.raw.writeNow(data)
		consumed = int64(n)
		st.down += int64(n)
		data = data[n:]
		if err != nil {
			st.sinkErr = err
			st.mu.Unlock()
			st.c.consumed(nil, consumed+int64(len(data)))
			st.cancel(http2.ErrCodeCancel, fmt.Errorf("writing to the destination: %w", err))
			return nil
		}
	}
	if len(data) > 0 && !st.c.takeBuffer(int64(len(data))) {
		// The node holds all it may for slow destinations (or this
		// client its share of it): this stream must wait no more.
		st.mu.Unlock()
		st.c.consumed(nil, consumed+int64(len(data)))
		// Counted by the Limiter (a metric); a log line per reset would
		// let a client that provokes them flood the log.
		st.c.log.Debug("hbone stream reset: the node's buffer for slow destinations is full", "stream", st.id)
		st.cancel(http2.ErrCodeEnhanceYourCalm, errBufferFull)
		return nil
	}
	st.enqueueLocked(data)
	if end {
		st.recvEnd = true
	}
	st.deliverLocked()
	st.mu.Unlock()
	st.c.consumed(st, consumed)
	return nil
}

// enqueueLocked copies data to the end of the queue, filling the last
// chunk before taking another, so that many small frames queued behind a
// slow destination take about as much memory as they carry. A drain may be
// writing the last chunk's bytes meanwhile: appending never touches them.
func (st *stream) enqueueLocked(data []byte) {
	st.queued += len(data)
	if n := len(st.queue); n > 0 {
		tail := &st.queue[n-1]
		k := min(len(data), cap(tail.data)-len(tail.data))
		tail.data = append(tail.data, data[:k]...)
		data = data[k:]
	}
	for len(data) > 0 {
		bp := chunkBuffers.Get().(*[]byte)
		k := copy(*bp, data)
		st.queue = append(st.queue, chunk{buf: bp, data: (*bp)[:k]})
		data = data[k:]
	}
}

// deliverLocked moves things on after the queue or the end changed: with
// a sink, an end reached with nothing queued half-closes it and queued
// data starts a drain; without, a Read is woken.
func (st *stream) deliverLocked() {
	if st.sink == nil {
		st.signal()
		return
	}
	if st.draining {
		return
	}
	if st.queued > 0 {
		st.draining = true
		st.drainWG.Add(1)
		go st.drain()
		return
	}
	if st.recvEnd && !st.delivered {
		st.delivered = true
		closeWrite(st.sink)
		close(st.recvDone)
	}
}

// drain writes the queue to the sink, blocking, until it is empty. It is
// started by deliverLocked and owned by the stream's pipe, which waits
// for it.
func (st *stream) drain() {
	defer st.drainWG.Done()
	for {
		st.mu.Lock()
		if st.queued == 0 || st.isReset() {
			st.draining = false
			var dropped int64
			if st.isReset() {
				dropped = st.dropQueueLocked()
			} else {
				st.deliverLocked()
			}
			st.mu.Unlock()
			st.c.consumed(nil, dropped)
			return
		}
		data := st.queue[0].data
		sink := st.sink
		st.mu.Unlock()

		n, err := writeBounded(sink, data, st.c.cfg.writeTimeout)

		st.mu.Lock()
		st.down += int64(n)
		st.queued -= n
		st.c.freeBuffer(int64(n))
		head := &st.queue[0]
		head.data = head.data[n:] // the reader may have appended behind
		if len(head.data) == 0 {
			chunkBuffers.Put(head.buf)
			st.queue[0] = chunk{}
			st.queue = st.queue[1:]
		}
		if err != nil {
			st.sinkErr = err
			st.draining = false
			dropped := st.dropQueueLocked()
			st.mu.Unlock()
			st.c.consumed(st, int64(n))
			st.c.consumed(nil, dropped)
			st.cancel(http2.ErrCodeCancel, fmt.Errorf("writing to the destination: %w", err))
			return
		}
		st.mu.Unlock()
		st.c.consumed(st, int64(n))
	}
}

// read is Read without a sink: it takes queued bytes, io.EOF after the
// peer's end, or the stream's failure. done, if not nil, abandons the
// wait.
func (st *stream) read(done <-chan struct{}, p []byte) (int, error) {
	for {
		st.mu.Lock()
		if st.queued > 0 {
			n := 0
			for n < len(p) && len(st.queue) > 0 {
				ch := &st.queue[0]
				k := copy(p[n:], ch.data)
				n += k
				ch.data = ch.data[k:]
				if len(ch.data) == 0 {
					chunkBuffers.Put(ch.buf)
					st.queue[0] = chunk{}
					st.queue = st.queue[1:]
				}
			}
			st.queued -= n
			st.c.freeBuffer(int64(n))
			st.down += int64(n)
			st.mu.Unlock()
			st.c.consumed(st, int64(n))
			return n, nil
		}
		if st.recvEnd {
			if !st.delivered {
				st.delivered = true
				close(st.recvDone)
			}
			st.mu.Unlock()
			return 0, io.EOF
		}
		st.mu.Unlock()
		select {
		case <-st.wake:
		case <-done:
			return 0, context.Canceled
		case <-st.resetCh:
			st.mu.Lock()
			more := st.queued > 0 || st.recvEnd
			st.mu.Unlock()
			if !more {
				return 0, st.rerr
			}
		}
	}
}

// returnWindow counts n consumed bytes and returns the stream window
// increment now due, if any.
func (st *stream) returnWindow(n int64) int64 {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.recvEnd {
		return 0 // nothing more will come
	}
	st.unacked += n
	if st.unacked < streamWindow/windowUpdateDivisor {
		return 0
	}
	inc := st.unacked
	st.unacked = 0
	st.recvWin += inc
	return inc
}

// send writes p as DATA, as flow control allows. It copies p.
func (st *stream) send(p []byte) error {
	for len(p) > 0 {
		n, err := st.c.reserveSend(st, len(p))
		if err != nil {
			return err
		}
		chunk := p[:n]
		if err := st.c.write(func() error { return st.c.wfr.WriteData(st.id, false, chunk) }); err != nil {
			return err
		}
		p = p[n:]
	}
	return nil
}

// frameHeaderLen is the room sendFrame needs before its payload.
const frameHeaderLen = 9

// sendFrame sends buf[frameHeaderLen:] as DATA, writing the frame header
// into buf's first bytes, so the payload is not copied. When flow control
// allows only part of it at once, it falls back to send.
func (st *stream) sendFrame(buf []byte) error {
	payload := buf[frameHeaderLen:]
	n, err := st.c.reserveSend(st, len(payload))
	if err != nil {
		return err
	}
	if n < len(payload) {
		chunk := payload[:n]
		if err := st.c.write(func() error { return st.c.wfr.WriteData(st.id, false, chunk) }); err != nil {
			return err
		}
		return st.send(payload[n:])
	}
	putDataHeader(buf, st.id)
	return st.c.write(func() error {
		_, err := st.c.tc.Write(buf)
		return err
	})
}

// putDataHeader writes the header of a DATA frame of stream id, without
// flags, into buf's first bytes; the payload is the rest of buf.
func putDataHeader(buf []byte, id uint32) {
	n := len(buf) - frameHeaderLen
	buf[0], buf[1], buf[2] = byte(n>>16), byte(n>>8), byte(n)
	buf[3] = byte(http2.FrameData)
	buf[4] = 0
	binary.BigEndian.PutUint32(buf[5:9], id)
}

// closeSend ends our side of the stream (END_STREAM).
func (st *stream) closeSend() error {
	st.mu.Lock()
	if st.sendEnd {
		st.mu.Unlock()
		return nil
	}
	st.sendEnd = true
	st.mu.Unlock()
	if st.isReset() {
		return st.rerr
	}
	err := st.c.write(func() error { return st.c.wfr.WriteData(st.id, true, nil) })
	st.maybeDone()
	return err
}

// maybeDone forgets a stream both of whose sides have ended.
func (st *stream) maybeDone() {
	st.mu.Lock()
	done := st.sendEnd && st.recvEnd
	st.mu.Unlock()
	if done {
		st.c.forget(st)
	}
}

// finished reports whether both sides ended cleanly.
func (st *stream) finished() bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.sendEnd && st.delivered && !st.isReset()
}

// Pipe buffer sizes: a pipe starts reading its sink with a small buffer
// and moves to a frame-sized one the first time a read fills it, so bulk
// transfers send large frames and chatty tunnels hold little.
const smallRead = 16 << 10

var (
	smallReadBuffers = sync.Pool{New: func() any { b := make([]byte, frameHeaderLen+smallRead); return &b }}
	largeReadBuffers = sync.Pool{New: func() any { b := make([]byte, frameHeaderLen+maxFrameSize); return &b }}
)

// pipe carries sink's bytes into the stream and the stream's into sink
// until both directions have ended, passing each end on as a half-close,
// or until the stream fails or ctx ends (both close sink). It returns the
// bytes read from sink and written to it.
func (st *stream) pipe(ctx context.Context, sink net.Conn, first *firstBytes) (up, down int64, err error) {
	st.attach(sink)
	stop := context.AfterFunc(ctx, func() { st.cancel(http2.ErrCodeCancel, context.Cause(ctx)) })
	defer stop()

	up, err = st.sendFrom(sink, first)
	if err != nil {
		st.cancel(http2.ErrCodeCancel, err)
	} else {
		select {
		case <-st.recvDone:
		case <-st.resetCh:
		}
	}
	st.drainWG.Wait()
	st.mu.Lock()
	down = st.down
	sinkErr := st.sinkErr
	st.mu.Unlock()
	switch {
	case err != nil:
		if st.isReset() && !errors.Is(st.rerr, errStreamCancelled) {
			err = st.rerr // the sink was closed because of it
		}
	case sinkErr != nil:
		err = fmt.Errorf("writing to the destination: %w", sinkErr)
	case st.isReset():
		err = st.rerr
	}
	st.maybeDone()
	return up, down, err
}

// errStreamCancelled marks resets we made ourselves.
var errStreamCancelled = errors.New("hbone: stream cancelled")

// errBufferFull resets a stream whose data the node has no room for.
var errBufferFull = errors.New("hbone: the node's buffer for slow destinations is full")

// writeBounded writes p to c, blocking at most timeout (if positive) when
// c is slow to take it: a destination that stops reading must not hold
// the stream, its queue and the goroutine for ever. The deadline is
// cleared afterwards, as the stream's non-blocking writes (writeNow) would
// fail on an expired one.
func writeBounded(c net.Conn, p []byte, timeout time.Duration) (int, error) {
	if timeout <= 0 {
		return c.Write(p)
	}
	dl := c.SetWriteDeadline(time.Now().Add(timeout)) == nil
	n, err := c.Write(p)
	if dl {
		_ = c.SetWriteDeadline(time.Time{})
	}
	return n, err
}

// attach makes sink the destination of received data and delivers what
// is already queued.
func (st *stream) attach(sink net.Conn) {
	raw := newRawSocket(sink)
	st.mu.Lock()
	st.sink, st.raw = sink, raw
	// What came before the sink (the client's first bytes, sent with
	// its CONNECT) goes out now if the socket takes it, rather than
	// through a drain goroutine.
	n, err := st.flushNowLocked()
	if err != nil {
		st.sinkErr = err
	} else {
		st.deliverLocked()
	}
	st.mu.Unlock()
	st.c.consumed(st, n)
	if err != nil {
		st.cancel(http2.ErrCodeCancel, fmt.Errorf("writing to the destination: %w", err))
	}
	if st.isReset() {
		_ = sink.Close()
	}
}

// flushNowLocked writes queued data to a socket sink as far as the
// socket takes it without waiting. It returns the bytes written, whose
// window the caller returns once it has unlocked.
func (st *stream) flushNowLocked() (int64, error) {
	var done int64
	for st.queued > 0 && st.raw != nil && !st.draining {
		head := &st.queue[0]
		n, err := st.raw.writeNow(head.data)
		done += int64(n)
		st.down += int64(n)
		st.queued -= n
		st.c.freeBuffer(int64(n))
		head.data = head.data[n:]
		full := len(head.data) > 0
		if !full {
			chunkBuffers.Put(head.buf)
			st.queue[0] = chunk{}
			st.queue = st.queue[1:]
		}
		if err != nil || full {
			return done, err
		}
	}
	return done, nil
}

// discard drops what is queued and returns its window to the
// connection, for a stream whose data nobody will take: refused, or
// closed unread. A drain still running drops the queue itself when it
// sees the reset.
func (st *stream) discard() {
	st.mu.Lock()
	if st.draining {
		st.mu.Unlock()
		return
	}
	n := st.dropQueueLocked()
	st.mu.Unlock()
	st.c.consumed(nil, n)
}

// dropQueueLocked empties the queue and returns how many bytes it held.
func (st *stream) dropQueueLocked() int64 {
	n := int64(st.queued)
	st.c.freeBuffer(n)
	for i := range st.queue {
		chunkBuffers.Put(st.queue[i].buf)
		st.queue[i] = chunk{}
	}
	st.queue, st.queued = nil, 0
	return n
}

// sendFrom reads sink until EOF and sends what it reads, then ends our
// side of the stream. first, if not nil, is what was read from sink before
// (see firstBytes); sendFrom owns its buffer.
func (st *stream) sendFrom(sink net.Conn, first *firstBytes) (int64, error) {
	pool := &smallReadBuffers
	var bp *[]byte
	if first != nil {
		bp = first.bp // a smallReadBuffers one, ours now
		first.bp = nil
	} else {
		bp = pool.Get().(*[]byte)
	}
	defer func() { pool.Put(bp) }()
	maxPayload := min(int(st.c.peerFrameSize()), maxFrameSize)
	var src io.Reader = sink
	if rs := newRawSocket(sink); rs != nil {
		src = rs
	}
	var sent int64
	for {
		buf := *bp
		limit := min(len(buf)-frameHeaderLen, maxPayload)
		var n int
		var rerr error
		sendIt := true
		if first != nil {
			n, rerr, sendIt = first.n, first.err, !first.sent
			first = nil
		} else {
			n, rerr = src.Read(buf[frameHeaderLen : frameHeaderLen+limit])
		}
		if n > 0 {
			if sendIt {
				if err := st.sendFrame(buf[:frameHeaderLen+n]); err != nil {
					return sent, err
				}
			}
			sent += int64(n)
		}
		if rerr != nil {
			if errors.Is(rerr, io.EOF) {
				return sent, st.closeSend()
			}
			return sent, fmt.Errorf("reading from the source: %w", rerr)
		}
		switch {
		case n == limit && pool == &smallReadBuffers:
			pool.Put(bp)
			pool = &largeReadBuffers
			bp = pool.Get().(*[]byte)
			maxPayload = min(int(st.c.peerFrameSize()), maxFrameSize)
		case n < smallRead && pool == &largeReadBuffers:
			// The bulk is over: an idle tunnel waits for its next
			// bytes holding a small buffer, not a frame-sized one.
			pool.Put(bp)
			pool = &smallReadBuffers
			bp = pool.Get().(*[]byte)
		}
	}
}

// peerFrameSize is the largest frame the peer accepts.
func (c *conn) peerFrameSize() uint32 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.peerMaxSize
}

// closeWrite half-closes c, or closes it if it cannot half-close.
func closeWrite(c net.Conn) {
	if cw, ok := c.(closeWriter); ok {
		_ = cw.CloseWrite()
		return
	}
	_ = c.Close()
}

// closeWriter is a connection that can be half-closed (TCP, TLS, Tunnel).
type closeWriter interface {
	CloseWrite() error
}
