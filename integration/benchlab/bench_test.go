package benchlab

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"
)

// defaultRounds is how many times each load runs in each mode.
const defaultRounds = 5

// measureBudget bounds everything after the lab is up: the mesh, the
// pods and the warm-up (under 30 s), the rounds (about 50 s each) and the
// profiles (about 45 s), with room for a slow machine; 7m50s for the
// default 5 rounds.
func measureBudget(rounds int, profiles bool) time.Duration {
	d := 2*time.Minute + time.Duration(rounds)*70*time.Second
	if profiles {
		d += 90 * time.Second
	}
	return d
}

var (
	benchOnce    sync.Once
	benchResults *results
	benchErr     error
)

// BenchmarkDataPath measures ztunnel's data path against no mesh and
// against a pair of haproxy mutual-TLS proxies, in the lab: latency at
// 1000 req/s, requests/s at max rate, new connections/s, single-stream
// throughput, and the proxies' CPU and RSS. The rounds run the modes back
// to back (nomesh, mesh, haproxy) for each load, so slow drifts of a
// shared machine hit the three alike.
//
// The measurement takes minutes and is done once, whatever b.N (the
// testing package calls a benchmark more than once); every call reports
// the same medians. BENCHLAB_ROUNDS changes the number of rounds.
func BenchmarkDataPath(b *testing.B) {
	if skipReason != "" {
		b.Skip(skipReason)
	}
	benchOnce.Do(func() {
		benchResults, benchErr = measure(b)
		if benchErr == nil {
			// To standard error: the testing package keeps only the first
			// lines of a benchmark's log.
			fmt.Fprintln(os.Stderr, benchResults.table())
		}
	})
	if benchErr != nil {
		b.Fatal(benchErr)
	}
	b.ReportMetric(0, "ns/op")
	benchResults.reportMetrics(b)
}

func measure(b *testing.B) (*results, error) {
	rounds := defaultRounds
	if s := os.Getenv("BENCHLAB_ROUNDS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("BENCHLAB_ROUNDS=%q: want a positive number", s)
		}
		rounds = n
	}
	perfDir := os.Getenv("BENCHLAB_PERF")
	ctx, cancel := context.WithTimeout(context.Background(), measureBudget(rounds, perfDir != ""))
	defer cancel()

	start := time.Now()
	modes, err := setup(ctx)
	if err != nil {
		return nil, fmt.Errorf("setup: %w", err)
	}
	b.Logf("mesh, pods and haproxy pair ready in %v", time.Since(start).Round(100*time.Millisecond))
	res := newResults(modes)
	res.rounds = rounds
	if err := res.recordIdle(modes); err != nil {
		return nil, err
	}
	if err := warmUp(ctx, modes); err != nil {
		return nil, err
	}

	start = time.Now()
	res.notes = append(res.notes, "rounds started "+start.UTC().Format(time.RFC3339)+"; "+machineNote())
	for round := 1; round <= rounds; round++ {
		for _, l := range loads {
			for _, m := range modes {
				f, err := runOnce(ctx, l, m)
				if err != nil {
					return nil, fmt.Errorf("round %d, %s, %s: %w", round, l.name, m.name, err)
				}
				res.add(l.name, m.name, f)
			}
		}
	}
	res.notes = append(res.notes, fmt.Sprintf("%d rounds took %v; at the end %s", rounds, time.Since(start).Round(time.Second), machineNote()))
	if perfDir != "" {
		if err := profile(ctx, perfDir, modes); err != nil {
			return nil, fmt.Errorf("profiling: %w", err)
		}
		b.Logf("profiles of the proxies in %s", perfDir)
	}
	return res, nil
}

// warmUp sends two seconds of the latency load through every mode, so
// the first round does not pay for first connections and certificates;
// nothing heavier, so that round 1's memory at 1000 req/s is that of a
// proxy that has carried nothing more.
func warmUp(ctx context.Context, modes []mode) error {
	for _, m := range modes {
		if _, err := fortio(ctx, m, "-qps", "1000", "-c", "4", "-t", "2s", "-payload-size", "1024"); err != nil {
			return fmt.Errorf("warm-up: %w", err)
		}
	}
	return nil
}

// runOnce runs one load in one mode and adds its proxies' CPU (vCPU over
// the load's duration) and peak RSS, by node.
func runOnce(ctx context.Context, l load, m mode) (figures, error) {
	mt, err := startMeter(m.proxies)
	if err != nil {
		return nil, err
	}
	f, d, err := l.run(ctx, m)
	if d <= 0 {
		d = time.Second // the run failed; the meter only has to stop
	}
	use, merr := mt.stop(d)
	if err != nil {
		return nil, err
	}
	if merr != nil {
		return nil, merr
	}
	for i, u := range use {
		// A proxy that used no CPU did not carry the traffic: the
		// figures would be the plain path's.
		if u.vcpu < 0.002 {
			return nil, fmt.Errorf("%s used %.4f vCPU: the traffic did not go through it", m.proxies[i].name, u.vcpu)
		}
		f[fmt.Sprintf("vcpu-node%d", i+1)] = u.vcpu
		f[fmt.Sprintf("rss-mb-node%d", i+1)] = mb(u.peak.rss)
		f[fmt.Sprintf("rss-anon-mb-node%d", i+1)] = mb(u.peak.anon)
		f[fmt.Sprintf("rss-file-mb-node%d", i+1)] = mb(u.peak.file)
	}
	return f, nil
}
