package model

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	securityv1 "github.com/cairnmesh/cairn/apis/security/v1"
	workloadv1 "github.com/cairnmesh/cairn/apis/workload/v1"
)

// testPod is a Ready pod on node-a with one IP and the given labels.
func testPod(ns, name string, labels map[string]string, mods ...func(*corev1.Pod)) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec: corev1.PodSpec{
			NodeName:           "node-a",
			ServiceAccountName: "sa-" + name,
			Containers: []corev1.Container{{Name: "app", Ports: []corev1.ContainerPort{
				{Name: "http", ContainerPort: 8080},
				{Name: "dns", ContainerPort: 5353, Protocol: corev1.ProtocolUDP},
			}}},
		},
		Status: corev1.PodStatus{
			Phase:      corev1.PodRunning,
			PodIP:      "198.18.1.10",
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}},
		},
	}
	for _, m := range mods {
		m(p)
	}
	return p
}

func testNamespace(name string, labels map[string]string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
}

var ambientLabel = map[string]string{DataplaneModeLabel: DataplaneModeAmbient}

func mustWorkload(t *testing.T, in WorkloadInputs) (*workloadv1.Workload, []Skipped) {
	t.Helper()
	addr, skipped := BuildWorkload(in, Config{})
	if addr == nil {
		t.Fatalf("no workload; skipped: %v", skipped)
	}
	return addr.GetWorkload(), skipped
}

func TestBuildWorkloadEnrolment(t *testing.T) {
	tests := []struct {
		name      string
		nsLabels  map[string]string
		podLabels map[string]string
		noNS      bool
		want      workloadv1.TunnelProtocol
	}{
		{name: "namespace ambient", nsLabels: ambientLabel, want: workloadv1.TunnelProtocol_HBONE},
		{name: "pod ambient, namespace not", podLabels: ambientLabel, want: workloadv1.TunnelProtocol_HBONE},
		{name: "pod none opts out", nsLabels: ambientLabel, podLabels: map[string]string{DataplaneModeLabel: DataplaneModeNone}, want: workloadv1.TunnelProtocol_NONE},
		{name: "neither", want: workloadv1.TunnelProtocol_NONE},
		{name: "other value on namespace", nsLabels: map[string]string{DataplaneModeLabel: "sidecar"}, want: workloadv1.TunnelProtocol_NONE},
		{name: "namespace unknown", noNS: true, want: workloadv1.TunnelProtocol_NONE},
		{name: "namespace unknown, pod ambient", noNS: true, podLabels: ambientLabel, want: workloadv1.TunnelProtocol_HBONE},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := WorkloadInputs{Pod: testPod("shop", "web", tc.podLabels)}
			if !tc.noNS {
				in.Namespace = testNamespace("shop", tc.nsLabels)
			}
			w, _ := mustWorkload(t, in)
			if w.TunnelProtocol != tc.want {
				t.Errorf("tunnel protocol %v, want %v", w.TunnelProtocol, tc.want)
			}
		})
	}
}

func TestBuildWorkloadNone(t *testing.T) {
	tests := []struct {
		name   string
		mod    func(*corev1.Pod)
		reason string
	}{
		{"not scheduled", func(p *corev1.Pod) { p.Spec.NodeName = "" }, "not scheduled"},
		{"no IP", func(p *corev1.Pod) { p.Status.PodIP = "" }, "no IP"},
		{"unparsable IP", func(p *corev1.Pod) { p.Status.PodIP = "bogus" }, "no IP"},
		{"host network", func(p *corev1.Pod) { p.Spec.HostNetwork = true }, "host network"},
		{"succeeded", func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded }, "finished"},
		{"failed", func(p *corev1.Pod) { p.Status.Phase = corev1.PodFailed }, "finished"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			addr, skipped := BuildWorkload(WorkloadInputs{Pod: testPod("shop", "web", nil, tc.mod)}, Config{})
			if addr != nil {
				t.Fatalf("got a workload: %v", addr)
			}
			if len(skipped) != 1 || !strings.Contains(skipped[0].Reason, tc.reason) {
				t.Errorf("skipped %v, want one reason containing %q", skipped, tc.reason)
			}
		})
	}
}

