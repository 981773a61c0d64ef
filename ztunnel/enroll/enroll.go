// Package enroll puts one pod in the mesh and takes it out: it is the
// nodeagent.Capturer of a running ztunnel. Capturing a pod means, in this
// order: the capture rules in the pod's network namespace, the pod's
// listeners there (with SO_REUSEPORT, so a new ztunnel can bind them too
// during a rolling update), the pod's identity wanted from the certificate
// manager, and the pod's proxy. Releasing undoes it in reverse: the proxy
// closes the pod's connections at once, then the rules go (see
// ztunnel/capture on why that order).
//
// Stop (ztunnel exiting) closes the proxies but leaves the rules: the
// next ztunnel on the node takes the pods over where they are.
package enroll

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"path/filepath"
	"sync"

	"github.com/cairnmesh/cairn/internal/netns"
	"github.com/cairnmesh/cairn/internal/spiffe"
	"github.com/cairnmesh/cairn/ztunnel/capture"
	"github.com/cairnmesh/cairn/ztunnel/nodeagent"
	"github.com/cairnmesh/cairn/ztunnel/proxy"
)

// Identities is the certificate manager's side of enrolment.
type Identities interface {
	Want(id spiffe.Identity) error
	Release(id spiffe.Identity)
	proxy.Certificates
}

// Config configures a Mesh.
type Config struct {
	Proxy       proxy.Config
	Identities  Identities
	TrustDomain string
	// NetnsDir is where ztunnel sees the node's network namespaces (a
	// hostPath mount of /var/run/netns): paths from cairn-cni are looked up
	// there by base name.
	NetnsDir string
	IPTables capture.IPTables
	// ProbeSources are the addresses the node gives the kubelet's probes
	// (capture.DefaultProbeSources): each pod lets TCP from them through
	// uncaptured, and nothing else from the node.
	ProbeSources []netip.Addr
	// Probes, if set, keeps the node's list of enrolled pods whose probes
	// get a probe source (capture.Probes); without it the kubelet's probes
	// are captured like any other plaintext client.
	Probes ProbeTargets
	Log    *slog.Logger
}

// ProbeTargets is the node's list of pods whose kubelet probes the node
// rewrites to a probe source (capture.Probes).
type ProbeTargets interface {
	Add(ips ...netip.Addr) error
	Del(ips ...netip.Addr) error
}

// Mesh holds the captured pods of the node.
type Mesh struct {
	cfg   Config
	log   *slog.Logger
	conns *proxy.Tracker

	mu   sync.Mutex
	pods map[string]*enrolled // by pod UID
}

type enrolled struct {
	pod   nodeagent.Pod
	ns    *netns.Handle
	id    spiffe.Identity
	proxy *proxy.Proxy
}

var _ nodeagent.Capturer = (*Mesh)(nil)

// New returns an empty Mesh.
func New(cfg Config) *Mesh {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Mesh{cfg: cfg, log: cfg.Log, conns: proxy.NewTracker(), pods: make(map[string]*enrolled)}
}

// Connections is the open connections of every pod.
func (m *Mesh) Connections() *proxy.Tracker { return m.conns }

// netnsPath maps a netns path from cairn-cni (the node's path) to ours.
func (m *Mesh) netnsPath(p string) string {
	if m.cfg.NetnsDir == "" || filepath.Dir(p) == filepath.Clean(m.cfg.NetnsDir) {
		return p
	}
	return filepath.Join(m.cfg.NetnsDir, filepath.Base(p))
}

