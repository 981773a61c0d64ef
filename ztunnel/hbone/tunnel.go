package hbone

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// StatusError is returned by Pool.Dial when the server answered the CONNECT
// with a status other than 200.
type StatusError struct {
	Code int
	// Reason is the start of the response body, which a Cairn server
	// fills with its refusal reason (a Reason value prefixed "hbone: ").
	Reason string
}

func (e *StatusError) Error() string {
	msg := fmt.Sprintf("CONNECT refused with %d %s", e.Code, http.StatusText(e.Code))
	if e.Reason != "" {
		msg += ": " + e.Reason
	}
	return msg
}

// Tunnel is one CONNECT stream: a byte stream to the destination
// application, used like a TCP connection. It implements net.Conn except
// for deadlines, which HTTP/2 streams cannot honour.
type Tunnel struct {
	body   io.ReadCloser  // response body: bytes from the application
	pw     *io.PipeWriter // request body: bytes to the application
	cancel context.CancelFunc
	local  net.Addr
	remote net.Addr

	closed    atomic.Bool
	closeOnce sync.Once
	release   func() // returns the stream to the pool
}

var (
	_ net.Conn      = (*Tunnel)(nil)
	_ closeWriter   = (*Tunnel)(nil)
	_ io.ReaderFrom = (*Tunnel)(nil)
	_ io.WriterTo   = (*Tunnel)(nil)
)

// ErrDeadlineUnsupported is returned by the Set*Deadline methods of Tunnel.
var ErrDeadlineUnsupported = fmt.Errorf("hbone: tunnels have no deadlines: %w", errors.ErrUnsupported)

// Read reads bytes the application sent. It returns io.EOF once the
// application has closed its side.
func (t *Tunnel) Read(p []byte) (int, error) {
	if t.closed.Load() {
		return 0, net.ErrClosed
	}
	return t.body.Read(p)
}

// Write sends bytes to the application. It blocks until the HTTP/2
// transport has taken all of p (flow control applies).
func (t *Tunnel) Write(p []byte) (int, error) {
	if t.closed.Load() {
		return 0, net.ErrClosed
	}
	return t.pw.Write(p)
}

// ReadFrom copies r into the tunnel with large buffers; io.Copy uses it.
func (t *Tunnel) ReadFrom(r io.Reader) (int64, error) {
	return copyStream(t, r)
}

// WriteTo copies the tunnel into w with large buffers; io.Copy uses it.
func (t *Tunnel) WriteTo(w io.Writer) (int64, error) {
	return copyStream(w, t)
}

// CloseWrite ends the stream in our direction (END_STREAM): the server
// half-closes its connection to the application, which reads EOF. Reading
// goes on until the application closes its side.
func (t *Tunnel) CloseWrite() error {
	if t.closed.Load() {
		return net.ErrClosed
	}
	return t.pw.Close()
}

// Close ends the tunnel in both directions, resetting the stream if it is
// still open, and returns its slot to the pool.
func (t *Tunnel) Close() error {
	t.closeOnce.Do(func() {
		t.closed.Store(true)
		t.pw.CloseWithError(net.ErrClosed)
		t.body.Close()
		t.cancel()
		t.release()
	})
	return nil
}

// LocalAddr is the local address of the HBONE connection carrying the
// tunnel.
func (t *Tunnel) LocalAddr() net.Addr { return t.local }

// RemoteAddr is the destination application's address (the CONNECT's
// :authority), not the HBONE port.
func (t *Tunnel) RemoteAddr() net.Addr { return t.remote }

// SetDeadline returns ErrDeadlineUnsupported.
func (t *Tunnel) SetDeadline(time.Time) error { return ErrDeadlineUnsupported }

// SetReadDeadline returns ErrDeadlineUnsupported.
func (t *Tunnel) SetReadDeadline(time.Time) error { return ErrDeadlineUnsupported }

// SetWriteDeadline returns ErrDeadlineUnsupported.
func (t *Tunnel) SetWriteDeadline(time.Time) error { return ErrDeadlineUnsupported }