func TestBuildWorkloadFields(t *testing.T) {
	pod := testPod("shop", "web-5d9f-abcde", map[string]string{
		"app": "web", "version": "v3", "pod-template-hash": "5d9f",
	}, func(p *corev1.Pod) {
		p.Status.PodIP = ""
		p.Status.PodIPs = []corev1.PodIP{{IP: "198.18.1.10"}, {IP: "fd00::10"}}
		p.OwnerReferences = []metav1.OwnerReference{
			{Kind: "Something", Name: "not-controller"},
			{Kind: "ReplicaSet", Name: "web-5d9f", Controller: ptr.To(true)},
		}
	})
	w, _ := mustWorkload(t, WorkloadInputs{Pod: pod, Namespace: testNamespace("shop", ambientLabel)})
	want := &workloadv1.Workload{
		Uid:               "Kubernetes//Pod/shop/web-5d9f-abcde",
		Name:              "web-5d9f-abcde",
		Namespace:         "shop",
		Addresses:         [][]byte{{198, 18, 1, 10}, netip.MustParseAddr("fd00::10").AsSlice()},
		Node:              "node-a",
		ServiceAccount:    "sa-web-5d9f-abcde",
		TrustDomain:       "cluster.local",
		TunnelProtocol:    workloadv1.TunnelProtocol_HBONE,
		Status:            workloadv1.WorkloadStatus_HEALTHY,
		WorkloadName:      "web",
		WorkloadType:      "deployment",
		CanonicalName:     "web",
		CanonicalRevision: "v3",
		ClusterId:         "Kubernetes",
	}
	if !Equal(w, want) {
		t.Errorf("got\n%v\nwant\n%v", w, want)
	}

	// Settings from Config.
	addr, _ := BuildWorkload(WorkloadInputs{Pod: pod}, Config{ClusterID: "east", TrustDomain: "example.org", Network: "net1"})
	got := addr.GetWorkload()
	if got.Uid != "east//Pod/shop/web-5d9f-abcde" || got.TrustDomain != "example.org" || got.Network != "net1" || got.ClusterId != "east" {
		t.Errorf("config not applied: %v", got)
	}
}

func TestBuildWorkloadHealth(t *testing.T) {
	tests := []struct {
		name string
		mod  func(*corev1.Pod)
		want workloadv1.WorkloadStatus
	}{
		{"ready", func(*corev1.Pod) {}, workloadv1.WorkloadStatus_HEALTHY},
		{"not ready", func(p *corev1.Pod) { p.Status.Conditions[0].Status = corev1.ConditionFalse }, workloadv1.WorkloadStatus_UNHEALTHY},
		{"no conditions", func(p *corev1.Pod) { p.Status.Conditions = nil }, workloadv1.WorkloadStatus_UNHEALTHY},
		{"terminating", func(p *corev1.Pod) { p.DeletionTimestamp = &metav1.Time{} }, workloadv1.WorkloadStatus_UNHEALTHY},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w, _ := mustWorkload(t, WorkloadInputs{Pod: testPod("shop", "web", nil, tc.mod)})
			if w.Status != tc.want {
				t.Errorf("status %v, want %v", w.Status, tc.want)
			}
		})
	}
}

