package hbone

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
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

// trimReason turns the start of a refusal's body into StatusError.Reason.
func trimReason(b []byte) string {
	return strings.TrimSpace(strings.ToValidUTF8(string(b), "?"))
}

// Tunnel is one CONNECT stream: a byte stream to the destination
// application, used like a TCP connection. It implements net.Conn except
// for deadlines, which HTTP/2 streams cannot honour. Pipe is the fast way
// to join it to a TCP connection.
type Tunnel struct {
	st     *stream
	local  net.Addr
	remote net.Addr

	closed    atomic.Bool
	closeOnce sync.Once
	release   func() // returns the stream to the pool

	// first is what DialFor read from the client, until Pipe or Write
	// takes it.
	firstMu sync.Mutex
	first   *firstBytes
}

// takeFirst hands over the client's first bytes, once.
func (t *Tunnel) takeFirst() *firstBytes {
	t.firstMu.Lock()
	defer t.firstMu.Unlock()
	f := t.first
	t.first = nil
	return f
}

var (
	_ net.Conn    = (*Tunnel)(nil)
	_ closeWriter = (*Tunnel)(nil)
)

// ErrDeadlineUnsupported is returned by the Set*Deadline methods of Tunnel.
var ErrDeadlineUnsupported = fmt.Errorf("hbone: tunnels have no deadlines: %w", errors.ErrUnsupported)

// Read reads bytes the application sent. It returns io.EOF once the
// application has closed its side. It must not be used with Pipe.
func (t *Tunnel) Read(p []byte) (int, error) {
	if t.closed.Load() {
		return 0, net.ErrClosed
	}
	return t.st.read(nil, p)
}

// Write sends bytes to the application. It blocks until flow control has
// let all of p go.
func (t *Tunnel) Write(p []byte) (int, error) {
	if t.closed.Load() {
		return 0, net.ErrClosed
	}
	if f := t.takeFirst(); f != nil {
		err := error(nil)
		if !f.sent && f.n > 0 {
			err = t.st.send((*f.bp)[frameHeaderLen : frameHeaderLen+f.n])
		}
		f.release()
		if err != nil {
			return 0, err
		}
	}
	if err := t.st.send(p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// CloseWrite ends the stream in our direction (END_STREAM): the server
// half-closes its connection to the application, which reads EOF. Reading
// goes on until the application closes its side.
func (t *Tunnel) CloseWrite() error {
	if t.closed.Load() {
		return net.ErrClosed
	}
	return t.st.closeSend()
}

// Pipe joins the tunnel to conn until both directions have ended, each
// end passed on as a half-close, or until the tunnel fails or ctx ends;
// conn is closed when it returns. It returns the bytes conn sent into the
// tunnel and those it received. Bytes from the application are written to
// conn by the HBONE connection's reader as they arrive, without a
// goroutine of their own unless conn falls behind. After DialFor, conn is
// the client it was given: the bytes DialFor read from it come first.
func (t *Tunnel) Pipe(ctx context.Context, conn net.Conn) (sent, received int64, err error) {
	defer conn.Close()
	return t.st.pipe(ctx, conn, t.takeFirst())
}

// Close ends the tunnel in both directions, resetting the stream unless
// both sides had already ended it, and returns its slot to the pool.
func (t *Tunnel) Close() error {
	t.closeOnce.Do(func() {
		t.closed.Store(true)
		t.takeFirst().release()
		if t.st.finished() {
			t.st.c.forget(t.st)
		} else {
			t.st.cancel(http2.ErrCodeCancel, net.ErrClosed)
		}
		t.st.discard()
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
