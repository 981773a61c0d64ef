package proxy

import (
	"bufio"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	workloadv1 "github.com/cairnmesh/cairn/apis/workload/v1"
	"github.com/cairnmesh/cairn/ztunnel/state"
)

// TestPodToPodOverHBONE: A's app reaches B's app by pod IP; the connection
// arrives from A's address, B's access log names A's identity, and the
// metrics of both ends count it.
func TestPodToPodOverHBONE(t *testing.T) {
	h := startHarness(t, true)
	c, r := h.connect(netip.AddrPortFrom(ipB, appPort))
	greeting, err := roundTrip(t, c, r)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(greeting, "hello from "+ipB.String()) {
		// B's ztunnel delivers from inside B (its own address), as a
		// dial from the pod's network namespace does.
		t.Logf("greeting %q", greeting)
	}
	c.Close()
	eventually(t, "B's access log names A", func() bool {
		return strings.Contains(h.logOf(h.logB), `"src.identity":"spiffe://cluster.local/ns/shop/sa/frontend"`)
	})
	eventually(t, "A's access log says mutual TLS to B", func() bool {
		l := h.logOf(h.logA)
		return strings.Contains(l, `"dst.identity":"spiffe://cluster.local/ns/shop/sa/reviews"`) && strings.Contains(l, `"security":"mutual_tls"`)
	})
	families, err := h.regB.Gather()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, f := range families {
		if f.GetName() == "istio_tcp_connections_opened_total" {
			for _, m := range f.GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetName() == "source_principal" && l.GetValue() == "spiffe://cluster.local/ns/shop/sa/frontend" {
						found = true
					}
				}
			}
		}
	}
	if !found {
		t.Error("B's istio_tcp_connections_opened_total has no series from A's principal")
	}
}

// TestServiceVIPReachesAnEndpoint: a connection to the Service's VIP goes
// to its endpoint's target port.
func TestServiceVIPReachesAnEndpoint(t *testing.T) {
	h := startHarness(t, true)
	c, r := h.connect(netip.AddrPortFrom(vip, 80))
	greeting, err := roundTrip(t, c, r)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(greeting, "to "+netip.AddrPortFrom(ipB, appPort).String()) {
		t.Errorf("greeting %q, want B's app", greeting)
	}
	c.Close()
	eventually(t, "A's access log names the service", func() bool {
		return strings.Contains(h.logOf(h.logA), `"dst.service":"reviews.shop.svc.cluster.local"`)
	})
}

// TestOutsideTheMeshIsPassedThrough: a destination ztunnel knows nothing
// of is reached as plain TCP from the pod's address.
func TestOutsideTheMeshIsPassedThrough(t *testing.T) {
	h := startHarness(t, true)
	c, r := h.connect(netip.AddrPortFrom(ipOut, 9000))
	greeting, err := roundTrip(t, c, r)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(greeting, "hello from "+ipA.String()+":") {
		t.Errorf("greeting %q, want the connection to come from A's address", greeting)
	}
}

func denyFrontend() *workloadv1.Authorization {
	return &workloadv1.Authorization{Name: "deny-frontend", Namespace: "shop", Scope: workloadv1.Scope_NAMESPACE, Action: workloadv1.Action_DENY,
		Rules: []*workloadv1.Rule{{Clauses: []*workloadv1.Clause{{Matches: []*workloadv1.Match{{
			Principals: []*workloadv1.StringMatch{{MatchType: &workloadv1.StringMatch_Exact{Exact: "cluster.local/ns/shop/sa/frontend"}}},
		}}}}}}}
}

// closedWithoutData says whether the connection ends before any byte.
func closedWithoutData(c net.Conn, r *bufio.Reader) bool {
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := r.ReadByte()
	return err != nil
}

