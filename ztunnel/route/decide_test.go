package route

import (
	"net/netip"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	workloadv1 "github.com/cairnmesh/cairn/apis/workload/v1"
	"github.com/cairnmesh/cairn/internal/spiffe"
	"github.com/cairnmesh/cairn/ztunnel/state"
)

func ip(s string) []byte { return netip.MustParseAddr(s).AsSlice() }

func pod(name string, mesh bool, ips ...string) *workloadv1.Workload {
	w := &workloadv1.Workload{
		Uid:            "Kubernetes//Pod/shop/" + name,
		Name:           name,
		Namespace:      "shop",
		Node:           "node-a",
		ServiceAccount: name + "-sa",
		TrustDomain:    "cluster.local",
		Status:         workloadv1.WorkloadStatus_HEALTHY,
	}
	if mesh {
		w.TunnelProtocol = workloadv1.TunnelProtocol_HBONE
	}
	for _, s := range ips {
		w.Addresses = append(w.Addresses, ip(s))
	}
	return w
}

// serves makes w an endpoint of the Service shop/<svc> with the given
// service port -> target port pairs.
func serves(w *workloadv1.Workload, svc string, ports ...uint32) *workloadv1.Workload {
	if w.Services == nil {
		w.Services = map[string]*workloadv1.PortList{}
	}
	pl := &workloadv1.PortList{}
	for i := 0; i < len(ports); i += 2 {
		pl.Ports = append(pl.Ports, &workloadv1.Port{ServicePort: ports[i], TargetPort: ports[i+1]})
	}
	w.Services[host(svc)] = pl
	return w
}

func host(svc string) string { return "shop/" + svc + ".shop.svc.cluster.local" }

func service(name string, vips []string, ports ...uint32) *workloadv1.Service {
	s := &workloadv1.Service{Name: name, Namespace: "shop", Hostname: name + ".shop.svc.cluster.local"}
	for _, v := range vips {
		s.Addresses = append(s.Addresses, &workloadv1.NetworkAddress{Address: ip(v)})
	}
	for i := 0; i < len(ports); i += 2 {
		s.Ports = append(s.Ports, &workloadv1.Port{ServicePort: ports[i], TargetPort: ports[i+1]})
	}
	return s
}

func byHostname(svc string, port uint32) *workloadv1.GatewayAddress {
	return &workloadv1.GatewayAddress{
		Destination:   &workloadv1.GatewayAddress_Hostname{Hostname: &workloadv1.NamespacedHostname{Namespace: "shop", Hostname: svc + ".shop.svc.cluster.local"}},
		HboneMtlsPort: port,
	}
}

func byAddress(addr string, port uint32) *workloadv1.GatewayAddress {
	return &workloadv1.GatewayAddress{
		Destination:   &workloadv1.GatewayAddress_Address{Address: &workloadv1.NetworkAddress{Address: ip(addr)}},
		HboneMtlsPort: port,
	}
}

