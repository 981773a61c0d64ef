package xds

import (
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// BenchmarkPush1Of10kTo100Clients changes 1 resource among 10k while 100
// delta clients (one gRPC connection each, wildcard subscriptions, ACKing
// every response) are connected, and measures the time from Update until
// every client holds the new value. The debounce is 1 ms, so this is the
// server's fan-out; in production the quiet period (100 ms) adds to it.
// Allocations and heap-MB (after the initial sync) are process-wide:
// server and clients. cache-apply-ms is the deltaCache.update part
// (computing and queueing the 100 deltas); the rest is sending, the
// clients' ACKs, and the watch each ACK re-creates.
//
// A 1k-resource run sits next to it to show that the cost does not grow
// with the number of resources (see the package's notes on LinearCache).
func BenchmarkPush1Of10kTo100Clients(b *testing.B) {
	for _, n := range []int{1_000, 10_000} {
		b.Run(fmt.Sprintf("resources=%d", n), func(b *testing.B) { benchmarkPush(b, n, 100) })
	}
}

func benchmarkPush(b *testing.B, nResources, nClients int) {
	const target = "r-00042"
	// Registered first so it runs last: the clients end when their
	// connections and the server stop.
	var wg sync.WaitGroup
	b.Cleanup(wg.Wait)
	ts := startServer(b, Config{Debounce: time.Millisecond, TypeURLs: []string{typeA}})
	filler := strings.Repeat("x", 150) // about the size of a workload Address
	all := make(map[string]proto.Message, nResources)
	for i := range nResources {
		all[fmt.Sprintf("r-%05d", i)] = wrapperspb.String(fmt.Sprintf("%s-%d-v0", filler, i))
	}
	if err := ts.SetInitial(typeA, all); err != nil {
		b.Fatal(err)
	}

	var want atomic.Pointer[string] // the value every client must reach
	got := make(chan struct{}, nClients)
	synced := make(chan time.Time, nClients)
	start := time.Now()
	for i := range nClients {
		c := openStream(b, dial(b, ts.addr), fmt.Sprintf("good-c%d", i), false)
		c.subscribe(b, fmt.Sprintf("node-%d", i), typeA)
		wg.Go(func() {
			first := true
			for {
				resp, err := c.stream.Recv()
				if err != nil {
					return
				}
				if first {
					if len(resp.GetResources()) != nResources {
						b.Errorf("initial response holds %d resources", len(resp.GetResources()))
					}
					synced <- time.Now()
					first = false
				} else if w := want.Load(); w != nil && holds(resp, target, *w) {
					got <- struct{}{}
				}
				if err := c.stream.Send(&discoverygrpc.DeltaDiscoveryRequest{
					TypeUrl: typeA, ResponseNonce: resp.GetNonce(), Node: &core.Node{Id: "n"},
				}); err != nil {
					return
				}
			}
		})
	}
	var lastSync time.Time
	for range nClients {
		if t := <-synced; t.After(lastSync) {
			lastSync = t
		}
	}
	initialSync := lastSync.Sub(start)
	runtime.GC()
	var mem runtime.MemStats
	runtime.ReadMemStats(&mem)
	applyBefore := histogramSum(b, ts, "cairn_xds_push_duration_seconds")

	latencies := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		value := fmt.Sprintf("%s-changed-%d", filler, i)
		want.Store(&value)
		t0 := time.Now()
		if err := ts.Update(typeA, map[string]proto.Message{target: wrapperspb.String(value)}, nil); err != nil {
			b.Fatal(err)
		}
		for range nClients {
			select {
			case <-got:
			case <-time.After(30 * time.Second):
				b.Fatal("not every client got the change within 30s")
			}
		}
		latencies = append(latencies, time.Since(t0))
	}
	b.StopTimer()
	apply := histogramSum(b, ts, "cairn_xds_push_duration_seconds") - applyBefore
	slices.Sort(latencies)
	pct := func(p float64) float64 {
		return float64(latencies[int(p*float64(len(latencies)-1))].Microseconds()) / 1000
	}
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
	b.ReportMetric(float64(initialSync.Milliseconds()), "initial-sync-ms")
	b.ReportMetric(apply*1000/float64(b.N), "cache-apply-ms")
	b.ReportMetric(float64(mem.HeapInuse>>20), "heap-MB")
}

// histogramSum is the sum of the samples of a histogram family.
func histogramSum(b *testing.B, ts *testServer, name string) float64 {
	families, err := ts.reg.Gather()
	if err != nil {
		b.Fatal(err)
	}
	var sum float64
	for _, f := range families {
		if f.GetName() == name {
			for _, m := range f.GetMetric() {
				sum += m.GetHistogram().GetSampleSum()
			}
		}
	}
	return sum
}

// holds says whether a response carries name with the StringValue value.
func holds(resp *discoverygrpc.DeltaDiscoveryResponse, name, value string) bool {
	for _, r := range resp.GetResources() {
		if r.GetName() != name {
			continue
		}
		v := &wrapperspb.StringValue{}
		return r.GetResource().UnmarshalTo(v) == nil && v.GetValue() == value
	}
	return false
}
