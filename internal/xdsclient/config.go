package xdsclient

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"google.golang.org/grpc"

	"github.com/cairnmesh/cairn/internal/cpconn"
)

// Defaults of Config.
const (
	// DefaultAddress is istiod-lite's xDS port, through its Service.
	DefaultAddress = cpconn.DefaultAddress
	// DefaultServerName is the name istiod-lite's serving certificate is
	// issued for, whatever address the client dials.
	DefaultServerName = cpconn.DefaultServerName
	// DefaultBackoffBase is the first wait after a failed attempt.
	DefaultBackoffBase = 500 * time.Millisecond
	// DefaultBackoffMax bounds the wait between attempts.
	DefaultBackoffMax = 30 * time.Second
	// DefaultStableAfter is how long a stream must have lived for the
	// back-off to start over from DefaultBackoffBase when it ends.
	DefaultStableAfter = 30 * time.Second
)

// Roots is the trust bundle the control plane's certificate must chain to
// (ztunnel's is identity.Bundle).
type Roots = cpconn.Roots

// Config configures a Client. New reads it once.
type Config struct {
	// Conn is the connection to the control plane, shared with the CA
	// client; the caller runs and closes it. When it is set, Address,
	// Roots, ServerName, TokenFile, GetClientCertificate, Insecure and
	// DialOptions must be empty: the connection has them. When it is nil,
	// the client makes its own connection from those fields.
	Conn *cpconn.Conn

	// Address is the control plane's gRPC target, in grpc.NewClient syntax.
	// Empty means DefaultAddress.
	Address string
	// TypeURLs are the types subscribed to (wildcard), in this order.
	// Required; each must be in Registry.
	TypeURLs []string
	// Registry decodes the resources of each type. Required: the caller
	// names its own types (ztunnel: WorkloadRegistry), so that no proxy
	// links message types it does not use.
	Registry Registry
	// Handler receives every response. Required.
	Handler Handler

	// UserAgent is the Node's user_agent_name, naming the kind of client
	// ("cairn-ztunnel", "cairn-waypoint"). Required.
	UserAgent string
	// NodeID identifies this client in the control plane's logs and debug
	// pages; see NodeID for the form ztunnel uses. Required.
	NodeID string
	// NodeMetadata is sent as the Node's metadata, for the same purpose.
	NodeMetadata map[string]string

	// Roots verify the control plane's serving certificate: the mesh's
	// trust bundle (ConfigMap cairn-root-cert, key root-cert.pem), read at
	// every handshake, so that a CA root rotation needs no restart.
	// Required unless Insecure.
	Roots Roots
	// ServerName is the name the serving certificate must carry. Empty
	// means DefaultServerName.
	ServerName string
	// TokenFile is a projected ServiceAccount token (audience istio-ca),
	// sent as "authorization: Bearer <token>". It is read again for every
	// new stream, since the kubelet rotates it.
	TokenFile string
	// GetClientCertificate supplies a mesh client certificate, as
	// tls.Config.GetClientCertificate; it is called on every handshake, so
	// it can return a renewed certificate. The control plane needs the token,
	// the certificate, or both.
	GetClientCertificate func(*tls.CertificateRequestInfo) (*tls.Certificate, error)
	// Insecure connects in plaintext without credentials; for tests only.
	// Roots, TokenFile and GetClientCertificate must then be empty.
	Insecure bool

	// BackoffBase and BackoffMax bound the waits between stream attempts
	// (and, for a connection of the client's own, gRPC's between connection
	// attempts); zero means DefaultBackoffBase and DefaultBackoffMax.
	BackoffBase, BackoffMax time.Duration
	// StableAfter is how long a stream must have lived for the back-off to
	// start over when it ends. Zero means DefaultStableAfter.
	StableAfter time.Duration

	// Observer is told about connections, ACKs and NACKs. Nil ignores them.
	Observer Observer
	// Logger receives the client's logs. Nil discards them.
	Logger *slog.Logger
	// DialOptions are appended to the client's own, for instance a
	// keepalive policy, or a dialer in tests.
	DialOptions []grpc.DialOption
}

// withDefaults fills the zero fields that have defaults and checks the
// rest.
func (c Config) withDefaults() (Config, error) {
	if c.Conn != nil && (c.Address != "" || c.ServerName != "" || c.Roots != nil || c.TokenFile != "" ||
		c.GetClientCertificate != nil || c.Insecure || len(c.DialOptions) > 0) {
		return c, errors.New("a client given a Conn takes no Address, ServerName, Roots, TokenFile, GetClientCertificate, Insecure or DialOptions: the connection has them")
	}
	if c.Conn == nil && c.Address == "" {
		c.Address = DefaultAddress
	}
	if c.Conn == nil && c.ServerName == "" {
		c.ServerName = DefaultServerName
	}
	if c.BackoffBase == 0 {
		c.BackoffBase = DefaultBackoffBase
	}
	if c.BackoffMax == 0 {
		c.BackoffMax = DefaultBackoffMax
	}
	if c.StableAfter == 0 {
		c.StableAfter = DefaultStableAfter
	}
	if c.Observer == nil {
		c.Observer = NopObserver{}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}

	switch {
	case len(c.TypeURLs) == 0:
		return c, errors.New("no type URLs to subscribe to")
	case c.Handler == nil:
		return c, errors.New("no Handler")
	case c.Registry == nil:
		return c, errors.New("no Registry")
	case c.UserAgent == "":
		return c, errors.New("no UserAgent")
	case c.NodeID == "":
		return c, errors.New("no NodeID")
	case c.BackoffBase < 0 || c.BackoffMax < c.BackoffBase:
		return c, fmt.Errorf("back-off base %v and max %v: want 0 < base <= max", c.BackoffBase, c.BackoffMax)
	case c.StableAfter < 0:
		return c, fmt.Errorf("negative StableAfter %v", c.StableAfter)
	}
	seen := make(map[string]bool, len(c.TypeURLs))
	for _, url := range c.TypeURLs {
		if seen[url] {
			return c, fmt.Errorf("type URL %s listed twice", url)
		}
		seen[url] = true
		if _, err := c.Registry.decoder(url); err != nil {
			return c, err
		}
	}

	if c.Conn != nil {
		return c, nil
	}
	if c.Insecure {
		if c.Roots != nil || c.TokenFile != "" || c.GetClientCertificate != nil {
			return c, errors.New("an Insecure client takes no Roots, TokenFile or GetClientCertificate: credentials must not travel in plaintext")
		}
		return c, nil
	}
	if c.Roots == nil {
		return c, errors.New("no Roots to verify the control plane (or set Insecure, in tests)")
	}
	if c.TokenFile == "" && c.GetClientCertificate == nil {
		return c, errors.New("no TokenFile and no GetClientCertificate: the control plane refuses unauthenticated clients")
	}
	return c, nil
}
