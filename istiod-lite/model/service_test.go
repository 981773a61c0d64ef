package model

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	workloadv1 "github.com/cairnmesh/cairn/apis/workload/v1"
)

func TestBuildEndpointSliceWorkloads(t *testing.T) {
	svc := testService("db", "ext", nil,
		corev1.ServicePort{Name: "sql", Port: 5432},
		corev1.ServicePort{Name: "metrics", Port: 9100},
		corev1.ServicePort{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP})
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: "db", Name: "ext-abc"},
		Ports: []discoveryv1.EndpointPort{
			{Name: ptr.To("sql"), Port: ptr.To[int32](15432)},
			{Name: ptr.To("dns"), Port: ptr.To[int32](53), Protocol: ptr.To(corev1.ProtocolUDP)},
		},
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"203.0.113.5"}, NodeName: ptr.To("node-a")},
			{Addresses: []string{"203.0.113.6"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true), Terminating: ptr.To(true)}},
			{Addresses: []string{"198.18.1.10"}, TargetRef: &corev1.ObjectReference{Kind: "Pod", Name: "p"}},
			{Addresses: []string{"not-an-ip"}},
		},
	}
	got := BuildEndpointSliceWorkloads(slice, svc, Config{})
	if len(got) != 2 {
		t.Fatalf("got %d workloads, want 2: %v", len(got), got)
	}
	w := got[0].GetWorkload()
	want := map[string]*workloadv1.PortList{"db/ext.db.svc.cluster.local": {Ports: []*workloadv1.Port{{ServicePort: 5432, TargetPort: 15432}}}}
	if w.Uid != "Kubernetes/discovery.k8s.io/EndpointSlice/db/ext-abc/203.0.113.5" || w.Node != "node-a" ||
		w.Status != workloadv1.WorkloadStatus_HEALTHY || w.TunnelProtocol != workloadv1.TunnelProtocol_NONE ||
		!Equal(&workloadv1.Workload{Services: w.Services}, &workloadv1.Workload{Services: want}) {
		t.Errorf("got %v", w)
	}
	if s := got[1].GetWorkload().Status; s != workloadv1.WorkloadStatus_UNHEALTHY {
		t.Errorf("terminating endpoint is %v", s)
	}
	// Each workload owns its ports: changing one must not change another.
	got[0].GetWorkload().Services["db/ext.db.svc.cluster.local"].Ports[0].TargetPort = 1
	if got[1].GetWorkload().Services["db/ext.db.svc.cluster.local"].Ports[0].TargetPort != 15432 {
		t.Error("workloads share Port messages")
	}

	// Services with a selector get their endpoints from pods.
	svc.Spec.Selector = map[string]string{"app": "db"}
	if got := BuildEndpointSliceWorkloads(slice, svc, Config{}); got != nil {
		t.Errorf("selector Service: got %v", got)
	}
	if got := BuildEndpointSliceWorkloads(slice, nil, Config{}); got != nil {
		t.Errorf("no Service: got %v", got)
	}
}
