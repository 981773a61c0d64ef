package kubelet

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/cairnmesh/cairn/integration/lab/kubeletapi"
)

// Container logs are files in the CRI format, as containerd writes them
// and kubelet, kubectl and node log agents read them: one entry per line,
//
//	<RFC3339Nano time> <stdout|stderr> <F|P> <content>
//
// where P marks a partial line (split because it was longer than
// maxLogLine) and F the end of a line.

const maxLogLine = 16 << 10

// criWriter appends the entries of a container's streams to its log file.
type criWriter struct {
	mu  sync.Mutex
	w   io.Writer
	now func() time.Time
}

// copyStream writes r's lines as entries of stream until r ends.
func (c *criWriter) copyStream(stream string, r io.Reader) error {
	br := bufio.NewReaderSize(r, maxLogLine)
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			tag := "P"
			if line[len(line)-1] == '\n' {
				tag = "F"
				line = line[:len(line)-1]
			} else if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
				tag = "F" // the stream ended without a newline
			}
			if werr := c.entry(stream, tag, line); werr != nil {
				return werr
			}
		}
		switch {
		case err == nil, errors.Is(err, bufio.ErrBufferFull):
		case errors.Is(err, io.EOF), errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, os.ErrClosed):
			return nil
		default:
			return err
		}
	}
}

func (c *criWriter) entry(stream, tag string, content []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	buf := make([]byte, 0, len(content)+48)
	buf = c.now().UTC().AppendFormat(buf, time.RFC3339Nano)
	buf = append(buf, ' ')
	buf = append(buf, stream...)
	buf = append(buf, ' ')
	buf = append(buf, tag...)
	buf = append(buf, ' ')
	buf = append(buf, content...)
	buf = append(buf, '\n')
	_, err := c.w.Write(buf)
	return err
}

// logEntry is one parsed line of a CRI log.
type logEntry struct {
	Time    time.Time
	Stream  string
	Partial bool
	Content []byte
}

func parseLogLine(line []byte) (logEntry, error) {
	f := bytes.SplitN(line, []byte{' '}, 4)
	if len(f) < 3 {
		return logEntry{}, fmt.Errorf("malformed log line %q", line)
	}
	t, err := time.Parse(time.RFC3339Nano, string(f[0]))
	if err != nil {
		return logEntry{}, fmt.Errorf("malformed log line: %w", err)
	}
	e := logEntry{Time: t, Stream: string(f[1]), Partial: string(f[2]) == "P"}
	if len(f) == 4 {
		e.Content = f[3]
	}
	return e, nil
}

// logReader renders a CRI log file as `kubectl logs` shows it.
type logReader struct {
	opts    kubeletapi.LogOptions
	w       io.Writer
	written int64
	lineBuf []byte // partial entries not yet ended by an F entry
	lineTS  time.Time
}

var errLimitReached = errors.New("log limit reached")

// write renders one entry; entries of one line are joined first.
func (r *logReader) write(e logEntry) error {
	if r.opts.SinceTime != nil && e.Time.Before(*r.opts.SinceTime) {
		return nil
	}
	if len(r.lineBuf) == 0 {
		r.lineTS = e.Time
	}
	r.lineBuf = append(r.lineBuf, e.Content...)
	if e.Partial {
		return nil
	}
	var out []byte
	if r.opts.Timestamps {
		out = r.lineTS.UTC().AppendFormat(out, time.RFC3339Nano)
		out = append(out, ' ')
	}
	out = append(out, r.lineBuf...)
	out = append(out, '\n')
	r.lineBuf = r.lineBuf[:0]
	if r.opts.LimitBytes != nil {
		left := *r.opts.LimitBytes - r.written
		if left <= 0 {
			return errLimitReached
		}
		if int64(len(out)) > left {
			out = out[:left]
		}
	}
	n, err := r.w.Write(out)
	r.written += int64(n)
	if err != nil {
		return err
	}
	if r.opts.LimitBytes != nil && r.written >= *r.opts.LimitBytes {
		return errLimitReached
	}
	return nil
}

// readLog writes the log at path to w according to opts. With Follow it
// keeps reading until done reports true (the container has exited) and
// everything is read, or ctx ends.
func readLog(ctx context.Context, path string, opts kubeletapi.LogOptions, w io.Writer, done func() bool) error {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		if !opts.Follow {
			return nil
		}
		// The container has not written yet; wait for the file.
		for {
			if done() {
				return nil
			}
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(100 * time.Millisecond):
			}
			if f, err = os.Open(path); err == nil {
				break
			}
		}
	} else if err != nil {
		return fmt.Errorf("reading log: %w", err)
	}
	defer f.Close()
	r := &logReader{opts: opts, w: w}

	// What is there now, with tail applied.
	data, err := io.ReadAll(f)
	if err != nil {
		return fmt.Errorf("reading log: %w", err)
	}
	end := bytes.LastIndexByte(data, '\n') + 1
	offset := int64(end)
	entries := parseEntries(data[:end])
	if opts.TailLines != nil {
		entries = tailEntries(entries, int(*opts.TailLines))
	}
	for _, e := range entries {
		if err := r.write(e); err != nil {
			return ignoreLimit(err)
		}
	}
	if !opts.Follow {
		return nil
	}

	var pending []byte
	buf := make([]byte, 64<<10)
	for {
		n, err := f.ReadAt(buf, offset)
		if n > 0 {
			offset += int64(n)
			pending = append(pending, buf[:n]...)
			if end := bytes.LastIndexByte(pending, '\n') + 1; end > 0 {
				for _, e := range parseEntries(pending[:end]) {
					if err := r.write(e); err != nil {
						return ignoreLimit(err)
					}
				}
				pending = append(pending[:0], pending[end:]...)
			}
			if fl, ok := w.(interface{ Flush() }); ok {
				fl.Flush()
			}
			continue
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("reading log: %w", err)
		}
		if done() {
			// One more read: the monitor may have written after our last.
			if n, _ := f.ReadAt(buf[:1], offset); n == 0 {
				return nil
			}
			continue
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func ignoreLimit(err error) error {
	if errors.Is(err, errLimitReached) {
		return nil
	}
	return err
}

func parseEntries(data []byte) []logEntry {
	var out []logEntry
	for len(data) > 0 {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			i = len(data)
		}
		if e, err := parseLogLine(data[:i]); err == nil {
			out = append(out, e)
		}
		data = data[min(i+1, len(data)):]
	}
	return out
}

// tailEntries keeps the entries of the last n lines (a line may span
// several partial entries).
func tailEntries(entries []logEntry, n int) []logEntry {
	if n < 0 {
		return entries
	}
	lines := 0
	for i := len(entries) - 1; i >= 0; i-- {
		if !entries[i].Partial {
			if lines == n {
				return entries[i+1:]
			}
			lines++
		}
	}
	return entries
}
