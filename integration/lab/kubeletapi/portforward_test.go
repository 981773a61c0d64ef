package kubeletapi

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"
	"k8s.io/streaming/pkg/httpstream"
)

// dialers are the ways client-go reaches a port-forward endpoint.
var dialers = []struct {
	name string
	new  func(t *testing.T, env *testEnv, u *url.URL) httpstream.Dialer
}{
	{"SPDY", spdyDialer},
	{"SPDY over WebSocket", tunnelDialer},
	{"kubectl fallback dialer", func(t *testing.T, env *testEnv, u *url.URL) httpstream.Dialer {
		return portforward.NewFallbackDialerForStreaming(tunnelDialer(t, env, u), spdyDialer(t, env, u), func(err error) bool {
			return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
		})
	}},
}

func spdyDialer(t *testing.T, env *testEnv, u *url.URL) httpstream.Dialer {
	t.Helper()
	transport, upgrader, err := spdy.RoundTripperFor(env.restConfig())
	if err != nil {
		t.Fatal(err)
	}
	return spdy.NewDialerForStreaming(upgrader, &http.Client{Transport: transport}, "POST", u)
}

func tunnelDialer(t *testing.T, env *testEnv, u *url.URL) httpstream.Dialer {
	t.Helper()
	d, err := portforward.NewSPDYOverWebsocketDialerForStreaming(u, env.restConfig())
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// forward runs client-go's port forwarder from a local port to remotePort
// and returns the local address; it stops when the test ends.
func forward(t *testing.T, dialer httpstream.Dialer, remotePort int) string {
	t.Helper()
	stop, ready := make(chan struct{}), make(chan struct{})
	pf, err := portforward.NewOnAddressesForStreaming(dialer, []string{"127.0.0.1"},
		[]string{fmt.Sprintf(":%d", remotePort)}, stop, ready, io.Discard, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- pf.ForwardPorts() }()
	t.Cleanup(func() {
		close(stop)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("port forwarder did not stop")
		}
	})
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("port forwarder: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("port forwarder not ready")
	}
	ports, err := pf.GetPorts()
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("127.0.0.1:%d", ports[0].Local)
}

// roundTrip sends msg through a new connection to addr and reads the echo.
func roundTrip(t *testing.T, addr, msg string) (string, error) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second)) //nolint:errcheck
	if _, err := io.WriteString(conn, msg); err != nil {
		return "", err
	}
	buf := make([]byte, len(msg))
	_, err = io.ReadFull(conn, buf)
	return string(buf), err
}

func TestPortForward(t *testing.T) {
	for _, d := range dialers {
		t.Run(d.name, func(t *testing.T) {
			env := startServer(t, newFakeRuntime("ns/pod/app"), nil)
			for _, path := range []string{"/portForward/ns/pod", "/portForward/ns/pod/uid-1"} {
				u, err := url.Parse(env.base + path)
				if err != nil {
					t.Fatal(err)
				}
				local := forward(t, d.new(t, env, u), 8080)
				// Several connections over one session, one after the
				// other and at once.
				for i := range 3 {
					msg := fmt.Sprintf("ping %d via %s\n", i, path)
					if got, err := roundTrip(t, local, msg); err != nil || got != msg {
						t.Fatalf("echo = %q, %v; want %q", got, err, msg)
					}
				}
				var wg sync.WaitGroup
				for i := range 4 {
					wg.Go(func() {
						msg := strings.Repeat(fmt.Sprint(i), 64<<10)
						if got, err := roundTrip(t, local, msg); err != nil || got != msg {
							t.Errorf("parallel echo %d: %v (got %d bytes)", i, err, len(got))
						}
					})
				}
				wg.Wait()
			}
		})
	}
}

// A Runtime error reaches the client on the request's error stream.
// (client-go's forwarder only logs it, so this speaks the protocol
// directly, over client-go's connection.)
func TestPortForwardRuntimeError(t *testing.T) {
	for _, d := range dialers {
		t.Run(d.name, func(t *testing.T) {
			env := startServer(t, newFakeRuntime("ns/pod/app"), nil)
			u, err := url.Parse(env.base + "/portForward/ns/pod")
			if err != nil {
				t.Fatal(err)
			}
			conn, _, err := d.new(t, env, u).Dial(portforward.PortForwardProtocolV1Name)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			headers := http.Header{}
			headers.Set("streamType", "error")
			headers.Set("port", "9")
			headers.Set("requestID", "0")
			errStream, err := conn.CreateStream(headers)
			if err != nil {
				t.Fatal(err)
			}
			errStream.Close() // the client writes nothing on it
			headers.Set("streamType", "data")
			// The server may reset the data stream before this returns.
			conn.CreateStream(headers) //nolint:errcheck
			msg := make(chan string, 1)
			go func() {
				b, _ := io.ReadAll(errStream)
				msg <- string(b)
			}()
			select {
			case got := <-msg:
				if !strings.Contains(got, "forwarding to port 9") || !strings.Contains(got, "connection refused") {
					t.Fatalf("error stream carried %q, want the runtime's error", got)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("no error on the error stream")
			}
		})
	}
}

func TestPortForwardUnknownPod(t *testing.T) {
	env := startServer(t, finderRuntime{newFakeRuntime("ns/pod/app")}, nil)
	for _, d := range dialers {
		t.Run(d.name, func(t *testing.T) {
			u, err := url.Parse(env.base + "/portForward/ns/gone")
			if err != nil {
				t.Fatal(err)
			}
			conn, _, err := d.new(t, env, u).Dial(portforward.PortForwardProtocolV1Name)
			if err == nil {
				conn.Close()
				t.Fatal("dial to an unknown pod succeeded")
			}
			if !strings.Contains(err.Error(), "pod ns/gone") && !strings.Contains(err.Error(), "404") {
				t.Fatalf("dial error %v, want a 404 naming pod ns/gone", err)
			}
		})
	}
}
