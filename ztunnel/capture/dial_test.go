package capture

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cairnmesh/cairn/internal/netns/netnstest"
)

// TestDialerConnection: the connection is a *net.TCPConn made in the pod,
// carrying the mark, with the addresses both ends agree on, and the
// net.Dialer options reach the socket.
func TestDialerConnection(t *testing.T) {
	t.Parallel()
	ns := netnstest.New(t, "cairn-cap-dial")
	ctx := testContext(t)
	for _, tc := range []struct {
		name, network, listen string
		base                  *net.Dialer
		keepAlive             bool
		keepIdle              int // seconds, if keepAlive
		v6only                int // -1: an IPv4 socket
	}{
		{"defaults", "tcp", "127.0.0.1:0", nil, true, 15, -1},
		{"local address", "tcp4", "127.0.0.1:0",
			&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}, true, 15, -1},
		{"keep-alive off", "tcp", "127.0.0.1:0", &net.Dialer{KeepAlive: -1}, false, 0, -1},
		{"keep-alive config", "tcp", "127.0.0.1:0",
			&net.Dialer{KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: 42 * time.Second}}, true, 42, -1},
		{"IPv6, both families", "tcp", "[::1]:0", nil, true, 15, 0},
		{"IPv6 only", "tcp6", "[::1]:0", nil, true, 15, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln := listen(t, ns, tc.listen)
			defer ln.Close()
			d := &Dialer{Netns: ns.Handle, Mark: 0x539, Dialer: tc.base}
			c, err := d.DialContext(ctx, tc.network, ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			s, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()

			tcp, ok := c.(*net.TCPConn)
			if !ok {
				t.Fatalf("DialContext returned a %T, want *net.TCPConn", c)
			}
			if got, want := tcp.RemoteAddr().String(), ln.Addr().String(); got != want {
				t.Errorf("RemoteAddr %s, want %s", got, want)
			}
			if got, want := tcp.LocalAddr().String(), s.RemoteAddr().String(); got != want {
				t.Errorf("LocalAddr %s, the server sees %s", got, want)
			}
			if tc.base != nil && tc.base.LocalAddr != nil {
				if got := tcp.LocalAddr().(*net.TCPAddr).IP; !got.Equal(net.IPv4(127, 0, 0, 2)) {
					t.Errorf("local IP %v, want the Dialer's 127.0.0.2", got)
				}
			}
			opts := sockopts(t, tcp)
			want := map[string]int{"mark": 0x539, "keepalive": 0, "v6only": tc.v6only}
			if tc.keepAlive {
				want["keepalive"], want["keepidle"] = 1, tc.keepIdle
			}
			for k, v := range want {
				if opts[k] != v {
					t.Errorf("socket option %s = %d, want %d", k, opts[k], v)
				}
			}

			// CloseWrite reaches the server as EOF, and the server's answer
			// still comes back.
			if err := tcp.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			s.SetDeadline(time.Now().Add(5 * time.Second))
			if b, err := io.ReadAll(s); err != nil || len(b) != 0 {
				t.Fatalf("server read %q, %v; want EOF", b, err)
			}
			if _, err := s.Write([]byte("bye")); err != nil {
				t.Fatal(err)
			}
			s.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if b, err := io.ReadAll(c); err != nil || string(b) != "bye" {
				t.Errorf("client read %q, %v; want bye", b, err)
			}
		})
	}
}

// sockopts reads the options the tests check off a connection. v6only is
// -1 on an IPv4 socket, keepidle only there when keepalive is on.
func sockopts(t *testing.T, c *net.TCPConn) map[string]int {
	t.Helper()
	raw, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	opts := map[string]int{"v6only": -1}
	var errs []error
	get := func(fd int, name string, level, opt int) {
		v, err := unix.GetsockoptInt(fd, level, opt)
		errs = append(errs, err)
		opts[name] = v
	}
	if err := raw.Control(func(p uintptr) {
		fd := int(p)
		get(fd, "mark", unix.SOL_SOCKET, unix.SO_MARK)
		get(fd, "keepalive", unix.SOL_SOCKET, unix.SO_KEEPALIVE)
		if opts["keepalive"] == 1 {
			get(fd, "keepidle", unix.IPPROTO_TCP, unix.TCP_KEEPIDLE)
		}
		if domain, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN); domain == unix.AF_INET6 {
			get(fd, "v6only", unix.IPPROTO_IPV6, unix.IPV6_V6ONLY)
		}
	}); err != nil {
		t.Fatal(err)
	}
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	return opts
}

