package xdsclient

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/cairnmesh/cairn/internal/pki"
)

// NodeID is the node id ztunnel sends:
// "<node-name>~<pod-name>.<pod-namespace>", for example
// "worker-1~ztunnel-x7k2p.cairn-system". The node comes first because that is
// what an operator searches the control plane's logs for; the pod tells
// apart the old and new ztunnel of a node during a rolling update.
func NodeID(nodeName, podName, podNamespace string) string {
	return nodeName + "~" + podName + "." + podNamespace
}

// tokenFile sends the token in a file as a bearer token. gRPC asks for
// per-RPC metadata once per stream, so each new stream reads the file again
// and picks up the kubelet's rotation of projected tokens.
type tokenFile struct{ path string }

var _ credentials.PerRPCCredentials = tokenFile{}

// GetRequestMetadata implements credentials.PerRPCCredentials.
func (t tokenFile) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	b, err := os.ReadFile(t.path)
	if err != nil {
		return nil, fmt.Errorf("reading token: %w", err)
	}
	token := strings.TrimSpace(string(b))
	if token == "" {
		return nil, fmt.Errorf("token file %s is empty", t.path)
	}
	return map[string]string{"authorization": "Bearer " + token}, nil
}

// RequireTransportSecurity implements credentials.PerRPCCredentials: a
// token is a credential and never travels in plaintext.
func (tokenFile) RequireTransportSecurity() bool { return true }

// minConnectTimeout bounds one connection attempt (gRPC's default).
const minConnectTimeout = 20 * time.Second

// dialOptions are the gRPC options of cfg (already checked by withDefaults).
func dialOptions(cfg Config) []grpc.DialOption {
	opts := []grpc.DialOption{
		// gRPC's own reconnection back-off governs when the transport is
		// dialled again, and a stream opened meanwhile fails at once. Giving
		// it the client's bounds keeps the configured back-off the one that
		// applies, instead of gRPC's default of up to two minutes.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: grpcbackoff.Config{
				BaseDelay:  cfg.BackoffBase,
				Multiplier: 2,
				Jitter:     0.2,
				MaxDelay:   cfg.BackoffMax,
			},
			MinConnectTimeout: minConnectTimeout,
		}),
	}
	if cfg.Insecure {
		opts = append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))
	} else {
		tc := pki.ServerClientConfig(cfg.ServerName, cfg.Roots.Pool)
		tc.GetClientCertificate = cfg.GetClientCertificate
		opts = append(opts, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
		if cfg.TokenFile != "" {
			opts = append(opts, grpc.WithPerRPCCredentials(tokenFile{path: cfg.TokenFile}))
		}
	}
	return append(opts, cfg.DialOptions...)
}
