package proxy_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/gorilla/websocket"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/cairnmesh/cairn/waypoint/state/envoytest"
)

// echoService echoes every FullDuplexCall message and fails EmptyCall with
// a status (carried in trailers).
type echoService struct {
	testgrpc.UnimplementedTestServiceServer
}

func (echoService) EmptyCall(context.Context, *testgrpc.Empty) (*testgrpc.Empty, error) {
	return nil, status.Error(codes.NotFound, "nothing here")
}

func (echoService) FullDuplexCall(s grpc.BidiStreamingServer[testgrpc.StreamingOutputCallRequest, testgrpc.StreamingOutputCallResponse]) error {
	for {
		req, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := s.Send(&testgrpc.StreamingOutputCallResponse{Payload: req.GetPayload()}); err != nil {
			return err
		}
	}
}

func grpcBackend(t *testing.T) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	testgrpc.RegisterTestServiceServer(srv, echoService{})
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
	return netip.MustParseAddrPort(ln.Addr().String())
}

func grpcClient(t *testing.T, addr string) testgrpc.TestServiceClient {
	t.Helper()
	cc, err := grpc.NewClient("passthrough:///echo.default.svc.cluster.local:7070",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", addr)
		}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return testgrpc.NewTestServiceClient(cc)
}

// TestGRPCStreamsBothWays: 10 MiB up and 10 MiB down on one bidirectional
// gRPC stream through the waypoint, sent and received at the same time
// (flow control must work both ways: neither side buffers it all), and a
// gRPC status travels in the trailers.
func TestGRPCStreamsBothWays(t *testing.T) {
	w := newWaypoint(t)
	w.cluster("grpc", envoytest.HTTP2, grpcBackend(t))
	w.routes(hcmv3.HttpConnectionManager_HTTP2, envoytest.Prefix("/", "grpc"))
	c := grpcClient(t, w.listen(vip))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	if _, err := c.EmptyCall(ctx, &testgrpc.Empty{}); status.Code(err) != codes.NotFound {
		t.Errorf("EmptyCall: %v, want NotFound from the trailers", err)
	}

	stream, err := c.FullDuplexCall(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const msg, total = 64 << 10, 10 << 20
	sent := make(chan error, 1)
	go func() {
		payload := make([]byte, msg)
		for i := 0; i < total/msg; i++ {
			payload[0] = byte(i)
			if err := stream.Send(&testgrpc.StreamingOutputCallRequest{Payload: &testgrpc.Payload{Body: payload}}); err != nil {
				sent <- err
				return
			}
		}
		sent <- stream.CloseSend()
	}()
	received, i := 0, 0
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("after %d bytes: %v", received, err)
		}
		if b := resp.GetPayload().GetBody(); len(b) != msg || b[0] != byte(i) {
			t.Fatalf("message %d: %d bytes, first %d", i, len(b), b[0])
		}
		received += msg
		i++
	}
	if err := <-sent; err != nil {
		t.Fatalf("sending: %v", err)
	}
	if received != total {
		t.Errorf("received %d bytes, want %d", received, total)
	}
}

// TestWebSocketUpgrade: a WebSocket passes through a chain that allows the
// upgrade, both ways; a chain that does not answers 403.
func TestWebSocketUpgrade(t *testing.T) {
	w := newWaypoint(t)
	up := websocket.Upgrader{}
	b := backend(t, "ws", func(rw http.ResponseWriter, r *http.Request) bool {
		conn, err := up.Upgrade(rw, r, nil)
		if err != nil {
			return true
		}
		defer conn.Close()
		for {
			mt, data, err := conn.ReadMessage()
			if err != nil {
				return true
			}
			if err := conn.WriteMessage(mt, data); err != nil {
				return true
			}
		}
	})
	w.cluster("ws", envoytest.HTTP1, b)
	w.routes(hcmv3.HttpConnectionManager_AUTO, envoytest.Prefix("/", "ws"))
	addr := w.listen(vip)
	dialer := websocket.Dialer{
		NetDialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", addr)
		},
		HandshakeTimeout: 10 * time.Second,
	}
	conn, resp, err := dialer.Dial("ws://echo.default.svc.cluster.local/ws", nil)
	if err != nil {
		t.Fatalf("dial: %v (%v)", err, resp)
	}
	defer conn.Close()
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	for _, m := range []string{"hello", "again"} {
		if err := conn.WriteMessage(websocket.TextMessage, []byte(m)); err != nil {
			t.Fatal(err)
		}
		_, got, err := conn.ReadMessage()
		if err != nil || string(got) != m {
			t.Fatalf("read %q, %v; want %q", got, err, m)
		}
	}

	// The same route behind a chain without upgrade_configs.
	other := netip.MustParseAddrPort("10.96.0.12:80")
	w.apply(envoytest.Listener("waypoint",
		envoytest.HTTPChain(vip, "r", hcmv3.HttpConnectionManager_AUTO, "websocket"),
		envoytest.HTTPChain(other, "r", hcmv3.HttpConnectionManager_AUTO)))
	addr = w.listen(other)
	_, resp, err = dialer.Dial("ws://echo.default.svc.cluster.local/ws", nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Errorf("upgrade without upgrade_configs: %v, %v; want 403", err, resp)
	}
}
