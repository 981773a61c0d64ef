package version

import (
	"runtime"
	"strings"
	"testing"
)

func TestStringNamesReleaseAndToolchain(t *testing.T) {
	old := version
	t.Cleanup(func() { version = old })
	version = "v1.2.3"

	got := String()
	if !strings.HasPrefix(got, "v1.2.3 ") {
		t.Errorf("String() = %q, want it to start with the release", got)
	}
	if !strings.Contains(got, runtime.Version()) {
		t.Errorf("String() = %q, want it to name the Go toolchain %s", got, runtime.Version())
	}
	if Version() != "v1.2.3" {
		t.Errorf("Version() = %q, want v1.2.3", Version())
	}
}
