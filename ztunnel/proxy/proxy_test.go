package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/protobuf/proto"

	workloadv1 "github.com/cairnmesh/cairn/apis/workload/v1"
	"github.com/cairnmesh/cairn/internal/pki"
	"github.com/cairnmesh/cairn/internal/spiffe"
	"github.com/cairnmesh/cairn/ztunnel/state"
	"github.com/cairnmesh/cairn/ztunnel/telemetry"
)

// The test mesh lives on loopback addresses: pod A (the client) and pod B
// (the server) are two proxies in this process, each with the listeners
// a captured pod would have; B's app is an echo server.
var (
	ipA      = netip.MustParseAddr("127.0.0.2")
	ipB      = netip.MustParseAddr("127.0.0.3")
	ipOut    = netip.MustParseAddr("127.0.0.4") // outside the mesh
	vip      = netip.MustParseAddr("127.0.0.100")
	idA      = spiffe.Identity{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: "frontend"}
	idB      = spiffe.Identity{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: "reviews"}
	appPort  = uint16(8080)
	hbonePrt = uint16(15008)
)

type certs struct {
	ca      *pki.CA
	bundle  *x509bundle.Bundle
	mu      sync.Mutex
	sources map[spiffe.Identity]*pki.Source
}

func newCerts(t *testing.T) *certs {
	t.Helper()
	ca, err := pki.NewRoot("cluster.local", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	b, err := pki.NewBundle("cluster.local", []*x509.Certificate{ca.Root()})
	if err != nil {
		t.Fatal(err)
	}
	return &certs{ca: ca, bundle: b, sources: map[spiffe.Identity]*pki.Source{}}
}

func (c *certs) Source(id spiffe.Identity) x509svid.Source {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s, ok := c.sources[id]; ok {
		return s
	}
	key, err := pki.GenerateKey()
	if err != nil {
		panic(err)
	}
	cert, err := c.ca.Sign(key.Public(), id, pki.LeafOptions{TTL: time.Hour})
	if err != nil {
		panic(err)
	}
	svid, err := pki.NewSVID([]*x509.Certificate{cert}, key)
	if err != nil {
		panic(err)
	}
	s := &pki.Source{}
	s.Set(svid)
	c.sources[id] = s
	return s
}

func workload(name string, ip netip.Addr, id spiffe.Identity, tunnel workloadv1.TunnelProtocol, services map[string]*workloadv1.PortList, policies ...string) *workloadv1.Address {
	return &workloadv1.Address{Type: &workloadv1.Address_Workload{Workload: &workloadv1.Workload{
		Uid: "Kubernetes//Pod/shop/" + name, Name: name, Namespace: "shop", Addresses: [][]byte{ip.AsSlice()},
		Node: "node-1", ServiceAccount: id.ServiceAccount, TrustDomain: id.TrustDomain, TunnelProtocol: tunnel,
		Services: services, AuthorizationPolicies: policies, WorkloadName: name, WorkloadType: "pod",
		CanonicalName: name, CanonicalRevision: "v1", ClusterId: "Kubernetes",
	}}}
}

// harness is the two pods, their proxies and what they recorded.
type harness struct {
	t         *testing.T
	store     *state.Store
	dst       atomic.Pointer[netip.AddrPort] // what A's app "dialled"
	logA      *bytes.Buffer
	logB      *bytes.Buffer
	regB      *prometheus.Registry
	inbound   net.Addr // B's plaintext inbound listener
	outboundA net.Addr // A's outbound listener
	mu        sync.Mutex
}

func (h *harness) setDst(ap netip.AddrPort) { h.dst.Store(&ap) }

func (h *harness) apply(typeURL string, upserts map[string]proto.Message, removes ...string) {
	h.t.Helper()
	if err := h.store.Apply(typeURL, upserts, removes); err != nil {
		h.t.Fatal(err)
	}
}

func listen(t *testing.T, ip netip.Addr, port uint16) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", netip.AddrPortFrom(ip, port).String())
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// echo serves "hello <remote addr>\n" and then echoes.
func echo(t *testing.T, ln net.Listener) {
	var wg sync.WaitGroup
	t.Cleanup(func() { _ = ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				fmt.Fprintf(c, "hello from %s to %s\n", c.RemoteAddr(), c.LocalAddr())
				_, _ = io.Copy(c, c)
			})
		}
	})
}

func dialFrom(ip netip.Addr) func(ctx context.Context, network, address string) (net.Conn, error) {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: ip.AsSlice()}}
	return d.DialContext
}

