package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"
)

// bufferSize is the copy buffer of the plain-TCP paths (passthrough and
// plaintext inbound; HBONE tunnels use Tunnel.Pipe). Two per connection,
// kept in a pool: 32 KiB, the size io.Copy picks, keeps a node with many
// idle connections small.
const bufferSize = 32 << 10

var buffers = sync.Pool{New: func() any { b := make([]byte, bufferSize); return &b }}

// closeWriter is a connection whose sending side can close on its own.
type closeWriter interface{ CloseWrite() error }

// splice copies both ways between the client (a) and the upstream (b),
// passing each side's end of stream on as a half-close, until both are
// done or ctx ends. It returns the bytes sent to the upstream and back.
//
// A write that a side does not take within writeTimeout (if positive)
// ends the connection both ways: a client or an application that stops
// reading must not hold the buffers and goroutines for ever.
func splice(ctx context.Context, a, b net.Conn, writeTimeout time.Duration) (sent, received int64, err error) {
	var wg sync.WaitGroup
	var errUp, errDown error
	stop := context.AfterFunc(ctx, func() { _ = a.Close(); _ = b.Close() })
	defer stop()
	wg.Go(func() { sent, errUp = copyHalf(b, a, writeTimeout) })
	received, errDown = copyHalf(a, b, writeTimeout)
	wg.Wait()
	_ = a.Close()
	_ = b.Close()
	return sent, received, errors.Join(quiet(errUp), quiet(errDown))
}

// copyHalf copies src to dst, then half-closes dst (or closes it when it
// cannot half-close). When dst does not take a write within writeTimeout,
// it closes both.
func copyHalf(dst, src net.Conn, writeTimeout time.Duration) (int64, error) {
	buf := buffers.Get().(*[]byte)
	defer buffers.Put(buf)
	n, err := io.CopyBuffer(boundedWriter{dst, writeTimeout}, onlyReader{src}, *buf)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		_ = src.Close()
		_ = dst.Close()
		return n, fmt.Errorf("the other end took no data for %v: %w", writeTimeout, err)
	}
	if cw, ok := dst.(closeWriter); ok {
		_ = cw.CloseWrite()
	} else {
		_ = dst.Close()
	}
	return n, err
}

// onlyReader hides WriteTo so CopyBuffer uses our buffer (and never
// splice(2) paths that bypass the byte count); boundedWriter hides
// ReadFrom likewise.
type onlyReader struct{ io.Reader }

// boundedWriter writes to c with a deadline of timeout (if positive) for
// each write.
type boundedWriter struct {
	c       net.Conn
	timeout time.Duration
}

func (w boundedWriter) Write(p []byte) (int, error) {
	if w.timeout > 0 {
		if err := w.c.SetWriteDeadline(time.Now().Add(w.timeout)); err != nil {
			return 0, err
		}
	}
	return w.c.Write(p)
}

// quiet drops the errors of a connection closed on purpose.
func quiet(err error) error {
	if err == nil || errors.Is(err, net.ErrClosed) || errors.Is(err, io.EOF) || errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}
