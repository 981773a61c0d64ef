package index

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"runtime/metrics"
	"runtime/pprof"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	cairnclient "github.com/cairnmesh/cairn/apis/client/clientset/versioned"
	securityv1 "github.com/cairnmesh/cairn/apis/security/v1"
	workloadv1 "github.com/cairnmesh/cairn/apis/workload/v1"
	"github.com/cairnmesh/cairn/internal/testenv"
	"github.com/cairnmesh/cairn/istiod-lite/model"
	"github.com/cairnmesh/cairn/istiod-lite/xds"
)

// The synthetic mesh of issue 4's benchmark: 10k pods in 10 enrolled
// namespaces, 1k services (each selecting 10 pods), 100 policies, and 100
// delta xDS clients subscribed to everything.
const (
	benchNamespaces = 10
	benchPods       = 10000
	benchServices   = 1000
	benchPolicies   = 100
	benchClients    = 100
)

var (
	benchMesh sync.Once
	benchNSs  []string
)

// BenchmarkPodReadyToAllClients measures, in a real API server, the time
// from a pod's status turning Ready with a new IP to every connected
// client holding the new workload (p50/p99 over b.N changes), the time of
// the initial full push, and the heap and CPU of the control plane (the
// index, its informers and the xDS server; the clients run in a child
// process, the API server in its own).
func BenchmarkPodReadyToAllClients(b *testing.B) {
	env := testenv.Get(b)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	kube := env.Client()
	security, err := cairnclient.NewForConfig(env.Config())
	if err != nil {
		b.Fatal(err)
	}
	// The testing package runs a benchmark once with b.N=1 before the
	// measured run: the mesh is created only once.
	benchMesh.Do(func() {
		start := time.Now()
		benchNSs = populate(context.Background(), b, kube, security)
		b.Logf("created %d pods, %d services, %d policies in %v", benchPods, benchServices, benchPolicies, time.Since(start).Round(time.Millisecond))
	})
	nss := benchNSs
	if len(nss) == 0 {
		b.Fatal("the synthetic mesh was not created")
	}

	// What the mesh's creation left behind is not istiod-lite's.
	runtime.GC()
	heapPeak := sampleHeap()
	var ru0 syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	srv, err := xds.New(xds.Config{
		TypeURLs: []string{model.AddressTypeURL, model.AuthorizationTypeURL},
		Authenticator: xds.AuthenticatorFunc(func(context.Context) (xds.Identity, error) {
			return xds.Identity{Principal: "bench"}, nil
		}),
	})
	if err != nil {
		b.Fatal(err)
	}
	g := grpc.NewServer()
	srv.Register(g)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	idx := New(kube, security, srv, model.Config{}, nil)
	var wg errgroup.Group
	wg.Go(func() error { return g.Serve(ln) })
	wg.Go(func() error { return srv.Run(ctx) })
	wg.Go(func() error { return idx.Run(ctx) })
	defer func() {
		cancel()
		g.Stop()
		_ = wg.Wait()
	}()
	fullStart := time.Now()
	<-srv.Ready()
	syncPeak := heapPeak.reset()
	clients := startClientProcess(b, ln.Addr().String(), benchClients, benchPods+benchServices)
	clients.expect(b, "synced")
	full := time.Since(fullStart)

	pod, err := kube.CoreV1().Pods(nss[0]).Get(ctx, "p-0", metav1.GetOptions{})
	if err != nil {
		b.Fatal(err)
	}
	name := model.Config{}.PodUID(nss[0], "p-0")
	var lat []time.Duration
	b.ResetTimer()
	for i := range b.N {
		ip := fmt.Sprintf("198.18.200.%d", i%250+1)
		pod.Status.PodIP, pod.Status.PodIPs = ip, []corev1.PodIP{{IP: ip}}
		t0 := time.Now()
		if pod, err = kube.CoreV1().Pods(nss[0]).UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
			b.Fatal(err)
		}
		clients.waitIP(b, name, ip)
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	var ru1 syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	peak := heapPeak.stop()
	// Twice: gRPC's buffer pools (sync.Pools) hold the big initial
	// responses' buffers until the second collection.
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	if path := os.Getenv("CAIRN_BENCH_HEAP_PROFILE"); path != "" {
		writeHeapProfile(b, path) // what is in use here, before the servers stop
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Milliseconds()), "ms-p50")
	b.ReportMetric(float64(lat[(len(lat)*99)/100].Milliseconds()), "ms-p99")
	b.ReportMetric(full.Seconds(), "s-full-push")
	b.ReportMetric(float64(syncPeak)/(1<<20), "MB-heap-peak-sync")
	b.ReportMetric(float64(peak)/(1<<20), "MB-heap-peak-push")
	b.ReportMetric(float64(ms.HeapInuse)/(1<<20), "MB-heap-after-gc")
	cpu := time.Duration(ru1.Utime.Nano()+ru1.Stime.Nano()-ru0.Utime.Nano()-ru0.Stime.Nano()) * time.Nanosecond
	b.ReportMetric(cpu.Seconds(), "s-cpu")
}

