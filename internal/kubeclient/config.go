// Package kubeclient is a small Kubernetes API client for what ztunnel
// needs: its configuration (in-cluster or from a kubeconfig file), GET of
// single objects, and the list and watch requests of package kubewatch.
// Responses are JSON decoded into minimal structs (objects.go) that hold
// only the fields Cairn reads, which keeps both the binary and the heap
// small compared with client-go and k8s.io/api.
package kubeclient

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
)

// Config says where the API server is and how to authenticate to it.
type Config struct {
	// Server is the API server's base URL, e.g. https://10.96.0.1:443.
	Server string
	// CAData is the PEM bundle that verifies the server's certificate;
	// empty means the system roots.
	CAData []byte
	// ServerName, when set, is checked against the server's certificate
	// instead of the host in Server.
	ServerName string
	// Insecure skips verifying the server's certificate (kubeconfig's
	// insecure-skip-tls-verify), for throwaway clusters only.
	Insecure bool
	// CertData and KeyData are a PEM client certificate and its key.
	CertData, KeyData []byte
	// Token is a bearer token. TokenFile, if set, is a file holding one
	// that is re-read as it rotates (projected ServiceAccount tokens).
	Token     string
	TokenFile string
}

// In-cluster locations, as the kubelet provides them to every pod.
const (
	serviceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount"
	hostEnv           = "KUBERNETES_SERVICE_HOST"
	portEnv           = "KUBERNETES_SERVICE_PORT"
)

// ErrNotInCluster is returned (wrapped) by InCluster outside a pod.
var ErrNotInCluster = errors.New("not running in a Kubernetes pod: " + hostEnv + " and " + portEnv + " are not set")

// InCluster returns the configuration of a process in a pod: the
// "kubernetes" Service from the environment, the pod's ServiceAccount token
// (re-read as the kubelet rotates it) and the cluster's CA.
func InCluster() (Config, error) { return inCluster(serviceAccountDir) }

func inCluster(dir string) (Config, error) {
	host, port := os.Getenv(hostEnv), os.Getenv(portEnv)
	if host == "" || port == "" {
		return Config{}, ErrNotInCluster
	}
	tokenFile := filepath.Join(dir, "token")
	if _, err := os.Stat(tokenFile); err != nil {
		return Config{}, fmt.Errorf("in-cluster configuration: %w", err)
	}
	ca, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		return Config{}, fmt.Errorf("in-cluster configuration: %w", err)
	}
	return Config{Server: "https://" + net.JoinHostPort(host, port), CAData: ca, TokenFile: tokenFile}, nil
}

// Load returns the configuration in the kubeconfig file at path, or the
// in-cluster one when path is empty.
func Load(path string) (Config, error) {
	if path == "" {
		return InCluster()
	}
	return LoadKubeconfig(path)
}

// tlsConfig builds the client side of TLS from cfg.
func (cfg Config) tlsConfig() (*tls.Config, error) {
	u, err := url.Parse(cfg.Server)
	if err != nil {
		return nil, fmt.Errorf("API server URL %q: %w", cfg.Server, err)
	}
	if u.Scheme != "https" && u.Scheme != "http" || u.Host == "" {
		return nil, fmt.Errorf("API server URL %q: want https://host[:port]", cfg.Server)
	}
	// InsecureSkipVerify only when the kubeconfig asks for it.
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: cfg.ServerName, InsecureSkipVerify: cfg.Insecure}
	if len(cfg.CAData) > 0 {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(cfg.CAData) {
			return nil, errors.New("the API server's CA bundle holds no PEM certificate")
		}
		tc.RootCAs = pool
	}
	switch {
	case len(cfg.CertData) > 0 && len(cfg.KeyData) > 0:
		cert, err := tls.X509KeyPair(cfg.CertData, cfg.KeyData)
		if err != nil {
			return nil, fmt.Errorf("client certificate: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	case len(cfg.CertData) > 0 || len(cfg.KeyData) > 0:
		return nil, errors.New("client certificate: a certificate needs its key and a key its certificate")
	}
	return tc, nil
}
