package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// UpTimeout bounds Up once the binaries are there.
const UpTimeout = 2 * time.Minute

// UpTimings says how long the steps of Up took, from the moment the
// binaries were there (Prepare is not counted).
type UpTimings struct {
	Cleanup      time.Duration // removing a previous lab's leftovers
	Network      time.Duration // bridge, namespaces, veths, routes
	ControlPlane time.Duration // supervisor started until etcd, API server, controller-manager and scheduler were ready
	Nodes        time.Duration // until every node was Ready
	DNS          time.Duration // until CoreDNS was Ready and resolved the kubernetes Service from a node
	Total        time.Duration
}

// Up starts the lab described by c and returns once it is usable: every
// node Ready, CoreDNS Ready, and the kubernetes Service resolved by name
// and reached from inside the lab. A lab that was left behind (crashed, or
// never taken down) is removed first. Up returns the admin's client
// configuration; <Dir>/kubeconfig has it too.
func Up(ctx context.Context, c Config) (*rest.Config, UpTimings, error) {
	var t UpTimings
	if err := Prepare(ctx, c); err != nil {
		return nil, t, err
	}
	log := c.Logger
	begin := time.Now()

	step := time.Now()
	if _, err := Down(ctx, c); err != nil {
		return nil, t, fmt.Errorf("removing the previous lab: %w", err)
	}
	t.Cleanup = time.Since(step)

	step = time.Now()
	if err := os.MkdirAll(c.LogDir(), 0o755); err != nil {
		return nil, t, fmt.Errorf("creating the lab dir: %w", err)
	}
	if err := c.save(); err != nil {
		return nil, t, err
	}
	for i := 1; i <= c.Nodes; i++ {
		if err := makeNodeRoot(c, i); err != nil {
			return nil, t, err
		}
	}
	if err := setupNetwork(c); err != nil {
		return nil, t, err
	}
	t.Network = time.Since(step)
	log.Info("network ready", "bridge", c.BridgeName(), "nodes", c.Nodes, "took", t.Network.Round(time.Millisecond))

	cfg, err := start(ctx, c, &t)
	if err != nil {
		return nil, t, fmt.Errorf("%w\n(the lab is left as it is, for its logs in %s; `lab down` removes it)", err, c.LogDir())
	}
	t.Total = time.Since(begin)
	return cfg, t, nil
}

// start starts the supervisor and waits for the cluster to be usable.
func start(ctx context.Context, c Config, t *UpTimings) (*rest.Config, error) {
	log := c.Logger
	ctx, cancel := context.WithTimeout(ctx, UpTimeout)
	defer cancel()
	step := time.Now()
	sup, err := startSupervisor(c)
	if err != nil {
		return nil, err
	}
	if err := waitRunning(ctx, c, sup); err != nil {
		return nil, err
	}
	t.ControlPlane = time.Since(step)
	log.Info("control plane ready", "api", c.APIServerURL(), "took", t.ControlPlane.Round(time.Millisecond))

	cfg, err := clientcmd.BuildConfigFromFlags("", c.KubeconfigPath())
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", c.KubeconfigPath(), err)
	}
	cfg.QPS, cfg.Burst = 100, 200
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	step = time.Now()
	if err := waitNodesReady(ctx, c, client, sup); err != nil {
		return nil, err
	}
	t.Nodes = time.Since(step)
	log.Info("nodes ready", "took", t.Nodes.Round(time.Millisecond))

	step = time.Now()
	if err := waitDNS(ctx, c, client, sup); err != nil {
		return nil, err
	}
	t.DNS = time.Since(step)
	log.Info("cluster DNS ready", "took", t.DNS.Round(time.Millisecond))
	return cfg, nil
}

// startSupervisor starts `lab supervise` in its own session, detached from
// the caller: it outlives `lab up` and is stopped by `lab down`.
func startSupervisor(c Config) (Proc, error) {
	logPath := filepath.Join(c.Dir, supervisorLogRel)
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return Proc{}, fmt.Errorf("starting the supervisor: %w", err)
	}
	defer logFile.Close()
	cmd := exec.Command(c.LabBinary, "supervise", "--dir", c.Dir)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.Dir = c.Dir
	cmd.Env = childEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return Proc{}, fmt.Errorf("starting the supervisor: %w", err)
	}
	p := newProc("supervisor", "", cmd.Process.Pid, logPath)
	// Not waited for: it is reaped by whoever outlives it (init, or Down
	// when called from this process).
	_ = cmd.Process.Release()
	return p, nil
}

// errSupervisorGone is returned while waiting when the supervisor exited.
var errSupervisorGone = errors.New("the lab supervisor exited")

