package kubeclient

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"
)

// Resource names a kind of object by its API path.
type Resource struct {
	// APIPath is /api/v1 for the core group, /apis/<group>/<version>
	// otherwise.
	APIPath    string
	Name       string // plural, lower case: pods
	Namespaced bool
}

// The resources Cairn's clients use.
var (
	Pods       = Resource{APIPath: "/api/v1", Name: "pods", Namespaced: true}
	Namespaces = Resource{APIPath: "/api/v1", Name: "namespaces"}
	Nodes      = Resource{APIPath: "/api/v1", Name: "nodes"}
	DaemonSets = Resource{APIPath: "/apis/apps/v1", Name: "daemonsets", Namespaced: true}
	Events     = Resource{APIPath: "/api/v1", Name: "events", Namespaced: true}
)

// Path is the URL path of the resource's collection in namespace (all
// namespaces when empty), or of the object name when name is set. Names
// need no escaping: Kubernetes allows only DNS labels and subdomains.
func (r Resource) Path(namespace, name string) string {
	p := r.APIPath
	if r.Namespaced && namespace != "" {
		p += "/namespaces/" + namespace
	}
	p += "/" + r.Name
	if name != "" {
		p += "/" + name
	}
	return p
}

// Client sends requests to one API server. It is safe for concurrent use.
type Client struct {
	base      *url.URL
	http      *http.Client
	token     *tokenSource
	userAgent string
}

// Option changes a Client.
type Option func(*Client)

// WithUserAgent names the client in the API server's logs and audit.
func WithUserAgent(ua string) Option { return func(c *Client) { c.userAgent = ua } }

// New returns a client for cfg.
func New(cfg Config, opts ...Option) (*Client, error) {
	base, err := url.Parse(cfg.Server)
	if err != nil {
		return nil, fmt.Errorf("API server URL %q: %w", cfg.Server, err)
	}
	tc, err := cfg.tlsConfig()
	if err != nil {
		return nil, err
	}
	tr := &http.Transport{
		Proxy:               http.ProxyFromEnvironment, // as client-go: $HTTPS_PROXY and $NO_PROXY apply
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:     tc,
		TLSHandshakeTimeout: 10 * time.Second,
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     90 * time.Second,
		// One HTTP/2 connection carries every watch and request. A
		// watch may see nothing for minutes, so the connection is pinged
		// when quiet: a dead one (the API server's node gone, a NAT entry
		// dropped) is found in under a minute instead of when TCP gives up.
		ForceAttemptHTTP2: true,
		HTTP2:             &http.HTTP2Config{SendPingTimeout: 30 * time.Second, PingTimeout: 15 * time.Second},
	}
	c := &Client{base: base, http: &http.Client{Transport: tr}, userAgent: "cairn"}
	switch {
	case cfg.Token != "":
		c.token = &tokenSource{static: cfg.Token}
	case cfg.TokenFile != "":
		c.token = &tokenSource{path: cfg.TokenFile, maxAge: tokenMaxAge}
		if _, err := c.token.get(); err != nil {
			return nil, err
		}
	}
	for _, o := range opts {
		o(c)
	}
	return c, nil
}

// Close releases idle connections.
func (c *Client) Close() { c.http.CloseIdleConnections() }

// Get reads one object, e.g. Get(ctx, Nodes, "", "node-a", &node). A
// missing object is an error for which IsNotFound is true.
func (c *Client) Get(ctx context.Context, r Resource, namespace, name string, out any) error {
	if name == "" {
		return errors.New("kubeclient: Get needs a name")
	}
	return c.getJSON(ctx, r.Path(namespace, name), nil, out)
}

// Create creates obj (JSON-encodable, with its metadata) in namespace,
// e.g. Create(ctx, Events, "shop", &event). The API server's answer is
// not decoded: callers that create do not read it back.
func (c *Client) Create(ctx context.Context, r Resource, namespace string, obj any) error {
	body, err := json.Marshal(obj)
	if err != nil {
		return fmt.Errorf("kubeclient: encoding %s: %w", r.Name, err)
	}
	resp, err := c.send(ctx, http.MethodPost, r.Path(namespace, ""), nil, body)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	return resp.Body.Close()
}

// do sends a GET of path with query; see send.
func (c *Client) do(ctx context.Context, path string, query url.Values) (*http.Response, error) {
	return c.send(ctx, http.MethodGet, path, query, nil)
}

// send sends a request of path with query (and body, JSON, if not nil)
// and returns a 2xx response; any other answer is turned into a
// *StatusError. A 401 makes the next request read the token file again,
// in case the token rotated under us.
func (c *Client) send(ctx context.Context, method, path string, query url.Values, body []byte) (*http.Response, error) {
	u := *c.base
	u.Path = c.base.Path + path
	u.RawQuery = query.Encode()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), rd)
	if err != nil {
		return nil, fmt.Errorf("kubeclient: %w", err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", c.userAgent)
	if c.token != nil {
		tok, err := c.token.get()
		if err != nil {
			return nil, err
		}
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return resp, nil
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusUnauthorized && c.token != nil {
		c.token.invalidate()
	}
	// The body is a metav1.Status when the API server wrote it; a proxy's
	// page or an empty body leaves only the HTTP code.
	var st status
	answer, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if json.Unmarshal(answer, &st) != nil || st.Kind != "Status" {
		st = status{}
	}
	return nil, fmt.Errorf("%s %s: %w", method, path, st.err(resp.StatusCode))
}
