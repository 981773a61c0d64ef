package daemon

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/cairnmesh/cairn/ztunnel/hbone"
)

// limitsCollector exposes the node-wide HBONE limits as metrics, read at
// each scrape: how much of each is in use, its maximum, and how often it
// turned something away, so that operators see a node at its limits (or
// one under attack) before its pods' connections fail.
type limitsCollector struct{ l *hbone.Limiter }

var (
	limitInUseDesc = prometheus.NewDesc("ztunnel_hbone_limit_in_use",
		"What inbound HBONE holds of a node-wide limit: connections, handshakes, streams, buffered_bytes.", []string{"limit"}, nil)
	limitMaxDesc = prometheus.NewDesc("ztunnel_hbone_limit_max",
		"A node-wide limit of inbound HBONE (ztunnel's --hbone-max-* flags).", []string{"limit"}, nil)
	limitRefusedDesc = prometheus.NewDesc("ztunnel_hbone_limit_refused_total",
		"What a node-wide limit of inbound HBONE turned away: connections closed, handshakes that found no slot in time, streams refused or reset.", []string{"limit"}, nil)
)

func (c limitsCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- limitInUseDesc
	ch <- limitMaxDesc
	ch <- limitRefusedDesc
}

func (c limitsCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.l.Stats()
	for name, v := range st.InUse {
		ch <- prometheus.MustNewConstMetric(limitInUseDesc, prometheus.GaugeValue, float64(v), name)
	}
	for name, v := range st.Max {
		ch <- prometheus.MustNewConstMetric(limitMaxDesc, prometheus.GaugeValue, float64(v), name)
	}
	for name, v := range st.Refused {
		ch <- prometheus.MustNewConstMetric(limitRefusedDesc, prometheus.CounterValue, float64(v), name)
	}
}
