package hbone_test

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cairnmesh/cairn/internal/pki"
	"github.com/cairnmesh/cairn/ztunnel/hbone"
)

const benchChunk = 256 << 10

// BenchmarkThroughput moves bytes through one tunnel (pool client and
// server in this process, loopback TCP between them). app=none replaces
// the application with an in-memory sink/source, measuring HBONE alone;
// app=tcp adds the server's onward loopback hop to a real application.
//
// mtls-only is the ceiling on the same machine: one TLS 1.3 connection with
// the same certificates, no HTTP/2. Loopback numbers swing by ±30% between
// runs on shared VMs; compare against it rather than across machines.
func BenchmarkThroughput(b *testing.B) {
	b.Run("mtls-only", benchTLS)
	for _, app := range []string{"none", "tcp"} {
		b.Run("upload/app="+app, func(b *testing.B) { benchUpload(b, app == "tcp") })
		b.Run("download/app="+app, func(b *testing.B) { benchDownload(b, app == "tcp") })
	}
}

func benchTLS(b *testing.B) {
	ca := newCA(b)
	l, err := tls.Listen("tcp", "127.0.0.1:0", pki.ServerConfig(ca.svid(b, serverID), ca.bundle, pki.AuthorizeIdentity(clientID)))
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	received := make(chan int64, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			received <- -1
			return
		}
		defer c.Close()
		n, _ := io.CopyBuffer(io.Discard, c, make([]byte, benchChunk))
		received <- n
	}()
	c, err := tls.Dial("tcp", l.Addr().String(), pki.ClientConfig(ca.svid(b, clientID), ca.bundle, pki.AuthorizeIdentity(serverID)))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, benchChunk)
	b.SetBytes(benchChunk)
	b.ResetTimer()
	for range b.N {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	c.CloseWrite()
	n := <-received
	b.StopTimer()
	if want := int64(b.N) * benchChunk; n != want {
		b.Fatalf("received %d bytes, want %d", n, want)
	}
}

func benchUpload(b *testing.B, tcp bool) {
	var received atomic.Int64
	var e *env
	if tcp {
		e = newEnv(b)
		e.app = startApp(b, func(c net.Conn) {
			n, _ := io.CopyBuffer(io.Discard, c, make([]byte, benchChunk))
			received.Store(n)
			c.(*net.TCPConn).CloseWrite()
		})
	} else {
		e = newEnv(b, withNullApp(0, &received))
	}
	tun := e.dial(b)
	defer tun.Close()
	buf := make([]byte, benchChunk)
	b.SetBytes(benchChunk)
	b.ResetTimer()
	for range b.N {
		if _, err := tun.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	if err := tun.CloseWrite(); err != nil {
		b.Fatal(err)
	}
	// EOF comes once the application has read everything.
	if _, err := io.Copy(io.Discard, tun); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	if got, want := received.Load(), int64(b.N)*benchChunk; got != want {
		b.Fatalf("application received %d bytes, want %d", got, want)
	}
}

func benchDownload(b *testing.B, tcp bool) {
	total := int64(b.N) * benchChunk
	var e *env
	if tcp {
		e = newEnv(b)
		e.app = startApp(b, func(c net.Conn) {
			var n int64
			if err := binary.Read(c, binary.BigEndian, &n); err != nil {
				return
			}
			io.CopyBuffer(c, io.LimitReader(zeros{}, n), make([]byte, benchChunk))
		})
	} else {
		e = newEnv(b, withNullApp(total, nil))
	}
	tun := e.dial(b)
	defer tun.Close()
	if tcp {
		binary.Write(tun, binary.BigEndian, total)
	}
	tun.CloseWrite()
	b.SetBytes(benchChunk)
	b.ResetTimer()
	n, err := io.Copy(io.Discard, tun) // through Tunnel.WriteTo
	b.StopTimer()
	if err != nil || n != total {
		b.Fatalf("read %d bytes (%v), want %d", n, err, total)
	}
}

// BenchmarkNewTunnel opens and closes tunnels over one pooled connection:
// CONNECT, the server's checks and its dial of the (loopback TCP)
// application, the 200, and the stream's reset on close.
func BenchmarkNewTunnel(b *testing.B) {
	b.Run("sequential", func(b *testing.B) {
		e := newEnv(b)
		e.dial(b).Close() // the connection exists before timing
		b.ResetTimer()
		start := time.Now()
		for range b.N {
			tun, err := e.pool.Dial(context.Background(), e.key(), e.app)
			if err != nil {
				b.Fatal(err)
			}
			tun.Close()
		}
		b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "tunnels/s")
		if d := e.dials.Load(); d != 1 {
			b.Errorf("%d connections, want 1", d)
		}
	})
	b.Run("parallel", func(b *testing.B) {
		e := newEnv(b)
		e.dial(b).Close()
		b.ResetTimer()
		start := time.Now()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				tun, err := e.pool.Dial(context.Background(), e.key(), e.app)
				if err != nil {
					b.Error(err)
					return
				}
				tun.Close()
			}
		})
		b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "tunnels/s")
	})
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// withNullApp makes the server's application an in-memory connection
// that sends send zero bytes and counts what it receives into received.
func withNullApp(send int64, received *atomic.Int64) option {
	return func(_ *env, s *hbone.ServerConfig, _ *hbone.PoolConfig) {
		s.Dial = func(context.Context, string, string) (net.Conn, error) {
			return &nullApp{remaining: send, received: received, done: make(chan struct{})}, nil
		}
	}
}

