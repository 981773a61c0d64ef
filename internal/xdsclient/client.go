package xdsclient

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	xdsv1 "github.com/cairnmesh/cairn/apis/xdsclient/v1"
	"github.com/cairnmesh/cairn/internal/cpconn"
	"github.com/cairnmesh/cairn/internal/retry"
	"github.com/cairnmesh/cairn/internal/version"
)

// Client keeps a Handler current with the control plane. Create it with
// New, start it with Run, and wait for Synced before serving traffic.
type Client struct {
	cfg     Config
	log     *slog.Logger
	obs     Observer
	handler Handler
	node    *xdsv1.Node

	// The state below belongs to Run's goroutine.
	address string // of the connection, for logs
	types   map[string]*typeState
	order   []*typeState // subscription order
	pending int          // types whose first response has not been applied

	synced  chan struct{}
	started atomic.Bool
}

// typeState is what the client holds of one type.
type typeState struct {
	url    string
	label  string // the URL without its prefix, for logs
	newMsg func() proto.Message
	// versions maps the name of every resource the handler accepted to
	// its version: the client's initial_resource_versions on reconnect.
	versions map[string]string
	applied  bool // a response was applied since New
}

// New checks cfg and builds a Client. It does not connect: Run does.
func New(cfg Config) (*Client, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("xdsclient: %w", err)
	}
	c := &Client{
		cfg:     cfg,
		log:     cfg.Logger,
		obs:     cfg.Observer,
		handler: cfg.Handler,
		types:   make(map[string]*typeState, len(cfg.TypeURLs)),
		pending: len(cfg.TypeURLs),
		synced:  make(chan struct{}),
	}
	c.node = &xdsv1.Node{
		Id:               cfg.NodeID,
		UserAgentName:    cfg.UserAgent,
		UserAgentVersion: proto.String(version.Version()),
	}
	if len(cfg.NodeMetadata) > 0 {
		fields := make(map[string]*xdsv1.MetadataValue, len(cfg.NodeMetadata))
		for k, v := range cfg.NodeMetadata {
			fields[k] = &xdsv1.MetadataValue{StringValue: proto.String(v)}
		}
		c.node.Metadata = &xdsv1.Metadata{Fields: fields}
	}
	// Protobuf strings must be valid UTF-8. Marshaling the node once here
	// turns a bad id or metadata into an error of New, instead of a failure
	// of every stream Run would open.
	if _, err := proto.Marshal(c.node); err != nil {
		return nil, fmt.Errorf("xdsclient: node: %w", err)
	}
	for _, url := range cfg.TypeURLs {
		newMsg, _ := cfg.Registry.decoder(url) // checked by withDefaults
		t := &typeState{
			url:      url,
			label:    strings.TrimPrefix(url, "type.googleapis.com/"),
			newMsg:   newMsg,
			versions: make(map[string]string),
		}
		c.types[url] = t
		c.order = append(c.order, t)
	}
	return c, nil
}

// Synced is closed once the first response of every subscribed type has
// been applied: the handler then holds the complete state the control plane
// had, and ztunnel may report ready. It stays closed across reconnects.
func (c *Client) Synced() <-chan struct{} { return c.synced }

// Run connects to the control plane and keeps the handler current until ctx
// ends, reconnecting after every failure. It returns nil once ctx ends, with
// every goroutine it started ended; it returns an error only if it cannot
// start at all. Run may be called once.
func (c *Client) Run(ctx context.Context) error {
	if !c.started.CompareAndSwap(false, true) {
		return errors.New("xdsclient: Run called twice")
	}
	conn := c.cfg.Conn
	if conn == nil {
		var err error
		if conn, err = cpconn.Dial(connConfig(c.cfg)); err != nil {
			return fmt.Errorf("xdsclient: %w", err)
		}
		defer conn.Close()
	}
	c.address = conn.Address()

	bo := &retry.Backoff{Base: c.cfg.BackoffBase, Max: c.cfg.BackoffMax}
	for {
		// Taken before the attempt, so that a change of the roots during
		// it also cuts the wait after it short.
		changed := conn.Changed()
		lived, err := c.stream(ctx, conn.ClientConn())
		if ctx.Err() != nil {
			c.log.Info("xDS client stopped")
			return nil
		}
		if lived >= c.cfg.StableAfter {
			bo.Reset()
		}
		delay := bo.Next()
		c.log.Warn("xDS stream failed, retrying", "address", c.address, "err", err,
			"connected_for", lived.Round(time.Millisecond), "failures", bo.Failures(), "retry_in", delay.Round(time.Millisecond))
		c.obs.Retrying(bo.Failures(), delay, err)
		switch sleep(ctx, delay, changed) {
		case stopped:
			c.log.Info("xDS client stopped")
			return nil
		case rootsChanged:
			// The failure may have been istiod-lite's certificate from a
			// root that was not trusted yet: try again now, and let gRPC
			// dial at once too.
			c.log.Info("trust bundle changed: reconnecting to the control plane now", "address", c.address)
			conn.Reconnect(ctx)
		}
	}
}

type wakeReason int

const (
	slept wakeReason = iota
	stopped
	rootsChanged
)

// sleep waits for d, or less: until ctx ends or changed is closed.
func sleep(ctx context.Context, d time.Duration, changed <-chan struct{}) wakeReason {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return stopped
	case <-changed:
		return rootsChanged
	case <-t.C:
		return slept
	}
}
