package kubeclient

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"
)

// tokenMaxAge is how long a token read from a file is used before the file
// is read again. The kubelet rewrites a projected token when 80% of its
// lifetime (at least an hour) is gone, so a minute is early enough while
// reading the file once a minute costs nothing; client-go waits as long.
const tokenMaxAge = time.Minute

// tokenSource gives the bearer token: a static one, or the content of a
// file re-read once it is older than maxAge or after the server refused it.
type tokenSource struct {
	static string
	path   string
	maxAge time.Duration
	now    func() time.Time // for tests; nil means time.Now

	mu     sync.Mutex
	token  string
	readAt time.Time
}

func (t *tokenSource) clock() time.Time {
	if t.now != nil {
		return t.now()
	}
	return time.Now()
}

// get returns the token, reading the file when due.
// A file that cannot be read while an older token is known keeps that
// token: the server decides whether it still works.
func (t *tokenSource) get() (string, error) {
	if t.path == "" {
		return t.static, nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.clock()
	if t.token != "" && now.Sub(t.readAt) < t.maxAge {
		return t.token, nil
	}
	b, err := os.ReadFile(t.path)
	tok := strings.TrimSpace(string(b))
	if err == nil && tok == "" {
		err = errors.New("the file is empty")
	}
	if err != nil {
		if t.token != "" {
			return t.token, nil
		}
		return "", fmt.Errorf("reading the bearer token %s: %w", t.path, err)
	}
	t.token, t.readAt = tok, now
	return tok, nil
}

// invalidate makes the next get read the file.
func (t *tokenSource) invalidate() {
	t.mu.Lock()
	t.readAt = time.Time{}
	t.mu.Unlock()
}
