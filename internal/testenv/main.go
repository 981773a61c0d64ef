package testenv

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"testing"
)

// The one environment of this test binary, set by Main before m.Run.
var (
	current    *Env
	skipReason string
)

// Main is a whole TestMain: it starts the environment, runs the tests and
// stops it, then exits. When the binaries are missing it runs the tests
// anyway so that Get skips each of them with a message, unless $CI is
// "true", in which case the package fails. Start-up time goes to stderr
// (shown by `go test -v` and on failure).
func Main(m *testing.M, opts Options) {
	os.Exit(run(m, opts))
}

func run(m *testing.M, opts Options) int {
	flag.Parse() // for testing.Verbose in Start
	env, err := Start(opts)
	switch {
	case errors.Is(err, ErrNoBinaries) && os.Getenv("CI") != "true":
		skipReason = fmt.Sprintf("testenv: %v", err)
		fmt.Fprintln(os.Stderr, skipReason)
		return m.Run()
	case err != nil:
		fmt.Fprintf(os.Stderr, "testenv: %v\n", err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "testenv: cluster ready in %v at %s\n", env.Timings(), env.server.URL())
	current = env
	code := m.Run()
	if code != 0 {
		env.keepDir = true
	}
	if err := env.Stop(); err != nil {
		fmt.Fprintf(os.Stderr, "testenv: stopping: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

// Get returns the environment Main started. It skips the test when the
// binaries are missing and fails it when Main is not in use.
func Get(t testing.TB) *Env {
	t.Helper()
	if skipReason != "" {
		t.Skip(skipReason)
	}
	if current == nil {
		t.Fatal("testenv.Get: no environment; call testenv.Main from TestMain")
	}
	return current
}
