package nodeagent

import (
	"testing"
	"time"
)

func TestQueueDeduplicatesAndSerialises(t *testing.T) {
	q := newQueue()
	q.Add("a")
	q.Add("b")
	q.Add("a") // already waiting
	k, ok := q.Get()
	if !ok || k != "a" {
		t.Fatalf("Get = %q %v, want a", k, ok)
	}
	q.Add("a") // while being worked on: after Done, not now
	if k, _ := q.Get(); k != "b" {
		t.Fatalf("Get = %q, want b", k)
	}
	q.Done("b")
	q.Done("a")
	if k, _ := q.Get(); k != "a" {
		t.Fatalf("Get = %q, want a again after Done", k)
	}
	q.Done("a")

	got := make(chan string)
	go func() {
		k, ok := q.Get()
		if !ok {
			k = "<shut down>"
		}
		got <- k
	}()
	q.ShutDown()
	if k := <-got; k != "<shut down>" {
		t.Errorf("Get after ShutDown = %q", k)
	}
	q.Add("c")
	if k, ok := q.Get(); ok {
		t.Errorf("Get after ShutDown returned %q", k)
	}
}

func TestQueueRetriesWithGrowingBackoff(t *testing.T) {
	q := newQueue()
	defer q.ShutDown()
	var waits []time.Duration
	for range 3 {
		start := time.Now()
		q.Retry("a")
		q.Retry("a") // one pending retry at a time
		k, ok := q.Get()
		if !ok || k != "a" {
			t.Fatalf("Get = %q %v", k, ok)
		}
		waits = append(waits, time.Since(start))
		q.Done("a")
	}
	// Draws from [50, 100), [100, 200), [200, 400) ms.
	if waits[0] < 50*time.Millisecond || waits[2] < 200*time.Millisecond {
		t.Errorf("waits %v, want at least 50 ms then 200 ms", waits)
	}
	q.Forget("a")
	q.Retry("a")
	q.mu.Lock()
	failures := q.backoff["a"].Failures()
	q.mu.Unlock()
	if failures != 1 {
		t.Errorf("after Forget and a failure: %d failures counted, want 1", failures)
	}
}
