package lab

import (
	"fmt"
	"net"
	"os"
	"path/filepath"

	"k8s.io/client-go/rest"

	"github.com/cairnmesh/cairn/internal/kubeserver"
)

// Users the lab's components authenticate as. The API server binds them
// to roles: system:kube-proxy to system:node-proxier by default, and the
// group system:nodes to system:node through the lab's RBAC manifest.
const (
	kubeProxyUser = "system:kube-proxy"
	nodesGroup    = "system:nodes"
)

// nodeFiles are the paths of node i's credentials and configuration.
type nodeFiles struct {
	Dir                 string // the node's directory (outside its root)
	CACert              string // the cluster CA: verifies the API server and the API server's client certificate
	ServingCert         string // the kubelet's serving certificate for its node IP
	ServingKey          string
	KubeletKubeconfig   string // user system:node:<name>, group system:nodes
	KubeProxyKubeconfig string // user system:kube-proxy
	KubeProxyConfig     string // KubeProxyConfiguration
}

func (c Config) nodeFiles(i int) nodeFiles {
	d := c.NodeDir(i)
	pki := filepath.Join(d, "pki")
	return nodeFiles{
		Dir:                 d,
		CACert:              filepath.Join(pki, "ca.crt"),
		ServingCert:         filepath.Join(pki, "kubelet.crt"),
		ServingKey:          filepath.Join(pki, "kubelet.key"),
		KubeletKubeconfig:   filepath.Join(d, "kubelet.kubeconfig"),
		KubeProxyKubeconfig: filepath.Join(d, "kube-proxy.kubeconfig"),
		KubeProxyConfig:     filepath.Join(d, "kube-proxy.yaml"),
	}
}

// writeNodeCredentials issues node i's certificates from the cluster CA
// and writes them with kubeconfigs for the kubelet and kube-proxy.
func writeNodeCredentials(c Config, srv *kubeserver.Server, i int) error {
	f := c.nodeFiles(i)
	if err := os.MkdirAll(filepath.Dir(f.CACert), 0o755); err != nil {
		return fmt.Errorf("node %s credentials: %w", NodeName(i), err)
	}
	ca := srv.CA()
	serving, err := ca.IssueServing([]net.IP{net.IP(c.NodeAddr(i).Addr().AsSlice())}, []string{NodeName(i)})
	if err != nil {
		return fmt.Errorf("node %s serving certificate: %w", NodeName(i), err)
	}
	for _, w := range []struct {
		path string
		data []byte
		mode os.FileMode
	}{
		{f.CACert, ca.CertPEM, 0o644},
		{f.ServingCert, serving.CertPEM, 0o644},
		{f.ServingKey, serving.KeyPEM, 0o600},
	} {
		if err := os.WriteFile(w.path, w.data, w.mode); err != nil {
			return fmt.Errorf("node %s credentials: %w", NodeName(i), err)
		}
	}
	kubelet, err := srv.ClientConfig("system:node:"+NodeName(i), nodesGroup)
	if err != nil {
		return fmt.Errorf("node %s client certificate: %w", NodeName(i), err)
	}
	if err := kubeserver.WriteKubeconfig(f.KubeletKubeconfig, withHost(kubelet, c), NodeName(i)); err != nil {
		return err
	}
	proxy, err := srv.ClientConfig(kubeProxyUser)
	if err != nil {
		return fmt.Errorf("kube-proxy client certificate: %w", err)
	}
	return kubeserver.WriteKubeconfig(f.KubeProxyKubeconfig, withHost(proxy, c), "kube-proxy")
}

// withHost points cfg at the API server's address on the lab bridge, which
// the nodes' namespaces reach.
func withHost(cfg *rest.Config, c Config) *rest.Config {
	cfg.Host = c.APIServerURL()
	return cfg
}
