package index

import (
	"context"
	"fmt"
	"net"
	"runtime"
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
// the initial full push, and the heap and CPU the control plane used.
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

	clients := make([]*benchClient, benchClients)
	for i := range clients {
		clients[i] = dialClient(ctx, b, ln.Addr().String())
	}
	for _, c := range clients {
		c.waitCount(b, benchPods+benchServices)
	}
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
		for _, c := range clients {
			c.waitIP(b, name, ip)
		}
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	var ru1 syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Milliseconds()), "ms-p50")
	b.ReportMetric(float64(lat[(len(lat)*99)/100].Milliseconds()), "ms-p99")
	b.ReportMetric(full.Seconds(), "s-full-push")
	b.ReportMetric(float64(ms.HeapInuse)/(1<<20), "MB-heap-inuse")
	b.ReportMetric(float64(ms.Sys)/(1<<20), "MB-sys")
	cpu := time.Duration(ru1.Utime.Nano()+ru1.Stime.Nano()-ru0.Utime.Nano()-ru0.Stime.Nano()) * time.Nanosecond
	b.ReportMetric(cpu.Seconds(), "s-cpu-incl-clients")
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

// benchClient is one delta xDS client that keeps the Addresses it holds.
type benchClient struct {
	mu      sync.Mutex
	changed *sync.Cond
	held    map[string]*workloadv1.Address
}

func dialClient(ctx context.Context, b *testing.B, addr string) *benchClient {
	b.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	stream, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		b.Fatal(err)
	}
	if err := stream.Send(&discoverygrpc.DeltaDiscoveryRequest{TypeUrl: model.AddressTypeURL, ResourceNamesSubscribe: []string{"*"}}); err != nil {
		b.Fatal(err)
	}
	c := &benchClient{held: map[string]*workloadv1.Address{}}
	c.changed = sync.NewCond(&c.mu)
	go func() {
		defer conn.Close()
		for {
			r, err := stream.Recv()
			if err != nil {
				return
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
			c.changed.Broadcast()
			c.mu.Unlock()
			if err := stream.Send(&discoverygrpc.DeltaDiscoveryRequest{TypeUrl: model.AddressTypeURL, ResponseNonce: r.GetNonce()}); err != nil {
				return
			}
		}
	}()
	return c
}

func (c *benchClient) wait(b *testing.B, what string, ok func() bool) {
	b.Helper()
	deadline := time.AfterFunc(2*time.Minute, func() { c.mu.Lock(); c.changed.Broadcast(); c.mu.Unlock() })
	defer deadline.Stop()
	start := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	for !ok() {
		if time.Since(start) > 2*time.Minute {
			b.Fatalf("a client did not get %s in 2 minutes", what)
		}
		c.changed.Wait()
	}
}

func (c *benchClient) waitCount(b *testing.B, n int) {
	c.wait(b, fmt.Sprintf("%d addresses", n), func() bool { return len(c.held) >= n })
}

func (c *benchClient) waitIP(b *testing.B, name, ip string) {
	c.wait(b, name+" at "+ip, func() bool {
		a := c.held[name]
		return a != nil && len(a.GetWorkload().GetAddresses()) > 0 && net.IP(a.GetWorkload().GetAddresses()[0]).String() == ip
	})
}
