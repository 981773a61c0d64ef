package benchlab

import (
	"fmt"
	"slices"
)

// results holds every run's figures, one value per round in round order,
// by load, mode and figure. A mode's proxies add vcpu-node<i> and
// rss-mb-node<i> (the proxy on lab node i) to each run's figures.
type results struct {
	rounds int
	modes  []string
	series map[string][]float64
	idle   map[string][]memInfo // by mode, per node: before any traffic
	notes  []string             // when and on how busy a machine
}

func newResults(modes []mode) *results {
	r := &results{series: map[string][]float64{}, idle: map[string][]memInfo{}}
	for _, m := range modes {
		r.modes = append(r.modes, m.name)
	}
	return r
}

// recordIdle notes the proxies' memory before any traffic.
func (r *results) recordIdle(modes []mode) error {
	for _, m := range modes {
		for _, p := range m.proxies {
			mem, err := readMem(p.pid)
			if err != nil {
				return fmt.Errorf("%s: %w", p.name, err)
			}
			r.idle[m.name] = append(r.idle[m.name], mem)
		}
	}
	return nil
}

func seriesKey(load, mode, figure string) string { return load + "/" + mode + "/" + figure }

func (r *results) add(load, mode string, f figures) {
	for name, v := range f {
		k := seriesKey(load, mode, name)
		r.series[k] = append(r.series[k], v)
	}
}

// get returns a figure's values over the rounds (nil if never measured).
func (r *results) get(load, mode, figure string) []float64 {
	return r.series[seriesKey(load, mode, figure)]
}

// added returns, round by round, how much a mode adds to a figure over
// no mesh: the modes ran back to back within a round, so each difference
// compares runs under the same conditions.
func (r *results) added(load, mode, figure string) []float64 {
	a, base := r.get(load, mode, figure), r.get(load, "nomesh", figure)
	if len(a) != len(base) {
		return nil
	}
	out := make([]float64, len(a))
	for i := range a {
		out[i] = a[i] - base[i]
	}
	return out
}

// summary is a figure over the rounds.
type summary struct {
	med, min, max float64
	n             int
}

func summarize(v []float64) summary {
	if len(v) == 0 {
		return summary{}
	}
	s := slices.Sorted(slices.Values(v))
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return summary{med: med, min: s[0], max: s[len(s)-1], n: len(s)}
}

// format prints a summary as "median [min–max]" with prec decimals.
func (s summary) format(prec int) string {
	if s.n == 0 {
		return "-"
	}
	return fmt.Sprintf("%.*f [%.*f–%.*f]", prec, s.med, prec, s.min, prec, s.max)
}
