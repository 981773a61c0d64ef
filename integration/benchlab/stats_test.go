package benchlab

import (
	"os"
	"testing"
)

func TestSummarize(t *testing.T) {
	for _, c := range []struct {
		in   []float64
		want summary
	}{
		{nil, summary{}},
		{[]float64{3}, summary{3, 3, 3, 1}},
		{[]float64{5, 1, 3}, summary{3, 1, 5, 3}},
		{[]float64{4, 1, 3, 2}, summary{2.5, 1, 4, 4}},
	} {
		if got := summarize(c.in); got != c.want {
			t.Errorf("summarize(%v) = %+v, want %+v", c.in, got, c.want)
		}
	}
}

func TestAddedPairsRounds(t *testing.T) {
	r := newResults([]mode{{name: "nomesh"}, {name: "mesh"}})
	for _, v := range []struct{ base, mesh float64 }{{1, 1.5}, {2, 2.25}} {
		r.add("latency", "nomesh", figures{"p99-ms": v.base})
		r.add("latency", "mesh", figures{"p99-ms": v.mesh})
	}
	if got := r.added("latency", "mesh", "p99-ms"); len(got) != 2 || got[0] != 0.5 || got[1] != 0.25 {
		t.Errorf("added = %v, want [0.5 0.25]", got)
	}
}

func TestReadStatAndMemOfSelf(t *testing.T) {
	cpu, start, err := readStat(os.Getpid())
	if err != nil || start == 0 || cpu < 0 {
		t.Fatalf("readStat: %v %d %v", cpu, start, err)
	}
	m, err := readMem(os.Getpid())
	if err != nil || m.rss == 0 || m.anon == 0 || m.rss < m.anon {
		t.Fatalf("readMem: %+v %v", m, err)
	}
}
