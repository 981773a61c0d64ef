package echo

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/cairnmesh/cairn/integration/apps/echo/echopb"
)

// freePort returns a loopback port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func startEcho(t *testing.T) Config {
	t.Helper()
	cfg := Config{
		Pod: "echo-v1-abc", Namespace: "shop", Address: "127.0.0.1",
		HTTPPort: freePort(t), GRPCPort: freePort(t), TCPPort: freePort(t),
		Logger: slog.New(slog.DiscardHandler),
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	// Wait until the last listener answers.
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.Dial("tcp", net.JoinHostPort(cfg.Address, itoa(cfg.TCPPort)))
		if err == nil {
			c.Close()
			return cfg
		}
		if time.Now().After(deadline) {
			t.Fatalf("echo did not start: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

func getJSON(t *testing.T, client *http.Client, url string, header http.Header) (*http.Response, Response) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header = header
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	var got Response
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
		t.Fatalf("decoding answer of %s: %v", url, err)
	}
	return resp, got
}

func TestHTTPAnswersWithPodAndRequest(t *testing.T) {
	cfg := startEcho(t)
	base := "http://127.0.0.1:" + itoa(cfg.HTTPPort)

	var h2only http.Protocols
	h2only.SetUnencryptedHTTP2(true)
	h2c := &http.Client{Transport: &http.Transport{Protocols: &h2only}}
	for name, client := range map[string]*http.Client{"HTTP/1.1": http.DefaultClient, "HTTP/2.0": h2c} {
		t.Run(name, func(t *testing.T) {
			resp, got := getJSON(t, client, base+"/reviews/1?x=y", http.Header{"X-Marker": {"m-123"}})
			if resp.StatusCode != http.StatusOK {
				t.Errorf("status = %d, want 200", resp.StatusCode)
			}
			if got.Pod != "echo-v1-abc" || got.Namespace != "shop" {
				t.Errorf("pod = %s/%s, want shop/echo-v1-abc", got.Namespace, got.Pod)
			}
			if got.Proto != name || got.Method != "GET" || got.Path != "/reviews/1" || got.Query != "x=y" {
				t.Errorf("got proto=%s method=%s path=%s query=%s", got.Proto, got.Method, got.Path, got.Query)
			}
			if got.Headers["X-Marker"][0] != "m-123" {
				t.Errorf("headers = %v, want X-Marker: m-123", got.Headers)
			}
			if resp.Header.Get("X-Echo-Pod") != "echo-v1-abc" {
				t.Errorf("X-Echo-Pod = %q", resp.Header.Get("X-Echo-Pod"))
			}
		})
	}
}

func TestHTTPStatusAndBadParameters(t *testing.T) {
	cfg := startEcho(t)
	base := "http://127.0.0.1:" + itoa(cfg.HTTPPort)
	for query, want := range map[string]int{"status=503": 503, "status=abc": 400, "status=42": 400, "delay=-1s": 400, "delay=1ms": 200} {
		resp, err := http.Get(base + "/?" + query)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("?%s: status %d, want %d", query, resp.StatusCode, want)
		}
	}
}

func TestGRPCEcho(t *testing.T) {
	cfg := startEcho(t)
	conn, err := grpc.NewClient("127.0.0.1:"+itoa(cfg.GRPCPort), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), "x-marker", "g-1"), 5*time.Second)
	defer cancel()
	resp, err := echopb.NewEchoClient(conn).Echo(ctx, &echopb.EchoRequest{Message: "hello"})
	if err != nil {
		t.Fatalf("Echo: %v", err)
	}
	if resp.GetMessage() != "hello" || resp.GetPod() != "echo-v1-abc" || resp.GetNamespace() != "shop" {
		t.Errorf("got %v", resp)
	}
	if resp.GetMetadata()["x-marker"] != "g-1" {
		t.Errorf("metadata = %v, want x-marker: g-1", resp.GetMetadata())
	}
}

func TestTCPGreetsAndEchoesUntilHalfClose(t *testing.T) {
	cfg := startEcho(t)
	conn, err := net.Dial("tcp", "127.0.0.1:"+itoa(cfg.TCPPort))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	r := bufio.NewReader(conn)
	greeting, err := r.ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(greeting, "echo pod=echo-v1-abc namespace=shop peer=127.0.0.1:") {
		t.Errorf("greeting = %q", greeting)
	}
	if _, err := io.WriteString(conn, "ping-payload"); err != nil {
		t.Fatal(err)
	}
	if err := conn.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	rest, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	if string(rest) != "ping-payload" {
		t.Errorf("echoed %q, want ping-payload then EOF", rest)
	}
}

func TestRunNeedsAPort(t *testing.T) {
	if err := Run(context.Background(), Config{}); err == nil {
		t.Fatal("Run with no ports succeeded, want an error")
	}
}
