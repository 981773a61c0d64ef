package lab

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// Paths inside a node's root, as the node's processes and pods see them
// (relative to NodeRoot).
const (
	CNIConfDir   = "etc/cni/net.d"
	CNIBinDir    = "opt/cni/bin"
	NetnsDirRel  = "var/run/netns"
	CNIDataDir   = "var/lib/cni"
	PodLogDir    = "var/log/pods"
	CNIConfName  = "10-lab.conflist"
	CNINetwork   = "lab"
	CNIBridge    = "cni0"
	SystemCNIBin = "/usr/lib/cni" // Debian's containernetworking-plugins
)

// CNIPluginDirs are where node i's kubelet looks for CNI plugins: the
// node's own /opt/cni/bin, where a DaemonSet (cairn-cni) may install
// more, then Debian's.
func (c Config) CNIPluginDirs(i int) []string {
	return []string{filepath.Join(c.NodeRoot(i), CNIBinDir), SystemCNIBin}
}

// makeNodeRoot creates node i's filesystem and writes its CNI
// configuration.
func makeNodeRoot(c Config, i int) error {
	root := c.NodeRoot(i)
	for _, d := range []string{CNIConfDir, CNIBinDir, NetnsDirRel, CNIDataDir, PodLogDir} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return fmt.Errorf("node %s filesystem: %w", NodeName(i), err)
		}
	}
	data, err := cniConflist(c, i)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(root, CNIConfDir, CNIConfName), data, 0o644); err != nil {
		return fmt.Errorf("node %s CNI configuration: %w", NodeName(i), err)
	}
	return nil
}

// cniConflist is the node's first CNI network: a bridge with the pod CIDR
// and the node side as gateway. No masquerading: pods keep their addresses
// everywhere in the lab, and nothing routes out of it. Hairpin mode lets a
// pod reach itself through a Service. The loopback interface of each pod
// is the runtime's business (the lab kubelet), as with containerd.
func cniConflist(c Config, i int) ([]byte, error) {
	gw := c.PodCIDR(i).Addr().Next()
	conf := map[string]any{
		"cniVersion": "1.0.0",
		"name":       CNINetwork,
		"plugins": []any{
			map[string]any{
				"type":        "bridge",
				"bridge":      CNIBridge,
				"isGateway":   true,
				"ipMasq":      false,
				"hairpinMode": true,
				"mtu":         1500,
				"ipam": map[string]any{
					"type":    "host-local",
					"ranges":  [][]map[string]string{{{"subnet": c.PodCIDR(i).String(), "gateway": gw.String()}}},
					"routes":  []map[string]string{{"dst": "0.0.0.0/0"}},
					"dataDir": filepath.Join(c.NodeRoot(i), CNIDataDir, "networks"),
				},
			},
		},
	}
	data, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("CNI configuration: %w", err)
	}
	return append(data, '\n'), nil
}

// kubeProxyConfig is node i's KubeProxyConfiguration: iptables mode inside
// the node's namespace, and nothing that would touch state shared with the
// root namespace (conntrack table size, global sysctls) or the node's
// loopback (route_localnet for localhost NodePorts).
func kubeProxyConfig(c Config, i int) []byte {
	ip := c.NodeAddr(i).Addr().String()
	return fmt.Appendf(nil, `apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: %s
hostnameOverride: %s
bindAddress: %s
healthzBindAddress: %s:10256
metricsBindAddress: 127.0.0.1:10249
mode: iptables
clusterCIDR: %s
detectLocalMode: ClusterCIDR
nodePortAddresses: ["%s/32"]
oomScoreAdj: 0
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
  udpTimeout: 0s
  udpStreamTimeout: 0s
iptables:
  localhostNodePorts: false
  masqueradeAll: false
  syncPeriod: 30s
  minSyncPeriod: 100ms
`, c.nodeFiles(i).KubeProxyKubeconfig, NodeName(i), ip, ip, ClusterCIDR, ip)
}

// kubeletArgs are the arguments of `lab kubelet` for node i (flags of
// integration/lab/kubelet.Command).
func kubeletArgs(c Config, i int) []string {
	f := c.nodeFiles(i)
	args := []string{
		"kubelet",
		"--node-name=" + NodeName(i),
		"--node-ip=" + c.NodeAddr(i).Addr().String(),
		"--pod-cidr=" + c.PodCIDR(i).String(),
		"--node-root=" + c.NodeRoot(i),
		"--kubeconfig=" + f.KubeletKubeconfig,
		"--cni-conf-dir=" + filepath.Join(c.NodeRoot(i), CNIConfDir),
		"--cni-bin-dir=" + strings.Join(c.CNIPluginDirs(i), ","),
		"--cluster-dns=" + ClusterDNSIP.String(),
		"--cluster-domain=" + ClusterDomain,
		"--bin-dir=" + c.BinDir(),
		"--port=" + strconv.Itoa(KubeletPort),
		"--tls-cert-file=" + f.ServingCert,
		"--tls-private-key-file=" + f.ServingKey,
		"--client-ca-file=" + f.CACert,
		"--cgroup-parent=" + c.CgroupParent(i),
		"--cgroup=" + c.KubeletCgroup(i),
	}
	for _, image := range slices.Sorted(maps.Keys(c.Images)) {
		args = append(args, "--image="+image+"="+c.Images[image])
	}
	return args
}

// KubeletPort is the kubelet API's port on each node IP.
const KubeletPort = 10250
