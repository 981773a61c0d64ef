// Package cpconn is the one gRPC connection a proxy keeps to istiod-lite,
// shared by its CA client (internal/identity) and its xDS client
// (internal/xdsclient): one TLS setup that verifies istiod-lite against the
// trust bundle as it is at each handshake, the proxy's token sent once per
// call, keepalive, one reconnection back-off, and one reaction to a change
// of the trust bundle.
//
// The connection is lazy: Dial does not connect, the first call does, and
// gRPC reconnects after every failure with the configured back-off. When
// the trust bundle changes (a CA root rotation: istiod-lite may now serve
// a certificate from the new root), Run cuts gRPC's back-off short, and
// the clients, which watch Changed, retry at once.
package cpconn

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"

	"github.com/cairnmesh/cairn/internal/pki"
)

// Defaults of Config.
const (
	// DefaultAddress is istiod-lite's gRPC port (CA and xDS) through its
	// Service in the default install.
	DefaultAddress = "istiod.cairn-system.svc:15012"
	// DefaultServerName is the name istiod-lite's serving certificate is
	// issued for, istiod.<namespace>.svc, whatever address is dialled.
	DefaultServerName = "istiod.cairn-system.svc"
	// DefaultBackoffBase is the first wait before dialling again after a
	// failed connection attempt.
	DefaultBackoffBase = 500 * time.Millisecond
	// DefaultBackoffMax bounds the wait between connection attempts.
	DefaultBackoffMax = 30 * time.Second
	// MinConnectTimeout bounds one connection attempt (gRPC's default).
	MinConnectTimeout = 20 * time.Second
)

// DefaultKeepalive pings istiod-lite every 30 s (it allows 15 s), even
// without a call in flight, so that a dead connection is replaced in
// seconds, not after TCP's minutes.
var DefaultKeepalive = keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second, PermitWithoutStream: true}

// Roots is the trust bundle istiod-lite's certificate must chain to
// (identity.Bundle satisfies it).
type Roots interface {
	// Pool returns the current roots; it is called at every handshake.
	Pool() *x509.CertPool
	// Changed returns a channel that is closed at the next change of the
	// roots.
	Changed() <-chan struct{}
}

// Config configures a Conn. Dial reads it once.
type Config struct {
	// Address is istiod-lite's gRPC target, in grpc.NewClient syntax;
	// DefaultAddress if empty.
	Address string
	// ServerName is the name istiod-lite's certificate must carry;
	// DefaultServerName if empty.
	ServerName string
	// Roots verify istiod-lite's certificate at every handshake, so that a
	// CA root rotation needs no restart. Required unless Insecure.
	Roots Roots
	// TokenFile is the proxy's projected service account token (audience
	// istio-ca), sent as "authorization: Bearer <token>" on every call and
	// every stream, read from its file each time since the kubelet rotates
	// it. Optional when GetClientCertificate is set.
	TokenFile string
	// GetClientCertificate supplies a mesh client certificate at each
	// handshake (tls.Config.GetClientCertificate). Optional.
	GetClientCertificate func(*tls.CertificateRequestInfo) (*tls.Certificate, error)
	// BackoffBase and BackoffMax bound gRPC's waits between connection
	// attempts; DefaultBackoffBase and DefaultBackoffMax if zero.
	BackoffBase, BackoffMax time.Duration
	// Keepalive is the client's keepalive policy; DefaultKeepalive if zero.
	Keepalive keepalive.ClientParameters
	// Insecure connects in plaintext without credentials; for tests only.
	// Roots, TokenFile and GetClientCertificate must then be empty.
	Insecure bool
	// DialOptions are appended to the connection's own (a dialer in tests).
	DialOptions []grpc.DialOption
	// Logger receives the connection's logs; discarded if nil.
	Logger *slog.Logger
}

