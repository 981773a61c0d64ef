package hbone

import "net"

// firstBytes is what a client connection had already sent when its tunnel
// was dialed: HTTP, TLS and most protocols have the client speak first, and
// its first request is usually in the socket by the time ztunnel accepts
// the connection. Sending it right behind the CONNECT, instead of after
// the server's answer, saves the new connection a round trip between the
// ztunnels.
//
// The server queues it (within the stream's window) until it has checked
// the request and connected to the application, and drops it with a
// refusal. The tunnel still counts as up only when the answer is 200.
type firstBytes struct {
	bp  *[]byte // from smallReadBuffers: room for a frame header, then the bytes
	n   int
	err error // the read's error: io.EOF if the client had already ended its side
	// sent: the bytes went out with the CONNECT. Otherwise they are the
	// first thing the tunnel sends once it is up.
	sent bool
}

// readFirst reads what conn has already received without waiting. It
// returns nil when conn holds nothing yet, or is not a socket.
func readFirst(conn net.Conn) *firstBytes {
	rs := newRawSocket(conn)
	if rs == nil {
		return nil
	}
	bp := smallReadBuffers.Get().(*[]byte)
	n, err := rs.readNow((*bp)[frameHeaderLen:])
	if n == 0 && err == nil {
		smallReadBuffers.Put(bp)
		return nil
	}
	return &firstBytes{bp: bp, n: n, err: err}
}

// frame returns the bytes as a DATA frame of stream id, the header written
// in front of them.
func (f *firstBytes) frame(id uint32) []byte {
	buf := (*f.bp)[:frameHeaderLen+f.n]
	putDataHeader(buf, id)
	return buf
}

// release returns the buffer; f may be nil.
func (f *firstBytes) release() {
	if f != nil && f.bp != nil {
		smallReadBuffers.Put(f.bp)
		f.bp = nil
	}
}

// tryReserveSend takes n bytes of both send windows if they have room for
// all of them now, and reports whether it did.
func (c *conn) tryReserveSend(st *stream, n int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil || int64(n) > c.sendWin || int64(n) > st.sendWin || uint32(n) > c.peerMaxSize {
		return false
	}
	c.sendWin -= int64(n)
	st.sendWin -= int64(n)
	return true
}
