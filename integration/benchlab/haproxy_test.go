package benchlab

import (
	"context"
	"fmt"
	"net"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/cairnmesh/cairn/integration/lab"
)

// The reference pair: haproxy-1 on node 1 takes plain TCP and carries it
// in mutual TLS 1.3 to haproxy-2 on node 2, which hands it to the server
// in plain TCP. One port per destination port, as haproxy routes TCP by
// listener (ztunnel carries every port over 15008).
const (
	haproxyHTTPPort     = 15001 // haproxy-1, plain, to the server's fortio
	haproxyIperfPort    = 15201 // haproxy-1, plain, to the server's iperf3
	haproxyTLSHTTPPort  = 15443 // haproxy-2, mutual TLS
	haproxyTLSIperfPort = 15444 // haproxy-2, mutual TLS
)

// haproxyGlobal is what both configurations share: TCP mode, haproxy's
// defaults otherwise (one thread per CPU, TLS session reuse towards the
// server, no logging).
const haproxyGlobal = `global
    maxconn 8000
defaults
    mode tcp
    timeout connect 5s
    timeout client 1m
    timeout server 1m
`

// haproxyClientConfig is haproxy-1's configuration: plain TCP in, TLS 1.3
// out with the client certificate, the peer's certificate verified
// against the CA and its name.
func haproxyClientConfig(peer string) string {
	tls := "ssl verify required ca-file /certs/ca.pem crt /certs/client.pem verifyhost " + haproxyServerName + " ssl-min-ver TLSv1.3"
	return haproxyGlobal + fmt.Sprintf(`frontend http
    bind :%d
    default_backend http
backend http
    server haproxy-2 %s %s
frontend iperf
    bind :%d
    default_backend iperf
backend iperf
    server haproxy-2 %s %s
`, haproxyHTTPPort, net.JoinHostPort(peer, strconv.Itoa(haproxyTLSHTTPPort)), tls,
		haproxyIperfPort, net.JoinHostPort(peer, strconv.Itoa(haproxyTLSIperfPort)), tls)
}

// haproxyServerConfig is haproxy-2's configuration: TLS 1.3 in, a client
// certificate from the CA required, plain TCP out to the server pod.
func haproxyServerConfig(server string) string {
	tls := "ssl crt /certs/server.pem ca-file /certs/ca.pem verify required ssl-min-ver TLSv1.3"
	return haproxyGlobal + fmt.Sprintf(`frontend http
    bind :%d %s
    default_backend http
backend http
    server app %s
frontend iperf
    bind :%d %s
    default_backend iperf
backend iperf
    server app %s
`, haproxyTLSHTTPPort, tls, net.JoinHostPort(server, strconv.Itoa(httpPort)),
		haproxyTLSIperfPort, tls, net.JoinHostPort(server, strconv.Itoa(iperfPort)))
}

// haproxyPod is a pod on node i running Debian's haproxy (image haproxy,
// mapped by the lab) with its configuration and certificates as volumes.
func haproxyPod(name string, node int) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: %[1]s, labels: {app: %[1]s}}
spec:
  nodeName: %[2]s
  terminationGracePeriodSeconds: 1
  containers:
  - name: haproxy
    image: %[3]s
    args: [-db, -f, /config/haproxy.cfg]
    volumeMounts:
    - {name: config, mountPath: /config}
    - {name: certs, mountPath: /certs}
  volumes:
  - name: config
    configMap: {name: %[1]s}
  - name: certs
    secret: {secretName: haproxy-certs}
`, name, lab.NodeName(node), haproxyImage)
}

// deployHaproxy starts the pair in ns, in front of the server at
// serverIP, and returns haproxy-1's and haproxy-2's pods (haproxy-2 first
// comes up, since haproxy-1's configuration names its address).
func deployHaproxy(ctx context.Context, ns, serverIP string) (h1, h2 corev1.Pod, err error) {
	files, err := newTLSFiles()
	if err != nil {
		return h1, h2, err
	}
	if _, err := client.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "haproxy-certs"},
		Data:       map[string][]byte{"ca.pem": files.ca, "server.pem": files.server, "client.pem": files.client},
	}, metav1.CreateOptions{}); err != nil {
		return h1, h2, fmt.Errorf("creating the haproxy certificates: %w", err)
	}
	start := func(name string, node int, config string) (corev1.Pod, error) {
		if _, err := client.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Data:       map[string]string{"haproxy.cfg": config},
		}, metav1.CreateOptions{}); err != nil {
			return corev1.Pod{}, fmt.Errorf("creating %s's configuration: %w", name, err)
		}
		if err := apply(ctx, ns, haproxyPod(name, node)); err != nil {
			return corev1.Pod{}, fmt.Errorf("creating %s: %w", name, err)
		}
		pods, err := waitPods(ctx, ns, "app="+name, 1)
		if err != nil {
			return corev1.Pod{}, err
		}
		return pods[0], nil
	}
	if h2, err = start("haproxy-2", 2, haproxyServerConfig(serverIP)); err != nil {
		return h1, h2, err
	}
	h1, err = start("haproxy-1", 1, haproxyClientConfig(h2.Status.PodIP))
	return h1, h2, err
}
