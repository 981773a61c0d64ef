package benchlab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/cairnmesh/cairn/integration/lab"
)

// The server pod's ports.
const (
	httpPort  = 8080 // fortio's echo server
	iperfPort = 5201 // iperf3 -s
)

// Namespaces: the same client and server in a plain one and in an
// enrolled one; the haproxy pair in a third, not enrolled.
const (
	plainNS   = "bench-plain"
	meshNS    = "bench-mesh"
	haproxyNS = "bench-haproxy"
)

// mode is one way from the client pod (node 1) to the server pod (node
// 2): what the loads send to, and the proxies that carry it.
type mode struct {
	name    string // nomesh, mesh, haproxy
	client  podRef // where fortio and iperf3 run
	httpURL string
	iperf   string // host:port of iperf3, or of the proxy in front of it
	proxies []proc
}

// appPods are the client (idle; the loads are exec'ed in it) on node 1
// and the server (fortio's echo server and iperf3) on node 2.
var appPods = fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: server, labels: {app: server}}
spec:
  nodeName: %[2]s
  terminationGracePeriodSeconds: 1
  containers:
  - name: fortio
    image: cairn/fortio:latest
    args: [server, -http-port, "%[3]d", -grpc-port, disabled, -redirect-port, disabled,
      -tcp-port, disabled, -udp-port, disabled, -loglevel, Warning]
    ports: [{name: http, containerPort: %[3]d}]
  - name: iperf3
    image: %[5]s
    args: [-s, -p, "%[4]d"]
    ports: [{name: iperf, containerPort: %[4]d}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, labels: {app: client}}
spec:
  nodeName: %[1]s
  terminationGracePeriodSeconds: 1
  containers:
  - {name: client, image: "cairn/echoserver:latest"}
`, lab.NodeName(1), lab.NodeName(2), httpPort, iperfPort, iperfImage)

// setup installs the mesh, deploys the three modes' pods and checks that
// each path works and that only the enrolled pods are captured.
func setup(ctx context.Context) ([]mode, error) {
	ztunnels, err := installMesh(ctx)
	if err != nil {
		return nil, err
	}
	for ns, labels := range map[string]map[string]string{
		plainNS:   nil,
		meshNS:    {"istio.io/dataplane-mode": "ambient"},
		haproxyNS: nil,
	} {
		if err := createNamespace(ctx, ns, labels); err != nil {
			return nil, err
		}
	}
	servers := map[string]string{}
	for _, ns := range []string{plainNS, meshNS} {
		if err := apply(ctx, ns, appPods); err != nil {
			return nil, fmt.Errorf("deploying the app in %s: %w", ns, err)
		}
		if _, err := waitPods(ctx, ns, "app=client", 1); err != nil {
			return nil, err
		}
		pods, err := waitPods(ctx, ns, "app=server", 1)
		if err != nil {
			return nil, err
		}
		servers[ns] = pods[0].Status.PodIP
	}
	h1, h2, err := deployHaproxy(ctx, haproxyNS, servers[plainNS])
	if err != nil {
		return nil, err
	}

	for _, p := range []podRef{
		{plainNS, "client", ""}, {plainNS, "server", "fortio"},
		{meshNS, "client", ""}, {meshNS, "server", "fortio"},
		{haproxyNS, h1.Name, ""}, {haproxyNS, h2.Name, ""},
	} {
		if err := tune(ctx, p); err != nil {
			return nil, err
		}
	}
	if err := checkCapture(ctx); err != nil {
		return nil, err
	}

	var zprocs, hprocs []proc
	for i, z := range ztunnels {
		p, err := podProcess(z, "ztunnel", fmt.Sprintf("ztunnel-%d", i+1))
		if err != nil {
			return nil, err
		}
		p.pprof = &podRef{z.Namespace, z.Name, ""}
		zprocs = append(zprocs, p)
	}
	for _, h := range []corev1.Pod{h1, h2} {
		p, err := podProcess(h, "haproxy", h.Name)
		if err != nil {
			return nil, err
		}
		hprocs = append(hprocs, p)
	}
	url := func(host string, port int) string {
		return "http://" + net.JoinHostPort(host, strconv.Itoa(port)) + "/"
	}
	hostPort := func(host string, port int) string { return net.JoinHostPort(host, strconv.Itoa(port)) }
	modes := []mode{
		{name: "nomesh", client: podRef{plainNS, "client", ""},
			httpURL: url(servers[plainNS], httpPort), iperf: hostPort(servers[plainNS], iperfPort)},
		{name: "mesh", client: podRef{meshNS, "client", ""},
			httpURL: url(servers[meshNS], httpPort), iperf: hostPort(servers[meshNS], iperfPort), proxies: zprocs},
		{name: "haproxy", client: podRef{plainNS, "client", ""},
			httpURL: url(h1.Status.PodIP, haproxyHTTPPort), iperf: hostPort(h1.Status.PodIP, haproxyIperfPort), proxies: hprocs},
	}
	for _, m := range modes {
		if err := eventually(ctx, 30*time.Second, m.name+" answers", func(ctx context.Context) error {
			_, err := fortio(ctx, m, "-qps", "0", "-n", "20", "-c", "1")
			return err
		}); err != nil {
			return nil, err
		}
	}
	return modes, nil
}

// tune sets, in a pod's network namespace, what load generators set: a
// wide ephemeral port range and reuse of TIME_WAIT ports for new
// outgoing connections, so thousands of new connections per second over
// several rounds do not run out of ports. Network sysctls are per
// namespace: the host's stay as they are. The harness sets them from
// the node: a pod's /proc/sys is read-only (on a real cluster they would
// be the pod's securityContext.sysctls).
func tune(ctx context.Context, p podRef) error {
	h, err := podNetns(ctx, p)
	if err != nil {
		return fmt.Errorf("tuning %s/%s: %w", p.ns, p.name, err)
	}
	defer h.Close()
	if err := h.Do(func() error {
		return errors.Join(
			os.WriteFile("/proc/sys/net/ipv4/tcp_tw_reuse", []byte("1"), 0o644),
			os.WriteFile("/proc/sys/net/ipv4/ip_local_port_range", []byte("1024 65000"), 0o644))
	}); err != nil {
		return fmt.Errorf("tuning %s/%s: %w", p.ns, p.name, err)
	}
	return nil
}

// checkCapture waits until the enrolled pods are captured, and checks
// that the plain ones are not.
func checkCapture(ctx context.Context) error {
	for _, p := range []podRef{{meshNS, "client", ""}, {meshNS, "server", "fortio"}} {
		if err := eventually(ctx, 30*time.Second, p.ns+"/"+p.name+" captured", func(ctx context.Context) error {
			ok, err := captured(ctx, p)
			if err == nil && !ok {
				err = errors.New("no CAIRN_ rules")
			}
			return err
		}); err != nil {
			return err
		}
	}
	for _, p := range []podRef{{plainNS, "client", ""}, {plainNS, "server", "fortio"}} {
		ok, err := captured(ctx, p)
		if err != nil {
			return err
		}
		if ok {
			return fmt.Errorf("%s/%s, not enrolled, is captured", p.ns, p.name)
		}
	}
	return nil
}