// nullApp sends its bytes, then reads EOF once the peer half-closed:
// an application that answers and hangs up when the client is done.
type nullApp struct {
	net.Conn  // nil; only the methods below are used
	remaining int64
	received  *atomic.Int64
	once      sync.Once
	done      chan struct{}
}

func (a *nullApp) Read(p []byte) (int, error) {
	if a.remaining > 0 {
		n := int(min(int64(len(p)), a.remaining))
		clear(p[:n])
		a.remaining -= int64(n)
		return n, nil
	}
	<-a.done
	return 0, io.EOF
}

func (a *nullApp) Write(p []byte) (int, error) {
	if a.received != nil {
		a.received.Add(int64(len(p)))
	}
	return len(p), nil
}

func (a *nullApp) CloseWrite() error { a.once.Do(func() { close(a.done) }); return nil }
func (a *nullApp) Close() error      { return a.CloseWrite() }

// SetWriteDeadline is a no-op: the null application never blocks.
func (a *nullApp) SetWriteDeadline(time.Time) error { return nil }

// BenchmarkRoundTrip is a request and its answer (1 KiB each way, echoed)
// through the whole path a meshed connection takes, in this process: a
// client's TCP connection piped into a tunnel (as ztunnel's outbound side
// does), the pooled HBONE connection, the server, and a TCP echo
// application. It reports the median and the 99th percentile of the round
// trip; on a shared 2-core machine both include scheduling noise, so
// compare runs made one after the other.
func BenchmarkRoundTrip(b *testing.B) {
	e := newEnv(b)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	client, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer client.Close()
	captured, err := l.Accept()
	if err != nil {
		b.Fatal(err)
	}
	tun := e.dial(b)
	defer tun.Close()
	piped := make(chan error, 1)
	go func() {
		_, _, err := tun.Pipe(context.Background(), captured)
		piped <- err
	}()
	msg := make([]byte, 1024)
	got := make([]byte, len(msg))
	rtts := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		if _, err := client.Write(msg); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(client, got); err != nil {
			b.Fatal(err)
		}
		rtts = append(rtts, time.Since(start))
	}
	b.StopTimer()
	slices.Sort(rtts)
	b.ReportMetric(float64(rtts[len(rtts)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(rtts[len(rtts)*99/100].Microseconds()), "p99-µs")
	client.(*net.TCPConn).CloseWrite()
	<-piped
}

// BenchmarkFirstRequest is a new client connection that sends a 1 KiB
// request and reads its echo, as an HTTP client without keep-alive does:
// the captured connection is dialed a tunnel and piped, the time is from
// the client's connect to the echo's last byte. first=wait holds the
// request until the server's 200 (Dial); first=with-connect sends it
// behind the CONNECT (DialFor), a round trip less.
func BenchmarkFirstRequest(b *testing.B) {
	for _, mode := range []string{"wait", "with-connect"} {
		b.Run("first="+mode, func(b *testing.B) {
			e := newEnv(b)
			e.dial(b).Close() // the connection exists before timing
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			var wg sync.WaitGroup
			defer wg.Wait()
			defer l.Close()
			wg.Go(func() { // ztunnel's side: accept, dial, pipe
				for {
					captured, err := l.Accept()
					if err != nil {
						return
					}
					wg.Go(func() {
						var tun *hbone.Tunnel
						if mode == "wait" {
							tun, err = e.pool.Dial(context.Background(), e.key(), e.app)
						} else {
							tun, err = e.pool.DialFor(context.Background(), e.key(), e.app, captured)
						}
						if err != nil {
							b.Error(err)
							captured.Close()
							return
						}
						tun.Pipe(context.Background(), captured)
						tun.Close()
					})
				}
			})
			msg := make([]byte, 1024)
			got := make([]byte, len(msg))
			times := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for range b.N {
				start := time.Now()
				c, err := net.Dial("tcp", l.Addr().String())
				if err != nil {
					b.Fatal(err)
				}
				if _, err := c.Write(msg); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(c, got); err != nil {
					b.Fatal(err)
				}
				times = append(times, time.Since(start))
				c.Close()
			}
			b.StopTimer()
			slices.Sort(times)
			b.ReportMetric(float64(times[len(times)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(times[len(times)*99/100].Microseconds()), "p99-µs")
		})
	}
}
