package kubeletapi

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/client-go/rest"
)

// ---- test PKI ----

type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

func (ca *testCA) pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

var serial atomic.Int64

// issue returns PEM cert and key for a leaf with the given name and usage.
func (ca *testCA) issue(t *testing.T, cn string, usage x509.ExtKeyUsage, ips ...net.IP) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial.Add(1) + 1),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
		IPAddresses:  ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
}

// ---- fake runtime ----

// fakeRuntime runs a few scripted "commands" and keeps logs in memory.
// Containers are "namespace/pod/container" keys.
type fakeRuntime struct {
	active atomic.Int32 // Runtime calls in progress

	mu         sync.Mutex
	containers map[string]*fakeLog
	logOpts    LogOptions // of the last ContainerLogs call
	execStarts chan string
}

type fakeLog struct {
	lines   []string
	changed chan struct{} // closed and replaced on every append
}

func newFakeRuntime(containers ...string) *fakeRuntime {
	rt := &fakeRuntime{containers: map[string]*fakeLog{}, execStarts: make(chan string, 16)}
	for _, c := range containers {
		rt.containers[c] = &fakeLog{changed: make(chan struct{})}
	}
	return rt
}

func (rt *fakeRuntime) appendLog(key, line string) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	l := rt.containers[key]
	l.lines = append(l.lines, line)
	close(l.changed)
	l.changed = make(chan struct{})
}

func (rt *fakeRuntime) lastLogOptions() LogOptions {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	return rt.logOpts
}

func (rt *fakeRuntime) lookup(namespace, pod, container string) (*fakeLog, error) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if container == "" {
		prefix := namespace + "/" + pod + "/"
		for k := range rt.containers {
			if strings.HasPrefix(k, prefix) {
				return nil, nil
			}
		}
		return nil, fmt.Errorf("pod %s/%s: %w", namespace, pod, ErrNotFound)
	}
	l, ok := rt.containers[namespace+"/"+pod+"/"+container]
	if !ok {
		return nil, fmt.Errorf("container %s/%s/%s: %w", namespace, pod, container, ErrNotFound)
	}
	return l, nil
}

