package xdsclient

import "github.com/cairnmesh/cairn/internal/cpconn"

// NodeID is the node id ztunnel sends:
// "<node-name>~<pod-name>.<pod-namespace>", for example
// "worker-1~ztunnel-x7k2p.cairn-system". The node comes first because that is
// what an operator searches the control plane's logs for; the pod tells
// apart the old and new ztunnel of a node during a rolling update.
func NodeID(nodeName, podName, podNamespace string) string {
	return nodeName + "~" + podName + "." + podNamespace
}

// connConfig is the connection a client without a Conn makes for itself
// (cfg already checked by withDefaults).
func connConfig(cfg Config) cpconn.Config {
	return cpconn.Config{
		Address: cfg.Address, ServerName: cfg.ServerName, Roots: cfg.Roots, TokenFile: cfg.TokenFile,
		GetClientCertificate: cfg.GetClientCertificate, Insecure: cfg.Insecure,
		BackoffBase: cfg.BackoffBase, BackoffMax: cfg.BackoffMax,
		DialOptions: cfg.DialOptions, Logger: cfg.Logger,
	}
}
