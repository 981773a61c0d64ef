package drain

import (
	"context"
	"testing"
	"time"
)

func TestRunSetsThenStopsWithDeadline(t *testing.T) {
	var st State
	if st.Draining() {
		t.Fatal("the zero State is draining")
	}
	start := time.Now()
	var sawDraining bool
	var deadline time.Time
	Run(context.Background(), &st, 50*time.Millisecond, time.Minute, func(ctx context.Context) {
		sawDraining = st.Draining()
		deadline, _ = ctx.Deadline()
	})
	if !sawDraining {
		t.Error("stop ran before readiness failed")
	}
	if time.Since(start) < 50*time.Millisecond {
		t.Error("stop ran before the handover ended")
	}
	if deadline.IsZero() || time.Until(deadline) < 30*time.Second {
		t.Errorf("stop's context deadline %v, want about a minute from now", deadline)
	}
}

func TestRunSkipsHandoverAfterFailure(t *testing.T) {
	var st State
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		Run(ctx, &st, time.Hour, time.Second, func(context.Context) {})
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Run waited for the handover although its context had ended")
	}
	if !st.Draining() || st.Reason() == "" {
		t.Error("not draining after Run")
	}
}
