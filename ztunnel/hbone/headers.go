//lint:file-ignore SA1019 HBONE is built on golang.org/x/net/http2 (a required library), whose types v0.62 marks deprecated in favour of net/http

package hbone

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// request is what a server learns from a stream's HEADERS.
type request struct {
	method    string
	authority string
	// truncated: the header list was over the server's limit; the rest
	// of it was not decoded.
	truncated bool
}

// onHeaders handles a HEADERS frame (with its CONTINUATIONs, decoded).
func (c *conn) onHeaders(f *http2.MetaHeadersFrame) error {
	if c.client {
		return c.onResponse(f)
	}
	id := f.StreamID
	c.mu.Lock()
	if st := c.streams[id]; st != nil {
		c.mu.Unlock()
		// Trailers. A tunnel has no use for their fields, but they must
		// end the stream.
		if !f.StreamEnded() {
			c.resetStream(id, http2.ErrCodeProtocol, errors.New("hbone: HEADERS in the middle of a stream"))
			return nil
		}
		return c.endStream(st)
	}
	if id%2 == 0 || id <= c.lastPeerID {
		c.mu.Unlock()
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	c.lastPeerID = id
	// The limit counts requests still being served, not open streams: a
	// client that resets each stream at once (the "rapid reset" attack)
	// must not start requests without bound. Beyond the connection's own
	// limit, the node's (Limits.MaxStreams) applies.
	refuse := c.goAwaySent || c.handlers >= int(c.cfg.maxStreams) ||
		c.cfg.adm != nil && !c.cfg.adm.takeStream()
	var st *stream
	if !refuse {
		st = newStream(c, id)
		st.sendWin = int64(c.peerWindow)
		c.streams[id] = st
		c.handlers++
	}
	c.mu.Unlock()
	if refuse {
		// Refused, a request is a frame that carries nothing for us: a
		// client that goes on sending them ends its connection.
		c.queueControl(controlFrame{typ: http2.FrameRSTStream, stream: id, val: uint32(http2.ErrCodeRefusedStream)})
		return c.idleFrame()
	}
	req := request{
		method:    f.PseudoValue("method"),
		authority: f.PseudoValue("authority"),
		truncated: f.Truncated,
	}
	// RFC 9113 section 8.5: a CONNECT names only the method and the
	// authority. Extended CONNECT (:protocol) is not HBONE.
	malformed := req.method == "" ||
		req.method == http.MethodConnect && (req.authority == "" || f.PseudoValue("scheme") != "" ||
			f.PseudoValue("path") != "" || f.PseudoValue("protocol") != "")
	if malformed && !req.truncated {
		c.served()
		c.resetStream(id, http2.ErrCodeProtocol, errors.New("hbone: malformed request"))
		return c.idleFrame()
	}
	c.busy()
	if f.StreamEnded() {
		st.mu.Lock()
		st.recvEnd = true
		st.mu.Unlock()
	}
	c.onRequest(st, req)
	return nil
}

// served is called when the server is done with a request onRequest was
// given.
func (c *conn) served() {
	c.mu.Lock()
	c.handlers--
	c.lastActive = time.Now()
	c.mu.Unlock()
	if c.cfg.adm != nil {
		c.cfg.adm.endStream()
	}
}

// endStream records the peer's end of st without data.
func (c *conn) endStream(st *stream) error {
	if err := st.receive(nil, true); err != nil {
		c.resetStream(st.id, http2.ErrCodeStreamClosed, err)
		return nil
	}
	st.maybeDone()
	return nil
}

// onResponse handles a server's HEADERS on the client side: the CONNECT's
// answer, or trailers.
func (c *conn) onResponse(f *http2.MetaHeadersFrame) error {
	st := c.stream(f.StreamID)
	if st == nil {
		return nil // a stream we already reset
	}
	if status := f.PseudoValue("status"); status != "" {
		code, err := strconv.Atoi(status)
		if err != nil || code < 100 || code > 999 {
			c.resetStream(st.id, http2.ErrCodeProtocol, fmt.Errorf("hbone: bad :status %q", status))
			return nil
		}
		if code < 200 {
			return nil // informational; the answer follows
		}
		select {
		case st.resp <- code:
		default:
			c.resetStream(st.id, http2.ErrCodeProtocol, errors.New("hbone: a second response"))
			return nil
		}
	} else if !f.StreamEnded() {
		c.resetStream(st.id, http2.ErrCodeProtocol, errors.New("hbone: response without :status"))
		return nil
	}
	if f.StreamEnded() {
		return c.endStream(st)
	}
	return nil
}

// errNoStreams: the connection takes no new streams (GOAWAY, failure or
// the server's limit); the pool uses another.
var errNoStreams = errors.New("hbone: connection takes no new streams")

// brokeWithoutGoAway reports whether the connection ended without the
// peer's GOAWAY (client side).
func (c *conn) brokeWithoutGoAway() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err != nil && !c.goAwayRecv
}