// waitRunning waits until the supervisor reports PhaseRunning.
func waitRunning(ctx context.Context, c Config, sup Proc) error {
	return poll(ctx, 50*time.Millisecond, func() (bool, error) {
		st, err := ReadState(c)
		if err == nil {
			switch st.Phase {
			case PhaseRunning:
				return true, nil
			case PhaseFailed:
				return false, fmt.Errorf("the lab failed to start: %s\n%s", st.Error, supervisorTail(c))
			}
		}
		if !sup.Alive() {
			return false, fmt.Errorf("%w\n%s", errSupervisorGone, supervisorTail(c))
		}
		return false, nil
	}, "the control plane")
}

func waitNodesReady(ctx context.Context, c Config, client kubernetes.Interface, sup Proc) error {
	var notReady []string
	err := poll(ctx, 100*time.Millisecond, func() (bool, error) {
		if !sup.Alive() {
			return false, fmt.Errorf("%w\n%s", errSupervisorGone, supervisorTail(c))
		}
		nodes, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, nil
		}
		notReady = notReady[:0]
		for i := 1; i <= c.Nodes; i++ {
			idx := slices.IndexFunc(nodes.Items, func(n corev1.Node) bool { return n.Name == NodeName(i) })
			if idx < 0 || !nodeReady(&nodes.Items[idx]) {
				notReady = append(notReady, NodeName(i))
			}
		}
		return len(notReady) == 0, nil
	}, "the nodes")
	if err != nil {
		return fmt.Errorf("%w (not Ready: %v; kubelet logs in %s)", err, notReady, c.LogDir())
	}
	return nil
}

func nodeReady(n *corev1.Node) bool {
	for _, cond := range n.Status.Conditions {
		if cond.Type == corev1.NodeReady {
			return cond.Status == corev1.ConditionTrue
		}
	}
	return false
}

// waitDNS waits until CoreDNS is available and, from inside node 1's
// namespace, resolves the kubernetes Service through the cluster DNS
// Service and connects to the ClusterIP it got. That goes through
// kube-proxy's rules twice and shows that CoreDNS, a pod, reached the API
// server through the kubernetes Service (it is Ready only once its
// kubernetes plugin has synced).
func waitDNS(ctx context.Context, c Config, client kubernetes.Interface, sup Proc) error {
	var last error
	err := poll(ctx, 100*time.Millisecond, func() (bool, error) {
		if !sup.Alive() {
			return false, fmt.Errorf("%w\n%s", errSupervisorGone, supervisorTail(c))
		}
		d, err := client.AppsV1().Deployments("kube-system").Get(ctx, "coredns", metav1.GetOptions{})
		if err != nil {
			last = err
			return false, nil
		}
		if !deploymentAvailable(d) {
			last = errors.New("CoreDNS is not available")
			return false, nil
		}
		last = checkKubernetesService(ctx, c.NetnsPath(1))
		return last == nil, nil
	}, "cluster DNS")
	if err != nil {
		return fmt.Errorf("%w (last: %v)", err, last)
	}
	return nil
}

func deploymentAvailable(d *appsv1.Deployment) bool {
	return d.Status.AvailableReplicas >= 1 && d.Status.ObservedGeneration >= d.Generation
}

// checkKubernetesService resolves kubernetes.default.svc.cluster.local
// through the cluster DNS from the network namespace at nsPath and
// connects to the answer's port 443.
func checkKubernetesService(ctx context.Context, nsPath string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	dialIn := func(ctx context.Context, network, addr string) (net.Conn, error) {
		var conn net.Conn
		err := inNetns(nsPath, func() (err error) {
			var d net.Dialer
			conn, err = d.DialContext(ctx, network, addr)
			return err
		})
		return conn, err
	}
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		return dialIn(ctx, network, net.JoinHostPort(ClusterDNSIP.String(), "53"))
	}}
	name := "kubernetes.default.svc." + ClusterDomain
	addrs, err := r.LookupHost(ctx, name)
	if err != nil {
		return fmt.Errorf("resolving %s: %w", name, err)
	}
	if !slices.Contains(addrs, KubernetesSvcIP.String()) {
		return fmt.Errorf("%s resolved to %v, want %s", name, addrs, KubernetesSvcIP)
	}
	conn, err := dialIn(ctx, "tcp", net.JoinHostPort(KubernetesSvcIP.String(), "443"))
	if err != nil {
		return fmt.Errorf("connecting to the kubernetes Service: %w", err)
	}
	return conn.Close()
}

// poll calls check every interval until it returns true or an error, or
// ctx ends.
func poll(ctx context.Context, interval time.Duration, check func() (bool, error), what string) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		ok, err := check()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", what, ctx.Err())
		case <-t.C:
		}
	}
}

func supervisorTail(c Config) string {
	return tailFile(filepath.Join(c.Dir, supervisorLogRel), 30)
}
