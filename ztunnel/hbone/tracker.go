package hbone

import "sync"

// tracker counts running goroutines so that shutdown can wait for them.
// Unlike sync.WaitGroup it allows add while a wait is in progress and the
// count is zero: HTTP/2 starts handler goroutines on its own schedule, and
// one may start after the connection that spawned it has already been
// counted out.
type tracker struct {
	mu   sync.Mutex
	n    int
	zero chan struct{} // closed when n drops to zero; nil while n is zero
}

func (t *tracker) add() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.n == 0 {
		t.zero = make(chan struct{})
	}
	t.n++
}

func (t *tracker) done() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.n--
	if t.n == 0 {
		close(t.zero)
		t.zero = nil
	}
}

// idle returns a channel that is closed once the count is zero (at once if
// it is zero now). Callers re-check after it fires if new work may start.
func (t *tracker) idle() <-chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.n == 0 {
		c := make(chan struct{})
		close(c)
		return c
	}
	return t.zero
}