// canOpen reports whether a new stream may be opened now.
func (c *conn) canOpen() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.openableLocked() == nil
}

func (c *conn) openableLocked() error {
	switch {
	case c.err != nil:
		return fmt.Errorf("%w: %w", errNoStreams, c.err)
	case c.goAwayRecv:
		return fmt.Errorf("%w: the server sent GOAWAY", errNoStreams)
	case uint32(len(c.streams)) >= c.peerStreams:
		return fmt.Errorf("%w: at the server's limit of %d", errNoStreams, c.peerStreams)
	case c.nextID > 1<<31-1:
		return fmt.Errorf("%w: stream IDs used up", errNoStreams)
	}
	return nil
}

// maxReasonBytes bounds how much of a refusal's body openStream reads.
const maxReasonBytes = 256

// openStream sends a CONNECT to authority and waits for the answer. A
// status other than 200 is a *StatusError with the body's first bytes.
// first, if not nil, goes out right behind the CONNECT, in the same write,
// when both windows have room for it; first.sent says whether it did.
func (c *conn) openStream(ctx context.Context, authority string, first *firstBytes) (*stream, error) {
	st := newStream(c, 0)
	c.wmu.Lock()
	c.mu.Lock()
	if err := c.openableLocked(); err != nil {
		c.mu.Unlock()
		c.wmu.Unlock()
		return nil, err
	}
	// IDs must go out in increasing order: allocated and written under
	// the same hold of wmu.
	st.id = c.nextID
	c.nextID += 2
	st.sendWin = int64(c.peerWindow)
	c.streams[st.id] = st
	c.mu.Unlock()
	err := c.writeLocked(func() error {
		err := c.writeHeaders(st.id, false,
			hpack.HeaderField{Name: ":method", Value: http.MethodConnect},
			hpack.HeaderField{Name: ":authority", Value: authority})
		if first == nil {
			return err
		}
		// Set for this stream: a CONNECT sent again after a refusal may
		// find no window for them this time.
		first.sent = false
		if err != nil || first.n == 0 || !c.tryReserveSend(st, first.n) {
			return err
		}
		first.sent = true
		_, err = c.tc.Write(first.frame(st.id))
		return err
	})
	c.wmu.Unlock()
	if err != nil {
		return nil, err
	}
	var code int
	select {
	case code = <-st.resp:
	case <-st.resetCh:
		select {
		case code = <-st.resp:
			// Answered, then reset: a refusal ends so (RST_STREAM
			// NO_ERROR after the answer tells us to stop sending).
		default:
			return nil, st.rerr
		}
	case <-ctx.Done():
		st.cancel(http2.ErrCodeCancel, ctx.Err())
		return nil, ctx.Err()
	}
	if code == http.StatusOK {
		return st, nil
	}
	// The reason is in the body, which the reader has queued (or is
	// about to): read what there is of it.
	buf := make([]byte, maxReasonBytes)
	n := 0
	for n < len(buf) {
		k, err := st.read(ctx.Done(), buf[n:])
		n += k
		if err != nil {
			break
		}
	}
	st.cancel(http2.ErrCodeCancel, errors.New("refused"))
	st.discard()
	return nil, &StatusError{Code: code, Reason: trimReason(buf[:n])}
}

// respond answers a request with status and, if not 200, a short
// plain-text body that ends the stream; a peer that is still sending is
// told to stop (RST_STREAM NO_ERROR, RFC 9113 section 8.1).
func (st *stream) respond(status int, body string, extra ...hpack.HeaderField) error {
	c := st.c
	fields := append([]hpack.HeaderField{{Name: ":status", Value: strconv.Itoa(status)}}, extra...)
	if status == http.StatusOK {
		return c.write(func() error { return c.writeHeaders(st.id, false, fields...) })
	}
	fields = append(fields,
		hpack.HeaderField{Name: "content-type", Value: "text/plain; charset=utf-8"},
		hpack.HeaderField{Name: "content-length", Value: strconv.Itoa(len(body))})
	st.mu.Lock()
	st.sendEnd = true
	stillSending := !st.recvEnd
	st.mu.Unlock()
	err := c.write(func() error {
		if err := c.writeHeaders(st.id, false, fields...); err != nil {
			return err
		}
		if err := c.wfr.WriteData(st.id, true, []byte(body)); err != nil {
			return err
		}
		if stillSending {
			return c.wfr.WriteRSTStream(st.id, http2.ErrCodeNo)
		}
		return nil
	})
	st.failed(errRefused)
	c.forget(st)
	return err
}

// errRefused ends the streams a server refused.
var errRefused = errors.New("hbone: request refused")