// TestDialerGivesUp: a dial that cannot complete (its SYNs are dropped) ends
// promptly when ctx is cancelled or expires or the Dialer's Timeout
// passes, with an error that says so and names the address and the
// namespace, and leaves no descriptor behind.
//
// Not parallel: it counts the process's descriptors, which other tests
// open and close.
func TestDialerGivesUp(t *testing.T) {
	ns := netnstest.New(t, "cairn-cap-dial")
	// A listener that never accepts, with a backlog of 0: once one
	// connection waits in its queue, the kernel drops every further SYN,
	// so a connect there waits for ever.
	fd, err := ns.Handle.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	silent := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(sa.(*unix.SockaddrInet4).Port)).String()
	// This one fills the queue. It also opens what is opened once per
	// process (the poller, the process's namespace) before counting.
	first, err := (&Dialer{Netns: ns.Handle}).DialContext(t.Context(), "tcp", silent)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()

	cancelled, cancel := context.WithCancel(t.Context())
	cancel()
	for _, tc := range []struct {
		name     string
		dial     func() error
		want     func(error) bool
		wantText string
	}{
		{"ctx cancelled during the handshake", func() error {
			ctx, cancel := context.WithCancel(t.Context())
			time.AfterFunc(100*time.Millisecond, cancel)
			_, err := (&Dialer{Netns: ns.Handle}).DialContext(ctx, "tcp", silent)
			return err
		}, isCanceled, "one wrapping context.Canceled"},
		{"ctx cancelled before", func() error {
			_, err := (&Dialer{Netns: ns.Handle}).DialContext(cancelled, "tcp", silent)
			return err
		}, isCanceled, "one wrapping context.Canceled"},
		{"ctx deadline", func() error {
			ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
			defer cancel()
			_, err := (&Dialer{Netns: ns.Handle}).DialContext(ctx, "tcp", silent)
			return err
		}, isTimeout, "a net.Error that is a Timeout"},
		{"Dialer.Timeout", func() error {
			d := &Dialer{Netns: ns.Handle, Dialer: &net.Dialer{Timeout: 100 * time.Millisecond}}
			_, err := d.DialContext(t.Context(), "tcp", silent)
			return err
		}, isTimeout, "a net.Error that is a Timeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := openFDs(t)
			start := time.Now()
			err := tc.dial()
			if took := time.Since(start); took > 2*time.Second {
				t.Errorf("took %v to give up", took)
			}
			if !tc.want(err) {
				t.Errorf("error %v, want %s", err, tc.wantText)
			} else if msg := err.Error(); !strings.Contains(msg, silent) || !strings.Contains(msg, ns.Path) {
				t.Errorf("error %q does not name %s and %s", msg, silent, ns.Path)
			}
			if after := openFDs(t); after != before {
				t.Errorf("%d descriptors open before the dial, %d after", before, after)
			}
		})
	}
}

func isCanceled(err error) bool { return errors.Is(err, context.Canceled) }

// isTimeout: net.Dialer reports a deadline as os.ErrDeadlineExceeded or
// context.DeadlineExceeded, depending on whether the socket's deadline or
// ctx's timer fired first; both are net.Errors that time out.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func openFDs(t *testing.T) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(entries)
}

// dialInDo is how Dialer.DialContext worked before it used
// netns.Handle.Socket: the whole dial inside Do. The benchmark compares
// against it.
func (d *Dialer) dialInDo(ctx context.Context, network, address string) (net.Conn, error) {
	nd := net.Dialer{Control: MarkControl(DefaultMark)}
	var conn net.Conn
	err := d.Netns.Do(func() error {
		var err error
		conn, err = nd.DialContext(ctx, network, address)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("dialling %s from %s: %w", address, d.Netns, err)
	}
	return conn, nil
}

// BenchmarkDialerInNamespace dials a listener inside a namespace, which
// accepts and closes, from one goroutine and from many at once; "indo" is
// the old way (the whole dial inside netns.Handle.Do), "socket" the
// current one. Besides ns/op it reports dials/s, and the CPU time the
// process spent per dial on all its threads (cpu-ns/op): what the mesh
// pays, whichever thread pays it.
func BenchmarkDialerInNamespace(b *testing.B) {
	ns := netnstest.New(b, "cairn-cap-bench")
	var ln net.Listener
	if err := ns.Handle.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	}); err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { // owned by the benchmark: Cleanup closes ln and waits
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	})
	b.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	addr := ln.Addr().String()
	d := &Dialer{Netns: ns.Handle}
	ctx := b.Context()

	for _, impl := range []struct {
		name string
		dial func(context.Context, string, string) (net.Conn, error)
	}{{"indo", d.dialInDo}, {"socket", d.DialContext}} {
		dialClose := func() error {
			c, err := impl.dial(ctx, "tcp", addr)
			if err != nil {
				return err
			}
			// A reset, not a FIN: no TIME_WAIT, so a long run does not
			// use up the local ports.
			if err := c.(*net.TCPConn).SetLinger(0); err != nil {
				return err
			}
			return c.Close()
		}
		b.Run(impl.name+"/serial", func(b *testing.B) {
			defer measure(b)()
			for b.Loop() {
				if err := dialClose(); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(impl.name+"/parallel", func(b *testing.B) {
			defer measure(b)()
			b.SetParallelism(8)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := dialClose(); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

// measure reports allocations, dials/s and the process's CPU time per dial
// from now until the returned function is called.
func measure(b *testing.B) func() {
	b.ReportAllocs()
	start, cpu := time.Now(), cpuTime(b)
	return func() {
		b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "dials/s")
		b.ReportMetric(float64(cpuTime(b)-cpu)/float64(b.N), "cpu-ns/op")
	}
}

func cpuTime(b *testing.B) time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