func id(sa string) spiffe.Identity {
	return spiffe.Identity{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: sa}
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// mesh is the snapshot the table runs against.
func mesh(t *testing.T) *state.Snapshot {
	t.Helper()
	var ws []*workloadv1.Workload
	var ss []*workloadv1.Service
	add := func(w *workloadv1.Workload) *workloadv1.Workload { ws = append(ws, w); return w }
	addSvc := func(s *workloadv1.Service) *workloadv1.Service { ss = append(ss, s); return s }

	add(pod("client", true, "10.0.0.100"))

	// web: 80 -> 8080 everywhere; 9090 names its targetPort (0 in the
	// Service) and only web-1 has it; 443 is served by nobody; 8000 and
	// 7000 test the target-port fallbacks.
	addSvc(service("web", []string{"10.96.0.10", "fd00:96::10"}, 80, 8080, 9090, 0, 443, 443, 8000, 8001, 7000, 0))
	add(serves(pod("web-1", true, "10.0.0.1", "fd00::1"), "web", 80, 8080, 9090, 9999, 8000, 0, 7000, 0))
	add(serves(pod("web-2", true, "10.0.0.2"), "web", 80, 8080))
	web3 := add(serves(pod("web-3", true, "10.0.0.3"), "web", 80, 8080))
	web3.Status = workloadv1.WorkloadStatus_UNHEALTHY
	east := add(serves(pod("web-east", true, "10.0.0.4"), "web", 80, 8080))
	east.Network = "east"

	addSvc(service("empty", []string{"10.96.0.11"}, 80, 80))
	addSvc(service("east-only", []string{"10.96.0.16"}, 80, 80))
	eastOnly := add(serves(pod("east-only-1", true, "10.0.0.5"), "east-only", 80, 80))
	eastOnly.Network = "east"

	// A selectorless Service in front of a VM: not in the mesh.
	addSvc(service("legacy", []string{"10.96.0.12"}, 5432, 5432))
	vm := serves(pod("vm", false, "10.1.0.5"), "legacy", 5432, 5432)
	vm.Uid = "Kubernetes/discovery.k8s.io/EndpointSlice/shop/legacy-abc/10.1.0.5"
	add(vm)

	// The waypoint: its Service, one healthy and one unhealthy pod. Waypoint
	// pods are not captured (tunnel NONE) but speak HBONE themselves.
	addSvc(service("waypoint", []string{"10.96.0.50"}, 15008, 15008))
	add(serves(pod("waypoint-1", false, "10.0.0.50"), "waypoint", 15008, 15008))
	wp2 := add(serves(pod("waypoint-2", false, "10.0.0.51"), "waypoint", 15008, 15008))
	wp2.Status = workloadv1.WorkloadStatus_UNHEALTHY
	addSvc(service("idle-waypoint", []string{"10.96.0.52"}, 15008, 15008))

	reviews := addSvc(service("reviews", []string{"10.96.0.20"}, 9080, 9080))
	reviews.Waypoint = byHostname("waypoint", 0)
	add(serves(pod("reviews-1", true, "10.0.0.21"), "reviews", 9080, 9080))
	ratings := addSvc(service("ratings", []string{"10.96.0.21"}, 9080, 9080))
	ratings.Waypoint = byAddress("10.96.0.50", 15009) // the waypoint's VIP, own HBONE port
	podWaypoint := addSvc(service("pod-waypoint", []string{"10.96.0.22"}, 80, 80))
	podWaypoint.Waypoint = byAddress("10.0.0.50", 0) // a waypoint pod's own IP
	lost := addSvc(service("lost", []string{"10.96.0.23"}, 80, 80))
	lost.Waypoint = byHostname("gone", 0)
	idle := addSvc(service("idle", []string{"10.96.0.24"}, 80, 80))
	idle.Waypoint = byHostname("idle-waypoint", 0)
	nowhere := addSvc(service("nowhere", []string{"10.96.0.25"}, 80, 80))
	nowhere.Waypoint = byAddress("10.9.9.9", 0)

	db := add(pod("db-0", true, "10.0.0.60"))
	db.Waypoint = byHostname("waypoint", 15008)
	add(pod("legacy-pod", false, "10.0.0.70"))
	noID := add(pod("no-id", true, "10.0.0.80"))
	noID.TrustDomain = ""
	noIDWaypoint := addSvc(service("bad-waypoint-id", []string{"10.96.0.26"}, 80, 80))
	noIDWaypoint.Waypoint = byAddress("10.0.0.80", 0)

	st := state.NewStore()
	upserts := map[string]proto.Message{}
	for _, w := range ws {
		upserts[w.Uid] = &workloadv1.Address{Type: &workloadv1.Address_Workload{Workload: w}}
	}
	for _, s := range ss {
		upserts[s.Namespace+"/"+s.Hostname] = &workloadv1.Address{Type: &workloadv1.Address_Service{Service: s}}
	}
	if err := st.Apply(state.AddressTypeURL, upserts, nil); err != nil {
		t.Fatal(err)
	}
	return st.Snapshot()
}

func TestDecide(t *testing.T) {
	snap := mesh(t)
	client := snap.Workload("Kubernetes//Pod/shop/client")
	eastClient := proto.CloneOf(client)
	eastClient.Network = "east"
	first := func(int) int { return 0 }
	second := func(int) int { return 1 }

	type want struct {
		kind      Kind
		dial      string // "" for none
		authority string
		identity  string // SA in shop; "" for none
		workload  string // name; "" for none
		service   string // name; "" for none
		waypoint  bool
		reason    string // substring
	}
	tests := []struct {
		name string
		src  *workloadv1.Workload
		dst  string
		pick Picker
		want want
	}{
		// Outside the mesh.
		{"external address passes through", client, "8.8.8.8:53", first,
			want{kind: Passthrough, dial: "8.8.8.8:53", reason: "passthrough"}},
		{"IPv4-mapped destination is unmapped", client, "[::ffff:8.8.8.8]:53", first,
			want{kind: Passthrough, dial: "8.8.8.8:53"}},
		{"address of another network passes through", eastClient, "10.0.0.1:8080", first,
			want{kind: Passthrough, dial: "10.0.0.1:8080"}},

		// Workload addressed directly.
		{"mesh pod over HBONE", client, "10.0.0.2:8080", first,
			want{kind: HBONE, dial: "10.0.0.2:15008", authority: "10.0.0.2:8080", identity: "web-2-sa", workload: "web-2", reason: "HBONE"}},
		{"mesh pod by IPv6", client, "[fd00::1]:8080", first,
			want{kind: HBONE, dial: "[fd00::1]:15008", authority: "[fd00::1]:8080", identity: "web-1-sa", workload: "web-1"}},
		{"unhealthy pod addressed directly is still reached", client, "10.0.0.3:8080", first,
			want{kind: HBONE, dial: "10.0.0.3:15008", authority: "10.0.0.3:8080", identity: "web-3-sa", workload: "web-3"}},
		{"pod outside the mesh: direct", client, "10.0.0.70:5000", first,
			want{kind: Direct, dial: "10.0.0.70:5000", workload: "legacy-pod", reason: "not in the mesh"}},
		{"pod with a waypoint goes to the waypoint", client, "10.0.0.60:5432", first,
			want{kind: HBONE, dial: "10.0.0.50:15008", authority: "10.0.0.60:5432", identity: "waypoint-1-sa", workload: "waypoint-1", waypoint: true, reason: "waypoint"}},
		{"mesh pod without identity fails", client, "10.0.0.80:80", first,
			want{kind: Fail, reason: "no valid identity"}},

		// Service VIPs.
		{"VIP picks the first endpoint", client, "10.96.0.10:80", first,
			want{kind: HBONE, dial: "10.0.0.1:15008", authority: "10.0.0.1:8080", identity: "web-1-sa", workload: "web-1", service: "web", reason: "Service shop/web.shop.svc.cluster.local port 80"}},
		{"VIP picks the second endpoint", client, "10.96.0.10:80", second,
			want{kind: HBONE, dial: "10.0.0.2:15008", authority: "10.0.0.2:8080", identity: "web-2-sa", workload: "web-2", service: "web"}},
		{"picker index out of range wraps", client, "10.96.0.10:80", func(int) int { return 5 },
			want{kind: HBONE, dial: "10.0.0.2:15008", workload: "web-2", service: "web", authority: "10.0.0.2:8080", identity: "web-2-sa"}},
		{"negative picker index wraps", client, "10.96.0.10:80", func(int) int { return -1 },
			want{kind: HBONE, dial: "10.0.0.2:15008", workload: "web-2", service: "web", authority: "10.0.0.2:8080", identity: "web-2-sa"}},
		{"IPv6 VIP prefers the endpoint's IPv6", client, "[fd00:96::10]:80", first,
			want{kind: HBONE, dial: "[fd00::1]:15008", authority: "[fd00::1]:8080", identity: "web-1-sa", workload: "web-1", service: "web"}},
		{"IPv6 VIP falls back to a single-stack endpoint's IPv4", client, "[fd00:96::10]:80", second,
			want{kind: HBONE, dial: "10.0.0.2:15008", authority: "10.0.0.2:8080", identity: "web-2-sa", workload: "web-2", service: "web"}},
		{"named target port: only endpoints that have it", client, "10.96.0.10:9090", second,
			want{kind: HBONE, dial: "10.0.0.1:15008", authority: "10.0.0.1:9999", identity: "web-1-sa", workload: "web-1", service: "web"}},
		{"target 0 on the endpoint falls back to the Service's", client, "10.96.0.10:8000", first,
			want{kind: HBONE, dial: "10.0.0.1:15008", authority: "10.0.0.1:8001", identity: "web-1-sa", workload: "web-1", service: "web"}},
		{"target 0 everywhere falls back to the Service port", client, "10.96.0.10:7000", first,
			want{kind: HBONE, dial: "10.0.0.1:15008", authority: "10.0.0.1:7000", identity: "web-1-sa", workload: "web-1", service: "web"}},
		{"port not on the Service fails", client, "10.96.0.10:1234", first,
			want{kind: Fail, service: "web", reason: "has no TCP port 1234"}},
		{"port no endpoint serves fails", client, "10.96.0.10:443", first,
			want{kind: Fail, service: "web", reason: "no healthy endpoint"}},
		{"no endpoint at all fails, no passthrough", client, "10.96.0.11:80", first,
			want{kind: Fail, service: "empty", reason: "no healthy endpoint"}},
		{"endpoints only in another network fail", client, "10.96.0.16:80", first,
			want{kind: Fail, service: "east-only", reason: "no healthy endpoint"}},
		{"endpoint outside the mesh: direct to its target", client, "10.96.0.12:5432", first,
			want{kind: Direct, dial: "10.1.0.5:5432", workload: "vm", service: "legacy"}},

		// Service waypoints.
		{"Service waypoint by hostname", client, "10.96.0.20:9080", second,
			want{kind: HBONE, dial: "10.0.0.50:15008", authority: "10.96.0.20:9080", identity: "waypoint-1-sa", workload: "waypoint-1", service: "reviews", waypoint: true}},
		{"Service waypoint by VIP with its own HBONE port", client, "10.96.0.21:9080", first,
			want{kind: HBONE, dial: "10.0.0.50:15009", authority: "10.96.0.21:9080", identity: "waypoint-1-sa", workload: "waypoint-1", service: "ratings", waypoint: true}},
		{"Service waypoint by pod IP", client, "10.96.0.22:80", first,
			want{kind: HBONE, dial: "10.0.0.50:15008", authority: "10.96.0.22:80", identity: "waypoint-1-sa", workload: "waypoint-1", service: "pod-waypoint", waypoint: true}},
		{"unknown waypoint Service fails", client, "10.96.0.23:80", first,
			want{kind: Fail, service: "lost", reason: "shop/gone.shop.svc.cluster.local is not known"}},
		{"waypoint without healthy pod fails", client, "10.96.0.24:80", first,
			want{kind: Fail, service: "idle", reason: "no healthy pod"}},
		{"waypoint address unknown fails", client, "10.96.0.25:80", first,
			want{kind: Fail, service: "nowhere", reason: "10.9.9.9 is no known Service or workload"}},
		{"waypoint without identity fails", client, "10.96.0.26:80", first,
			want{kind: Fail, service: "bad-waypoint-id", reason: "no valid identity"}},
		{"port check comes before the waypoint", client, "10.96.0.20:1", first,
			want{kind: Fail, service: "reviews", reason: "no TCP port 1"}},

		// Bad input.
		{"unknown source fails", nil, "10.0.0.2:8080", first,
			want{kind: Fail, reason: "not known"}},
		{"port 0 fails", client, "10.0.0.2:0", first,
			want{kind: Fail, reason: "not an address and port"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := Decide(tc.src, ap(tc.dst), snap, tc.pick)
			w := tc.want
			if got.Kind != w.kind {
				t.Fatalf("Kind = %v (%s), want %v", got.Kind, got.Reason, w.kind)
			}
			if got.Reason == "" || !strings.Contains(got.Reason, w.reason) {
				t.Errorf("Reason = %q, want it to contain %q", got.Reason, w.reason)
			}
			if s := addrString(got.Dial); s != w.dial {
				t.Errorf("Dial = %s, want %s", s, w.dial)
			}
			if s := addrString(got.Authority); s != w.authority {
				t.Errorf("Authority = %s, want %s", s, w.authority)
			}
			wantID := spiffe.Identity{}
			if w.identity != "" {
				wantID = id(w.identity)
			}
			if got.Identity != wantID {
				t.Errorf("Identity = %v, want %v", got.Identity, wantID)
			}
			if got.Workload.GetName() != w.workload {
				t.Errorf("Workload = %q, want %q", got.Workload.GetName(), w.workload)
			}
			if got.Service.GetName() != w.service {
				t.Errorf("Service = %q, want %q", got.Service.GetName(), w.service)
			}
			if got.Waypoint != w.waypoint {
				t.Errorf("Waypoint = %v, want %v", got.Waypoint, w.waypoint)
			}
		})
	}
}

func addrString(a netip.AddrPort) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

// The default picker spreads connections over the healthy endpoints only.
func TestDecideRandomPicker(t *testing.T) {
	snap := mesh(t)
	client := snap.Workload("Kubernetes//Pod/shop/client")
	seen := map[string]int{}
	for range 200 {
		d := Decide(client, ap("10.96.0.10:80"), snap, nil)
		if d.Kind != HBONE {
			t.Fatalf("Kind = %v: %s", d.Kind, d.Reason)
		}
		seen[d.Workload.GetName()]++
	}
	if len(seen) != 2 || seen["web-1"] == 0 || seen["web-2"] == 0 {
		t.Errorf("endpoints picked = %v, want both healthy ones of the default network", seen)
	}
}

func TestDecideNilSnapshot(t *testing.T) {
	if d := Decide(pod("c", true, "10.0.0.1"), ap("10.0.0.2:80"), nil, nil); d.Kind != Fail {
		t.Errorf("Kind = %v, want Fail", d.Kind)
	}
}

func TestKindString(t *testing.T) {
	for k, want := range map[Kind]string{Fail: "Fail", Passthrough: "Passthrough", Direct: "Direct", HBONE: "HBONE", Kind(9): "Kind(?)"} {
		if k.String() != want {
			t.Errorf("%d.String() = %q, want %q", int(k), k.String(), want)
		}
	}
	var zero Decision
	if zero.Kind != Fail {
		t.Error("the zero Decision does not fail closed")
	}
}
