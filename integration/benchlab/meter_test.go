package benchlab

import (
	"context"
	"fmt"
	"time"
)

// rssInterval is how often a meter samples RSS during a run.
const rssInterval = 100 * time.Millisecond

// meter watches the proxies of one run: their CPU time when it starts and
// when it stops, and their peak RSS, sampled by a goroutine the meter
// owns until stop.
type meter struct {
	procs  []proc
	cpu0   []time.Duration
	peak   []memInfo // highest VmRSS seen; written by the sampler, read after done is closed
	cancel context.CancelFunc
	done   chan struct{}
}

// usage is one proxy's share of a run.
type usage struct {
	vcpu float64 // CPU time over the run's duration
	peak memInfo // at the highest VmRSS sampled
}

func startMeter(procs []proc) (*meter, error) {
	m := &meter{procs: procs, peak: make([]memInfo, len(procs)), done: make(chan struct{})}
	for _, p := range procs {
		cpu, _, err := readStat(p.pid)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p.name, err)
		}
		m.cpu0 = append(m.cpu0, cpu)
	}
	var ctx context.Context
	ctx, m.cancel = context.WithCancel(context.Background())
	go m.sample(ctx)
	return m, nil
}

func (m *meter) sample(ctx context.Context) {
	defer close(m.done)
	t := time.NewTicker(rssInterval)
	defer t.Stop()
	for {
		for i, p := range m.procs {
			if mem, err := readMem(p.pid); err == nil && mem.rss > m.peak[i].rss {
				m.peak[i] = mem
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// stop ends the sampling and returns each proxy's CPU over d (the load's
// own duration: the idle moments of starting and ending the load are
// charged to it, so the figure errs high by a few percent) and its peak
// RSS. It fails if a proxy restarted during the run.
func (m *meter) stop(d time.Duration) ([]usage, error) {
	m.cancel()
	<-m.done
	out := make([]usage, len(m.procs))
	for i, p := range m.procs {
		cpu, start, err := readStat(p.pid)
		if err != nil || start != p.start {
			return nil, fmt.Errorf("%s (pid %d) is gone or restarted during the run (%v)", p.name, p.pid, err)
		}
		out[i] = usage{vcpu: (cpu - m.cpu0[i]).Seconds() / d.Seconds(), peak: m.peak[i]}
	}
	return out, nil
}