func startHarness(t *testing.T, withConfig bool) *harness {
	t.Helper()
	h := &harness{t: t, store: state.NewStore(), logA: &bytes.Buffer{}, logB: &bytes.Buffer{}, regB: prometheus.NewRegistry()}
	c := newCerts(t)
	echo(t, listen(t, ipB, appPort))
	echo(t, listen(t, ipOut, 9000))
	if withConfig {
		h.applyMesh()
	}

	start := func(pod Pod, log *bytes.Buffer, reg prometheus.Registerer, tr *Tracker) Listeners {
		rec, err := telemetry.NewRecorder(reg, slog.New(slog.NewJSONHandler(&lockedWriter{w: log, mu: &h.mu}, nil)))
		if err != nil {
			t.Fatal(err)
		}
		ls := Listeners{Outbound: listen(t, pod.IPs[0], 0), Inbound: listen(t, pod.IPs[0], 0), HBONE: listen(t, pod.IPs[0], hbonePrt)}
		p, err := Start(Config{Store: h.store, Certificates: c, Bundle: c.bundle, Telemetry: rec, ConfigWait: 2 * time.Second}, pod, ls, tr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := p.Close(); err != nil {
				t.Errorf("closing %s: %v", pod.Name, err)
			}
		})
		return ls
	}
	lsA := start(Pod{Namespace: "shop", Name: "a", IPs: []netip.Addr{ipA}, Identity: idA, Dial: dialFrom(ipA),
		OriginalDst: func(net.Conn) (netip.AddrPort, error) { return *h.dst.Load(), nil }}, h.logA, nil, nil)
	lsB := start(Pod{Namespace: "shop", Name: "b", IPs: []netip.Addr{ipB}, Identity: idB, Dial: dialFrom(ipB),
		DialFrom: func(ctx context.Context, src netip.Addr, network, address string) (net.Conn, error) {
			return dialFrom(src)(ctx, network, address)
		},
		OriginalDst: func(c net.Conn) (netip.AddrPort, error) { return netip.AddrPortFrom(ipB, appPort), nil }}, h.logB, h.regB, nil)
	h.inbound = lsB.Inbound.Addr()
	h.outboundA = lsA.Outbound.Addr()
	return h
}

type lockedWriter struct {
	w  io.Writer
	mu *sync.Mutex
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// applyMesh applies the initial state of both types, as workload
// discovery's first responses do: the Addresses, and no Authorization.
func (h *harness) applyMesh() {
	h.applyAddresses()
	h.apply(state.AuthorizationTypeURL, nil)
}

// applyAddresses applies the Addresses only.
func (h *harness) applyAddresses() {
	svc := map[string]*workloadv1.PortList{"shop/reviews.shop.svc.cluster.local": {Ports: []*workloadv1.Port{{ServicePort: 80, TargetPort: uint32(appPort)}}}}
	h.apply(state.AddressTypeURL, map[string]proto.Message{
		"Kubernetes//Pod/shop/a": workload("a", ipA, idA, workloadv1.TunnelProtocol_HBONE, nil),
		"Kubernetes//Pod/shop/b": workload("b", ipB, idB, workloadv1.TunnelProtocol_HBONE, svc),
		"shop/reviews.shop.svc.cluster.local": &workloadv1.Address{Type: &workloadv1.Address_Service{Service: &workloadv1.Service{
			Name: "reviews", Namespace: "shop", Hostname: "reviews.shop.svc.cluster.local",
			Addresses: []*workloadv1.NetworkAddress{{Address: vip.AsSlice()}},
			Ports:     []*workloadv1.Port{{ServicePort: 80, TargetPort: uint32(appPort)}},
		}}},
	})
}

// outboundA connects as A's app would: to A's outbound listener, with the
// original destination dst.
func (h *harness) connect(dst netip.AddrPort) (net.Conn, *bufio.Reader) {
	h.t.Helper()
	h.setDst(dst)
	c, err := net.DialTimeout("tcp", h.outboundA.String(), 5*time.Second)
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return c, bufio.NewReader(c)
}

// roundTrip reads the app's greeting and checks an echo.
func roundTrip(t *testing.T, c net.Conn, r *bufio.Reader) (greeting string, err error) {
	t.Helper()
	greeting, err = r.ReadString('\n')
	if err != nil {
		return "", err
	}
	if _, err := c.Write([]byte("marker-1234\n")); err != nil {
		return greeting, err
	}
	back, err := r.ReadString('\n')
	if err != nil {
		return greeting, err
	}
	if back != "marker-1234\n" {
		return greeting, fmt.Errorf("echo %q", back)
	}
	return greeting, nil
}

func (h *harness) logOf(b *bytes.Buffer) string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return b.String()
}

func eventually(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out: %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
