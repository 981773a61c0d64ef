// Package kubeserver runs a real Kubernetes control plane as child
// processes: etcd and kube-apiserver, and optionally kube-controller-manager
// and kube-scheduler. Tests use it through internal/testenv; the lab reuses
// it with its own addresses.
//
// All certificates are generated in Go. Every process listens on a free
// port (the API server on Options.BindAddress, the rest on loopback), logs
// to a file in Options.Dir and is stopped by PID in Stop. Children also get
// SIGKILL from the kernel if the process that started them dies.
package kubeserver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"k8s.io/client-go/rest"
)

// Server is a running control plane. Create it with Start and end it with
// Stop.
type Server struct {
	opts     Options
	log      *slog.Logger
	ca       *CA
	admin    *rest.Config
	launcher *launcher
	procs    []*process // in start order
	timings  Timings

	stopOnce sync.Once
	stopErr  error
}

// Timings records how long each start-up step took.
type Timings struct {
	Certs             time.Duration // generating and writing keys and certificates
	Etcd              time.Duration // etcd started and healthy
	APIServer         time.Duration // kube-apiserver started, /readyz ok and the "kubernetes" Service there
	ControllerManager time.Duration // kube-controller-manager started and /healthz ok
	Scheduler         time.Duration // kube-scheduler started and /healthz ok
	Total             time.Duration
}

// File names inside Options.Dir.
const (
	certsDir        = "certs"
	adminKubeconfig = "admin.kubeconfig"
)

// frontProxyClient is the CN of the front proxy's client certificate.
const frontProxyClient = "front-proxy-client"

// Start generates certificates, starts the processes opts asks for, and
// returns once each is ready. On error, whatever it started is stopped
// again, and the error includes the tail of the failing process's log.
// ctx bounds only the start-up; the processes run until Stop.
func Start(ctx context.Context, opts Options) (*Server, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("starting kube server: %w", err)
	}
	if err := CheckBinaries(opts); err != nil {
		return nil, fmt.Errorf("starting kube server: %w", err)
	}
	s := &Server{opts: opts, log: opts.Logger.With("component", "kubeserver")}
	if err := s.start(ctx); err != nil {
		if s.launcher != nil {
			_ = s.Stop()
		}
		return nil, fmt.Errorf("starting kube server in %s: %w", opts.Dir, err)
	}
	return s, nil
}

func (s *Server) start(ctx context.Context) error {
	begin := time.Now()
	o := s.opts
	if err := os.MkdirAll(filepath.Join(o.Dir, certsDir), 0o755); err != nil {
		return err
	}

	step := time.Now()
	if err := s.writeCerts(); err != nil {
		return err
	}
	s.timings.Certs = time.Since(step)

	ports, err := freePorts(net.IPv4(127, 0, 0, 1), 4)
	if err != nil {
		return err
	}
	etcdClient, etcdPeer, kcmPort, schedPort := ports[0], ports[1], ports[2], ports[3]
	apiPort := o.SecurePort
	if apiPort == 0 {
		p, err := freePorts(o.BindAddress, 1)
		if err != nil {
			return err
		}
		apiPort = p[0]
	}

	clientIP := o.BindAddress
	if clientIP.IsUnspecified() {
		clientIP = o.AdvertiseAddress
	}
	s.admin.Host = "https://" + net.JoinHostPort(clientIP.String(), strconv.Itoa(apiPort))
	if err := WriteKubeconfig(s.KubeconfigPath(), s.admin, "cairn-admin"); err != nil {
		return err
	}

	s.launcher = newLauncher()

	// One after the other: starting the API server before etcd is healthy
	// saves nothing (measured), as it backs off between connection attempts.
	step = time.Now()
	etcdURL := "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(etcdClient))
	etcd, etcdReady, err := s.startEtcd(etcdURL, etcdPeer)
	if err != nil {
		return err
	}
	if err := s.waitReady(ctx, etcd, etcdReady); err != nil {
		return err
	}
	s.timings.Etcd = time.Since(step)

	step = time.Now()
	api, apiReady, err := s.startAPIServer(etcdURL, apiPort)
	if err != nil {
		return err
	}
	if err := s.waitReady(ctx, api, apiReady); err != nil {
		return err
	}
	s.timings.APIServer = time.Since(step)

	if o.ControllerManager {
		step = time.Now()
		if err := s.startControllerManager(ctx, kcmPort); err != nil {
			return err
		}
		s.timings.ControllerManager = time.Since(step)
	}
	if o.Scheduler {
		step = time.Now()
		if err := s.startScheduler(ctx, schedPort); err != nil {
			return err
		}
		s.timings.Scheduler = time.Since(step)
	}
	s.timings.Total = time.Since(begin)
	s.log.Info("control plane ready", "url", s.admin.Host, "dir", o.Dir,
		"took", s.timings.Total.Round(time.Millisecond))
	return nil
}

