package lab

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cairnmesh/cairn/internal/kubeserver"
)

// Controllers are the kube-controller-manager controllers the lab runs:
// workloads (Deployments, ReplicaSets, DaemonSets, StatefulSets, Jobs),
// EndpointSlices, ServiceAccounts and their tokens, the root CA ConfigMap,
// namespace and garbage collection, role aggregation, node lifecycle and
// pod garbage collection.
var Controllers = []string{
	"deployment", "replicaset", "daemonset", "statefulset", "job",
	"endpointslice", "endpointslicemirroring",
	"serviceaccount", "serviceaccount-token", "root-ca-cert-publisher",
	"namespace", "garbagecollector", "clusterrole-aggregation",
	// nodelifecycle removes the not-ready taint the API server puts on a
	// new Node once it is Ready, and marks Nodes whose kubelet stopped
	// renewing its Lease; podgc deletes the pods of Nodes that are gone.
	"nodelifecycle", "podgc",
}

// childGrace is how long a kubelet or kube-proxy gets between SIGTERM and
// SIGKILL when the lab stops.
const childGrace = 2 * time.Second

// Supervise runs the lab saved in dir until ctx is done: the control plane
// (through kubeserver), and per node a kubelet and a kube-proxy started
// inside the node's network namespace. A kubelet or kube-proxy that exits
// is started again with back-off. It records every process in the state
// file. When ctx ends it stops everything and returns.
func Supervise(ctx context.Context, dir string, log *slog.Logger) error {
	c, err := LoadConfig(dir)
	if err != nil {
		return err
	}
	s := &supervisor{cfg: c, log: log}
	return s.run(ctx)
}

type supervisor struct {
	cfg Config
	log *slog.Logger

	mu    sync.Mutex
	state State
}

func (s *supervisor) run(ctx context.Context) error {
	c := s.cfg
	s.update(func(st *State) {
		*st = State{
			Phase:      PhaseStarting,
			Supervisor: newProc("supervisor", "", os.Getpid(), filepath.Join(c.Dir, supervisorLogRel)),
			APIServer:  c.APIServerURL(),
			Cgroups:    c.cgroupRoots("self"),
		}
	})

	srv, err := s.startControlPlane(ctx)
	if err != nil {
		s.fail(err)
		return err
	}
	defer func() {
		if err := srv.Stop(); err != nil {
			s.log.Warn("stopping the control plane", "err", err)
		}
	}()

	children, launchers, err := s.prepareNodes(ctx, srv)
	defer func() {
		for _, l := range launchers {
			l.close()
		}
	}()
	if err != nil {
		s.fail(err)
		return err
	}

	var wg sync.WaitGroup
	for _, ch := range children {
		wg.Go(func() { ch.run(ctx) })
	}
	s.update(func(st *State) { st.Phase = PhaseRunning })
	s.log.Info("lab running", "nodes", c.Nodes, "api", c.APIServerURL())

	<-ctx.Done()
	s.log.Info("stopping the lab")
	s.update(func(st *State) { st.Phase = PhaseStopping })
	wg.Wait() // the children stop with ctx
	s.log.Info("nodes stopped")
	return nil
}

