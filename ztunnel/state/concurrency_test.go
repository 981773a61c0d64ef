package state

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"sync"
	"testing"

	"google.golang.org/protobuf/proto"

	workloadv1 "github.com/cairnmesh/cairn/apis/workload/v1"
)

// TestConcurrentReaders runs readers against a writer; with -race it
// checks that snapshots are never written after publication. Each reader
// also checks that a snapshot is consistent: a workload found by address
// is the one found by uid in the same snapshot.
func TestConcurrentReaders(t *testing.T) {
	s := NewStore()
	const rounds = 200
	var wg sync.WaitGroup
	stop := make(chan struct{})
	errs := make(chan error, 8)
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				snap := s.Snapshot()
				for i := range 8 {
					addr := netip.AddrFrom4([4]byte{10, 0, 0, byte(i)})
					w := snap.WorkloadByAddress("", addr)
					if w != nil && snap.Workload(w.GetUid()) != w {
						errs <- fmt.Errorf("inconsistent snapshot for %s", addr)
						return
					}
					snap.Endpoints(svcName("shop", "web"))
					snap.WorkloadsOnNode("node-a")
					snap.Policies(w)
				}
				if _, err := json.Marshal(snap); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	for r := range rounds {
		i := r % 8
		w := pod("shop", fmt.Sprintf("web-%d", i), "node-a", fmt.Sprintf("10.0.0.%d", i))
		w.Status = workloadv1.WorkloadStatus(r % 2)
		w.Services = map[string]*workloadv1.PortList{svcName("shop", "web"): {}}
		w.AuthorizationPolicies = []string{"shop/p"}
		upserts := addresses(wAddr(w))
		var removes []string
		if r%3 == 0 {
			removes = []string{podUID("shop", fmt.Sprintf("web-%d", (i+4)%8))}
		}
		mustApply(t, s, AddressTypeURL, upserts, removes...)
		p := policy("shop", "p", workloadv1.Scope(r%3), workloadv1.Action(r%2))
		mustApply(t, s, AuthorizationTypeURL, map[string]proto.Message{"shop/p": p})
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
