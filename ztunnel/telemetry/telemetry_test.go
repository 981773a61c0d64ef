package telemetry

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"maps"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func sampleConn() *Conn {
	return &Conn{
		Reporter: Destination,
		Source: Peer{Workload: "sleep", Namespace: "shop", Principal: "spiffe://cluster.local/ns/shop/sa/sleep",
			App: "sleep", Version: "v1", Cluster: "Kubernetes", Address: "198.18.1.5:40000"},
		Dest: Peer{Workload: "reviews-v1", Namespace: "shop", Principal: "spiffe://cluster.local/ns/shop/sa/reviews",
			App: "reviews", Version: "v1", Cluster: "Kubernetes", Address: "198.18.2.7:9080"},
		Service: "reviews.shop.svc.cluster.local", ServiceNamespace: "shop", ServiceName: "reviews",
		Security: MutualTLS,
		Start:    time.Now(),
	}
}

// TestMetricsHaveIstioNamesAndLabels: a dashboard built for Istio finds the
// series it queries, with the values of the connection.
func TestMetricsHaveIstioNamesAndLabels(t *testing.T) {
	reg := prometheus.NewRegistry()
	r, err := NewRecorder(reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := sampleConn()
	r.Open(c)
	c.Sent, c.Received = 100, 2500
	r.Close(c)

	want := map[string]string{
		"reporter": "destination", "request_protocol": "tcp", "response_flags": "-", "connection_security_policy": "mutual_tls",
		"source_workload": "sleep", "source_workload_namespace": "shop", "source_principal": "spiffe://cluster.local/ns/shop/sa/sleep",
		"source_app": "sleep", "source_version": "v1", "source_cluster": "Kubernetes",
		"source_canonical_service": "sleep", "source_canonical_revision": "v1",
		"destination_service": "reviews.shop.svc.cluster.local", "destination_service_namespace": "shop", "destination_service_name": "reviews",
		"destination_workload": "reviews-v1", "destination_workload_namespace": "shop", "destination_principal": "spiffe://cluster.local/ns/shop/sa/reviews",
		"destination_app": "reviews", "destination_version": "v1", "destination_cluster": "Kubernetes",
		"destination_canonical_service": "reviews", "destination_canonical_revision": "v1",
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if len(f.GetMetric()) != 1 {
			t.Fatalf("%s has %d series, want 1", f.GetName(), len(f.GetMetric()))
		}
		got := map[string]string{}
		for _, l := range f.GetMetric()[0].GetLabel() {
			got[l.GetName()] = l.GetValue()
		}
		if !maps.Equal(got, want) {
			t.Errorf("%s labels\n got %v\nwant %v", f.GetName(), got, want)
		}
	}
	for name, v := range map[string]float64{
		"istio_tcp_connections_opened_total": 1,
		"istio_tcp_connections_closed_total": 1,
		"istio_tcp_sent_bytes_total":         100,
	} {
		if got := sum(t, reg, name); got != v {
			t.Errorf("%s = %v, want %v", name, got, v)
		}
	}
}

// TestUnknownPeerIsLabelledUnknown: plaintext from outside the mesh has no
// principal or workload; the labels say "unknown", not "".
func TestUnknownPeerIsLabelledUnknown(t *testing.T) {
	reg := prometheus.NewRegistry()
	r, err := NewRecorder(reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := sampleConn()
	c.Source = Peer{Address: "198.18.0.10:5555"}
	c.Security = None
	r.Open(c)
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, f := range families {
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "source_principal" {
					found = true
					if l.GetValue() != "unknown" {
						t.Errorf("source_principal = %q, want unknown", l.GetValue())
					}
				}
			}
		}
	}
	if !found {
		t.Error("no source_principal label")
	}
}

// TestAccessLogLine: one JSON line per closed connection, naming both
// identities and the byte counts; an abnormal end is a warning with the
// error and flags.
func TestAccessLogLine(t *testing.T) {
	var buf bytes.Buffer
	r, err := NewRecorder(nil, slog.New(slog.NewJSONHandler(&buf, nil)))
	if err != nil {
		t.Fatal(err)
	}
	c := sampleConn()
	c.Sent, c.Received = 7, 9
	r.Close(c)
	c2 := sampleConn()
	c2.Err, c2.Flags = errors.New("connection refused"), "UF"
	r.Close(c2)

	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("got %d lines, want 2:\n%s", len(lines), buf.String())
	}
	var first, second map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &first); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(lines[1]), &second); err != nil {
		t.Fatal(err)
	}
	if first["src.identity"] != "spiffe://cluster.local/ns/shop/sa/sleep" || first["dst.identity"] != "spiffe://cluster.local/ns/shop/sa/reviews" ||
		first["bytes_sent"] != float64(7) || first["bytes_recv"] != float64(9) || first["level"] != "INFO" {
		t.Errorf("first line %v", first)
	}
	if second["level"] != "WARN" || second["error"] != "connection refused" || second["flags"] != "UF" {
		t.Errorf("second line %v", second)
	}
}

func TestRegisteringTwiceFails(t *testing.T) {
	reg := prometheus.NewRegistry()
	if _, err := NewRecorder(reg, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := NewRecorder(reg, nil); err == nil {
		t.Error("a second recorder on the same registry registered silently")
	}
}

func sum(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var total float64
	for _, f := range families {
		if f.GetName() == name {
			for _, m := range f.GetMetric() {
				total += m.GetCounter().GetValue()
			}
		}
	}
	return total
}

// Access-log lines are held until a flush, never split, and all written
// by the time Run returns.
func TestLogBuffer(t *testing.T) {
	var out lockedWriter
	b := NewLogBuffer(&out)
	line := strings.Repeat("x", 1000) + "\n"
	for range 10 {
		if _, err := io.WriteString(b, line); err != nil {
			t.Fatal(err)
		}
	}
	if n := out.len(); n != 0 {
		t.Fatalf("%d bytes reached the output before a flush", n)
	}
	for range 100 { // more than the buffer holds
		io.WriteString(b, line)
	}
	if n := out.len(); n == 0 || n%len(line) != 0 {
		t.Fatalf("a full buffer wrote %d bytes: want whole lines", n)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { b.Run(ctx, time.Hour); close(done) }()
	cancel()
	<-done
	if n := out.len(); n != 110*len(line) {
		t.Fatalf("after Run returned, %d bytes written, want %d", n, 110*len(line))
	}
}

type lockedWriter struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}

func (w *lockedWriter) len() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Len()
}
