package xds

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the Prometheus metrics of a Server. Type labels hold the
// message name of the type URL (cairn.workload.v1.Address).
type metrics struct {
	pushes       *prometheus.CounterVec   // batches applied to a cache
	pushDuration *prometheus.HistogramVec // applying a batch to a cache
	pushLatency  *prometheus.HistogramVec // first queued change -> response handed to a client's stream
	unchanged    *prometheus.CounterVec   // upserts dropped because equal to what the cache holds
	invalid      *prometheus.CounterVec   // upserts dropped because they do not marshal
	clients      prometheus.Gauge
	acks         *prometheus.CounterVec
	nacks        *prometheus.CounterVec
	refused      *prometheus.CounterVec // streams refused, by reason
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	latencyBuckets := prometheus.ExponentialBuckets(0.001, 2, 15) // 1 ms .. 16 s
	m := &metrics{
		pushes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cairn_xds_pushes_total",
			Help: "Debounced batches of changed resources applied to the xDS cache of a type.",
		}, []string{"type"}),
		pushDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "cairn_xds_push_duration_seconds",
			Help:    "Time to apply a batch to the xDS cache of a type, which queues the deltas for every watching client.",
			Buckets: latencyBuckets,
		}, []string{"type"}),
		pushLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "cairn_xds_push_latency_seconds",
			Help:    "Time from the first change of a batch being queued (debounce included) to its delta being sent to a client.",
			Buckets: latencyBuckets,
		}, []string{"type"}),
		unchanged: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cairn_xds_unchanged_upserts_total",
			Help: "Upserts dropped because the cache already held an equal resource.",
		}, []string{"type"}),
		invalid: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cairn_xds_invalid_upserts_total",
			Help: "Upserts dropped because the resource could not be marshaled.",
		}, []string{"type"}),
		clients: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "cairn_xds_connected_clients",
			Help: "Authenticated delta ADS streams currently open.",
		}),
		acks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cairn_xds_acks_total",
			Help: "Delta responses ACKed by clients.",
		}, []string{"type"}),
		nacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cairn_xds_nacks_total",
			Help: "Delta responses NACKed (rejected with error_detail) by clients.",
		}, []string{"type"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cairn_xds_refused_streams_total",
			Help: "xDS streams refused, by reason (unauthenticated, permission_denied, not_ready, sotw, unknown_type, too_many_subscriptions, name_too_long).",
		}, []string{"reason"}),
	}
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	for _, c := range []prometheus.Collector{
		m.pushes, m.pushDuration, m.pushLatency, m.unchanged, m.invalid,
		m.clients, m.acks, m.nacks, m.refused,
	} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
