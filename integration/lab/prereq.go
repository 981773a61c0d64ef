package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/cairnmesh/cairn/internal/kubeserver"
)

// CoreDNSDir is the module, relative to the repository, that the lab
// builds into bin/coredns (image cairn/coredns): CoreDNS with the plugins
// of the lab's Corefile only; the release is pinned in its go.mod.
const CoreDNSDir = "hack/coredns"

// k8sBinaries are the Kubernetes binaries the lab runs, from bin/k8s.
var k8sBinaries = []string{
	kubeserver.Etcd, kubeserver.APIServer, kubeserver.ControllerManager, kubeserver.Scheduler, "kube-proxy",
}

// debianPackages are the Debian packages the lab runs, each with a file
// that shows it is installed. `make deps` installs them (the Makefile's
// DEB_PACKAGES lists every package of the project); the lab only checks.
var debianPackages = []struct{ pkg, file string }{
	{"iptables", "/usr/sbin/iptables"},
	{"containernetworking-plugins", filepath.Join(SystemCNIBin, "bridge")},
}

// ErrMissingPackages is returned by Up when a Debian package the lab runs
// is not installed.
var ErrMissingPackages = errors.New("missing")

// ErrNotRoot is returned by Up and Down when not run as root.
var ErrNotRoot = errors.New("the lab needs root (network namespaces, iptables, mounts)")

// Prepare makes sure everything the lab runs is there: Debian's iptables
// and CNI plugins (`make deps`), the Kubernetes binaries (`make
// k8s-bins`), the lab command and CoreDNS (built into bin/ from
// hack/coredns when missing; about 2.5 minutes once). It installs no package:
// what is missing is an error that names the make target.
func Prepare(ctx context.Context, c Config) error {
	if os.Geteuid() != 0 {
		return ErrNotRoot
	}
	var missing []string
	for _, p := range debianPackages {
		if _, err := os.Stat(p.file); err != nil {
			missing = append(missing, p.pkg)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: Debian packages %s (run `make deps`)", ErrMissingPackages, strings.Join(missing, ", "))
	}
	missing = nil
	for _, b := range k8sBinaries {
		if !isExecutable(filepath.Join(c.K8sBinDir(), b)) {
			missing = append(missing, b)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: %s in %s (run `make k8s-bins`)", kubeserver.ErrBinaryNotFound, strings.Join(missing, ", "), c.K8sBinDir())
	}
	if !isExecutable(c.LabBinary) {
		return fmt.Errorf("%w: %s (go build -o bin/ ./integration/cmd/lab)", kubeserver.ErrBinaryNotFound, c.LabBinary)
	}
	if !isExecutable(filepath.Join(c.BinDir(), "coredns")) {
		c.Logger.Info("building CoreDNS into bin/ (once; about 2.5 minutes)", "module", CoreDNSDir)
		cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", c.BinDir()+"/", ".")
		cmd.Dir = filepath.Join(c.RepoDir, CoreDNSDir)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("building CoreDNS: %w\n%s", err, out)
		}
	}
	return nil
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0
}
