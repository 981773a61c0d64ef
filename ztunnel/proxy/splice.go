package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
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
func splice(ctx context.Context, a, b net.Conn) (sent, received int64, err error) {
	var wg sync.WaitGroup
	var errUp, errDown error
	stop := context.AfterFunc(ctx, func() { _ = a.Close(); _ = b.Close() })
	defer stop()
	wg.Go(func() { sent, errUp = copyHalf(b, a) })
	received, errDown = copyHalf(a, b)
	wg.Wait()
	_ = a.Close()
	_ = b.Close()
	return sent, received, errors.Join(quiet(errUp), quiet(errDown))
}

// copyHalf copies src to dst, then half-closes dst (or closes it when it
// cannot half-close).
func copyHalf(dst, src net.Conn) (int64, error) {
	buf := buffers.Get().(*[]byte)
	defer buffers.Put(buf)
	n, err := io.CopyBuffer(onlyWriter{dst}, onlyReader{src}, *buf)
	if cw, ok := dst.(closeWriter); ok {
		_ = cw.CloseWrite()
	} else {
		_ = dst.Close()
	}
	return n, err
}

// onlyReader and onlyWriter hide ReadFrom/WriteTo so CopyBuffer uses our
// buffer (and never splice(2) paths that bypass the byte count).
type onlyReader struct{ io.Reader }
type onlyWriter struct{ io.Writer }

// quiet drops the errors of a connection closed on purpose.
func quiet(err error) error {
	if err == nil || errors.Is(err, net.ErrClosed) || errors.Is(err, io.EOF) || errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}
