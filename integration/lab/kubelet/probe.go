package kubelet

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// probeKind is readiness, liveness or startup.
type probeKind string

const (
	readinessProbe probeKind = "Readiness"
	livenessProbe  probeKind = "Liveness"
	startupProbe   probeKind = "Startup"
)

// probeTracker turns single probe results into the probe's state with the
// thresholds: successThreshold consecutive successes make it succeed,
// failureThreshold consecutive failures make it fail.
type probeTracker struct {
	success, failure int32 // thresholds
	ok               bool  // current result
	successes        int32
	failures         int32
}

// newProbeTracker starts in the kind's initial state: readiness and
// startup have not succeeded yet, liveness has.
func newProbeTracker(kind probeKind, p *corev1.Probe) *probeTracker {
	t := &probeTracker{success: p.SuccessThreshold, failure: p.FailureThreshold, ok: kind == livenessProbe}
	if t.success <= 0 {
		t.success = 1
	}
	if t.failure <= 0 {
		t.failure = 3
	}
	return t
}

// observe records one result and reports the state and whether it
// changed.
func (t *probeTracker) observe(ok bool) (state, changed bool) {
	if ok {
		t.successes++
		t.failures = 0
		if !t.ok && t.successes >= t.success {
			t.ok = true
			return true, true
		}
	} else {
		t.failures++
		t.successes = 0
		if t.ok && t.failures >= t.failure {
			t.ok = false
			return false, true
		}
		// Readiness and startup start out failed; the first failures
		// don't change that, but they still count.
	}
	return t.ok, false
}

// probeTiming returns a probe's initial delay, period and timeout with
// Kubernetes' defaults.
func probeTiming(p *corev1.Probe) (delay, period, timeout time.Duration) {
	delay = time.Duration(p.InitialDelaySeconds) * time.Second
	period = time.Duration(p.PeriodSeconds) * time.Second
	if period <= 0 {
		period = 10 * time.Second
	}
	timeout = time.Duration(p.TimeoutSeconds) * time.Second
	if timeout <= 0 {
		timeout = time.Second
	}
	return delay, period, timeout
}

// prober runs single probes of one container.
type prober struct {
	podIP     string
	container *corev1.Container
	// exec runs a command in the container and returns its exit code.
	exec func(ctx context.Context, cmd []string, out io.Writer) (int, error)
}

// run runs one probe and returns nil on success, else why it failed.
func (p *prober) run(ctx context.Context, h corev1.ProbeHandler, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	switch {
	case h.Exec != nil:
		var out bytes.Buffer
		code, err := p.exec(ctx, h.Exec.Command, &out)
		if err != nil {
			return err
		}
		if code != 0 {
			return fmt.Errorf("command %q exited with %d: %s", h.Exec.Command, code, strings.TrimSpace(out.String()))
		}
		return nil
	case h.HTTPGet != nil:
		return p.httpGet(ctx, h.HTTPGet)
	case h.TCPSocket != nil:
		port, err := p.port(h.TCPSocket.Port)
		if err != nil {
			return err
		}
		host := h.TCPSocket.Host
		if host == "" {
			host = p.podIP
		}
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", net.JoinHostPort(host, strconv.Itoa(port)))
		if err != nil {
			return err
		}
		return c.Close()
	case h.GRPC != nil:
		addr := net.JoinHostPort(p.podIP, strconv.Itoa(int(h.GRPC.Port)))
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return err
		}
		defer conn.Close()
		req := &healthpb.HealthCheckRequest{}
		if h.GRPC.Service != nil {
			req.Service = *h.GRPC.Service
		}
		resp, err := healthpb.NewHealthClient(conn).Check(ctx, req)
		if err != nil {
			return err
		}
		if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			return fmt.Errorf("gRPC health: %s", resp.GetStatus())
		}
		return nil
	}
	return errors.New("probe has no handler")
}

func (p *prober) httpGet(ctx context.Context, g *corev1.HTTPGetAction) error {
	port, err := p.port(g.Port)
	if err != nil {
		return err
	}
	host := g.Host
	if host == "" {
		host = p.podIP
	}
	scheme := strings.ToLower(string(g.Scheme))
	if scheme == "" {
		scheme = "http"
	}
	u := &url.URL{Scheme: scheme, Host: net.JoinHostPort(host, strconv.Itoa(port))}
	path := g.Path
	if path == "" {
		path = "/"
	}
	if !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	ref, err := url.Parse(path)
	if err != nil {
		return err
	}
	u = u.ResolveReference(ref)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return err
	}
	req.Header.Set("User-Agent", "kube-probe/1.37")
	req.Header.Set("Accept", "*/*")
	for _, h := range g.HTTPHeaders {
		if strings.EqualFold(h.Name, "Host") {
			req.Host = h.Value
			continue
		}
		req.Header.Set(h.Name, h.Value)
	}
	client := &http.Client{
		Transport: &http.Transport{
			TLSClientConfig:   &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // as a kubelet's probes
			DisableKeepAlives: true,
		},
		CheckRedirect: func(r *http.Request, via []*http.Request) error {
			if len(via) >= 10 || r.URL.Hostname() != req.URL.Hostname() {
				return http.ErrUseLastResponse
			}
			return nil
		},
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 10<<10))
	if resp.StatusCode < 200 || resp.StatusCode >= 400 {
		return fmt.Errorf("HTTP probe failed with statuscode: %d", resp.StatusCode)
	}
	return nil
}

// port resolves a probe's port, by number or by the name of a container
// port.
func (p *prober) port(port intstr.IntOrString) (int, error) {
	if port.Type == intstr.Int {
		return port.IntValue(), nil
	}
	for _, cp := range p.container.Ports {
		if cp.Name == port.StrVal {
			return int(cp.ContainerPort), nil
		}
	}
	if n, err := strconv.Atoi(port.StrVal); err == nil {
		return n, nil
	}
	return 0, fmt.Errorf("container %s has no port named %q", p.container.Name, port.StrVal)
}