func (c Config) withDefaults() (Config, error) {
	if c.Address == "" {
		c.Address = DefaultAddress
	}
	if c.ServerName == "" {
		c.ServerName = DefaultServerName
	}
	if c.BackoffBase == 0 {
		c.BackoffBase = DefaultBackoffBase
	}
	if c.BackoffMax == 0 {
		c.BackoffMax = DefaultBackoffMax
	}
	if c.Keepalive == (keepalive.ClientParameters{}) {
		c.Keepalive = DefaultKeepalive
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.BackoffBase < 0 || c.BackoffMax < c.BackoffBase {
		return c, fmt.Errorf("back-off base %v and max %v: want 0 < base <= max", c.BackoffBase, c.BackoffMax)
	}
	if c.Insecure {
		if c.Roots != nil || c.TokenFile != "" || c.GetClientCertificate != nil {
			return c, errors.New("an Insecure connection takes no Roots, TokenFile or GetClientCertificate: credentials must not travel in plaintext")
		}
		return c, nil
	}
	if c.Roots == nil {
		return c, errors.New("no Roots to verify the control plane (or set Insecure, in tests)")
	}
	return c, nil
}

// Conn is one gRPC connection to istiod-lite. Create it with Dial, run Run
// while it is in use, and Close it once every client using it returned.
type Conn struct {
	cfg Config
	cc  *grpc.ClientConn
	log *slog.Logger
}

// Dial checks cfg and creates the connection. It does not connect: the
// first call does.
func Dial(cfg Config) (*Conn, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("cpconn: %w", err)
	}
	opts := []grpc.DialOption{
		// gRPC's own reconnection back-off governs when the transport is
		// dialled again, and a call made meanwhile fails at once: these
		// bounds, not gRPC's default of up to two minutes, apply.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: grpcbackoff.Config{
				BaseDelay:  cfg.BackoffBase,
				Multiplier: 2,
				Jitter:     0.2,
				MaxDelay:   cfg.BackoffMax,
			},
			MinConnectTimeout: MinConnectTimeout,
		}),
		grpc.WithKeepaliveParams(cfg.Keepalive),
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
	opts = append(opts, cfg.DialOptions...)
	cc, err := grpc.NewClient(cfg.Address, opts...)
	if err != nil {
		return nil, fmt.Errorf("cpconn: client for %s: %w", cfg.Address, err)
	}
	return &Conn{cfg: cfg, cc: cc, log: cfg.Logger}, nil
}

// ClientConn is the gRPC connection, for generated clients and streams.
func (c *Conn) ClientConn() *grpc.ClientConn { return c.cc }

// Address is the target dialled, for logs.
func (c *Conn) Address() string { return c.cfg.Address }

// Changed returns a channel closed at the next change of the trust bundle
// (nil, never closed, for an Insecure connection): a client waiting to
// retry then retries at once, after Reconnect.
func (c *Conn) Changed() <-chan struct{} {
	if c.cfg.Roots == nil {
		return nil
	}
	return c.cfg.Roots.Changed()
}

// Run cuts gRPC's reconnection back-off short at every change of the trust
// bundle until ctx ends: a connection refused for want of istiod-lite's
// new root is tried again at once, for every client of the connection. It
// returns nil when ctx ends.
func (c *Conn) Run(ctx context.Context) error {
	for changed := c.Changed(); ; {
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
			changed = c.Changed()
			c.log.Info("trust bundle changed: reconnecting to the control plane without back-off", "address", c.cfg.Address)
			c.cc.ResetConnectBackoff()
		}
	}
}

// ResetBackoff makes gRPC dial again at once if it is waiting to.
func (c *Conn) ResetBackoff() { c.cc.ResetConnectBackoff() }

// Reconnect makes gRPC dial again at once, without its back-off, and waits
// (up to MinConnectTimeout, or until ctx ends) for that attempt to end: a
// call made before it would fail at once with the previous attempt's error.
func (c *Conn) Reconnect(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, MinConnectTimeout)
	defer cancel()
	c.cc.ResetConnectBackoff()
	attempted := false
	for {
		s := c.cc.GetState()
		switch s {
		case connectivity.Ready, connectivity.Shutdown:
			return
		case connectivity.Connecting:
			attempted = true
		case connectivity.Idle:
			c.cc.Connect()
		case connectivity.TransientFailure:
			if attempted {
				return
			}
		}
		if !c.cc.WaitForStateChange(ctx, s) {
			return
		}
	}
}

// Close closes the connection; calls in flight fail.
func (c *Conn) Close() error { return c.cc.Close() }

// ReadToken reads a projected service account token, trimmed; an empty
// file is an error. Clients call it before a request to tell a missing
// token apart from the control plane's refusal.
func ReadToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("reading token: %w", err)
	}
	token := strings.TrimSpace(string(b))
	if token == "" {
		return "", fmt.Errorf("token file %s is empty", path)
	}
	return token, nil
}

// tokenFile sends the token in a file as a bearer token, once per call or
// stream: gRPC asks for per-RPC metadata once per call, so each call reads
// the file again and picks up the kubelet's rotation of projected tokens.
type tokenFile struct{ path string }

var _ credentials.PerRPCCredentials = tokenFile{}

// GetRequestMetadata implements credentials.PerRPCCredentials.
func (t tokenFile) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	token, err := ReadToken(t.path)
	if err != nil {
		return nil, err
	}
	return map[string]string{"authorization": "Bearer " + token}, nil
}

// RequireTransportSecurity implements credentials.PerRPCCredentials: a
// token is a credential and never travels in plaintext.
func (tokenFile) RequireTransportSecurity() bool { return true }
