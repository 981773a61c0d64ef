package nodeagent

import (
	"sync"
	"time"

	"github.com/cairnmesh/cairn/internal/retry"
)

// queue holds the keys (namespace/name) of the pods to reconcile. A key
// waits in it at most once however often it is added, is never handed out
// twice at once (a key added while it is being worked on comes back after
// Done), and one that failed comes back after a back-off of its own, from
// 100 ms doubling up to 30 s, so that one broken pod does not hold up the
// others or spin.
type queue struct {
	mu      sync.Mutex
	cond    sync.Cond
	order   []string
	waiting map[string]bool // in order
	active  map[string]bool // handed out by Get, not Done yet
	dirty   map[string]bool // added while active
	backoff map[string]*retry.Backoff
	timers  map[string]*time.Timer // pending retries
	closed  bool
}

func newQueue() *queue {
	q := &queue{
		waiting: map[string]bool{},
		active:  map[string]bool{},
		dirty:   map[string]bool{},
		backoff: map[string]*retry.Backoff{},
		timers:  map[string]*time.Timer{},
	}
	q.cond.L = &q.mu
	return q
}

// Add queues key now.
func (q *queue) Add(key string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.addLocked(key)
}

func (q *queue) addLocked(key string) {
	switch {
	case q.closed || q.waiting[key]:
	case q.active[key]:
		q.dirty[key] = true
	default:
		q.waiting[key] = true
		q.order = append(q.order, key)
		q.cond.Signal()
	}
}

// Retry queues key again after its back-off, which grows with each
// consecutive failure until Forget.
func (q *queue) Retry(key string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed || q.timers[key] != nil {
		return // a retry is already pending
	}
	b := q.backoff[key]
	if b == nil {
		b = &retry.Backoff{Base: 100 * time.Millisecond, Max: 30 * time.Second}
		q.backoff[key] = b
	}
	q.timers[key] = time.AfterFunc(b.Next(), func() {
		q.mu.Lock()
		defer q.mu.Unlock()
		delete(q.timers, key)
		q.addLocked(key)
	})
}

// Forget resets key's back-off after a success.
func (q *queue) Forget(key string) {
	q.mu.Lock()
	delete(q.backoff, key)
	q.mu.Unlock()
}

// Get waits for a key; false once the queue is shut down.
func (q *queue) Get() (string, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.order) == 0 && !q.closed {
		q.cond.Wait()
	}
	if q.closed {
		return "", false
	}
	key := q.order[0]
	q.order[0] = ""
	q.order = q.order[1:]
	delete(q.waiting, key)
	q.active[key] = true
	return key, true
}

// Done ends the work on key that Get handed out.
func (q *queue) Done(key string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	delete(q.active, key)
	if q.dirty[key] {
		delete(q.dirty, key)
		q.addLocked(key)
	}
}

// ShutDown makes Get return false and drops pending retries.
func (q *queue) ShutDown() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.closed = true
	for key, t := range q.timers {
		t.Stop()
		delete(q.timers, key)
	}
	q.cond.Broadcast()
}