// Capture implements nodeagent.Capturer.
func (m *Mesh) Capture(ctx context.Context, pod nodeagent.Pod) error {
	m.mu.Lock()
	_, done := m.pods[string(pod.UID)]
	m.mu.Unlock()
	if done {
		return nil
	}
	id, err := spiffe.New(m.cfg.TrustDomain, pod.Namespace, pod.ServiceAccount)
	if err != nil {
		return fmt.Errorf("identity of %s: %w", pod, err)
	}
	h, err := netns.Open(m.netnsPath(pod.Netns))
	if err != nil {
		return fmt.Errorf("pod %s: %w", pod, err)
	}
	ok := false
	defer func() {
		if !ok {
			_ = h.Close()
		}
	}()
	opts := capture.DefaultOptions(pod.IPs...)
	opts.ProbeSources = m.cfg.ProbeSources
	// The pod's first probe must already come from the probe source: the
	// pod lets nothing else from the node through.
	if m.cfg.Probes != nil {
		if err := m.cfg.Probes.Add(pod.IPs...); err != nil {
			m.log.Warn("the node will not give this pod's kubelet probes the probe source: they are captured like any other plaintext",
				"pod", pod.String(), "err", err)
		}
	}
	if err := m.cfg.IPTables.Apply(ctx, h, opts); err != nil {
		if m.cfg.Probes != nil {
			_ = m.cfg.Probes.Del(pod.IPs...)
		}
		if errors.Is(err, capture.ErrLoosePickup) {
			// Apply left no rule: the pod stays out of the mesh, and says
			// so on the pod, until the sysctl can be written.
			return &nodeagent.RefusedError{Reason: "ConntrackLoosePickup", Message: fmt.Sprintf(
				"the capture rules need net.netfilter.nf_conntrack_tcp_loose=0 in the pod, which ztunnel cannot set "+
					"(is the node's /proc/sys/net mounted writable at --sysctl-net-dir?): %v", err)}
		}
		return fmt.Errorf("capture rules for %s: %w", pod, err)
	}
	// The app sees inbound connections come from their clients' addresses
	// once the pod routes its replies to them back to ztunnel; without
	// those routes ztunnel connects from the pod's own address.
	dialFrom := true
	if err := capture.ApplyRoutes(h, opts); err != nil {
		dialFrom = false
		m.log.Warn("no reply routes in the pod: the app will see inbound connections come from its own address", "pod", pod.String(), "err", err)
	}
	if err := migrateRequests(h, m.cfg.IPTables.Sysctls); err != nil {
		m.log.Warn("tcp_migrate_req not set: a rolling update of ztunnel may reset connections to this pod that are being accepted",
			"pod", pod.String(), "err", err)
	}
	ls, err := capture.ListenConfig{ReusePort: true}.Listen(ctx, h)
	if err != nil {
		return fmt.Errorf("listeners in %s: %w", pod, err)
	}
	if err := m.cfg.Identities.Want(id); err != nil {
		_ = ls.Close()
		return fmt.Errorf("certificate for %s: %w", pod, err)
	}
	dialer := &capture.Dialer{Netns: h, Mark: opts.Mark}
	pp := proxy.Pod{
		Namespace: pod.Namespace, Name: pod.Name, IPs: pod.IPs, Identity: id,
		Dial: dialer.DialContext, OriginalDst: capture.OriginalDst,
	}
	if dialFrom {
		pp.DialFrom = dialer.DialFrom
	}
	p, err := proxy.Start(m.cfg.Proxy, pp, proxy.Listeners{Outbound: ls.Outbound, Inbound: ls.Inbound, HBONE: ls.HBONE}, m.conns)
	if err != nil {
		m.cfg.Identities.Release(id)
		_ = ls.Close()
		return err
	}
	ok = true
	m.mu.Lock()
	m.pods[string(pod.UID)] = &enrolled{pod: pod, ns: h, id: id, proxy: p}
	m.mu.Unlock()
	return nil
}

// Release implements nodeagent.Capturer.
func (m *Mesh) Release(ctx context.Context, pod nodeagent.Pod) error {
	m.mu.Lock()
	e := m.pods[string(pod.UID)]
	delete(m.pods, string(pod.UID))
	m.mu.Unlock()
	if e == nil {
		// Not ours (captured by an earlier ztunnel, say): remove the rules
		// if the namespace is still there.
		h, err := netns.Open(m.netnsPath(pod.Netns))
		if errors.Is(err, fs.ErrNotExist) || pod.Netns == "" {
			return nil
		}
		if err != nil {
			return err
		}
		defer h.Close()
		return m.uncapture(ctx, h, pod)
	}
	// Close, not drain: the pod is going away or leaving the mesh, and
	// its redirected connections cannot outlive the rules anyway. Waiting
	// here would also hold up every other pod's capture on the node.
	if err := e.proxy.Close(); err != nil {
		m.log.Warn("closing the pod's proxy", "pod", pod.String(), "err", err)
	}
	m.cfg.Identities.Release(e.id)
	defer e.ns.Close()
	return m.uncapture(ctx, e.ns, pod)
}

// uncapture removes the capture rules from a pod, then the reply routes
// (the rules put the mark that selects them), then the pod from the
// node's probe targets (its probes come from the node's address again).
func (m *Mesh) uncapture(ctx context.Context, h *netns.Handle, pod nodeagent.Pod) error {
	if err := m.cfg.IPTables.Remove(ctx, h); err != nil {
		return fmt.Errorf("removing the capture rules of %s: %w", pod, err)
	}
	if err := capture.RemoveRoutes(h, capture.DefaultOptions(pod.IPs...)); err != nil {
		return fmt.Errorf("removing the reply routes of %s: %w", pod, err)
	}
	if m.cfg.Probes != nil {
		if err := m.cfg.Probes.Del(pod.IPs...); err != nil {
			return fmt.Errorf("removing %s from the node's probe targets: %w", pod, err)
		}
	}
	return nil
}

// Stop closes every pod's proxy, letting connections finish until ctx
// ends, and leaves the capture rules for the next ztunnel.
func (m *Mesh) Stop(ctx context.Context) {
	m.mu.Lock()
	pods := m.pods
	m.pods = make(map[string]*enrolled)
	m.mu.Unlock()
	var wg sync.WaitGroup
	for _, e := range pods {
		wg.Go(func() {
			if err := e.proxy.Shutdown(ctx); err != nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
				m.log.Warn("draining the pod's proxy", "pod", e.pod.String(), "err", err)
			}
			_ = e.ns.Close()
		})
	}
	wg.Wait()
}

// Pods lists the enrolled pods, for /config_dump.
func (m *Mesh) Pods() []PodDump {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]PodDump, 0, len(m.pods))
	for _, e := range m.pods {
		out = append(out, PodDump{Pod: e.pod.String(), UID: string(e.pod.UID), Netns: e.ns.Path(), IPs: e.pod.IPs, Identity: e.id.String()})
	}
	return out
}

// PodDump describes one enrolled pod.
type PodDump struct {
	Pod      string       `json:"pod"`
	UID      string       `json:"uid"`
	Netns    string       `json:"netns"`
	IPs      []netip.Addr `json:"ips"`
	Identity string       `json:"identity"`
}