func (s *Server) certPath(name string) string { return filepath.Join(s.opts.Dir, certsDir, name) }

// writeCerts generates the CA, the serving and admin certificates and the
// service-account signing key, writes them to Dir/certs and sets s.admin.
func (s *Server) writeCerts() error {
	o := s.opts
	ca, err := NewCA("cairn-kube-ca", o.KeyAlgorithm)
	if err != nil {
		return err
	}
	s.ca = ca

	kubeSvcIP, err := serviceIP(o.ServiceCIDR)
	if err != nil {
		return err
	}
	ips := []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback, kubeSvcIP, o.AdvertiseAddress}
	if !o.BindAddress.IsUnspecified() {
		ips = append(ips, o.BindAddress)
	}
	ips = dedupIPs(append(ips, o.ExtraIPs...))
	dns := dedupStrings(append([]string{
		"localhost",
		"kubernetes",
		"kubernetes.default",
		"kubernetes.default.svc",
		"kubernetes.default.svc.cluster.local",
	}, o.ExtraDNSNames...))
	serving, err := ca.IssueServing(ips, dns)
	if err != nil {
		return err
	}
	admin, err := ca.IssueClient("cairn-admin", []string{"system:masters"})
	if err != nil {
		return err
	}
	saKey, err := GenerateKey(o.KeyAlgorithm)
	if err != nil {
		return err
	}
	saKeyPEM, err := encodeKey(saKey)
	if err != nil {
		return err
	}
	saPubPEM, err := EncodePublicKey(saKey)
	if err != nil {
		return err
	}
	caKeyPEM, err := ca.KeyPEM()
	if err != nil {
		return err
	}
	// The front proxy (aggregation layer) has its own CA, as in kubeadm.
	// Besides aggregated API servers, it lets the controller-manager and the
	// scheduler authenticate requests the way they do in a real cluster
	// (they read the request-header CA from the API server).
	proxyCA, err := NewCA("cairn-front-proxy-ca", o.KeyAlgorithm)
	if err != nil {
		return err
	}
	proxyClient, err := proxyCA.IssueClient(frontProxyClient, nil)
	if err != nil {
		return err
	}

	files := []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{"ca.crt", ca.CertPEM, 0o644},
		{"ca.key", caKeyPEM, 0o600},
		{"apiserver.crt", serving.CertPEM, 0o644},
		{"apiserver.key", serving.KeyPEM, 0o600},
		{"admin.crt", admin.CertPEM, 0o644},
		{"admin.key", admin.KeyPEM, 0o600},
		{"sa.key", saKeyPEM, 0o600},
		{"sa.pub", saPubPEM, 0o644},
		{"front-proxy-ca.crt", proxyCA.CertPEM, 0o644},
		{"front-proxy-client.crt", proxyClient.CertPEM, 0o644},
		{"front-proxy-client.key", proxyClient.KeyPEM, 0o600},
	}
	for _, f := range files {
		if err := os.WriteFile(s.certPath(f.name), f.data, f.mode); err != nil {
			return fmt.Errorf("writing certificates: %w", err)
		}
	}

	s.admin = &rest.Config{
		TLSClientConfig: rest.TLSClientConfig{
			CAData:   ca.CertPEM,
			CertData: admin.CertPEM,
			KeyData:  admin.KeyPEM,
		},
		// Tests create many objects quickly; client-go's default of 5 QPS
		// would make them measure the rate limiter instead.
		QPS:   200,
		Burst: 400,
	}
	return nil
}