func TestWorkloadOwnerAndCanonicalNames(t *testing.T) {
	ctrl := func(kind, name string) func(*corev1.Pod) {
		return func(p *corev1.Pod) {
			p.OwnerReferences = []metav1.OwnerReference{{Kind: kind, Name: name, Controller: ptr.To(true)}}
		}
	}
	tests := []struct {
		name                   string
		labels                 map[string]string
		mod                    func(*corev1.Pod)
		wantName, wantType     string
		wantCanonical, wantRev string
	}{
		{"bare pod", nil, func(*corev1.Pod) {}, "p", "pod", "p", "latest"},
		{"deployment", map[string]string{"pod-template-hash": "abc"}, ctrl("ReplicaSet", "web-abc"), "web", "deployment", "web", "latest"},
		{"replicaset without hash", nil, ctrl("ReplicaSet", "rs"), "rs", "replicaset", "rs", "latest"},
		{"statefulset", nil, ctrl("StatefulSet", "db"), "db", "statefulset", "db", "latest"},
		{"daemonset", nil, ctrl("DaemonSet", "agent"), "agent", "daemonset", "agent", "latest"},
		{"job", nil, ctrl("Job", "migrate"), "migrate", "job", "migrate", "latest"},
		{"app labels", map[string]string{"app": "a", "version": "v1"}, func(*corev1.Pod) {}, "p", "pod", "a", "v1"},
		{"k8s labels win over app", map[string]string{"app": "a", "app.kubernetes.io/name": "b", "version": "v1", "app.kubernetes.io/version": "v2"}, func(*corev1.Pod) {}, "p", "pod", "b", "v2"},
		{"istio labels win", map[string]string{"app.kubernetes.io/name": "b", "service.istio.io/canonical-name": "c", "service.istio.io/canonical-revision": "r"}, func(*corev1.Pod) {}, "p", "pod", "c", "r"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w, _ := mustWorkload(t, WorkloadInputs{Pod: testPod("shop", "p", tc.labels, tc.mod)})
			if w.WorkloadName != tc.wantName || w.WorkloadType != tc.wantType || w.CanonicalName != tc.wantCanonical || w.CanonicalRevision != tc.wantRev {
				t.Errorf("got %s %s %s %s, want %s %s %s %s", w.WorkloadName, w.WorkloadType, w.CanonicalName, w.CanonicalRevision,
					tc.wantName, tc.wantType, tc.wantCanonical, tc.wantRev)
			}
		})
	}
}

func testService(ns, name string, selector map[string]string, ports ...corev1.ServicePort) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       corev1.ServiceSpec{Selector: selector, ClusterIP: "198.19.0.10", Ports: ports},
	}
}

func TestBuildWorkloadServices(t *testing.T) {
	web := map[string]string{"app": "web"}
	pod := testPod("shop", "web", map[string]string{"app": "web", "tier": "front"})
	services := []*corev1.Service{
		testService("shop", "web", web,
			corev1.ServicePort{Name: "http", Port: 80, TargetPort: intstr.FromString("http")},
			corev1.ServicePort{Name: "num", Port: 90, TargetPort: intstr.FromInt32(9090)},
			corev1.ServicePort{Name: "default", Port: 70},
			corev1.ServicePort{Name: "missing", Port: 81, TargetPort: intstr.FromString("admin")},
			corev1.ServicePort{Name: "udp-named", Port: 53, TargetPort: intstr.FromString("dns"), Protocol: corev1.ProtocolUDP},
			corev1.ServicePort{Name: "tcp-to-udp-name", Port: 54, TargetPort: intstr.FromString("dns")},
		),
		testService("other", "web", web, corev1.ServicePort{Port: 80}),                                   // other namespace
		testService("shop", "api", map[string]string{"app": "api"}, corev1.ServicePort{Port: 80}),        // no match
		testService("shop", "selectorless", nil, corev1.ServicePort{Port: 80}),                           // endpoints from slices
		testService("shop", "only-udp", web, corev1.ServicePort{Port: 53, Protocol: corev1.ProtocolUDP}), // no TCP port
		func() *corev1.Service { // headless: no Service address, so not listed
			s := testService("shop", "headless", web, corev1.ServicePort{Port: 80})
			s.Spec.ClusterIP = corev1.ClusterIPNone
			return s
		}(),
		func() *corev1.Service {
			s := testService("shop", "ext", web, corev1.ServicePort{Port: 80})
			s.Spec.Type = corev1.ServiceTypeExternalName
			return s
		}(),
		testService("shop", "front", map[string]string{"tier": "front"}, corev1.ServicePort{Port: 443, TargetPort: intstr.FromInt32(8443)}),
	}
	w, skipped := mustWorkload(t, WorkloadInputs{Pod: pod, Services: services})
	want := map[string]*workloadv1.PortList{
		"shop/web.shop.svc.cluster.local": {Ports: []*workloadv1.Port{
			{ServicePort: 70, TargetPort: 70},
			{ServicePort: 80, TargetPort: 8080},
			{ServicePort: 90, TargetPort: 9090},
		}},
		"shop/front.shop.svc.cluster.local": {Ports: []*workloadv1.Port{{ServicePort: 443, TargetPort: 8443}}},
	}
	if !Equal(&workloadv1.Workload{Services: w.Services}, &workloadv1.Workload{Services: want}) {
		t.Errorf("services\n%v\nwant\n%v", w.Services, want)
	}
	var reported []string
	for _, s := range skipped {
		reported = append(reported, s.Object)
	}
	wantSkipped := []string{
		"Service shop/web port missing on Pod web",
		"Service shop/web port tcp-to-udp-name on Pod web",
	}
	if !slices.Equal(reported, wantSkipped) {
		t.Errorf("skipped %v, want %v", reported, wantSkipped)
	}
}

