package admin

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/cairnmesh/cairn/internal/drain"
)

func get(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	body, _ := io.ReadAll(rec.Result().Body)
	return rec.Code, string(body)
}

func TestConfigDumpAndConnections(t *testing.T) {
	src := Sources{
		ConfigDump: map[string]func() any{
			"workloads": func() any { return []string{"shop/reviews-1"} },
			"pods":      func() any { return map[string]string{"shop/reviews-1": "/var/run/netns/cni-1"} },
		},
		Connections: func() any { return []map[string]string{{"source": "198.18.1.5:4000"}} },
	}
	h := AdminHandler(src, slog.New(slog.DiscardHandler))
	code, body := get(t, h, "/config_dump")
	var dump map[string]any
	if code != 200 || json.Unmarshal([]byte(body), &dump) != nil || dump["workloads"] == nil || dump["pods"] == nil {
		t.Errorf("/config_dump: %d %s", code, body)
	}
	_, body = get(t, h, "/config_dump?section=pods")
	if strings.Contains(body, "workloads") || !strings.Contains(body, "cni-1") {
		t.Errorf("/config_dump?section=pods: %s", body)
	}
	if code, body := get(t, h, "/debug/connections"); code != 200 || !strings.Contains(body, "198.18.1.5:4000") {
		t.Errorf("/debug/connections: %d %s", code, body)
	}
}

func TestReadiness(t *testing.T) {
	ready, why := false, "waiting for the first xDS response"
	var st drain.State
	h := ReadinessHandler(Sources{Ready: func() (bool, string) { return ready, why }}, &st)
	if code, body := get(t, h, "/healthz/ready"); code != 503 || !strings.Contains(body, "xDS") {
		t.Errorf("before sync: %d %q", code, body)
	}
	ready, why = true, ""
	if code, body := get(t, h, "/healthz/ready"); code != 200 || body != "ready\n" {
		t.Errorf("after sync: %d %q", code, body)
	}
	why = "istiod-lite unreachable since 2026-12-01T10:00:00Z; configuration may be stale"
	if code, body := get(t, h, "/healthz/ready"); code != 200 || !strings.Contains(body, "ready; warning: istiod-lite unreachable since 2026-12-01T10:00:00Z") {
		t.Errorf("ready with a warning: %d %q; want 200 with the warning", code, body)
	}
	st.Set()
	if code, body := get(t, h, "/healthz/ready"); code != 503 || !strings.Contains(body, "draining") {
		t.Errorf("draining: %d %q", code, body)
	}
}

func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "istio_tcp_connections_opened_total", Help: "x"})
	reg.MustRegister(c)
	c.Inc()
	if code, body := get(t, MetricsHandler(reg), "/metrics"); code != 200 || !strings.Contains(body, "istio_tcp_connections_opened_total 1") {
		t.Errorf("/metrics: %d %s", code, body)
	}
}

func TestProfiles(t *testing.T) {
	h := AdminHandler(Sources{}, slog.New(slog.DiscardHandler))
	if code, body := get(t, h, "/debug/pprof/"); code != 200 || !strings.Contains(body, "goroutine") {
		t.Errorf("/debug/pprof/: %d", code)
	}
}

func TestServersReusePortAndClose(t *testing.T) {
	ctx := context.Background()
	ok := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) })
	first, err := Listen(ctx, []Endpoint{{Name: "metrics", Addr: "127.0.0.1:0", Handler: ok}})
	if err != nil {
		t.Fatal(err)
	}
	addr := first.list[0].ln.Addr().String()
	// A successor binds the same port while the first still has it.
	second, err := Listen(ctx, []Endpoint{{Name: "metrics", Addr: addr, Handler: ok}})
	if err != nil {
		first.Close()
		t.Fatalf("a second listener on %s: %v", addr, err)
	}
	var g errgroup.Group
	first.Serve(&g)
	second.Serve(&g)
	resp, err := http.Get("http://" + addr + "/")
	if err != nil {
		t.Errorf("GET: %v", err)
	} else {
		_ = resp.Body.Close()
	}
	first.Close()
	second.Close()
	if err := g.Wait(); err != nil {
		t.Errorf("Serve after Close: %v", err)
	}
}

func TestListenClosesOnError(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// A port held without SO_REUSEPORT cannot be shared: Listen fails and
	// closes the listener it was given.
	own, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer own.Close()
	_, err = Listen(context.Background(), []Endpoint{
		{Name: "cni", Listener: ln},
		{Name: "admin", Addr: own.Addr().String()},
	})
	if err == nil || !strings.Contains(err.Error(), "admin server") {
		t.Fatalf("Listen on a taken port: %v, want an admin server error", err)
	}
	if _, err := ln.Accept(); err == nil {
		t.Error("the caller's listener is still open after Listen failed")
	}
}