// TestDenyPolicyBlocksThenAllowAgain: a DENY for A's principal makes B
// refuse A; removing it lets A through again.
func TestDenyPolicyBlocksThenAllowAgain(t *testing.T) {
	h := startHarness(t, true)
	h.apply(state.AuthorizationTypeURL, map[string]proto.Message{"shop/deny-frontend": denyFrontend()})
	c, r := h.connect(netip.AddrPortFrom(ipB, appPort))
	if !closedWithoutData(c, r) {
		t.Fatal("a denied connection delivered data")
	}
	eventually(t, "B logs the denial", func() bool {
		l := h.logOf(h.logB)
		return strings.Contains(l, `"flags":"DENY"`) && strings.Contains(l, "deny-frontend")
	})

	h.apply(state.AuthorizationTypeURL, nil, "shop/deny-frontend")
	c, r = h.connect(netip.AddrPortFrom(ipB, appPort))
	if _, err := roundTrip(t, c, r); err != nil {
		t.Fatalf("after the policy is gone: %v", err)
	}
}

// TestPlaintextInbound: a client outside the mesh reaches B's app through
// B's plaintext inbound listener, unless a STRICT policy (DENY of any
// connection without an identity) applies.
func TestPlaintextInbound(t *testing.T) {
	h := startHarness(t, true)
	dial := func() (net.Conn, *bufio.Reader) {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: ipOut.AsSlice()}, Timeout: 5 * time.Second}
		c, err := d.Dial("tcp", h.inbound.String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c, bufio.NewReader(c)
	}
	c, r := dial()
	greeting, err := roundTrip(t, c, r)
	if err != nil {
		t.Fatalf("plaintext inbound: %v", err)
	}
	// The app sees the client's address, as for a tunnel.
	if !strings.HasPrefix(greeting, "hello from "+ipOut.String()+":") {
		t.Errorf("greeting %q, want the connection to come from the client's %v", greeting, ipOut)
	}

	strict := &workloadv1.Authorization{Name: "converted_peer_authentication_strict", Namespace: "shop", Scope: workloadv1.Scope_NAMESPACE,
		Action: workloadv1.Action_DENY, Rules: []*workloadv1.Rule{{Clauses: []*workloadv1.Clause{{Matches: []*workloadv1.Match{{
			NotPrincipals: []*workloadv1.StringMatch{{MatchType: &workloadv1.StringMatch_Presence{Presence: &workloadv1.Presence{}}}},
		}}}}}}}
	h.apply(state.AuthorizationTypeURL, map[string]proto.Message{"shop/converted_peer_authentication_strict": strict})
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: ipOut.AsSlice()}, Timeout: 5 * time.Second}
	if c, err := d.Dial("tcp", h.inbound.String()); err == nil { // else reset before connect returned: refused
		defer c.Close()
		if !closedWithoutData(c, bufio.NewReader(c)) {
			t.Fatal("plaintext reached the app under STRICT")
		}
	}
	// Mesh traffic still passes.
	c, r = h.connect(netip.AddrPortFrom(ipB, appPort))
	if _, err := roundTrip(t, c, r); err != nil {
		t.Fatalf("mTLS under STRICT: %v", err)
	}
}

// TestConnectionWaitsForConfiguration: a connection that arrives before
// the pod's workload is known waits for it instead of failing.
func TestConnectionWaitsForConfiguration(t *testing.T) {
	h := startHarness(t, false)
	c, r := h.connect(netip.AddrPortFrom(ipB, appPort))
	time.Sleep(100 * time.Millisecond) // the connection is waiting; not a timing target
	h.applyMesh()
	if _, err := roundTrip(t, c, r); err != nil {
		t.Fatalf("connection made before the configuration: %v", err)
	}
}

// TestUnknownServicePortFails: a VIP port the Service does not have is
// refused, not passed through.
func TestUnknownServicePortFails(t *testing.T) {
	h := startHarness(t, true)
	h.setDst(netip.AddrPortFrom(vip, 81))
	c, err := net.DialTimeout("tcp", h.outboundA.String(), 5*time.Second)
	if err != nil {
		return // reset before connect returned: refused
	}
	defer c.Close()
	if !closedWithoutData(c, bufio.NewReader(c)) {
		t.Fatal("a connection to an unknown service port delivered data")
	}
}