// readyCheck returns nil once a process serves.
type readyCheck func(context.Context) error

func (s *Server) startEtcd(clientURL string, peerPort int) (*process, readyCheck, error) {
	peerURL := "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(peerPort))
	args := []string{
		"--name=cairn",
		"--data-dir=" + filepath.Join(s.opts.Dir, "etcd"),
		"--listen-client-urls=" + clientURL,
		"--advertise-client-urls=" + clientURL,
		"--listen-peer-urls=" + peerURL,
		"--initial-advertise-peer-urls=" + peerURL,
		"--initial-cluster=cairn=" + peerURL,
		"--initial-cluster-state=new",
		// Throw-away data: don't pay for fsync on every write.
		"--unsafe-no-fsync",
		// A single member has no peers to lose contact with; short raft
		// timings only make its first election (and so start-up) quicker:
		// ~0.1s to healthy instead of 0.3-0.9s.
		"--heartbeat-interval=10",
		"--election-timeout=100",
	}
	p, err := s.startProcess(Etcd, args)
	if err != nil {
		return nil, nil, err
	}
	client := &http.Client{Timeout: 2 * time.Second}
	return p, func(ctx context.Context) error {
		return probe(ctx, client, clientURL+"/health", `"health":"true"`)
	}, nil
}

func (s *Server) startAPIServer(etcdURL string, port int) (*process, readyCheck, error) {
	o := s.opts
	args := []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=" + o.BindAddress.String(),
		"--advertise-address=" + o.AdvertiseAddress.String(),
		"--secure-port=" + strconv.Itoa(port),
		"--cert-dir=" + filepath.Join(o.Dir, "apiserver-certs"),
		"--tls-cert-file=" + s.certPath("apiserver.crt"),
		"--tls-private-key-file=" + s.certPath("apiserver.key"),
		"--client-ca-file=" + s.certPath("ca.crt"),
		"--service-account-key-file=" + s.certPath("sa.pub"),
		"--service-account-signing-key-file=" + s.certPath("sa.key"),
		"--service-account-issuer=" + o.ServiceAccountIssuer,
		"--api-audiences=" + strings.Join(o.APIAudiences, ","),
		"--authorization-mode=RBAC",
		"--requestheader-client-ca-file=" + s.certPath("front-proxy-ca.crt"),
		"--requestheader-allowed-names=" + frontProxyClient,
		"--requestheader-username-headers=X-Remote-User",
		"--requestheader-group-headers=X-Remote-Group",
		"--requestheader-extra-headers-prefix=X-Remote-Extra-",
		"--proxy-client-cert-file=" + s.certPath("front-proxy-client.crt"),
		"--proxy-client-key-file=" + s.certPath("front-proxy-client.key"),
		"--service-cluster-ip-range=" + o.ServiceCIDR,
		"--allow-privileged=true",
		// The reconciler of the "kubernetes" Endpoints refuses loopback
		// advertise addresses (v1.37 fails to start with one).
		"--endpoint-reconciler-type=none",
	}
	client, err := s.adminHTTPClient()
	if err != nil {
		return nil, nil, err
	}
	p, err := s.startProcess(APIServer, args)
	if err != nil {
		return nil, nil, err
	}
	return p, func(ctx context.Context) error {
		if err := probe(ctx, client, s.admin.Host+"/readyz", "ok"); err != nil {
			return err
		}
		// /readyz doesn't wait for the bootstrap controller, which creates
		// the "kubernetes" Service (and the default namespaces) right after.
		return probe(ctx, client, s.admin.Host+"/api/v1/namespaces/default/services/kubernetes", `"clusterIP"`)
	}, nil
}

