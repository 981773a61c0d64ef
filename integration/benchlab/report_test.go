package benchlab

import (
	"fmt"
	"strings"
	"testing"
	"text/tabwriter"
)

// The targets for the ztunnel pair.
const (
	targetVCPU        = 0.06 // per ztunnel at 1000 req/s
	targetRSSMB       = 16   // per ztunnel at 1000 req/s
	targetThroughputX = 1.2  // single stream, times the haproxy pair's
	targetConnPerSec  = 5000 // new connections/s through the pair
)

// row is one line of the figures table: how to read a figure and print
// it.
type row struct {
	load, figure, label string
	prec                int
}

var rows = []row{
	{"latency", "p50-ms", "p50 ms", 3},
	{"latency", "p99-ms", "p99 ms", 3},
	{"latency", "req/s", "req/s (asked 1000)", 0},
	{"latency", "vcpu-node1", "vCPU proxy node 1", 3},
	{"latency", "vcpu-node2", "vCPU proxy node 2", 3},
	{"latency", "rss-mb-node1", "RSS MB proxy node 1", 1},
	{"latency", "rss-mb-node2", "RSS MB proxy node 2", 1},
	{"latency", "rss-anon-mb-node1", "  of it anon MB node 1", 1},
	{"latency", "rss-anon-mb-node2", "  of it anon MB node 2", 1},
	{"latency", "rss-file-mb-node1", "  of it file MB node 1", 1},
	{"latency", "rss-file-mb-node2", "  of it file MB node 2", 1},
	{"maxrate", "req/s", "req/s", 0},
	{"maxrate", "vcpu-node1", "vCPU proxy node 1", 2},
	{"maxrate", "vcpu-node2", "vCPU proxy node 2", 2},
	{"connrate", "conn/s", "conn/s", 0},
	{"connrate", "vcpu-node1", "vCPU proxy node 1", 2},
	{"connrate", "vcpu-node2", "vCPU proxy node 2", 2},
	{"connrate", "rss-mb-node1", "RSS MB proxy node 1", 1},
	{"connrate", "rss-mb-node2", "RSS MB proxy node 2", 1},
	{"iperf", "Gbit/s", "Gbit/s", 2},
	{"iperf", "vcpu-node1", "vCPU proxy node 1", 2},
	{"iperf", "vcpu-node2", "vCPU proxy node 2", 2},
}

// table prints every figure per mode as median [min–max] over the rounds,
// then the targets.
func (r *results) table() string {
	var b strings.Builder
	fmt.Fprintf(&b, "ztunnel data path, %d rounds, modes interleaved per load (%s), median [min–max]\n",
		r.rounds, strings.Join(r.modes, " "))
	for _, l := range loads {
		fmt.Fprintf(&b, "  %s: %s\n", l.name, l.what)
	}
	for _, n := range r.notes {
		fmt.Fprintf(&b, "  %s\n", n)
	}
	b.WriteString("\n")
	w := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintf(w, "load\tfigure\t%s\n", strings.Join(r.modes, "\t"))
	for _, rw := range rows {
		cells := []string{rw.load, rw.label}
		for _, m := range r.modes {
			cells = append(cells, summarize(r.get(rw.load, m, rw.figure)).format(rw.prec))
		}
		fmt.Fprintln(w, strings.Join(cells, "\t"))
		if rw.figure == "p99-ms" {
			cells := []string{rw.load, "added p99 ms"}
			for _, m := range r.modes {
				if m == "nomesh" {
					cells = append(cells, "-")
					continue
				}
				cells = append(cells, summarize(r.added(rw.load, m, rw.figure)).format(3))
			}
			fmt.Fprintln(w, strings.Join(cells, "\t"))
		}
	}
	_ = w.Flush()
	b.WriteString("\ntargets (medians; ratio = measured / target, or mesh / haproxy pair)\n")
	w = tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	for _, t := range r.targets() {
		fmt.Fprintf(w, "%s\t%s\t%s\n", t.name, t.measured, t.verdict)
	}
	_ = w.Flush()
	return b.String()
}

// target is one of the targets, measured.
type target struct{ name, measured, verdict string }

func verdict(met bool, ratio float64, higherIsBetter bool) string {
	switch {
	case met:
		return "met"
	case higherIsBetter:
		return fmt.Sprintf("SHORT by %.0f%%", (1-ratio)*100)
	default:
		return fmt.Sprintf("SHORT: %.0f%% over", (ratio-1)*100)
	}
}