func writeHeapProfile(b *testing.B, path string) {
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := pprof.WriteHeapProfile(f); err != nil {
		b.Fatal(err)
	}
}

// heapSampler records the highest heap in use it sees, sampling every
// 20 ms: Go's own peak figures (MemStats.Sys, Maxrss) include memory freed
// long ago and whatever the process did before the measurement.
type heapSampler struct {
	stopc  chan struct{}
	resetc chan chan uint64
	done   chan uint64
}

func sampleHeap() *heapSampler {
	h := &heapSampler{stopc: make(chan struct{}), resetc: make(chan chan uint64), done: make(chan uint64)}
	go func() {
		sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}, {Name: "/memory/classes/heap/unused:bytes"}}
		var peak uint64
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			metrics.Read(sample)
			peak = max(peak, sample[0].Value.Uint64()+sample[1].Value.Uint64())
			select {
			case <-h.stopc:
				h.done <- peak
				return
			case reply := <-h.resetc:
				reply <- peak
				peak = 0
			case <-tick.C:
			}
		}
	}()
	return h
}

// reset returns the peak so far and starts a new one.
func (h *heapSampler) reset() uint64 {
	reply := make(chan uint64)
	h.resetc <- reply
	return <-reply
}

func (h *heapSampler) stop() uint64 {
	close(h.stopc)
	return <-h.done
}

// populate creates the synthetic mesh and returns its namespaces.
func populate(ctx context.Context, b *testing.B, kube kubernetes.Interface, security cairnclient.Interface) []string {
	b.Helper()
	var nss []string
	for range benchNamespaces {
		ns, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
			GenerateName: "bench-", Labels: map[string]string{model.DataplaneModeLabel: model.DataplaneModeAmbient},
		}}, metav1.CreateOptions{})
		if err != nil {
			b.Fatal(err)
		}
		nss = append(nss, ns.Name)
	}
	var g errgroup.Group
	g.SetLimit(32)
	perNS := benchPods / benchNamespaces
	for i := range benchPods {
		ns, local := nss[i/perNS], i%perNS
		g.Go(func() error {
			p := &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("p-%d", local), Labels: map[string]string{
					"svc": fmt.Sprintf("s-%d", local/10), "app": fmt.Sprintf("a-%d", local%10),
				}},
				Spec: corev1.PodSpec{NodeName: fmt.Sprintf("node-%d", i%10), Containers: []corev1.Container{{
					Name: "app", Image: "cairn/echoserver:latest", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
				}}},
			}
			p, err := kube.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
			if err != nil {
				return err
			}
			ip := fmt.Sprintf("198.18.%d.%d", i/250+1, i%250+1)
			p.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}},
				Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: metav1.Now()}}}
			_, err = kube.CoreV1().Pods(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{})
			return err
		})
	}
	perNSsvc := benchServices / benchNamespaces
	for i := range benchServices {
		ns, local := nss[i/perNSsvc], i%perNSsvc
		g.Go(func() error {
			_, err := kube.CoreV1().Services(ns).Create(ctx, &corev1.Service{
				ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("s-%d", local)},
				Spec: corev1.ServiceSpec{Selector: map[string]string{"svc": fmt.Sprintf("s-%d", local)},
					Ports: []corev1.ServicePort{{Name: "http", Port: 9080, TargetPort: intstr.FromString("http")}}},
			}, metav1.CreateOptions{})
			return err
		})
	}
	perNSpol := benchPolicies / benchNamespaces
	for i := range benchPolicies {
		ns, local := nss[i/perNSpol], i%perNSpol
		g.Go(func() error {
			_, err := security.SecurityV1().AuthorizationPolicies(ns).Create(ctx, &securityv1.AuthorizationPolicy{
				ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("ap-%d", local)},
				Spec: securityv1.AuthorizationPolicySpec{
					Selector: &securityv1.WorkloadSelector{MatchLabels: map[string]string{"app": fmt.Sprintf("a-%d", local)}},
					Rules: []securityv1.Rule{{From: []securityv1.From{{Source: &securityv1.Source{
						Principals: []string{fmt.Sprintf("cluster.local/ns/%s/sa/client-%d", ns, local)},
					}}}}},
				},
			}, metav1.CreateOptions{})
			return err
		})
	}
	if err := g.Wait(); err != nil {
		b.Fatal(err)
	}
	return nss
}

// The clients run in a child process (this test binary again, see
// TestMain), so that the heap and CPU measured in the benchmark's own
// process are istiod-lite's alone. The child dials the server's address
// with benchClientsEnv set and speaks a line protocol on stdin/stdout:
//
//	child:  synced              every client holds <count> Addresses
//	parent: wait <name> <ip>    child: ok   once every client holds name at ip
//
// The child exits when its stdin closes.
const (
	benchClientsEnv = "CAIRN_BENCH_XDS_CLIENTS" // "<addr> <clients> <count>"
)