func (s *Server) startControllerManager(ctx context.Context, port int) error {
	kc := s.KubeconfigPath()
	args := []string{
		"--kubeconfig=" + kc,
		"--authentication-kubeconfig=" + kc,
		"--authorization-kubeconfig=" + kc,
		"--leader-elect=false",
		"--bind-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(port),
		"--tls-cert-file=" + s.certPath("apiserver.crt"),
		"--tls-private-key-file=" + s.certPath("apiserver.key"),
		"--controllers=" + strings.Join(s.opts.Controllers, ","),
		"--root-ca-file=" + s.certPath("ca.crt"),
		"--service-account-private-key-file=" + s.certPath("sa.key"),
		// All controllers act as the admin (system:masters) rather than
		// one ServiceAccount each: fewer moving parts, same behaviour.
		"--use-service-account-credentials=false",
	}
	return s.startComponent(ctx, ControllerManager, args, port)
}

func (s *Server) startScheduler(ctx context.Context, port int) error {
	kc := s.KubeconfigPath()
	args := []string{
		"--kubeconfig=" + kc,
		"--authentication-kubeconfig=" + kc,
		"--authorization-kubeconfig=" + kc,
		"--leader-elect=false",
		"--bind-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(port),
		"--tls-cert-file=" + s.certPath("apiserver.crt"),
		"--tls-private-key-file=" + s.certPath("apiserver.key"),
	}
	return s.startComponent(ctx, Scheduler, args, port)
}

// startComponent starts the controller-manager or the scheduler and waits
// for its /healthz, served with the API server's certificate.
func (s *Server) startComponent(ctx context.Context, name string, args []string, port int) error {
	p, err := s.startProcess(name, args)
	if err != nil {
		return err
	}
	client, err := s.adminHTTPClient()
	if err != nil {
		return err
	}
	url := "https://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) + "/healthz"
	return s.waitReady(ctx, p, func(ctx context.Context) error {
		return probe(ctx, client, url, "ok")
	})
}

func (s *Server) startProcess(name string, args []string) (*process, error) {
	args = append(args, s.opts.ExtraArgs[name]...)
	p, err := startProcess(s.launcher, s.log, name, filepath.Join(s.opts.BinDir, name), args,
		filepath.Join(s.opts.Dir, name+".log"))
	if err != nil {
		return nil, err
	}
	s.procs = append(s.procs, p)
	return p, nil
}

// waitReady polls check every 100ms until it succeeds, any started process
// exits, ctx ends or StartTimeout passes.
func (s *Server) waitReady(ctx context.Context, p *process, check readyCheck) error {
	ctx, cancel := context.WithTimeout(ctx, s.opts.StartTimeout)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
		last = check(pctx)
		pcancel()
		if last == nil {
			p.log.Debug("ready")
			return nil
		}
		for _, q := range s.procs {
			if !q.running() {
				return fmt.Errorf("waiting for %s to become ready: %w", p.name, q.exitError())
			}
		}
		select {
		case <-p.exited: // reported above on the next round
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s to become ready (last probe: %v): %w\n%s",
				p.name, last, ctx.Err(), p.tail())
		case <-tick.C:
		}
	}
}

// probe GETs url and succeeds on status 200 with want in the body.
func probe(ctx context.Context, client *http.Client, url, want string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), want) {
		return fmt.Errorf("GET %s: %s: %s", url, resp.Status, strings.TrimSpace(string(body)))
	}
	return nil
}

func (s *Server) adminHTTPClient() (*http.Client, error) {
	rt, err := rest.TransportFor(s.admin)
	if err != nil {
		return nil, fmt.Errorf("building admin transport: %w", err)
	}
	return &http.Client{Transport: rt, Timeout: 5 * time.Second}, nil
}