func (s *supervisor) startControlPlane(ctx context.Context) (*kubeserver.Server, error) {
	c := s.cfg
	certs := filepath.Join(c.ControlPlaneDir(), "certs")
	opts := kubeserver.Options{
		Dir:               c.ControlPlaneDir(),
		BinDir:            c.K8sBinDir(),
		BindAddress:       c.BridgeAddr().Addr().AsSlice(),
		SecurePort:        APIServerPort,
		ServiceCIDR:       ServiceCIDR.String(),
		ControllerManager: true,
		Controllers:       Controllers,
		Scheduler:         true,
		// The lab's state is thrown away on stop; the API server takes
		// more than 3s to drain on SIGTERM, which would only slow down
		// `lab down`.
		StopGrace: time.Second,
		Logger:    s.log,
		ExtraArgs: map[string][]string{
			kubeserver.APIServer: {
				// The "kubernetes" Service's endpoint is the bridge
				// address, which pods reach; kubeserver turns the
				// reconciler off for its loopback default.
				"--endpoint-reconciler-type=lease",
				// The API server reaches kubelets (logs, exec,
				// port-forward) at their node IPs, verifying their
				// serving certificates with the cluster CA; kubelets
				// check its client certificate against the same CA.
				// kubeserver makes the CA during Start, so the client
				// certificate is the admin's (system:masters), the one
				// that exists when the API server starts.
				"--kubelet-preferred-address-types=InternalIP",
				"--kubelet-certificate-authority=" + filepath.Join(certs, "ca.crt"),
				"--kubelet-client-certificate=" + filepath.Join(certs, "admin.crt"),
				"--kubelet-client-key=" + filepath.Join(certs, "admin.key"),
			},
		},
	}
	srv, err := kubeserver.Start(ctx, opts)
	if err != nil {
		return nil, err
	}
	pids := srv.PIDs()
	s.update(func(st *State) {
		for _, name := range []string{kubeserver.Etcd, kubeserver.APIServer, kubeserver.ControllerManager, kubeserver.Scheduler} {
			if pid, ok := pids[name]; ok {
				st.Processes = append(st.Processes, newProc(name, "", pid, filepath.Join(c.ControlPlaneDir(), name+".log")))
			}
		}
	})
	data, err := os.ReadFile(srv.KubeconfigPath())
	if err != nil {
		return srv, err
	}
	if err := os.WriteFile(c.KubeconfigPath(), data, 0o600); err != nil {
		return srv, fmt.Errorf("writing kubeconfig: %w", err)
	}
	t := srv.Timings()
	s.log.Info("control plane ready", "took", t.Total.Round(time.Millisecond), "etcd", t.Etcd.Round(time.Millisecond),
		"apiserver", t.APIServer.Round(time.Millisecond), "controller-manager", t.ControllerManager.Round(time.Millisecond),
		"scheduler", t.Scheduler.Round(time.Millisecond))
	return srv, nil
}

// prepareNodes writes each node's credentials and configuration, applies
// the lab's add-ons and returns the processes to run. Launchers are
// returned even on error, for the caller to close.
func (s *supervisor) prepareNodes(ctx context.Context, srv *kubeserver.Server) ([]*child, []*netnsLauncher, error) {
	c := s.cfg
	var children []*child
	var launchers []*netnsLauncher
	for i := 1; i <= c.Nodes; i++ {
		if err := writeNodeCredentials(c, srv, i); err != nil {
			return nil, launchers, err
		}
		f := c.nodeFiles(i)
		if err := os.WriteFile(f.KubeProxyConfig, kubeProxyConfig(c, i), 0o644); err != nil {
			return nil, launchers, fmt.Errorf("writing kube-proxy configuration: %w", err)
		}
		l, err := newNetnsLauncher(c.NetnsPath(i))
		if err != nil {
			return nil, launchers, fmt.Errorf("node %s: %w", NodeName(i), err)
		}
		launchers = append(launchers, l)
		children = append(children,
			&child{sup: s, name: "kubelet", node: NodeName(i), launcher: l,
				path: c.LabBinary, args: kubeletArgs(c, i),
				logPath: filepath.Join(c.LogDir(), "kubelet-"+NodeName(i)+".log")},
			&child{sup: s, name: "kube-proxy", node: NodeName(i), launcher: l,
				path: filepath.Join(c.K8sBinDir(), "kube-proxy"), args: []string{"--config=" + f.KubeProxyConfig},
				logPath: filepath.Join(c.LogDir(), "kube-proxy-"+NodeName(i)+".log")},
		)
	}
	if err := applyAddons(ctx, srv.Config(), s.log); err != nil {
		return nil, launchers, err
	}
	return children, launchers, nil
}