// clientProcess is the parent's side of the child running the clients.
type clientProcess struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines *bufio.Scanner
}

func startClientProcess(b *testing.B, addr string, clients, count int) *clientProcess {
	b.Helper()
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s %d %d", benchClientsEnv, addr, clients, count))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	p := &clientProcess{cmd: cmd, stdin: stdin, lines: bufio.NewScanner(stdout)}
	b.Cleanup(func() {
		_ = p.stdin.Close()
		if err := p.cmd.Wait(); err != nil {
			b.Errorf("client process: %v", err)
		}
	})
	return p
}

// expect reads the child's next line and fails unless it is want.
func (p *clientProcess) expect(b *testing.B, want string) {
	b.Helper()
	if !p.lines.Scan() {
		b.Fatalf("client process ended (%v) while waiting for %q", p.lines.Err(), want)
	}
	if got := p.lines.Text(); got != want {
		b.Fatalf("client process said %q, want %q", got, want)
	}
}

func (p *clientProcess) waitIP(b *testing.B, name, ip string) {
	b.Helper()
	if _, err := fmt.Fprintf(p.stdin, "wait %s %s\n", name, ip); err != nil {
		b.Fatal(err)
	}
	p.expect(b, "ok")
}

// runBenchClients is the child: spec is benchClientsEnv's value.
func runBenchClients(spec string) int {
	var addr string
	var n, count int
	if _, err := fmt.Sscanf(spec, "%s %d %d", &addr, &n, &count); err != nil {
		fmt.Fprintf(os.Stderr, "bench clients: bad %s %q: %v\n", benchClientsEnv, spec, err)
		return 2
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	clients := make([]*benchClient, n)
	for i := range clients {
		c, err := dialClient(ctx, addr)
		if err != nil {
			fmt.Fprintf(os.Stderr, "bench clients: %v\n", err)
			return 1
		}
		clients[i] = c
	}
	for _, c := range clients {
		if err := c.waitCount(count); err != nil {
			fmt.Fprintf(os.Stderr, "bench clients: %v\n", err)
			return 1
		}
	}
	fmt.Println("synced")
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		var name, ip string
		if _, err := fmt.Sscanf(in.Text(), "wait %s %s", &name, &ip); err != nil {
			fmt.Fprintf(os.Stderr, "bench clients: bad command %q: %v\n", in.Text(), err)
			return 2
		}
		for _, c := range clients {
			if err := c.waitIP(name, ip); err != nil {
				fmt.Fprintf(os.Stderr, "bench clients: %v\n", err)
				return 1
			}
		}
		fmt.Println("ok")
	}
	return 0
}

// benchClient is one delta xDS client that keeps the Addresses it holds.
type benchClient struct {
	mu      sync.Mutex
	changed *sync.Cond
	held    map[string]*workloadv1.Address
	err     error // why the stream ended
}

func dialClient(ctx context.Context, addr string) (*benchClient, error) {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	stream, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		return nil, err
	}
	if err := stream.Send(&discoverygrpc.DeltaDiscoveryRequest{TypeUrl: model.AddressTypeURL, ResourceNamesSubscribe: []string{"*"}}); err != nil {
		return nil, err
	}
	c := &benchClient{held: map[string]*workloadv1.Address{}}
	c.changed = sync.NewCond(&c.mu)
	go func() {
		defer conn.Close()
		for {
			r, err := stream.Recv()
			if err == nil {
				err = stream.Send(&discoverygrpc.DeltaDiscoveryRequest{TypeUrl: model.AddressTypeURL, ResponseNonce: r.GetNonce()})
			}
			c.mu.Lock()
			for _, res := range r.GetResources() {
				var a workloadv1.Address
				if res.GetResource().UnmarshalTo(&a) == nil {
					c.held[res.GetName()] = &a
				}
			}
			for _, n := range r.GetRemovedResources() {
				delete(c.held, n)
			}
			if err != nil {
				c.err = err
			}
			c.changed.Broadcast()
			c.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	return c, nil
}

func (c *benchClient) wait(what string, ok func() bool) error {
	const limit = 2 * time.Minute
	deadline := time.AfterFunc(limit, func() { c.mu.Lock(); c.changed.Broadcast(); c.mu.Unlock() })
	defer deadline.Stop()
	start := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	for !ok() {
		if c.err != nil {
			return fmt.Errorf("stream ended before a client got %s: %w", what, c.err)
		}
		if time.Since(start) > limit {
			return fmt.Errorf("a client did not get %s in %v", what, limit)
		}
		c.changed.Wait()
	}
	return nil
}

func (c *benchClient) waitCount(n int) error {
	return c.wait(fmt.Sprintf("%d addresses", n), func() bool { return len(c.held) >= n })
}

func (c *benchClient) waitIP(name, ip string) error {
	return c.wait(name+" at "+ip, func() bool {
		a := c.held[name]
		return a != nil && len(a.GetWorkload().GetAddresses()) > 0 && net.IP(a.GetWorkload().GetAddresses()[0]).String() == ip
	})
}
