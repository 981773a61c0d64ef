package model

import (
	"net/netip"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"google.golang.org/protobuf/proto"

	workloadv1 "github.com/cairnmesh/cairn/apis/workload/v1"
)

// BuildService returns the Address of a Service, or nil and the reason when
// the Service gives none: ExternalName Services (a DNS alias, no VIP),
// headless Services (clusterIP None; clients reach the pods directly) and
// Services whose cluster IP is not allocated yet. Ports other than TCP are
// left out.
func BuildService(svc *corev1.Service, cfg Config) (*workloadv1.Address, *Skipped) {
	cfg = cfg.withDefaults()
	name := "Service " + svc.Namespace + "/" + svc.Name
	switch {
	case svc.Spec.Type == corev1.ServiceTypeExternalName:
		return nil, &Skipped{name, "ExternalName Services have no cluster IP; ztunnel sees their traffic as going to the external name's address"}
	case svc.Spec.ClusterIP == corev1.ClusterIPNone:
		return nil, &Skipped{name, "headless Service (clusterIP None): clients connect to the pods' own addresses, which are workloads"}
	case !hasClusterIP(svc):
		return nil, &Skipped{name, "has no cluster IP yet"}
	}
	s := &workloadv1.Service{
		Name:      svc.Name,
		Namespace: svc.Namespace,
		Hostname:  cfg.Hostname(svc.Namespace, svc.Name),
	}
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 {
		ips = []string{svc.Spec.ClusterIP}
	}
	for _, raw := range ips {
		if ip, err := netip.ParseAddr(raw); err == nil {
			s.Addresses = append(s.Addresses, &workloadv1.NetworkAddress{Network: cfg.Network, Address: ip.Unmap().AsSlice()})
		}
	}
	for _, sp := range svc.Spec.Ports {
		if !isTCP(sp.Protocol) {
			continue
		}
		p := &workloadv1.Port{ServicePort: uint32(sp.Port), AppProtocol: appProtocol(sp)}
		switch {
		case sp.TargetPort.IntVal > 0:
			p.TargetPort = uint32(sp.TargetPort.IntVal)
		case sp.TargetPort.StrVal == "":
			p.TargetPort = uint32(sp.Port)
		}
		s.Ports = append(s.Ports, p)
	}
	return &workloadv1.Address{Type: &workloadv1.Address_Service{Service: s}}, nil
}

func hasClusterIP(svc *corev1.Service) bool {
	return svc.Spec.Type != corev1.ServiceTypeExternalName &&
		svc.Spec.ClusterIP != "" && svc.Spec.ClusterIP != corev1.ClusterIPNone
}

// appProtocol is the Service port's appProtocol, else the protocol its name
// announces ("http-web" is http), as Istio's protocol selection reads it.
func appProtocol(sp corev1.ServicePort) string {
	if sp.AppProtocol != nil {
		return *sp.AppProtocol
	}
	prefix, _, _ := strings.Cut(strings.ToLower(sp.Name), "-")
	switch prefix {
	case "http", "http2", "https", "grpc", "tcp", "tls", "mongo", "mysql", "redis":
		return prefix
	}
	return ""
}

// BuildEndpointSliceWorkloads returns a workload for each endpoint address
// of an EndpointSlice that is not a pod, for Services without a selector
// (for example a Service in front of a VM or an external database).
// Endpoints that point at a pod are skipped: the pod gives their workload.
// Such workloads are not in the mesh (tunnel NONE). svc is the Service the
// slice belongs to; it maps the slice's ports to Service ports by name.
func BuildEndpointSliceWorkloads(slice *discoveryv1.EndpointSlice, svc *corev1.Service, cfg Config) []*workloadv1.Address {
	cfg = cfg.withDefaults()
	if svc == nil || len(svc.Spec.Selector) > 0 || !hasClusterIP(svc) {
		return nil
	}
	var ports []*workloadv1.Port
	for _, sp := range svc.Spec.Ports {
		if !isTCP(sp.Protocol) {
			continue
		}
		for _, ep := range slice.Ports {
			if ep.Port != nil && (ep.Protocol == nil || isTCP(*ep.Protocol)) && deref(ep.Name) == sp.Name {
				ports = append(ports, &workloadv1.Port{ServicePort: uint32(sp.Port), TargetPort: uint32(*ep.Port)})
			}
		}
	}
	key := ServiceName(svc.Namespace, cfg.Hostname(svc.Namespace, svc.Name))
	var out []*workloadv1.Address
	for _, ep := range slice.Endpoints {
		if ep.TargetRef != nil && ep.TargetRef.Kind == "Pod" {
			continue
		}
		status := workloadv1.WorkloadStatus_HEALTHY
		if (ep.Conditions.Ready != nil && !*ep.Conditions.Ready) || (ep.Conditions.Terminating != nil && *ep.Conditions.Terminating) {
			status = workloadv1.WorkloadStatus_UNHEALTHY
		}
		for _, raw := range ep.Addresses {
			ip, err := netip.ParseAddr(raw)
			if err != nil {
				continue
			}
			w := &workloadv1.Workload{
				Uid:               cfg.ClusterID + "/discovery.k8s.io/EndpointSlice/" + slice.Namespace + "/" + slice.Name + "/" + ip.String(),
				Name:              slice.Name,
				Namespace:         slice.Namespace,
				Addresses:         [][]byte{ip.Unmap().AsSlice()},
				Network:           cfg.Network,
				Node:              deref(ep.NodeName),
				TunnelProtocol:    workloadv1.TunnelProtocol_NONE,
				Status:            status,
				WorkloadName:      svc.Name,
				WorkloadType:      "endpointslice",
				CanonicalName:     svc.Name,
				CanonicalRevision: "latest",
				ClusterId:         cfg.ClusterID,
			}
			if len(ports) > 0 {
				w.Services = map[string]*workloadv1.PortList{key: {Ports: clonePorts(ports)}}
			}
			out = append(out, &workloadv1.Address{Type: &workloadv1.Address_Workload{Workload: w}})
		}
	}
	return out
}

func clonePorts(ports []*workloadv1.Port) []*workloadv1.Port {
	out := make([]*workloadv1.Port, len(ports))
	for i, p := range ports {
		out[i] = proto.CloneOf(p)
	}
	return out
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}