func (s *supervisor) fail(err error) {
	s.log.Error("lab failed", "err", err)
	s.update(func(st *State) {
		st.Phase = PhaseFailed
		st.Error = err.Error()
	})
}

// setProc records a (re)started process in the state file.
func (s *supervisor) setProc(p Proc) {
	s.update(func(st *State) {
		for i, q := range st.Processes {
			if q.Name == p.Name && q.Node == p.Node {
				st.Processes[i] = p
				return
			}
		}
		st.Processes = append(st.Processes, p)
	})
}

// update changes the state and writes it, one writer at a time.
func (s *supervisor) update(f func(*State)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(&s.state)
	if err := writeState(s.cfg, s.state); err != nil {
		s.log.Warn("saving state", "err", err)
	}
}

// child is a per-node process the supervisor keeps running.
type child struct {
	sup      *supervisor
	name     string
	node     string
	launcher *netnsLauncher
	path     string
	args     []string
	logPath  string
}

// Restart back-off: doubles from minBackoff up to maxBackoff, and starts
// over after a process ran for resetBackoff.
const (
	minBackoff   = 500 * time.Millisecond
	maxBackoff   = 10 * time.Second
	resetBackoff = time.Minute
)

// run keeps the process running until ctx is done, then stops it.
func (ch *child) run(ctx context.Context) {
	log := ch.sup.log.With("process", ch.name, "node", ch.node)
	backoff := minBackoff
	for restarts := 0; ; restarts++ {
		begin := time.Now()
		cmd, exited, err := ch.start()
		if err != nil {
			log.Error("starting", "err", err)
		} else {
			p := newProc(ch.name, ch.node, cmd.Process.Pid, ch.logPath)
			p.Restarts = restarts
			ch.sup.setProc(p)
			log.Info("started", "pid", cmd.Process.Pid, "restarts", restarts)
			select {
			case <-ctx.Done():
				ch.stop(cmd, exited, log)
				return
			case err := <-exited:
				log.Warn("exited; restarting", "err", err, "ran", time.Since(begin).Round(time.Millisecond), "log", ch.logPath)
			}
		}
		if time.Since(begin) > resetBackoff {
			backoff = minBackoff
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

// start starts the process in the node's namespace; exited receives
// cmd.Wait's result.
func (ch *child) start() (*exec.Cmd, <-chan error, error) {
	logFile, err := os.OpenFile(ch.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, nil, err
	}
	defer logFile.Close() // the child has its own copy
	fmt.Fprintf(logFile, "--- %s: starting %s %s\n", time.Now().Format(time.RFC3339), ch.path, strings.Join(ch.args, " "))
	cmd := exec.Command(ch.path, ch.args...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.Env = childEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := ch.launcher.start(cmd); err != nil {
		return nil, nil, fmt.Errorf("starting %s: %w", ch.path, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }() // ends when the process does; stop and run wait for it
	return cmd, exited, nil
}

// stop sends SIGTERM, then SIGKILL after childGrace, and waits.
func (ch *child) stop(cmd *exec.Cmd, exited <-chan error, log *slog.Logger) {
	_ = cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(childGrace)
	defer t.Stop()
	select {
	case <-exited:
		log.Info("stopped")
		return
	case <-t.C:
	}
	log.Warn("still running after SIGTERM; killing", "grace", childGrace)
	_ = cmd.Process.Kill()
	<-exited
}

// childEnv is the environment of the lab's processes: the supervisor's,
// with the sbin directories on PATH (kube-proxy runs iptables).
func childEnv() []string {
	env := os.Environ()
	path := os.Getenv("PATH")
	for _, d := range []string{"/usr/local/sbin", "/usr/sbin", "/sbin"} {
		if !strings.Contains(":"+path+":", ":"+d+":") {
			path += ":" + d
		}
	}
	out := env[:0:0]
	for _, kv := range env {
		if !strings.HasPrefix(kv, "PATH=") {
			out = append(out, kv)
		}
	}
	return append(out, "PATH="+path)
}
