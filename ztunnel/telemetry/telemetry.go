// Package telemetry records what ztunnel does with each connection: the L4
// metrics Istio's dashboards read (same names and labels as Istio's
// ztunnel), and one JSON access-log line when a connection closes.
//
// A proxy calls Open when it has decided what a connection is (after the
// routing or authorization step, when source and destination are known)
// and Close once, when both directions are done. Byte counts are added to
// the counters at close: a connection's bytes appear in the metrics when
// it ends, as in Istio.
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Reporter says which end of the tunnel reports: the source ztunnel
// (outbound) or the destination ztunnel (inbound).
type Reporter string

const (
	Source      Reporter = "source"
	Destination Reporter = "destination"
)

// Security policies, for the connection_security_policy label.
const (
	MutualTLS = "mutual_tls"
	None      = "none"
	Unknown   = "unknown"
)

// Peer describes one end of a connection. Empty fields are reported as
// "unknown", as Istio does.
type Peer struct {
	Workload  string // workload name, e.g. the Deployment's
	Namespace string
	Principal string // SPIFFE ID, spiffe://td/ns/x/sa/y
	App       string // canonical service
	Version   string // canonical revision
	Cluster   string
	Address   string // ip:port, for the access log only
}

// Conn is what is known of one proxied connection.
type Conn struct {
	Reporter Reporter
	Source   Peer
	Dest     Peer
	// Service is the destination Service's hostname and namespace, when the
	// connection was addressed to a Service.
	Service          string
	ServiceNamespace string
	ServiceName      string
	Security         string // MutualTLS, None or Unknown
	Start            time.Time

	// Filled at close.
	Sent, Received uint64 // bytes towards the destination, and back
	Err            error  // why it ended abnormally, or nil
	// Flags are Envoy-style response flags ("-" when none): e.g. "UF" for
	// an upstream connection failure, "DENY" for an authorization denial.
	Flags string
}

// labelNames are the labels of every TCP metric, in order.
var labelNames = []string{
	"reporter",
	"source_workload", "source_workload_namespace", "source_principal", "source_app", "source_version", "source_cluster",
	"source_canonical_service", "source_canonical_revision",
	"destination_service", "destination_service_namespace", "destination_service_name",
	"destination_workload", "destination_workload_namespace", "destination_principal", "destination_app", "destination_version", "destination_cluster",
	"destination_canonical_service", "destination_canonical_revision",
	"request_protocol", "response_flags", "connection_security_policy",
}

// Recorder counts connections and writes access logs. It is safe for
// concurrent use.
type Recorder struct {
	opened, closed, sent, received *prometheus.CounterVec
	access                         *slog.Logger
}

// NewRecorder registers the metrics on reg (nil keeps them private) and
// writes access-log lines to access (nil writes none).
func NewRecorder(reg prometheus.Registerer, access *slog.Logger) (*Recorder, error) {
	counter := func(name, help string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labelNames)
	}
	r := &Recorder{
		opened:   counter("istio_tcp_connections_opened_total", "TCP connections opened through ztunnel."),
		closed:   counter("istio_tcp_connections_closed_total", "TCP connections closed through ztunnel."),
		sent:     counter("istio_tcp_sent_bytes_total", "Bytes sent towards the destination, counted when a connection closes."),
		received: counter("istio_tcp_received_bytes_total", "Bytes received from the destination, counted when a connection closes."),
		access:   access,
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{r.opened, r.closed, r.sent, r.received} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("registering ztunnel TCP metrics: %w", err)
			}
		}
	}
	return r, nil
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

func (c *Conn) labels() []string {
	flags := c.Flags
	if flags == "" {
		flags = "-"
	}
	return []string{
		string(c.Reporter),
		orUnknown(c.Source.Workload), orUnknown(c.Source.Namespace), orUnknown(c.Source.Principal),
		orUnknown(c.Source.App), orUnknown(c.Source.Version), orUnknown(c.Source.Cluster),
		orUnknown(c.Source.App), orUnknown(c.Source.Version),
		orUnknown(c.Service), orUnknown(c.ServiceNamespace), orUnknown(c.ServiceName),
		orUnknown(c.Dest.Workload), orUnknown(c.Dest.Namespace), orUnknown(c.Dest.Principal),
		orUnknown(c.Dest.App), orUnknown(c.Dest.Version), orUnknown(c.Dest.Cluster),
		orUnknown(c.Dest.App), orUnknown(c.Dest.Version),
		"tcp", flags, orUnknown(c.Security),
	}
}

// Open counts a connection as opened.
func (r *Recorder) Open(c *Conn) {
	r.opened.WithLabelValues(c.labels()...).Inc()
}

// Close counts a connection as closed with its bytes, and writes its
// access-log line. Call it once per opened connection. A connection that
// was refused before it was opened can be passed to Close alone: it gets a
// log line and a closed count, so refusals are visible in both.
func (r *Recorder) Close(c *Conn) {
	labels := c.labels()
	r.closed.WithLabelValues(labels...).Inc()
	r.sent.WithLabelValues(labels...).Add(float64(c.Sent))
	r.received.WithLabelValues(labels...).Add(float64(c.Received))
	if r.access == nil {
		return
	}
	level := slog.LevelInfo
	attrs := []slog.Attr{
		slog.String("reporter", string(c.Reporter)),
		slog.String("src.addr", c.Source.Address),
		slog.String("src.workload", c.Source.Workload),
		slog.String("src.namespace", c.Source.Namespace),
		slog.String("src.identity", c.Source.Principal),
		slog.String("dst.addr", c.Dest.Address),
		slog.String("dst.service", c.Service),
		slog.String("dst.workload", c.Dest.Workload),
		slog.String("dst.namespace", c.Dest.Namespace),
		slog.String("dst.identity", c.Dest.Principal),
		slog.String("security", orUnknown(c.Security)),
		slog.Uint64("bytes_sent", c.Sent),
		slog.Uint64("bytes_recv", c.Received),
		slog.Duration("duration", time.Since(c.Start)),
	}
	if c.Err != nil && !errors.Is(c.Err, context.Canceled) {
		level = slog.LevelWarn
		attrs = append(attrs, slog.String("error", c.Err.Error()))
	}
	if c.Flags != "" {
		attrs = append(attrs, slog.String("flags", c.Flags))
	}
	r.access.LogAttrs(context.Background(), level, "connection complete", attrs...)
}