func TestBuildWorkloadAuthorizationPolicies(t *testing.T) {
	sel := func(l map[string]string) *securityv1.WorkloadSelector {
		return &securityv1.WorkloadSelector{MatchLabels: l}
	}
	ap := func(ns, name string, spec securityv1.AuthorizationPolicySpec) *securityv1.AuthorizationPolicy {
		return &securityv1.AuthorizationPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: spec}
	}
	web := map[string]string{"app": "web"}
	policies := []*securityv1.AuthorizationPolicy{
		ap("shop", "z-match", securityv1.AuthorizationPolicySpec{Selector: sel(web)}),
		ap("shop", "a-deny-match", securityv1.AuthorizationPolicySpec{Selector: sel(web), Action: securityv1.ActionDeny}),
		ap("istio-system", "root-match", securityv1.AuthorizationPolicySpec{Selector: sel(web)}),
		ap("other", "other-ns", securityv1.AuthorizationPolicySpec{Selector: sel(web)}),
		ap("shop", "no-match", securityv1.AuthorizationPolicySpec{Selector: sel(map[string]string{"app": "api"})}),
		ap("shop", "more-labels", securityv1.AuthorizationPolicySpec{Selector: sel(map[string]string{"app": "web", "v": "2"})}),
		ap("shop", "namespace-wide", securityv1.AuthorizationPolicySpec{}),
		ap("shop", "empty-selector", securityv1.AuthorizationPolicySpec{Selector: sel(nil)}),
		ap("shop", "custom", securityv1.AuthorizationPolicySpec{Selector: sel(web), Action: securityv1.ActionCustom}),
		ap("shop", "audit", securityv1.AuthorizationPolicySpec{Selector: sel(web), Action: securityv1.ActionAudit}),
		ap("shop", "target-ref", securityv1.AuthorizationPolicySpec{TargetRef: &securityv1.PolicyTargetReference{Kind: "Service", Name: "web"}}),
	}
	peer := []*securityv1.PeerAuthentication{
		{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "strict"}, Spec: securityv1.PeerAuthenticationSpec{
			Mtls: &securityv1.MutualTLS{Mode: securityv1.MTLSModeStrict}}},
	}
	w, _ := mustWorkload(t, WorkloadInputs{Pod: testPod("shop", "web", web), AuthorizationPolicies: policies, PeerAuthentications: peer})
	want := []string{"istio-system/root-match", "shop/a-deny-match", "shop/converted_peer_authentication_strict", "shop/z-match"}
	if !slices.Equal(w.AuthorizationPolicies, want) {
		t.Errorf("authorization_policies %v, want %v", w.AuthorizationPolicies, want)
	}
}