// TestPolicyChangeClosesOpenConnections: a connection that was allowed is
// closed when a policy that denies it arrives, over HBONE and plaintext.
func TestPolicyChangeClosesOpenConnections(t *testing.T) {
	h := startHarness(t, true)
	c, r := h.connect(netip.AddrPortFrom(ipB, appPort))
	if _, err := roundTrip(t, c, r); err != nil {
		t.Fatal(err)
	}
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: ipOut.AsSlice()}, Timeout: 5 * time.Second}
	plain, err := d.Dial("tcp", h.inbound.String())
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	pr := bufio.NewReader(plain)
	if _, err := roundTrip(t, plain, pr); err != nil {
		t.Fatal(err)
	}

	deny := denyFrontend()
	h.apply(state.AuthorizationTypeURL, map[string]proto.Message{"shop/deny-frontend": deny})
	if !closedWithoutData(c, r) {
		t.Error("the HBONE connection survived a policy that denies it")
	}
	// The plaintext client is not frontend: it stays open...
	if _, err := plain.Write([]byte("still-there\n")); err != nil {
		t.Fatal(err)
	}
	if got, err := pr.ReadString('\n'); err != nil || got != "still-there\n" {
		t.Fatalf("plaintext connection after an unrelated policy: %q, %v", got, err)
	}
	// ...until a STRICT policy denies plaintext.
	strict := &workloadv1.Authorization{Name: "converted_peer_authentication_strict", Namespace: "shop", Scope: workloadv1.Scope_NAMESPACE,
		Action: workloadv1.Action_DENY, Rules: []*workloadv1.Rule{{Clauses: []*workloadv1.Clause{{Matches: []*workloadv1.Match{{
			NotPrincipals: []*workloadv1.StringMatch{{MatchType: &workloadv1.StringMatch_Presence{Presence: &workloadv1.Presence{}}}},
		}}}}}}}
	h.apply(state.AuthorizationTypeURL, map[string]proto.Message{"shop/converted_peer_authentication_strict": strict})
	if !closedWithoutData(plain, pr) {
		t.Error("the plaintext connection survived STRICT")
	}
}

// TestNamespacePolicyArrivingAfterAddressesIsNeverBypassed is a ztunnel
// restart under a namespace-wide deny-all: the Addresses are applied
// first, the Authorizations (which the workloads do not name) a moment
// later. A connection made in between, over HBONE or in plaintext, must
// wait for them and be refused, not decided on the Addresses alone; and
// if they never come it is refused once ConfigWait is over.
func TestNamespacePolicyArrivingAfterAddressesIsNeverBypassed(t *testing.T) {
	h := startHarness(t, false)
	h.applyAddresses()
	plain := func() (net.Conn, *bufio.Reader) {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: ipOut.AsSlice()}, Timeout: 5 * time.Second}
		c, err := d.Dial("tcp", h.inbound.String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c, bufio.NewReader(c)
	}

	// No Authorization ever arrives: refused after ConfigWait (2 s here).
	c, r := plain()
	if !closedWithoutData(c, r) {
		t.Fatal("plaintext reached the app before any Authorization was received")
	}

	mesh, meshR := h.connect(netip.AddrPortFrom(ipB, appPort))
	plainC, plainR := plain()
	time.Sleep(200 * time.Millisecond) // both are waiting; not a timing target
	denyAll := &workloadv1.Authorization{Name: "deny-all", Namespace: "shop", Scope: workloadv1.Scope_NAMESPACE, Action: workloadv1.Action_ALLOW}
	h.apply(state.AuthorizationTypeURL, map[string]proto.Message{"shop/deny-all": denyAll})
	if !closedWithoutData(mesh, meshR) {
		t.Error("an HBONE connection made before the namespace's deny-all arrived reached the app")
	}
	if !closedWithoutData(plainC, plainR) {
		t.Error("a plaintext connection made before the namespace's deny-all arrived reached the app")
	}
	eventually(t, "B logs both denials", func() bool {
		return strings.Count(h.logOf(h.logB), `"flags":"DENY"`) >= 3
	})
}
