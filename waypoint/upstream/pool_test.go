package upstream_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"testing"

	"github.com/cairnmesh/cairn/waypoint/state"
	"github.com/cairnmesh/cairn/waypoint/upstream"
)

type lockedRand struct {
	mu sync.Mutex
	r  *rand.Rand
}

func (l *lockedRand) Uint64N(n uint64) uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.r.Uint64N(n)
}

func newPool(t testing.TB) *upstream.Pool {
	t.Helper()
	p, err := upstream.NewPool(upstream.Config{
		Rand: &lockedRand{r: rand.New(rand.NewPCG(3, 5))},
		Dialer: upstream.DialerFunc(func(context.Context, state.Endpoint) (net.Conn, error) {
			return nil, errors.New("no dialing in this test")
		}),
	})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func endpoints(n int) []state.Endpoint {
	var eps []state.Endpoint
	for i := range n {
		a := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 1)}), 8080)
		eps = append(eps, state.Endpoint{Address: a, Key: a.String()})
	}
	return eps
}

// TestLeastRequestNeverPicksTheMostLoaded: with two choices, the endpoint
// with the most requests in flight always loses its comparison; the least
// loaded one wins most picks.
func TestLeastRequestNeverPicksTheMostLoaded(t *testing.T) {
	p := newPool(t)
	eps := endpoints(3)
	c := &state.Cluster{Name: "c", LB: state.LBLeastRequest, ChoiceCount: 2}
	load := map[string]int{"10.0.0.1:8080": 5, "10.0.0.2:8080": 0, "10.0.0.3:8080": 3}
	var dones []func()
	for key, n := range load {
		for range n {
			for i := range eps {
				if eps[i].Key == key {
					e, err := p.Pick(&state.Cluster{LB: state.LBRoundRobin}, eps[i:i+1], nil)
					if err != nil {
						t.Fatal(err)
					}
					dones = append(dones, e.Begin())
				}
			}
		}
	}
	counts := map[string]int{}
	for range 1000 {
		e, err := p.Pick(c, eps, nil)
		if err != nil {
			t.Fatal(err)
		}
		counts[e.Endpoint().Key]++
	}
	if counts["10.0.0.1:8080"] != 0 {
		t.Errorf("the most loaded endpoint was picked %d times", counts["10.0.0.1:8080"])
	}
	// The idle endpoint wins every pair it is in: 2 of the 3 pairs.
	if counts["10.0.0.2:8080"] < 600 {
		t.Errorf("the idle endpoint got %d of 1000", counts["10.0.0.2:8080"])
	}
	for _, d := range dones {
		d()
	}
}

// TestPickSkipsThePreviousEndpoint: a retry goes to another endpoint when
// there is one, with either policy.
func TestPickSkipsThePreviousEndpoint(t *testing.T) {
	p := newPool(t)
	eps := endpoints(2)
	for _, lb := range []state.LBPolicy{state.LBLeastRequest, state.LBRoundRobin} {
		c := &state.Cluster{LB: lb, ChoiceCount: 2}
		first, err := p.Pick(c, eps, nil)
		if err != nil {
			t.Fatal(err)
		}
		for range 50 {
			next, err := p.Pick(c, eps, first)
			if err != nil {
				t.Fatal(err)
			}
			if next == first {
				t.Fatalf("policy %v: the retry went to the same endpoint", lb)
			}
		}
	}
	if _, err := p.Pick(&state.Cluster{}, nil, nil); !errors.Is(err, upstream.ErrNoEndpoint) {
		t.Errorf("no endpoints: %v", err)
	}
}

func BenchmarkPickLeastRequest(b *testing.B) {
	p := newPool(b)
	eps := endpoints(16)
	c := &state.Cluster{LB: state.LBLeastRequest, ChoiceCount: 2}
	b.ReportAllocs()
	for b.Loop() {
		e, err := p.Pick(c, eps, nil)
		if err != nil {
			b.Fatal(err)
		}
		e.Begin()()
	}
}