func TestBuildService(t *testing.T) {
	svc := testService("shop", "web", map[string]string{"app": "web"},
		corev1.ServicePort{Name: "http-web", Port: 80, TargetPort: intstr.FromString("http")},
		corev1.ServicePort{Name: "grpc", Port: 90, TargetPort: intstr.FromInt32(9090), AppProtocol: ptr.To("kubernetes.io/h2c")},
		corev1.ServicePort{Name: "plain", Port: 70},
		corev1.ServicePort{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP},
	)
	svc.Spec.ClusterIPs = []string{"198.19.0.10", "fd01::10"}
	addr, skipped := BuildService(svc, Config{DomainSuffix: "example.internal", Network: "n1"})
	if skipped != nil {
		t.Fatal(skipped)
	}
	want := &workloadv1.Service{
		Name: "web", Namespace: "shop", Hostname: "web.shop.svc.example.internal",
		Addresses: []*workloadv1.NetworkAddress{
			{Network: "n1", Address: []byte{198, 19, 0, 10}},
			{Network: "n1", Address: netip.MustParseAddr("fd01::10").AsSlice()},
		},
		Ports: []*workloadv1.Port{
			{ServicePort: 80, AppProtocol: "http"},
			{ServicePort: 90, TargetPort: 9090, AppProtocol: "kubernetes.io/h2c"},
			{ServicePort: 70, TargetPort: 70},
		},
	}
	if !Equal(addr.GetService(), want) {
		t.Errorf("got\n%v\nwant\n%v", addr.GetService(), want)
	}
	if name := AddressName(addr); name != "shop/web.shop.svc.example.internal" {
		t.Errorf("name %q", name)
	}

	for _, tc := range []struct {
		name   string
		mod    func(*corev1.Service)
		reason string
	}{
		{"headless", func(s *corev1.Service) { s.Spec.ClusterIP = corev1.ClusterIPNone }, "headless"},
		{"external name", func(s *corev1.Service) { s.Spec.Type = corev1.ServiceTypeExternalName }, "ExternalName"},
		{"no cluster IP yet", func(s *corev1.Service) { s.Spec.ClusterIP = "" }, "no cluster IP"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := testService("shop", "web", nil, corev1.ServicePort{Port: 80})
			tc.mod(s)
			addr, skipped := BuildService(s, Config{})
			if addr != nil || skipped == nil || !strings.Contains(skipped.Reason, tc.reason) {
				t.Errorf("got %v, %v; want no address and a reason with %q", addr, skipped, tc.reason)
			}
		})
	}
}

func TestNamesAndTypeURLs(t *testing.T) {
	if got := "type.googleapis.com/" + string((&workloadv1.Address{}).ProtoReflect().Descriptor().FullName()); got != AddressTypeURL {
		t.Errorf("AddressTypeURL %q, proto says %q", AddressTypeURL, got)
	}
	if got := "type.googleapis.com/" + string((&workloadv1.Authorization{}).ProtoReflect().Descriptor().FullName()); got != AuthorizationTypeURL {
		t.Errorf("AuthorizationTypeURL %q, proto says %q", AuthorizationTypeURL, got)
	}
	a := &workloadv1.Authorization{Namespace: "shop", Name: "p"}
	if AuthorizationName(a) != "shop/p" {
		t.Errorf("AuthorizationName %q", AuthorizationName(a))
	}
	if AddressName(&workloadv1.Address{}) != "" {
		t.Error("empty Address has a name")
	}
}

func TestEqual(t *testing.T) {
	pod := testPod("shop", "web", map[string]string{"app": "web"})
	a, _ := BuildWorkload(WorkloadInputs{Pod: pod}, Config{})
	b, _ := BuildWorkload(WorkloadInputs{Pod: pod.DeepCopy()}, Config{})
	if !Equal(a, b) {
		t.Error("the same pod built twice gives different workloads")
	}
	pod.Status.PodIP = "198.18.1.11"
	c, _ := BuildWorkload(WorkloadInputs{Pod: pod}, Config{})
	if Equal(a, c) {
		t.Error("a changed IP gives an equal workload")
	}
}
