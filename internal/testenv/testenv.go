// Package testenv gives a test package a real Kubernetes API server: one
// etcd + kube-apiserver (and optionally kube-controller-manager and
// kube-scheduler) per test binary, with the Gateway API standard CRDs and
// Cairn's own CRDs installed.
//
// Use it from TestMain:
//
//	func TestMain(m *testing.M) { testenv.Main(m, testenv.Options{}) }
//
//	func TestSomething(t *testing.T) {
//		env := testenv.Get(t)
//		ns := env.Namespace(t, nil)
//		client := env.Client()
//		...
//	}
//
// The binaries come from $K8S_ASSETS or <repo>/bin/k8s (`make k8s-bins`).
// Without them the tests are skipped, or fail when $CI is "true".
package testenv

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/cairnmesh/cairn/internal/kubeserver"
	"github.com/cairnmesh/cairn/internal/manifest"
)

// ErrNoBinaries is returned (wrapped) by Start when the Kubernetes
// binaries are not there.
var ErrNoBinaries = kubeserver.ErrBinaryNotFound

// FieldManager is the server-side apply field manager testenv applies
// CRDs and test manifests with.
const FieldManager = "cairn-testenv"

// Options configures Start and Main.
type Options struct {
	// ControllerManager starts kube-controller-manager (EndpointSlices,
	// default ServiceAccounts, namespace deletion, ...). Costs about a
	// second of start-up and ~90 MB.
	ControllerManager bool
	// Scheduler starts kube-scheduler.
	Scheduler bool
	// Manifests are extra YAML files or directories (every *.yaml and
	// *.yml in them, in name order) applied in order after the CRDs are
	// established. CRDs among them are waited for as well.
	Manifests []string
	// Server, if set, may change the kubeserver options before the start
	// (all but Dir, which is always a new temporary directory).
	Server func(*kubeserver.Options)
}

// Env is a running test cluster.
type Env struct {
	server  *kubeserver.Server
	client  kubernetes.Interface
	applier *manifest.Applier
	dir     string
	keepDir bool
	timings Timings
}

// Timings records how long Start took.
type Timings struct {
	Server kubeserver.Timings
	CRDs   time.Duration // applying the CRDs and Options.Manifests, waiting until usable
	Total  time.Duration
}

func (t Timings) String() string {
	s := t.Server
	var b strings.Builder
	fmt.Fprintf(&b, "%v (certs %v, etcd %v, kube-apiserver %v", round(t.Total), round(s.Certs), round(s.Etcd), round(s.APIServer))
	if s.ControllerManager > 0 {
		fmt.Fprintf(&b, ", kube-controller-manager %v", round(s.ControllerManager))
	}
	if s.Scheduler > 0 {
		fmt.Fprintf(&b, ", kube-scheduler %v", round(s.Scheduler))
	}
	fmt.Fprintf(&b, ", CRDs %v)", round(t.CRDs))
	return b.String()
}

func round(d time.Duration) time.Duration { return d.Round(time.Millisecond) }

// startTimeout bounds Start. Two packages start servers at once under
// `make test`, on two cores.
const startTimeout = 3 * time.Minute

// Start starts a cluster in a new temporary directory and installs the
// CRDs. It returns an error wrapping ErrNoBinaries when the binaries are
// missing.
func Start(opts Options) (*Env, error) {
	begin := time.Now()
	root, err := RepoRoot()
	if err != nil {
		return nil, err
	}
	binDir := os.Getenv("K8S_ASSETS")
	if binDir == "" {
		binDir = filepath.Join(root, "bin", "k8s")
	}
	sopts := kubeserver.Options{
		BinDir:            binDir,
		ControllerManager: opts.ControllerManager,
		Scheduler:         opts.Scheduler,
		Logger:            logger(),
	}
	if opts.Server != nil {
		opts.Server(&sopts)
	}
	if err := kubeserver.CheckBinaries(sopts); err != nil {
		return nil, fmt.Errorf("%w (run `make k8s-bins`, or point K8S_ASSETS at a directory with them)", err)
	}
	crds, err := crdFiles(root)
	if err != nil {
		return nil, err
	}
	var extra []string
	for _, m := range opts.Manifests {
		files, err := yamlFiles(m)
		if err != nil {
			return nil, err
		}
		extra = append(extra, files...)
	}

	dir, err := os.MkdirTemp("", "cairn-testenv-")
	if err != nil {
		return nil, fmt.Errorf("starting test cluster: %w", err)
	}
	sopts.Dir = dir
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()

	server, err := kubeserver.Start(ctx, sopts)
	if err != nil {
		// Keep the directory: the logs explain the failure.
		return nil, fmt.Errorf("starting test cluster (logs in %s): %w", dir, err)
	}
	env := &Env{server: server, dir: dir}
	if err := env.init(ctx, crds, extra); err != nil {
		env.keepDir = true
		_ = env.Stop()
		return nil, fmt.Errorf("starting test cluster (logs in %s): %w", dir, err)
	}
	env.timings.Server = server.Timings()
	env.timings.Total = time.Since(begin)
	return env, nil
}