func (rt *fakeRuntime) ContainerLogs(ctx context.Context, namespace, pod, container string, opts LogOptions, w io.Writer) error {
	rt.active.Add(1)
	defer rt.active.Add(-1)
	l, err := rt.lookup(namespace, pod, container)
	if err != nil {
		return err
	}
	rt.mu.Lock()
	rt.logOpts = opts
	rt.mu.Unlock()
	sent := 0
	for {
		rt.mu.Lock()
		lines, changed := l.lines[sent:], l.changed
		if sent == 0 && opts.TailLines != nil && int(*opts.TailLines) < len(lines) {
			sent = len(lines) - int(*opts.TailLines)
			lines = lines[sent:]
		}
		sent += len(lines)
		rt.mu.Unlock()
		for _, line := range lines {
			if _, err := io.WriteString(w, line+"\n"); err != nil {
				return err
			}
		}
		if !opts.Follow {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Exec understands:
//
//	echo ARGS...   ARGS to stdout
//	warn ARGS...   ARGS to stderr
//	cat            stdin to stdout until EOF
//	exit N         exit with code N
//	streams        which of stdin, stdout, stderr are nil, and tty
//	resize         echo each terminal size as WxH until stdin ends
//	sleep          block until ctx is done
func (rt *fakeRuntime) Exec(ctx context.Context, namespace, pod, container string, cmd []string,
	stdin io.Reader, stdout, stderr io.WriteCloser, tty bool, resize <-chan TerminalSize,
) error {
	rt.active.Add(1)
	defer rt.active.Add(-1)
	if _, err := rt.lookup(namespace, pod, container); err != nil {
		return err
	}
	select {
	case rt.execStarts <- cmd[0]:
	default:
	}
	switch cmd[0] {
	case "echo":
		_, err := fmt.Fprintln(stdout, strings.Join(cmd[1:], " "))
		return err
	case "warn":
		_, err := fmt.Fprintln(stderr, strings.Join(cmd[1:], " "))
		return err
	case "cat":
		_, err := io.Copy(stdout, stdin)
		return err
	case "exit":
		code, err := strconv.Atoi(cmd[1])
		if err != nil {
			return err
		}
		return &ExitError{Code: code}
	case "streams":
		_, err := fmt.Fprintf(stdout, "stdin=%t stdout=%t stderr=%t tty=%t\n", stdin != nil, stdout != nil, stderr != nil, tty)
		return err
	case "resize":
		eof := make(chan struct{})
		var wg sync.WaitGroup
		defer wg.Wait()
		wg.Go(func() {
			io.Copy(io.Discard, stdin) //nolint:errcheck
			close(eof)
		})
		for {
			select {
			case size, ok := <-resize:
				if !ok {
					resize = nil
					continue
				}
				if _, err := fmt.Fprintf(stdout, "%dx%d\n", size.Width, size.Height); err != nil {
					return err
				}
			case <-eof:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	case "sleep":
		<-ctx.Done()
		return ctx.Err()
	}
	return fmt.Errorf("fake: unknown command %q", cmd[0])
}

// PortForward echoes on port 8080 and refuses every other port.
func (rt *fakeRuntime) PortForward(ctx context.Context, namespace, pod string, port int32, stream io.ReadWriteCloser) error {
	rt.active.Add(1)
	defer rt.active.Add(-1)
	if _, err := rt.lookup(namespace, pod, ""); err != nil {
		return err
	}
	if port != 8080 {
		return fmt.Errorf("dial tcp 127.0.0.1:%d: connection refused", port)
	}
	done := make(chan error, 1)
	go func() {
		_, err := io.Copy(stream, stream)
		stream.Close()
		done <- err
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		stream.Close()
		<-done
		return ctx.Err()
	}
}

// finderRuntime is a fakeRuntime that also implements Finder.
type finderRuntime struct{ *fakeRuntime }

func (rt finderRuntime) Find(_ context.Context, namespace, pod, container string) error {
	_, err := rt.lookup(namespace, pod, container)
	return err
}

var (
	_ Runtime = (*fakeRuntime)(nil)
	_ Finder  = finderRuntime{}
)

// ---- server under test ----

type testEnv struct {
	srv        *Server
	rt         *fakeRuntime
	ca         *testCA
	base       string // https://127.0.0.1:port
	clientCert []byte
	clientKey  []byte
	stop       func() error        // stops Serve and returns its error
	before     map[string]struct{} // goroutines running before the server started
}

// startServer serves a kubelet API for rt on 127.0.0.1 with fresh
// certificates and stops it when the test ends.
func startServer(t *testing.T, rt Runtime, mutate func(*Config)) *testEnv {
	t.Helper()
	ca := newTestCA(t, "lab-ca")
	certPEM, keyPEM := ca.issue(t, "node-1", x509.ExtKeyUsageServerAuth, net.IPv4(127, 0, 0, 1))
	clientCert, clientKey := ca.issue(t, "kube-apiserver-kubelet-client", x509.ExtKeyUsageClientAuth)
	cfg := Config{
		Runtime:   rt,
		Addr:      "127.0.0.1:0",
		CertPEM:   certPEM,
		KeyPEM:    keyPEM,
		ClientCAs: ca.pool(),
		Logger:    slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if mutate != nil {
		mutate(&cfg)
	}
	before := goroutineIDs()
	srv, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	var once sync.Once
	var serveErr error
	stop := func() error {
		once.Do(func() {
			cancel()
			select {
			case serveErr = <-done:
			case <-time.After(10 * time.Second):
				serveErr = errors.New("Serve did not return within 10s of its context ending")
			}
		})
		return serveErr
	}
	env := &testEnv{srv: srv, ca: ca, base: "https://" + srv.Addr().String(),
		clientCert: clientCert, clientKey: clientKey, stop: stop, before: before}
	switch r := rt.(type) {
	case *fakeRuntime:
		env.rt = r
	case finderRuntime:
		env.rt = r.fakeRuntime
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("Serve: %v", err)
		}
		env.checkStopped(t)
	})
	return env
}

// checkStopped fails the test if a Runtime call or a goroutine of this
// package or of cri-streaming outlives Serve.
func (e *testEnv) checkStopped(t *testing.T) {
	t.Helper()
	var leaked []string
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		leaked = leaked[:0]
		if e.rt != nil && e.rt.active.Load() != 0 {
			leaked = append(leaked, fmt.Sprintf("%d Runtime calls still running", e.rt.active.Load()))
		}
		leaked = append(leaked, serverGoroutines(e.before)...)
		if len(leaked) == 0 {
			return
		}
	}
	t.Errorf("left running after Serve returned:\n%s", strings.Join(leaked, "\n\n"))
}

// serverGoroutines lists the goroutines not in before that run code of
// this package (test code excluded) or of cri-streaming.
func serverGoroutines(before map[string]struct{}) []string {
	var found []string
	for id, g := range goroutines() {
		if _, old := before[id]; old {
			continue
		}
		ours := strings.Contains(g, "kubeletapi.(*Server)") || strings.Contains(g, "kubeletapi.(*executor)") ||
			strings.Contains(g, "kubeletapi.(*forwarder)") || strings.Contains(g, "kubeletapi.relayResize") ||
			strings.Contains(g, "kubeletapi.decodeResize") || strings.Contains(g, "kubeletapi.awaitReply") ||
			strings.Contains(g, "k8s.io/cri-streaming/")
		if ours && !strings.Contains(g, "kubeletapi.startServer") && !strings.Contains(g, "testing.tRunner") {
			found = append(found, g)
		}
	}
	return found
}

// goroutines maps the ids of the running goroutines to their stacks.
func goroutines() map[string]string {
	buf := make([]byte, 4<<20)
	buf = buf[:runtime.Stack(buf, true)]
	all := map[string]string{}
	for _, g := range strings.Split(string(buf), "\n\n") {
		if rest, ok := strings.CutPrefix(g, "goroutine "); ok {
			id, _, _ := strings.Cut(rest, " ")
			all[id] = g
		}
	}
	return all
}

func goroutineIDs() map[string]struct{} {
	ids := map[string]struct{}{}
	for id := range goroutines() {
		ids[id] = struct{}{}
	}
	return ids
}

// tlsConfig is a client TLS config trusting the lab CA, with the API
// server's client certificate.
func (e *testEnv) tlsConfig(t *testing.T) *tls.Config {
	t.Helper()
	cert, err := tls.X509KeyPair(e.clientCert, e.clientKey)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{RootCAs: e.ca.pool(), Certificates: []tls.Certificate{cert}}
}

func (e *testEnv) httpClient(t *testing.T) *http.Client {
	tr := &http.Transport{TLSClientConfig: e.tlsConfig(t)}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// restConfig is what client-go's streaming clients need to reach the server.
func (e *testEnv) restConfig() *rest.Config {
	return &rest.Config{
		Host: e.base,
		TLSClientConfig: rest.TLSClientConfig{
			CAData:   e.ca.pem,
			CertData: e.clientCert,
			KeyData:  e.clientKey,
		},
	}
}

// testWriter sends server logs to t.Log, until the test ends.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

func get(t *testing.T, c *http.Client, url string) (int, string) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: reading body: %v", url, err)
	}
	return resp.StatusCode, string(body)
}

// ---- tests ----

func TestHealthz(t *testing.T) {
	env := startServer(t, newFakeRuntime(), nil)
	code, body := get(t, env.httpClient(t), env.base+"/healthz")
	if code != http.StatusOK || body != "ok" {
		t.Fatalf("GET /healthz = %d %q, want 200 ok", code, body)
	}
}

func TestServeOnListener(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	env := startServer(t, newFakeRuntime(), func(c *Config) { c.Addr, c.Listener = "", ln })
	if env.srv.Addr().String() != ln.Addr().String() {
		t.Fatalf("Addr() = %v, want the listener's %v", env.srv.Addr(), ln.Addr())
	}
	if code, body := get(t, env.httpClient(t), env.base+"/healthz"); code != http.StatusOK || body != "ok" {
		t.Fatalf("GET /healthz = %d %q", code, body)
	}
}

func TestClientCertificateRequired(t *testing.T) {
	env := startServer(t, newFakeRuntime("ns/pod/app"), nil)
	other := newTestCA(t, "other-ca")
	otherCert, otherKey := other.issue(t, "kube-apiserver-kubelet-client", x509.ExtKeyUsageClientAuth)
	serverAsClient, serverAsClientKey := env.ca.issue(t, "node-2", x509.ExtKeyUsageServerAuth)

	tests := []struct {
		name   string
		certs  func() []tls.Certificate
		maxVer uint16 // also the client's minimum, when set
	}{
		{name: "no certificate", certs: func() []tls.Certificate { return nil }},
		{name: "certificate of another CA", certs: func() []tls.Certificate {
			c, err := tls.X509KeyPair(otherCert, otherKey)
			if err != nil {
				t.Fatal(err)
			}
			return []tls.Certificate{c}
		}},
		{name: "lab CA certificate without client usage", certs: func() []tls.Certificate {
			c, err := tls.X509KeyPair(serverAsClient, serverAsClientKey)
			if err != nil {
				t.Fatal(err)
			}
			return []tls.Certificate{c}
		}},
		{name: "TLS 1.1", maxVer: tls.VersionTLS11, certs: func() []tls.Certificate {
			return env.tlsConfig(t).Certificates
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tr := &http.Transport{TLSClientConfig: &tls.Config{
				RootCAs: env.ca.pool(), Certificates: tc.certs(), MinVersion: tc.maxVer, MaxVersion: tc.maxVer,
			}}
			defer tr.CloseIdleConnections()
			c := &http.Client{Transport: tr}
			for _, path := range []string{"/healthz", "/containerLogs/ns/pod/app"} {
				resp, err := c.Get(env.base + path)
				if err == nil {
					resp.Body.Close()
					t.Fatalf("GET %s succeeded with status %d; want the TLS handshake refused", path, resp.StatusCode)
				}
			}
		})
	}
}

func TestRoutes(t *testing.T) {
	env := startServer(t, finderRuntime{newFakeRuntime("ns/pod/app")}, nil)
	c := env.httpClient(t)
	tests := []struct {
		method, path string
		want         int
		wantBody     string
	}{
		{"GET", "/attach/ns/pod/app?output=1", http.StatusNotImplemented, "attach is not supported"},
		{"POST", "/attach/ns/pod/uid-1/app?output=1", http.StatusNotImplemented, "attach is not supported"},
		{"GET", "/exec/ns/pod/app?output=1", http.StatusBadRequest, "command is required"},
		{"GET", "/exec/ns/pod/app?command=echo", http.StatusBadRequest, "at least 1 of stdin, stdout, stderr"},
		{"GET", "/exec/ns/nope/app?command=echo&output=1", http.StatusNotFound, "pod ns/nope"},
		{"POST", "/exec/ns/pod/uid-1/nope?command=echo&output=1", http.StatusNotFound, `container "nope"`},
		{"GET", "/portForward/ns/nope", http.StatusNotFound, "pod ns/nope"},
		// Not an upgrade: ServePortForward refuses it for lack of a protocol.
		{"GET", "/portForward/ns/pod/uid-1", http.StatusBadRequest, "unable to upgrade"},
		{"PUT", "/exec/ns/pod/app?command=echo&output=1", http.StatusMethodNotAllowed, ""},
		{"GET", "/pods", http.StatusNotFound, ""},
		{"GET", "/runningpods/", http.StatusNotFound, ""},
	}
	for _, tc := range tests {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			req, err := http.NewRequest(tc.method, env.base+tc.path, nil)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.want || !strings.Contains(string(body), tc.wantBody) {
				t.Fatalf("%s %s = %d %q, want %d containing %q", tc.method, tc.path, resp.StatusCode, body, tc.want, tc.wantBody)
			}
		})
	}
}

