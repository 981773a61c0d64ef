package kubeserver

import (
	"fmt"
	"os"
	"path/filepath"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Kubeconfig returns a kubeconfig with a single cluster, user and context,
// all named name, that holds cfg's server, CA, client certificate or bearer
// token inline (file references in cfg are kept as file references).
func Kubeconfig(cfg *rest.Config, name string) *clientcmdapi.Config {
	kc := clientcmdapi.NewConfig()
	cluster := clientcmdapi.NewCluster()
	cluster.Server = cfg.Host
	cluster.TLSServerName = cfg.ServerName
	cluster.CertificateAuthority = cfg.CAFile
	cluster.CertificateAuthorityData = cfg.CAData
	cluster.InsecureSkipTLSVerify = cfg.Insecure
	kc.Clusters[name] = cluster

	user := clientcmdapi.NewAuthInfo()
	user.ClientCertificate = cfg.CertFile
	user.ClientCertificateData = cfg.CertData
	user.ClientKey = cfg.KeyFile
	user.ClientKeyData = cfg.KeyData
	user.Token = cfg.BearerToken
	user.TokenFile = cfg.BearerTokenFile
	user.Impersonate = cfg.Impersonate.UserName
	user.ImpersonateUID = cfg.Impersonate.UID
	user.ImpersonateGroups = cfg.Impersonate.Groups
	user.ImpersonateUserExtra = cfg.Impersonate.Extra
	kc.AuthInfos[name] = user

	kctx := clientcmdapi.NewContext()
	kctx.Cluster = name
	kctx.AuthInfo = name
	kc.Contexts[name] = kctx
	kc.CurrentContext = name
	return kc
}

// WriteKubeconfig writes Kubeconfig(cfg, name) to path (mode 0600, parent
// directories created), for kubectl and for the controller-manager and
// scheduler, which only take a kubeconfig file.
func WriteKubeconfig(path string, cfg *rest.Config, name string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("writing kubeconfig: %w", err)
	}
	if err := clientcmd.WriteToFile(*Kubeconfig(cfg, name), path); err != nil {
		return fmt.Errorf("writing kubeconfig %s: %w", path, err)
	}
	// WriteToFile creates the file 0600, but keep it so if it already existed.
	if err := os.Chmod(path, 0o600); err != nil {
		return fmt.Errorf("writing kubeconfig: %w", err)
	}
	return nil
}
