package benchlab

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"
)

// Load shapes. The durations keep 5 rounds of 3 modes and 4 loads near
// 4 minutes; 6 s at 1000 req/s puts 60 requests above the p99.
const (
	latencyQPS      = 1000
	latencyConns    = 4
	latencyDuration = 6 * time.Second
	payloadBytes    = 1024
	maxConns        = 16
	maxDuration     = 3 * time.Second
	connDuration    = 3 * time.Second
	iperfSeconds    = 3 // measured, after 1 s left out (slow start)
	iperfOmit       = 1
	// histogramRes is fortio's histogram resolution (seconds): 50 µs
	// steps up to 0.5 ms, 250 µs steps between 1 and 2.5 ms. fortio's
	// default, 1 ms, would put every lab latency in its first bucket.
	histogramRes = "0.00005"
)

// figures are one run's results, by name (p50-ms, p99-ms, req/s, conn/s,
// Gbit/s).
type figures map[string]float64

// A load is one kind of traffic from a mode's client to its server. run
// returns the figures and how long the traffic itself ran.
type load struct {
	name string
	what string // for the report
	run  func(ctx context.Context, m mode) (figures, time.Duration, error)
}

var loads = []load{
	{"latency", fmt.Sprintf("fortio, %d req/s of %d B (POST, echoed) over %d connections, %v", latencyQPS, payloadBytes, latencyConns, latencyDuration),
		func(ctx context.Context, m mode) (figures, time.Duration, error) {
			r, err := fortio(ctx, m, "-qps", strconv.Itoa(latencyQPS), "-c", strconv.Itoa(latencyConns),
				"-t", latencyDuration.String(), "-uniform", "-payload-size", strconv.Itoa(payloadBytes),
				"-r", histogramRes, "-p", "50,99")
			if err != nil {
				return nil, 0, err
			}
			f := figures{"req/s": r.ActualQPS}
			for _, p := range r.DurationHistogram.Percentiles {
				f[fmt.Sprintf("p%g-ms", p.Percentile)] = p.Value * 1000
			}
			if len(f) != 3 {
				return nil, 0, fmt.Errorf("fortio reported percentiles %v, want 50 and 99", r.DurationHistogram.Percentiles)
			}
			return f, time.Duration(r.ActualDuration), nil
		}},
	{"maxrate", fmt.Sprintf("fortio, as fast as it goes, %d B (POST, echoed) over %d connections, %v", payloadBytes, maxConns, maxDuration),
		func(ctx context.Context, m mode) (figures, time.Duration, error) {
			r, err := fortio(ctx, m, "-qps", "0", "-c", strconv.Itoa(maxConns), "-t", maxDuration.String(),
				"-payload-size", strconv.Itoa(payloadBytes))
			if err != nil {
				return nil, 0, err
			}
			return figures{"req/s": r.ActualQPS}, time.Duration(r.ActualDuration), nil
		}},
	{"connrate", fmt.Sprintf("fortio, keep-alive off (a new connection per GET), as fast as it goes over %d connections, %v", maxConns, connDuration),
		func(ctx context.Context, m mode) (figures, time.Duration, error) {
			r, err := fortio(ctx, m, "-qps", "0", "-c", strconv.Itoa(maxConns), "-t", connDuration.String(), "-keepalive=false")
			if err != nil {
				return nil, 0, err
			}
			return figures{"conn/s": r.ActualQPS}, time.Duration(r.ActualDuration), nil
		}},
	{"iperf", fmt.Sprintf("iperf3, one stream client to server, %d s after %d s left out", iperfSeconds, iperfOmit),
		func(ctx context.Context, m mode) (figures, time.Duration, error) {
			gbps, err := iperf(ctx, m)
			if err != nil {
				return nil, 0, err
			}
			return figures{"Gbit/s": gbps}, (iperfSeconds + iperfOmit) * time.Second, nil
		}},
}

// fortioResult is the part of fortio's JSON result the benchmark reads.
type fortioResult struct {
	ActualQPS         float64
	ActualDuration    int64 // ns
	RetCodes          map[string]int64
	DurationHistogram struct {
		Count       int64
		Percentiles []struct{ Percentile, Value float64 }
	}
	ErrorsDurationHistogram struct{ Count int64 }
}

// fortio runs `fortio load` in the mode's client pod against its URL. More
// than 0.1% failed requests fail the run: the path is broken, not slow.
func fortio(ctx context.Context, m mode, args ...string) (fortioResult, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	argv := append([]string{"/cairn/bin/fortio", "load", "-json", "-", "-quiet"}, args...)
	out, err := m.client.exec(ctx, append(argv, m.httpURL)...)
	var r fortioResult
	if err != nil {
		return r, fmt.Errorf("%s: %w", m.name, err)
	}
	i := strings.Index(out, "{")
	if i < 0 {
		return r, fmt.Errorf("%s: no JSON in fortio's output: %q", m.name, out)
	}
	if err := json.Unmarshal([]byte(out[i:]), &r); err != nil {
		return r, fmt.Errorf("%s: fortio's result: %w", m.name, err)
	}
	failed := r.DurationHistogram.Count - r.RetCodes["200"]
	if r.DurationHistogram.Count == 0 || failed*1000 > r.DurationHistogram.Count {
		return r, fmt.Errorf("%s: %d of %d requests failed (codes %v)", m.name, failed, r.DurationHistogram.Count, r.RetCodes)
	}
	return r, nil
}

// iperf runs an iperf3 client in the mode's client pod and returns the
// throughput the server received, in Gbit/s.
func iperf(ctx context.Context, m mode) (float64, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	host, port, err := net.SplitHostPort(m.iperf)
	if err != nil {
		return 0, err
	}
	out, err := m.client.exec(ctx, "iperf3", "-c", host, "-p", port, "-J",
		"-t", strconv.Itoa(iperfSeconds), "-O", strconv.Itoa(iperfOmit))
	if err != nil {
		return 0, fmt.Errorf("%s: iperf3: %w (output %q)", m.name, err, out)
	}
	var r struct {
		Error string
		End   struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		}
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		return 0, fmt.Errorf("%s: iperf3's result: %w", m.name, err)
	}
	if r.Error != "" || r.End.SumReceived.BitsPerSecond == 0 {
		return 0, fmt.Errorf("%s: iperf3: %q, %v bit/s", m.name, r.Error, r.End.SumReceived.BitsPerSecond)
	}
	return r.End.SumReceived.BitsPerSecond / 1e9, nil
}