// Stop terminates every process Start started, newest first: SIGTERM, then
// SIGKILL after Options.StopGrace. It leaves Dir in place. It returns an
// error if a process had exited on its own before Stop. Calling Stop again
// returns the same result.
func (s *Server) Stop() error {
	s.stopOnce.Do(func() {
		var errs []error
		for _, p := range s.procs {
			if !p.running() {
				errs = append(errs, fmt.Errorf("before Stop: %w", p.exitError()))
			}
		}
		// Everything but etcd goes at once (they only talk to the API
		// server, or are it); etcd last, so the API server doesn't spend
		// its shutdown retrying a vanished backend.
		var wg sync.WaitGroup
		var etcd *process
		for _, p := range s.procs {
			if p.name == Etcd {
				etcd = p
				continue
			}
			wg.Go(func() { p.stop(s.opts.StopGrace) })
		}
		wg.Wait()
		if etcd != nil {
			etcd.stop(s.opts.StopGrace)
		}
		if s.launcher != nil {
			s.launcher.close()
		}
		s.stopErr = errors.Join(errs...)
		s.log.Info("control plane stopped")
	})
	return s.stopErr
}

// Config returns a new copy of the admin's client configuration (a client
// certificate in group system:masters).
func (s *Server) Config() *rest.Config { return rest.CopyConfig(s.admin) }

// URL returns the API server's address, e.g. https://127.0.0.1:41234.
func (s *Server) URL() string { return s.admin.Host }

// CA returns the cluster CA, which signed the API server's certificate and
// can issue client certificates (see ClientConfig).
func (s *Server) CA() *CA { return s.ca }

// Dir returns the directory the server writes to.
func (s *Server) Dir() string { return s.opts.Dir }

// CertDir returns the directory with ca.crt/ca.key, apiserver.crt/.key,
// admin.crt/.key, the service-account key pair sa.key/sa.pub and the
// front proxy's front-proxy-ca.crt and front-proxy-client.crt/.key.
func (s *Server) CertDir() string { return filepath.Join(s.opts.Dir, certsDir) }

// KubeconfigPath returns the path of the admin kubeconfig Start wrote.
func (s *Server) KubeconfigPath() string { return filepath.Join(s.opts.Dir, adminKubeconfig) }

// Timings returns how long the steps of Start took.
func (s *Server) Timings() Timings { return s.timings }

// PIDs returns the process IDs of the running children by binary name.
func (s *Server) PIDs() map[string]int {
	pids := make(map[string]int, len(s.procs))
	for _, p := range s.procs {
		if p.running() {
			pids[p.name] = p.cmd.Process.Pid
		}
	}
	return pids
}

// ClientConfig returns a client configuration that authenticates with a
// new client certificate for user in groups, e.g. a node
// ("system:node:a", "system:nodes"). Unlike the admin, it is subject to
// RBAC.
func (s *Server) ClientConfig(user string, groups ...string) (*rest.Config, error) {
	kp, err := s.ca.IssueClient(user, groups)
	if err != nil {
		return nil, err
	}
	cfg := s.Config()
	cfg.CertData = kp.CertPEM
	cfg.KeyData = kp.KeyPEM
	return cfg, nil
}

// freePorts returns n distinct ports that were free on ip. All listeners
// are held until every port is picked, so the ports differ; another
// process may still take one before the server binds it, which on a test
// machine is unlikely enough.
func freePorts(ip net.IP, n int) ([]int, error) {
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", net.JoinHostPort(ip.String(), "0"))
		if err != nil {
			return nil, fmt.Errorf("finding a free port on %s: %w", ip, err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func dedupStrings(ss []string) []string {
	var out []string
	for _, s := range ss {
		if s != "" && !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}

func dedupIPs(ips []net.IP) []net.IP {
	var out []net.IP
	for _, ip := range ips {
		if ip == nil || ip.IsUnspecified() {
			continue
		}
		if !slices.ContainsFunc(out, ip.Equal) {
			out = append(out, ip)
		}
	}
	return out
}
