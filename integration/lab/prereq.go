package lab

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/cairnmesh/cairn/internal/kubeserver"
)

// CoreDNSModule is the CoreDNS release the lab builds into bin/coredns
// (image cairn/coredns).
const CoreDNSModule = "github.com/coredns/coredns@v1.15.0"

// k8sBinaries are the Kubernetes binaries the lab runs, from bin/k8s.
var k8sBinaries = []string{
	kubeserver.Etcd, kubeserver.APIServer, kubeserver.ControllerManager, kubeserver.Scheduler, "kube-proxy",
}

// debianPackages are installed with apt-get when the file that shows them
// is missing.
var debianPackages = []struct{ pkg, file string }{
	{"iptables", "/usr/sbin/iptables"},
	{"containernetworking-plugins", filepath.Join(SystemCNIBin, "bridge")},
}

// ErrNotRoot is returned by Up and Down when not run as root.
var ErrNotRoot = errors.New("the lab needs root (network namespaces, iptables, mounts)")

// Prepare makes sure everything the lab runs is there: Debian's iptables
// and CNI plugins (installed with apt-get when missing), the Kubernetes
// binaries (`make k8s-bins`), the lab command and CoreDNS (built into
// bin/ with `go install` when missing; about 1.5 minutes once).
func Prepare(ctx context.Context, c Config) error {
	if os.Geteuid() != 0 {
		return ErrNotRoot
	}
	if err := installPackages(ctx, c.Logger); err != nil {
		return err
	}
	var missing []string
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
		c.Logger.Info("building CoreDNS into bin/ (once; about 1.5 minutes)", "module", CoreDNSModule)
		cmd := exec.CommandContext(ctx, "go", "install", CoreDNSModule)
		cmd.Dir = c.RepoDir
		cmd.Env = append(os.Environ(), "GOBIN="+c.BinDir(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("building CoreDNS: %w\n%s", err, out)
		}
	}
	return nil
}

func installPackages(ctx context.Context, log *slog.Logger) error {
	var pkgs []string
	for _, p := range debianPackages {
		if _, err := os.Stat(p.file); err != nil {
			pkgs = append(pkgs, p.pkg)
		}
	}
	if len(pkgs) == 0 {
		return nil
	}
	log.Info("installing Debian packages", "packages", pkgs)
	update := exec.CommandContext(ctx, "apt-get", "update", "-qq")
	if out, err := update.CombinedOutput(); err != nil {
		return fmt.Errorf("apt-get update: %w\n%s", err, out)
	}
	install := exec.CommandContext(ctx, "apt-get", append([]string{"install", "-y", "-qq", "--no-install-recommends"}, pkgs...)...)
	install.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	if out, err := install.CombinedOutput(); err != nil {
		return fmt.Errorf("apt-get install %s: %w\n%s", strings.Join(pkgs, " "), err, out)
	}
	return nil
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0
}
