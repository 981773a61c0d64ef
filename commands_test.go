package cairn

import (
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"testing"
)

// TestCommandsAnswerHelpAndVersion builds every command of the module and
// runs it with --help and --version, as a user trying a binary first does.
func TestCommandsAnswerHelpAndVersion(t *testing.T) {
	if testing.Short() {
		t.Skip("builds every binary; skipped in -short mode")
	}
	var mains []string
	for _, p := range goList(t, module+"/...") {
		if p.Name == "main" {
			mains = append(mains, p.ImportPath)
		}
	}
	if len(mains) < 5 {
		t.Fatalf("found %d commands (%v), want at least the five binaries of Cairn", len(mains), mains)
	}
	dir := t.TempDir()
	// The flags of `make build` (no cgo, -trimpath, the grpcnotrace tag),
	// so that this build reuses the packages compiled for bin/ instead of
	// compiling the whole dependency graph once more (minutes on a cold
	// cache); no -ldflags, so that the version reads "dev".
	build := exec.Command("go", append([]string{"build", "-trimpath", "-tags", "grpcnotrace", "-o", dir + "/"}, mains...)...)
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	for _, pkg := range mains {
		name := path.Base(pkg)
		t.Run(name, func(t *testing.T) {
			bin := filepath.Join(dir, name)
			help, err := exec.Command(bin, "--help").CombinedOutput()
			if err != nil {
				t.Fatalf("%s --help: %v\n%s", name, err, help)
			}
			if !strings.Contains(string(help), "Usage:") || !strings.Contains(string(help), name) {
				t.Errorf("%s --help printed no usage:\n%s", name, help)
			}
			version, err := exec.Command(bin, "--version").CombinedOutput()
			if err != nil {
				t.Fatalf("%s --version: %v\n%s", name, err, version)
			}
			if !strings.Contains(string(version), "dev") {
				t.Errorf("%s --version = %q, want the version (dev for a plain go build)", name, version)
			}
		})
	}
}