func TestNewServerValidates(t *testing.T) {
	ca := newTestCA(t, "ca")
	certPEM, keyPEM := ca.issue(t, "node", x509.ExtKeyUsageServerAuth, net.IPv4(127, 0, 0, 1))
	good := Config{Runtime: newFakeRuntime(), Addr: "127.0.0.1:0", CertPEM: certPEM, KeyPEM: keyPEM, ClientCAs: ca.pool()}
	tests := []struct {
		name   string
		mutate func(*Config)
		want   string
	}{
		{"no runtime", func(c *Config) { c.Runtime = nil }, "Runtime is required"},
		{"no client CAs", func(c *Config) { c.ClientCAs = nil }, "ClientCAs is required"},
		{"no certificate", func(c *Config) { c.CertPEM, c.KeyPEM = nil, nil }, "serving certificate is required"},
		{"both certificates", func(c *Config) { c.Certificate = &tls.Certificate{} }, "not both"},
		{"bad key", func(c *Config) { c.KeyPEM = bytes.Clone(certPEM) }, "loading serving certificate"},
		{"bad address", func(c *Config) { c.Addr = "127.0.0.1:99999" }, "listening on"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := good
			tc.mutate(&cfg)
			s, err := NewServer(cfg)
			if err == nil {
				s.Close()
				t.Fatalf("NewServer succeeded; want an error containing %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("NewServer: %v; want an error containing %q", err, tc.want)
			}
		})
	}
	s, err := NewServer(good)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

// Serve stops promptly when nothing is open, and after ShutdownTimeout
// when sessions are: their Runtime calls are cancelled and their
// connections closed.
func TestServeShutdown(t *testing.T) {
	t.Run("idle", func(t *testing.T) {
		env := startServer(t, newFakeRuntime(), nil)
		get(t, env.httpClient(t), env.base+"/healthz")
		start := time.Now()
		if err := env.stop(); err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); d > time.Second {
			t.Fatalf("idle shutdown took %v", d)
		}
	})
	t.Run("open sessions", func(t *testing.T) {
		rt := newFakeRuntime("ns/pod/app")
		// With a Finder, a followed log answers its headers at once.
		env := startServer(t, finderRuntime{rt}, func(c *Config) { c.ShutdownTimeout = 300 * time.Millisecond })

		// A followed log and an exec that never ends on their own.
		resp, err := env.httpClient(t).Get(env.base + "/containerLogs/ns/pod/app?follow=true")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		execDone := make(chan error, 1)
		go func() {
			execDone <- spdyExec(t, env, "/exec/ns/pod/app?command=sleep&output=1", streamOpts{})
		}()
		if got := <-rt.execStarts; got != "sleep" {
			t.Fatalf("exec started %q", got)
		}
		// A port-forward session: cri-streaming serves it until its
		// connection closes, whatever the contexts say.
		u, err := url.Parse(env.base + "/portForward/ns/pod")
		if err != nil {
			t.Fatal(err)
		}
		local := forward(t, spdyDialer(t, env, u), 8080)
		if got, err := roundTrip(t, local, "before shutdown"); err != nil || got != "before shutdown" {
			t.Fatalf("echo = %q, %v", got, err)
		}

		start := time.Now()
		if err := env.stop(); err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); d < 250*time.Millisecond || d > 3*time.Second {
			t.Fatalf("shutdown took %v; want about ShutdownTimeout (300ms)", d)
		}
		select {
		case err := <-execDone:
			if err == nil || !strings.Contains(err.Error(), "kubelet API is shutting down") {
				t.Fatalf("exec of a sleeping command ended with %v at shutdown, want an error saying why", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("exec client still running after shutdown")
		}
		if _, err := io.ReadAll(resp.Body); err != nil {
			t.Logf("log stream ended with %v", err)
		}
	})
}
