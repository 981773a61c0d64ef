// Package kube connects cairnctl to a cluster: the kubeconfig flags every
// command shares (--kubeconfig, --context, -n/--namespace,
// --request-timeout), resolved with client-go's standard loading rules
// (--kubeconfig, else $KUBECONFIG, else ~/.kube/config, else the pod's
// in-cluster configuration), and the clients the commands use.
package kube

import (
	"fmt"
	"time"

	"github.com/spf13/pflag"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/cairnmesh/cairn/internal/version"
)

// DefaultRequestTimeout bounds each request to the API server unless
// --request-timeout says otherwise.
const DefaultRequestTimeout = 30 * time.Second

// Flags are the connection flags shared by cairnctl's commands.
type Flags struct {
	Kubeconfig     string
	Context        string
	Namespace      string
	RequestTimeout time.Duration
}

// AddFlags registers the flags on fs (cairnctl's persistent flags).
func (f *Flags) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&f.Kubeconfig, "kubeconfig", "",
		"kubeconfig file (default: $KUBECONFIG, else ~/.kube/config, else the in-cluster configuration)")
	fs.StringVar(&f.Context, "context", "", "kubeconfig context to use (default: its current context)")
	fs.StringVarP(&f.Namespace, "namespace", "n", "", "namespace (default: the context's namespace, else \"default\")")
	fs.DurationVar(&f.RequestTimeout, "request-timeout", DefaultRequestTimeout,
		"time limit of each request to the API server (0: none)")
}

// Clients are what a command talks to the cluster with.
type Clients struct {
	Kube    kubernetes.Interface
	Gateway gatewayclient.Interface
	// Namespace is -n, else the kubeconfig context's namespace, else
	// "default".
	Namespace string
	// NamespaceSet reports whether Namespace came from -n or the context
	// rather than the "default" fallback.
	NamespaceSet bool
}

// Clients loads the configuration the flags name and makes the clients.
func (f *Flags) Clients() (*Clients, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = f.Kubeconfig
	overrides := &clientcmd.ConfigOverrides{CurrentContext: f.Context}
	overrides.Context.Namespace = f.Namespace
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, overrides)
	cfg, err := cc.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("loading the Kubernetes client configuration (set --kubeconfig or $KUBECONFIG): %w", err)
	}
	ns, set, err := cc.Namespace()
	if err != nil {
		return nil, fmt.Errorf("reading the namespace of the kubeconfig context: %w", err)
	}
	return NewClients(cfg, ns, set || f.Namespace != "", f.RequestTimeout)
}

// NewClients makes the clients for cfg; timeout bounds each request.
func NewClients(cfg *rest.Config, namespace string, namespaceSet bool, timeout time.Duration) (*Clients, error) {
	cfg = rest.CopyConfig(cfg)
	cfg.UserAgent = "cairnctl/" + version.Version()
	cfg.Timeout = timeout
	kc, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("creating the Kubernetes client: %w", err)
	}
	gc, err := gatewayclient.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("creating the Gateway API client: %w", err)
	}
	return &Clients{Kube: kc, Gateway: gc, Namespace: namespace, NamespaceSet: namespaceSet}, nil
}
