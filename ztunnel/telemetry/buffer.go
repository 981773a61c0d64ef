package telemetry

import (
	"bufio"
	"context"
	"io"
	"sync"
	"time"
)

// Access-log buffering: a line per connection written straight to standard
// output is a system call per connection (and a wake-up of whatever reads
// the log). Like Envoy's file access log, the lines are gathered and
// written when the buffer fills or FlushInterval has passed.
const (
	FlushInterval = time.Second
	logBufferSize = 64 << 10
)

// LogBuffer is an io.Writer that gathers writes for w. It is safe for
// concurrent use. Run flushes it periodically; Flush at the end.
type LogBuffer struct {
	mu sync.Mutex
	bw *bufio.Writer
}

// NewLogBuffer returns a LogBuffer writing to w.
func NewLogBuffer(w io.Writer) *LogBuffer {
	return &LogBuffer{bw: bufio.NewWriterSize(w, logBufferSize)}
}

// Write buffers p. A line is never split across two writes to w unless it
// is larger than the buffer.
func (b *LogBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(p) > b.bw.Available() && b.bw.Buffered() > 0 {
		if err := b.bw.Flush(); err != nil {
			return 0, err
		}
	}
	return b.bw.Write(p)
}

// Flush writes what is buffered.
func (b *LogBuffer) Flush() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.bw.Flush()
}

// Run flushes every interval until ctx ends, then once more.
func (b *LogBuffer) Run(ctx context.Context, interval time.Duration) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			_ = b.Flush()
			return
		case <-tick.C:
			_ = b.Flush()
		}
	}
}
