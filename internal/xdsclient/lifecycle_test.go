package xdsclient

import (
	"context"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

// clientGoroutines lists the goroutines that belong to a Client or to its
// gRPC connection (the test server's are not matched).
func clientGoroutines() []string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var found []string
	for g := range strings.SplitSeq(string(buf), "\n\n") {
		for _, mark := range []string{
			"xdsclient.(*Client)",
			"grpc.(*ClientConn)",
			"grpc.(*addrConn)",
			"transport.(*http2Client)",
			"grpcsync.(*CallbackSerializer)",
		} {
			if strings.Contains(g, mark) {
				found = append(found, g)
				break
			}
		}
	}
	return found
}

func noClientGoroutines(t *testing.T) {
	t.Helper()
	var left []string
	deadline := time.Now().Add(wait)
	for {
		if left = clientGoroutines(); len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines of the client outlived Run:\n%s", len(left), strings.Join(left, "\n\n"))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestRunEndsItsGoroutines(t *testing.T) {
	t.Run("connected", func(t *testing.T) {
		h := newHarness(t)
		cfg := h.config(newMemHandler(), nil)
		c, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		stop := run(t, c)
		syncStream(t, h.ads.next(t), cfg.NodeID, nil, nil)
		if len(clientGoroutines()) == 0 {
			t.Fatal("clientGoroutines finds nothing of a running client: its marks are stale")
		}
		stop()
		noClientGoroutines(t)
	})
	t.Run("backing off", func(t *testing.T) {
		h := newHarness(t)
		h.stop()
		obs := &recObserver{}
		cfg := h.config(newMemHandler(), obs)
		cfg.BackoffBase, cfg.BackoffMax = time.Hour, time.Hour
		c, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		stop := run(t, c)
		eventually(t, "a failed attempt", func() bool {
			return obs.get(func(o *recObserver) int { return len(o.retries) }) == 1
		})
		stop() // returns well before the hour is up, or run's cleanup fails the test
		noClientGoroutines(t)
	})
	t.Run("twice", func(t *testing.T) {
		h := newHarness(t)
		c, err := New(h.config(newMemHandler(), nil))
		if err != nil {
			t.Fatal(err)
		}
		run(t, c)
		h.ads.next(t) // the first Run is under way
		ctx, cancel := context.WithTimeout(t.Context(), wait)
		defer cancel()
		if err := c.Run(ctx); err == nil || ctx.Err() != nil {
			t.Errorf("a second Run returned %v, want an error at once", err)
		}
	})
}

func TestBackoffStartsOverAfterStableStream(t *testing.T) {
	for _, tc := range []struct {
		name   string
		stable time.Duration
		want   []int
	}{
		{"streams that lived long enough", time.Nanosecond, []int{1, 1, 1}},
		{"short-lived streams", time.Hour, []int{1, 2, 3}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			obs := &recObserver{}
			cfg := h.config(newMemHandler(), obs)
			cfg.StableAfter = tc.stable
			c, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			run(t, c)
			for range tc.want {
				fs := h.ads.next(t)
				subscribe(t, fs, cfg.NodeID)
				fs.close(unavailable())
			}
			eventually(t, "the retries", func() bool {
				return obs.get(func(o *recObserver) int { return len(o.failures) }) >= len(tc.want)
			})
			obs.mu.Lock()
			got := slices.Clone(obs.failures[:len(tc.want)])
			obs.mu.Unlock()
			if !slices.Equal(got, tc.want) {
				t.Errorf("consecutive failures reported %v, want %v", got, tc.want)
			}
		})
	}
}
