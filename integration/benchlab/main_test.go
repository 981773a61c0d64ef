// Package benchlab holds the data-path benchmark of ztunnel
// (BenchmarkDataPath): fortio and iperf3 from a client pod on lab node 1
// to a server pod on node 2, with no mesh, through the ztunnel pair, and
// through a reference pair of haproxy mutual-TLS proxies, interleaved over
// several rounds, with the proxies' CPU and memory read from /proc.
//
// TestMain brings up a lab of its own (prefix cairnb, 198.18.110.0/24) so
// it runs next to a developer's lab and CI's (cairnt), and only when a
// benchmark is asked for: `make test` runs this package with the unit
// tests, and there is nothing to test. The lab needs root; without it the
// benchmark skips, except under CI=true, where it fails.
//
// BENCHLAB_ROUNDS sets the number of rounds (5), BENCHLAB_PERF=<dir> adds
// perf and heap profiles of the proxies after the rounds, BENCHLAB_KEEP=1
// leaves the lab running afterwards. Figures and how to read them:
// docs/performance.md, "ztunnel data path".
package benchlab

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/cairnmesh/cairn/integration/lab"
	"github.com/cairnmesh/cairn/integration/labharness"
	"github.com/cairnmesh/cairn/internal/kubeserver"
)

// The lab the benchmark uses, set by TestMain.
var (
	cfg        lab.Config
	restConfig *rest.Config
	client     kubernetes.Interface
	kubectlBin string
	skipReason string
)

// Names of the lab, apart from CI's (cairnt, 100) and a developer's
// (cairn, 0).
const (
	labPrefix = "cairnb"
	labSubnet = 110
)

// Images the lab's kubelets map to Debian's binaries, so that haproxy and
// iperf3 run as pods like everything else (Debian image name -> command).
const (
	haproxyImage = "haproxy"
	iperfImage   = "networkstatic/iperf3"
)

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	flag.Parse()
	if !benchmarking() {
		return m.Run()
	}
	ci := os.Getenv("CI") == "true"
	skip := func(reason string) int {
		if ci {
			fmt.Fprintf(os.Stderr, "benchlab: %s (CI=true: failing)\n", reason)
			return 1
		}
		skipReason = "benchlab: " + reason
		fmt.Fprintln(os.Stderr, skipReason)
		return m.Run()
	}
	if os.Geteuid() != 0 {
		return skip("the lab needs root")
	}
	images, err := debianImages()
	if err != nil {
		return skip(err.Error())
	}
	level := slog.LevelWarn
	if testing.Verbose() {
		level = slog.LevelInfo
	}
	tmp, err := os.MkdirTemp("", "cairn-benchlab-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchlab:", err)
		return 1
	}
	c, err := lab.Config{
		Dir:    filepath.Join(tmp, "lab"),
		Nodes:  2,
		Prefix: labPrefix,
		Subnet: labSubnet,
		Images: images,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})),
	}.WithDefaults()
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchlab:", err)
		return 1
	}
	if _, err := os.Stat(filepath.Join(c.BinDir(), "fortio")); err != nil {
		return skip("bin/fortio is missing (make lab-bins)")
	}
	if err := labharness.BuildBinaries(c.RepoDir, filepath.Join(tmp, "bin")); err != nil {
		fmt.Fprintln(os.Stderr, "benchlab:", err)
		return 1
	}
	c.LabBinary = filepath.Join(tmp, "bin", "lab")
	kubectlBin = filepath.Join(c.K8sBinDir(), "kubectl")
	cfg = c

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute) // includes building CoreDNS once
	var timings lab.UpTimings
	restConfig, timings, err = lab.Up(ctx, c)
	cancel()
	switch {
	case errors.Is(err, kubeserver.ErrBinaryNotFound):
		down(c)
		return skip(err.Error())
	case err != nil:
		fmt.Fprintf(os.Stderr, "benchlab: lab up: %v\n", err)
		down(c)
		return 1
	}
	fmt.Fprintf(os.Stderr, "benchlab: lab up in %.1fs at %s\n", timings.Total.Seconds(), c.APIServerURL())
	if client, err = kubernetes.NewForConfig(restConfig); err != nil {
		fmt.Fprintln(os.Stderr, "benchlab:", err)
		down(c)
		return 1
	}

	code := m.Run()

	if os.Getenv("BENCHLAB_KEEP") != "" {
		fmt.Fprintf(os.Stderr, "benchlab: BENCHLAB_KEEP: the lab stays up; remove it with\n  LAB_DIR=%s LAB_PREFIX=%s LAB_SUBNET=%d bin/lab down\n",
			c.Dir, c.Prefix, c.Subnet)
		return code
	}
	if !down(c) && code == 0 {
		code = 1
	}
	if code == 0 {
		_ = os.RemoveAll(tmp)
	}
	return code
}

// benchmarking says whether this run asked for benchmarks (-test.bench).
func benchmarking() bool {
	f := flag.Lookup("test.bench")
	return f != nil && f.Value.String() != ""
}

// debianImages maps the haproxy and iperf3 images to Debian's binaries,
// where Debian's packages put them (`make bench` installs them).
func debianImages() (map[string]string, error) {
	images := map[string]string{}
	for image, path := range map[string]string{haproxyImage: "/usr/sbin/haproxy", iperfImage: "/usr/bin/iperf3"} {
		if _, err := exec.LookPath(path); err != nil {
			return nil, fmt.Errorf("%s is not installed (`make bench` installs Debian's haproxy and iperf3): %w", path, err)
		}
		images[image] = path
	}
	return images, nil
}

// down takes the lab down and checks that nothing of it is left; it
// prints a FAIL line and returns false otherwise.
func down(c lab.Config) bool {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := lab.Down(ctx, c); err != nil {
		fmt.Fprintf(os.Stderr, "--- FAIL: lab down: %v\n", err)
		return false
	}
	if left := lab.TakeInventory(c); !left.Empty() {
		fmt.Fprintf(os.Stderr, "--- FAIL: after lab down, left: %s\n", left)
		return false
	}
	return true
}