// init makes the clients, installs the CRDs and then applies the extra
// manifests in order.
func (e *Env) init(ctx context.Context, crds, extra []string) error {
	cfg := e.server.Config()
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("creating clientset: %w", err)
	}
	e.client = client
	e.applier, err = manifest.New(cfg, manifest.Options{FieldManager: FieldManager})
	if err != nil {
		return err
	}
	step := time.Now()
	objs, err := e.applyConcurrently(ctx, crds)
	if err != nil {
		return err
	}
	names := manifest.CRDNames(objs)
	if err := e.applier.WaitForCRDs(ctx, names); err != nil {
		return err
	}
	if len(extra) > 0 {
		objs, err := e.applier.ApplyFiles(ctx, extra...)
		if err != nil {
			return err
		}
		more := manifest.CRDNames(objs)
		if err := e.applier.WaitForCRDs(ctx, more); err != nil {
			return err
		}
		names = append(names, more...)
	}
	if err := e.waitOutCreateDelay(ctx, names); err != nil {
		return err
	}
	e.timings.CRDs = time.Since(step)
	return nil
}

// createDelayWindow: kube-apiserver makes every create (POST) of a custom
// resource sleep 2s while its CRD has been Established for less than 2s
// (apiextensions-apiserver customresource_handler.go, for HA servers that
// may not have seen the CRD yet). Waiting out that window once here keeps
// a 2s stall out of whichever test happens to create the first object of
// a kind, where it would skew timings or trip short timeouts.
const createDelayWindow = 2 * time.Second

func (e *Env) waitOutCreateDelay(ctx context.Context, names []string) error {
	var latest time.Time
	for _, name := range names {
		crd, err := e.applier.Client().Resource(manifest.CRDResource).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("reading CRD %s: %w", name, err)
		}
		if t, ok := manifest.EstablishedTime(crd); ok && t.After(latest) {
			latest = t
		}
	}
	// The timestamps have whole seconds, and the API server compares the
	// same truncated value, so the window ends 2s after it.
	wait := time.Until(latest.Add(createDelayWindow + 50*time.Millisecond))
	if wait <= 0 {
		return nil
	}
	select {
	case <-time.After(wait):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// applyConcurrently applies each file in its own goroutine. The files are
// independent (CRDs and admission policies), and the API server spends
// most of its time per CRD compiling schemas, which two cores do in
// parallel: this takes about half the time of applying them in order.
func (e *Env) applyConcurrently(ctx context.Context, files []string) ([]*unstructured.Unstructured, error) {
	results := make([][]*unstructured.Unstructured, len(files))
	errs := make([]error, len(files))
	var wg sync.WaitGroup
	for i, f := range files {
		wg.Go(func() { results[i], errs[i] = e.applier.ApplyFiles(ctx, f) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return slices.Concat(results...), nil
}

// crdFiles lists the Gateway API standard-channel manifests (its CRDs
// and its ValidatingAdmissionPolicy) from the module cache, then Cairn's
// CRDs from install/crds. The latter may be missing or empty.
func crdFiles(root string) ([]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "list", "-m", "-f", "{{.Dir}}", "sigs.k8s.io/gateway-api")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			err = fmt.Errorf("%w: %s", err, strings.TrimSpace(string(ee.Stderr)))
		}
		return nil, fmt.Errorf("locating the Gateway API module: go list: %w", err)
	}
	gwDir := strings.TrimSpace(string(out))
	if gwDir == "" {
		return nil, errors.New("locating the Gateway API module: not downloaded (run `go mod download sigs.k8s.io/gateway-api`)")
	}
	files, err := yamlFiles(filepath.Join(gwDir, "config", "crd", "standard"))
	if err != nil {
		return nil, err
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("no Gateway API CRDs in %s", gwDir)
	}
	own, err := yamlFiles(filepath.Join(root, "install", "crds"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	return append(files, own...), nil
}

// yamlFiles returns path itself if it is a file, or the *.yaml and *.yml
// files directly in it, sorted.
func yamlFiles(path string) ([]string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("reading manifests: %w", err)
	}
	if !fi.IsDir() {
		return []string{path}, nil
	}
	entries, err := os.ReadDir(path)
	if err != nil {
		return nil, fmt.Errorf("reading manifests: %w", err)
	}
	var files []string
	for _, e := range entries {
		if n := e.Name(); !e.IsDir() && (strings.HasSuffix(n, ".yaml") || strings.HasSuffix(n, ".yml")) {
			files = append(files, filepath.Join(path, n))
		}
	}
	slices.Sort(files)
	return files, nil
}

// RepoRoot returns the directory of the nearest go.mod at or above the
// working directory (a test's working directory is its package's).
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("finding the repository root: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("finding the repository root: no go.mod above the working directory")
		}
		dir = parent
	}
}

// logger returns the logger for kubeserver: warnings only, or progress
// too under `go test -v`.
func logger() *slog.Logger {
	level := slog.LevelWarn
	if flag.Parsed() && testing.Verbose() {
		level = slog.LevelInfo
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}

// Stop stops the cluster and removes its directory, unless a test failed
// (Main) or the start failed, in which case the directory and its logs
// are kept and named on stderr.
func (e *Env) Stop() error {
	err := e.server.Stop()
	if err != nil || e.keepDir {
		fmt.Fprintf(os.Stderr, "testenv: logs kept in %s\n", e.dir)
		return err
	}
	if rmErr := os.RemoveAll(e.dir); rmErr != nil {
		return fmt.Errorf("removing %s: %w", e.dir, rmErr)
	}
	return nil
}

// Config returns a new copy of the admin's client configuration.
func (e *Env) Config() *rest.Config { return e.server.Config() }

// Client returns a clientset for the admin.
func (e *Env) Client() kubernetes.Interface { return e.client }

// Server returns the underlying control plane, e.g. to issue client
// certificates for other users.
func (e *Env) Server() *kubeserver.Server { return e.server }

// Timings returns how long Start took.
func (e *Env) Timings() Timings { return e.timings }
