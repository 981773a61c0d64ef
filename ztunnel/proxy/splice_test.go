package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	dialed, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	other := <-accepted
	if other == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { dialed.Close(); other.Close() })
	return dialed, other
}

// A plain-TCP connection (passthrough, or plaintext inbound) to an app
// that stops reading: once the socket buffers are full, the write waits
// at most the write timeout, then the connection ends both ways instead of
// holding its buffers and goroutines for ever.
func TestSpliceCutsAnEndThatStopsReading(t *testing.T) {
	client, a := tcpPair(t)
	b, app := tcpPair(t)
	_ = app // never read
	go func() {
		buf := make([]byte, 64<<10)
		for {
			if _, err := client.Write(buf); err != nil {
				return
			}
		}
	}()
	done := make(chan error, 1)
	go func() {
		_, _, err := splice(context.Background(), a, b, 200*time.Millisecond)
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("splice ended with %v, want a write timeout", err)
		}
	case <-time.After(20 * time.Second): // a safety net, not a timing target
		t.Fatal("splice is still writing to an app that stopped reading")
	}
	// The client sees the end too.
	client.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.Copy(io.Discard, client); err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Error("the client's connection stayed open")
		}
	}
}

// A slow reader that keeps up within the timeout loses nothing.
func TestSpliceSlowReaderWithinTimeout(t *testing.T) {
	client, a := tcpPair(t)
	b, app := tcpPair(t)
	const size = 8 << 20
	go func() {
		buf := make([]byte, 64<<10)
		for sent := 0; sent < size; sent += len(buf) {
			if _, err := client.Write(buf); err != nil {
				return
			}
		}
		client.(*net.TCPConn).CloseWrite()
	}()
	got := make(chan int64, 1)
	go func() {
		var n int64
		buf := make([]byte, 256<<10)
		for {
			time.Sleep(5 * time.Millisecond) // slow, but far within the timeout
			k, err := app.Read(buf)
			n += int64(k)
			if err != nil {
				app.Close() // ends the other direction
				got <- n
				return
			}
		}
	}()
	sent, _, err := splice(context.Background(), a, b, 2*time.Second)
	if err != nil {
		t.Fatalf("splice: %v", err)
	}
	if n := <-got; n != size || sent != size {
		t.Errorf("app read %d bytes, splice sent %d, want %d", n, sent, size)
	}
}
