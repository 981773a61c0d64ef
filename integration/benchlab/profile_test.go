package benchlab

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"
)

// profile runs each load once more through every mode that has proxies,
// with Linux perf sampling each proxy's CPU (perf sees the kernel's part
// too, which Go's CPU profile does not, and haproxy's), and writes into
// dir <load>-<proxy>.data and, beside it, .txt: perf's report by symbol
// with callers' time included, the view that shows which part of the
// proxy the CPU goes to. For each ztunnel it also saves Go's heap profile
// after the load (.heap.pb.gz) with its in-use and allocated tops.
func profile(ctx context.Context, dir string, modes []mode) error {
	if _, err := exec.LookPath("perf"); err != nil {
		return fmt.Errorf("BENCHLAB_PERF needs perf (apt-get install linux-perf): %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, m := range modes {
		if len(m.proxies) == 0 {
			continue
		}
		for _, l := range loads {
			if err := profileRun(ctx, dir, l, m); err != nil {
				return fmt.Errorf("%s, %s: %w", l.name, m.name, err)
			}
		}
	}
	return nil
}

// profileRun records the proxies of m while l runs once.
func profileRun(ctx context.Context, dir string, l load, m mode) error {
	var recs []*exec.Cmd
	stop := func() {
		for _, c := range recs {
			_ = c.Process.Signal(os.Interrupt) // perf record writes its file and exits
			// It exits by the signal: its file, which perf report
			// checks, tells whether it worked.
			_ = c.Wait()
		}
		recs = nil
	}
	defer stop()
	var data []string
	for _, p := range m.proxies {
		out := filepath.Join(dir, l.name+"-"+p.name+".data")
		c := exec.CommandContext(ctx, "perf", "record", "-q", "-F", "999", "-g", "-p", strconv.Itoa(p.pid), "-o", out)
		if err := c.Start(); err != nil {
			return fmt.Errorf("perf record: %w", err)
		}
		recs = append(recs, c)
		data = append(data, out)
	}
	time.Sleep(300 * time.Millisecond) // perf attaches
	if _, _, err := l.run(ctx, m); err != nil {
		return err
	}
	stop()
	for _, p := range m.proxies {
		if p.pprof != nil {
			if err := heapProfile(ctx, filepath.Join(dir, l.name+"-"+p.name), *p.pprof); err != nil {
				return err
			}
		}
	}
	for _, d := range data {
		rep, err := exec.CommandContext(ctx, "perf", "report", "-i", d, "--stdio", "--children",
			"--sort", "sym", "--percent-limit", "1.5", "-g", "none").Output()
		if err != nil {
			return fmt.Errorf("perf report %s: %w", d, err)
		}
		if err := os.WriteFile(d[:len(d)-len(".data")]+".txt", rep, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// heapProfile fetches a ztunnel's heap profile from its admin port, from
// inside its pod (host network: the node's loopback), into base.heap.pb.gz,
// and writes `go tool pprof -top` of the memory in use and of all
// allocations beside it.
func heapProfile(ctx context.Context, base string, pod podRef) error {
	out, err := pod.exec(ctx, "curl", "-sS", "--fail", "--max-time", "10", "http://127.0.0.1:15000/debug/pprof/heap")
	if err != nil {
		return fmt.Errorf("heap profile of %s: %w", pod.name, err)
	}
	file := base + ".heap.pb.gz"
	if err := os.WriteFile(file, []byte(out), 0o644); err != nil {
		return err
	}
	for _, index := range []string{"inuse_space", "alloc_space"} {
		top, err := exec.CommandContext(ctx, "go", "tool", "pprof", "-top", "-sample_index="+index, file).CombinedOutput()
		if err != nil {
			return fmt.Errorf("go tool pprof %s: %w\n%s", file, err, top)
		}
		if err := os.WriteFile(base+".heap-"+index+".txt", top, 0o644); err != nil {
			return err
		}
	}
	return nil
}