func (r *results) targets() []target {
	med := func(v []float64) float64 { return summarize(v).med }
	var ts []target

	zm, hm := med(r.added("latency", "mesh", "p99-ms")), med(r.added("latency", "haproxy", "p99-ms"))
	x := zm / hm
	ts = append(ts, target{"added p99 over no mesh <= haproxy pair's",
		fmt.Sprintf("mesh %.3f ms, haproxy %.3f ms: %.2fx", zm, hm, x), verdict(zm <= hm, x, false)})

	for i := 1; i <= 2; i++ {
		v := med(r.get("latency", "mesh", fmt.Sprintf("vcpu-node%d", i)))
		h := med(r.get("latency", "haproxy", fmt.Sprintf("vcpu-node%d", i)))
		ts = append(ts, target{fmt.Sprintf("vCPU of ztunnel node %d at 1000 req/s <= %.2f", i, targetVCPU),
			fmt.Sprintf("%.3f: %.2fx (haproxy %.3f: mesh %.2fx)", v, v/targetVCPU, h, v/h), verdict(v <= targetVCPU, v/targetVCPU, false)})
	}
	for i := 1; i <= 2; i++ {
		v := r.get("latency", "mesh", fmt.Sprintf("rss-mb-node%d", i))
		m, h := med(v), med(r.get("latency", "haproxy", fmt.Sprintf("rss-mb-node%d", i)))
		var first, idle float64
		if len(v) > 0 {
			first = v[0]
		}
		if len(r.idle["mesh"]) >= i {
			idle = mb(r.idle["mesh"][i-1].rss)
		}
		ts = append(ts, target{fmt.Sprintf("RSS of ztunnel node %d at 1000 req/s <= %d MB", i, targetRSSMB),
			fmt.Sprintf("%.1f MB: %.2fx (round 1 %.1f, idle before traffic %.1f; haproxy %.1f)", m, m/targetRSSMB, first, idle, h),
			verdict(m <= targetRSSMB, m/targetRSSMB, false)})
	}

	zt, ht := med(r.get("iperf", "mesh", "Gbit/s")), med(r.get("iperf", "haproxy", "Gbit/s"))
	x = zt / ht
	ts = append(ts, target{fmt.Sprintf("single-stream throughput >= %.1fx haproxy pair's", targetThroughputX),
		fmt.Sprintf("mesh %.2f Gbit/s, haproxy %.2f: %.2fx", zt, ht, x), verdict(x >= targetThroughputX, x/targetThroughputX, true)})

	zc, hc := med(r.get("connrate", "mesh", "conn/s")), med(r.get("connrate", "haproxy", "conn/s"))
	ts = append(ts, target{fmt.Sprintf("new connections/s through the pair >= %d", targetConnPerSec),
		fmt.Sprintf("%.0f: %.2fx (haproxy %.0f: mesh %.2fx)", zc, zc/targetConnPerSec, hc, zc/hc), verdict(zc >= targetConnPerSec, zc/targetConnPerSec, true)})

	zr, hr := med(r.get("maxrate", "mesh", "req/s")), med(r.get("maxrate", "haproxy", "req/s"))
	ts = append(ts, target{"requests/s at max rate (no target)",
		fmt.Sprintf("mesh %.0f, haproxy %.0f: %.2fx", zr, hr, zr/hr), "-"})
	return ts
}

// reportMetrics reports the medians as benchmark metrics (units say
// figure and mode; x- are ratios of the mesh to the haproxy pair).
func (r *results) reportMetrics(b *testing.B) {
	med := func(v []float64) float64 { return summarize(v).med }
	proxy := map[string]string{"mesh": "ztunnel", "haproxy": "haproxy"}
	for _, m := range r.modes {
		b.ReportMetric(med(r.get("latency", m, "p50-ms")), "p50-ms-"+m)
		b.ReportMetric(med(r.get("latency", m, "p99-ms")), "p99-ms-"+m)
		b.ReportMetric(med(r.get("maxrate", m, "req/s")), "req/s-max-"+m)
		b.ReportMetric(med(r.get("connrate", m, "conn/s")), "conn/s-"+m)
		b.ReportMetric(med(r.get("iperf", m, "Gbit/s")), "Gbit/s-"+m)
		if p, ok := proxy[m]; ok {
			b.ReportMetric(med(r.added("latency", m, "p99-ms")), "p99-added-ms-"+m)
			for i := 1; i <= 2; i++ {
				b.ReportMetric(med(r.get("latency", m, fmt.Sprintf("vcpu-node%d", i))), fmt.Sprintf("vCPU-1k-%s-node%d", p, i))
				b.ReportMetric(med(r.get("latency", m, fmt.Sprintf("rss-mb-node%d", i))), fmt.Sprintf("MB-rss-1k-%s-node%d", p, i))
			}
		}
	}
	b.ReportMetric(med(r.added("latency", "mesh", "p99-ms"))/med(r.added("latency", "haproxy", "p99-ms")), "x-p99-added-mesh/haproxy")
	b.ReportMetric(med(r.get("iperf", "mesh", "Gbit/s"))/med(r.get("iperf", "haproxy", "Gbit/s")), "x-Gbit/s-mesh/haproxy")
	b.ReportMetric(med(r.get("connrate", "mesh", "conn/s"))/med(r.get("connrate", "haproxy", "conn/s")), "x-conn/s-mesh/haproxy")
	b.ReportMetric(med(r.get("maxrate", "mesh", "req/s"))/med(r.get("maxrate", "haproxy", "req/s")), "x-req/s-max-mesh/haproxy")
}
