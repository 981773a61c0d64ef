package hbone

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	a, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a.(*net.TCPConn), b.(*net.TCPConn)
}

// rawSocket behaves as net.Conn's Read and Write do: bytes in order, EOF
// after the peer's half-close, deadlines, closed connections.
func TestRawSocket(t *testing.T) {
	a, b := tcpPair(t)
	ra, rb := newRawSocket(a), newRawSocket(b)
	if ra == nil || rb == nil {
		t.Fatal("no rawSocket for a TCP connection")
	}
	msg := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB: more than a socket buffer
	errc := make(chan error, 1)
	go func() {
		_, err := ra.Write(msg)
		if err == nil {
			err = a.CloseWrite()
		}
		errc <- err
	}()
	got, err := io.ReadAll(rb)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("read %d bytes, not the %d written in order", len(got), len(msg))
	}

	// Deadlines set on the connection apply.
	a2, b2 := tcpPair(t)
	b2.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if _, err := newRawSocket(b2).Read(make([]byte, 10)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("read past the deadline: %v, want os.ErrDeadlineExceeded", err)
	}
	// writeNow takes what fits and never waits: against a peer that
	// reads nothing, the socket fills and a write comes back short.
	ra2 := newRawSocket(a2)
	chunk := make([]byte, 1<<20)
	short := false
	for range 64 {
		n, err := ra2.writeNow(chunk)
		if err != nil {
			t.Fatal(err)
		}
		if n < len(chunk) {
			short = true
			break
		}
	}
	if !short {
		t.Error("64 MiB went into a socket nobody reads without a short write")
	}
	a2.Close()
	if _, err := ra2.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("write after close: %v, want net.ErrClosed", err)
	}
}

// readNow never waits: nothing yet is (0, nil), then what has arrived,
// then io.EOF once the peer has ended its side; a Read after an empty
// readNow still gets data that arrives later.
func TestRawSocketReadNow(t *testing.T) {
	a, b := tcpPair(t)
	rb := newRawSocket(b)
	buf := make([]byte, 64)
	if n, err := rb.readNow(buf); n != 0 || err != nil {
		t.Fatalf("readNow on an empty socket: %d, %v; want 0, nil", n, err)
	}
	go func() {
		time.Sleep(20 * time.Millisecond)
		a.Write([]byte("late"))
	}()
	if n, err := rb.Read(buf); err != nil || string(buf[:n]) != "late" {
		t.Fatalf("Read after an empty readNow: %q, %v", buf[:n], err)
	}
	a.Write([]byte("now"))
	a.CloseWrite()
	deadline := time.Now().Add(5 * time.Second)
	var got []byte
	for {
		n, err := rb.readNow(buf)
		got = append(got, buf[:n]...)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil || time.Now().After(deadline) {
			t.Fatalf("readNow: %v (got %q so far)", err, got)
		}
	}
	if string(got) != "now" {
		t.Errorf("readNow read %q, want %q then EOF", got, "now")
	}
}
