package identity

import (
	"errors"
	"log/slog"
	"time"

	"google.golang.org/grpc"

	"github.com/cairnmesh/cairn/internal/cpconn"
)

// Defaults of Config.
const (
	// DefaultAddress is istiod-lite's gRPC port in the default install.
	DefaultAddress = cpconn.DefaultAddress
	// DefaultServerName is the name istiod-lite's certificate carries in
	// the default install: istiod.<namespace>.svc.
	DefaultServerName = cpconn.DefaultServerName
	// DefaultLinger is how long a certificate outlives the last pod of its
	// identity on the node. A pod that is replaced (a crash loop, a
	// rollout with surge 0, a Job run again) then finds its certificate
	// still there instead of waiting for the CA.
	DefaultLinger = time.Minute
	// DefaultRequestTimeout bounds one CreateCertificate call, which
	// includes istiod's TokenReview.
	DefaultRequestTimeout = 10 * time.Second
	// DefaultBackoffBase is the first wait after a failure. Short, because
	// the commonest failure is benign and brief: istiod has not yet seen
	// the new pod that node authorization looks for.
	DefaultBackoffBase = 500 * time.Millisecond
	// DefaultBackoffMax bounds the wait between attempts.
	DefaultBackoffMax = time.Minute
	// DefaultMaxInFlight bounds the concurrent CreateCertificate calls of
	// one node.
	DefaultMaxInFlight = 8
	// DefaultRotationSpread is the window over which a node's identities
	// renew once the CA has switched to a new root.
	DefaultRotationSpread = 30 * time.Second
)

// Config configures a Manager.
type Config struct {
	// Conn is the connection to istiod-lite, shared with the xDS client;
	// the caller runs and closes it, and it must send the token of
	// TokenFile (cpconn.Config.TokenFile). When it is set, Address,
	// ServerName and DialOptions must be empty. When it is nil, Run makes
	// a connection of its own from those fields, TokenFile and Bundle.
	Conn *cpconn.Conn
	// Address is the CA's host:port; DefaultAddress if empty.
	Address string
	// ServerName is the DNS name the CA's certificate must carry,
	// istiod.<namespace>.svc; DefaultServerName if empty.
	ServerName string
	// TokenFile holds the proxy's own projected service account token with
	// audience istio-ca. It is read before every request, so that a missing
	// token is reported as such (ReasonToken); the connection sends it.
	// Required.
	TokenFile string
	// Bundle verifies the CA's certificate and every chain the CA returns.
	// Required; the caller runs it.
	Bundle *Bundle
	// TTL is the lifetime asked for; zero leaves it to the CA (24 h by
	// default). The CA may issue a shorter one.
	TTL time.Duration
	// Linger is how long an identity is kept after its last Release;
	// DefaultLinger if zero.
	Linger time.Duration
	// RequestTimeout bounds one request; DefaultRequestTimeout if zero.
	RequestTimeout time.Duration
	// BackoffBase and BackoffMax bound the waits between failed attempts;
	// DefaultBackoffBase and DefaultBackoffMax if zero.
	BackoffBase, BackoffMax time.Duration
	// MaxInFlight bounds concurrent requests; DefaultMaxInFlight if zero.
	MaxInFlight int
	// RotationSpread is the window, after the trust bundle shows that the
	// CA signs under a new root (it lists that root first), over which the
	// certificates issued under the old root are renewed, each at a random
	// moment; DefaultRotationSpread if zero.
	RotationSpread time.Duration
	// Logger gets issuance and failures; slog.Default() if nil. The caller
	// adds attributes such as the component.
	Logger *slog.Logger
	// Observer gets metrics events; NopObserver if nil.
	Observer Observer
	// DialOptions are added to the CA connection's own (without Conn),
	// after the transport credentials (a custom dialer, for example).
	DialOptions []grpc.DialOption
}

func (c Config) withDefaults() (Config, error) {
	if c.TokenFile == "" {
		return c, errors.New("TokenFile is required")
	}
	if c.Bundle == nil {
		return c, errors.New("bundle is required")
	}
	if c.Conn != nil && (c.Address != "" || c.ServerName != "" || len(c.DialOptions) > 0) {
		return c, errors.New("a Manager given a Conn takes no Address, ServerName or DialOptions: the connection has them")
	}
	if c.TTL < 0 || c.Linger < 0 || c.RequestTimeout < 0 || c.BackoffBase < 0 || c.BackoffMax < 0 || c.MaxInFlight < 0 || c.RotationSpread < 0 {
		return c, errors.New("durations and MaxInFlight must not be negative")
	}
	if c.Conn == nil && c.Address == "" {
		c.Address = DefaultAddress
	}
	if c.Conn == nil && c.ServerName == "" {
		c.ServerName = DefaultServerName
	}
	if c.Linger == 0 {
		c.Linger = DefaultLinger
	}
	if c.RequestTimeout == 0 {
		c.RequestTimeout = DefaultRequestTimeout
	}
	if c.BackoffBase == 0 {
		c.BackoffBase = DefaultBackoffBase
	}
	if c.BackoffMax == 0 {
		c.BackoffMax = DefaultBackoffMax
	}
	if c.BackoffBase > c.BackoffMax {
		return c, errors.New("BackoffBase exceeds BackoffMax")
	}
	if c.MaxInFlight == 0 {
		c.MaxInFlight = DefaultMaxInFlight
	}
	if c.RotationSpread == 0 {
		c.RotationSpread = DefaultRotationSpread
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Observer == nil {
		c.Observer = NopObserver{}
	}
	return c, nil
}
