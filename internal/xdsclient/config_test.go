package xdsclient

import (
	"crypto/tls"
	"crypto/x509"
	"strings"
	"testing"

	workloadv1 "github.com/cairnmesh/cairn/apis/workload/v1"
)

func TestNewChecksConfig(t *testing.T) {
	h := HandlerFunc(func(Update) error { return nil })
	good := func() Config {
		return Config{
			TypeURLs:  []string{AddressTypeURL, AuthorizationTypeURL},
			Handler:   h,
			NodeID:    "n~p.ns",
			UserAgent: testUserAgent,
			Registry:  WorkloadRegistry(),
			Roots:     newTestRoots(x509.NewCertPool()),
			TokenFile: "/var/run/secrets/tokens/istio-token",
		}
	}
	if _, err := New(good()); err != nil {
		t.Fatalf("good config: %v", err)
	}
	tests := []struct {
		name   string
		mutate func(*Config)
		want   string
	}{
		{"no types", func(c *Config) { c.TypeURLs = nil }, "no type URLs"},
		{"type twice", func(c *Config) { c.TypeURLs = []string{AddressTypeURL, AddressTypeURL} }, "twice"},
		{"unregistered type", func(c *Config) { c.TypeURLs = []string{"type.googleapis.com/x.Y"} }, "no message type registered"},
		{"no handler", func(c *Config) { c.Handler = nil }, "no Handler"},
		{"no node", func(c *Config) { c.NodeID = "" }, "no NodeID"},
		{"no registry", func(c *Config) { c.Registry = nil }, "no Registry"},
		{"no user agent", func(c *Config) { c.UserAgent = "" }, "no UserAgent"},
		{"max below base", func(c *Config) { c.BackoffBase, c.BackoffMax = 2, 1 }, "back-off"},
		{"no roots", func(c *Config) { c.Roots = nil }, "no Roots"},
		{"no credentials", func(c *Config) { c.TokenFile = "" }, "unauthenticated"},
		{"token in plaintext", func(c *Config) { c.Roots = nil; c.Insecure = true }, "plaintext"},
		{"certificate in plaintext", func(c *Config) {
			c.Roots, c.TokenFile, c.Insecure = nil, "", true
			c.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return nil, nil }
		}, "plaintext"},
	}
	for _, tc := range tests {
		cfg := good()
		tc.mutate(&cfg)
		_, err := New(cfg)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: New: %v, want an error about %q", tc.name, err, tc.want)
		}
	}

	insecure := Config{TypeURLs: []string{AddressTypeURL}, Handler: h, NodeID: "n", UserAgent: testUserAgent, Registry: WorkloadRegistry(), Insecure: true}
	if _, err := New(insecure); err != nil {
		t.Errorf("insecure config: %v", err)
	}
}

func TestDefaultsAndNode(t *testing.T) {
	c, err := New(Config{
		TypeURLs:     []string{AuthorizationTypeURL},
		Handler:      HandlerFunc(func(Update) error { return nil }),
		NodeID:       NodeID("worker-1", "ztunnel-x7k2p", "cairn-system"),
		NodeMetadata: map[string]string{"NODE_NAME": "worker-1"},
		UserAgent:    "cairn-waypoint",
		Registry:     WorkloadRegistry(),
		Insecure:     true,
	})
	if err != nil {
		t.Fatal(err)
	}
	cfg := c.cfg
	if cfg.Address != DefaultAddress || cfg.ServerName != DefaultServerName || cfg.BackoffBase != DefaultBackoffBase ||
		cfg.BackoffMax != DefaultBackoffMax || cfg.StableAfter != DefaultStableAfter {
		t.Errorf("defaults not applied: %+v", cfg)
	}
	if c.node.GetId() != "worker-1~ztunnel-x7k2p.cairn-system" {
		t.Errorf("node id %q", c.node.GetId())
	}
	if got := c.node.GetMetadata().GetFields()["NODE_NAME"]; got.StringValue == nil || got.GetStringValue() != "worker-1" {
		t.Errorf("node metadata %v", c.node.GetMetadata())
	}
	if c.node.GetUserAgentName() != "cairn-waypoint" || c.node.UserAgentVersion == nil {
		t.Errorf("node user agent %q version %v", c.node.GetUserAgentName(), c.node.UserAgentVersion)
	}
}

// TestNodeMustMarshal: protobuf strings are UTF-8, so a node id or metadata
// that is not fails New rather than every stream.
func TestNodeMustMarshal(t *testing.T) {
	for name, cfg := range map[string]Config{
		"id":             {NodeID: "worker-\xff"},
		"metadata key":   {NodeID: "n", NodeMetadata: map[string]string{"\xff": "v"}},
		"metadata value": {NodeID: "n", NodeMetadata: map[string]string{"k": "\xff"}},
	} {
		cfg.TypeURLs, cfg.Handler, cfg.Insecure = []string{AddressTypeURL}, HandlerFunc(func(Update) error { return nil }), true
		cfg.UserAgent, cfg.Registry = testUserAgent, WorkloadRegistry()
		if _, err := New(cfg); err == nil {
			t.Errorf("New accepted a node whose %s is not UTF-8", name)
		}
	}
}

func TestRegistry(t *testing.T) {
	r := WorkloadRegistry()
	if len(r) != 2 {
		t.Fatalf("workload registry has %d types", len(r))
	}
	for url, newMsg := range r {
		if got := TypeURLOf(newMsg()); got != url {
			t.Errorf("registry maps %s to a %s", url, got)
		}
	}
	if TypeURLOf(&workloadv1.Address{}) != AddressTypeURL || TypeURLOf(&workloadv1.Authorization{}) != AuthorizationTypeURL {
		t.Error("type URL constants disagree with the protos")
	}
	a, b := r[AddressTypeURL](), r[AddressTypeURL]()
	if a == b {
		t.Error("the factory returns the same message twice")
	}
}

// testUserAgent is the user agent of the tests' clients.
const testUserAgent = "cairn-test"
