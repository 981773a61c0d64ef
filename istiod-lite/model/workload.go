package model

import (
	"cmp"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"

	securityv1 "github.com/cairnmesh/cairn/apis/security/v1"
	workloadv1 "github.com/cairnmesh/cairn/apis/workload/v1"
	"github.com/cairnmesh/cairn/internal/ambient"
)

// WorkloadInputs are the objects a pod's workload depends on. Services and
// policies may include objects of other namespaces; the builder picks those
// that apply.
type WorkloadInputs struct {
	// Pod is the pod to build the workload of.
	Pod *corev1.Pod
	// Namespace is the pod's namespace; nil when it is not known (yet),
	// which enrols nothing by namespace.
	Namespace *corev1.Namespace
	// Services give the workload's services map (those in the pod's
	// namespace whose selector matches the pod).
	Services []*corev1.Service
	// AuthorizationPolicies give authorization_policies (selector policies
	// of the pod's namespace and of the root namespace that match).
	AuthorizationPolicies []*securityv1.AuthorizationPolicy
	// PeerAuthentications give the converted PeerAuthentication listed in
	// authorization_policies, if the effective one says STRICT anywhere.
	PeerAuthentications []*securityv1.PeerAuthentication
}

// BuildWorkload returns the Address of a pod's workload, or nil when the pod
// gives none: it has no IP yet, is not scheduled, has finished (Succeeded or
// Failed), or uses the host network (it shares the node's address, so it
// cannot be told apart by IP). Every pod that has its own IP gives a
// workload, enrolled or not: ztunnel must know destinations outside the
// mesh too. skipped lists the Service ports left out of the services map
// and the reason why there is no workload.
func BuildWorkload(in WorkloadInputs, cfg Config) (addr *workloadv1.Address, skipped []Skipped) {
	cfg = cfg.withDefaults()
	pod := in.Pod
	podName := "Pod " + pod.Namespace + "/" + pod.Name
	switch {
	case pod.Spec.NodeName == "":
		return nil, []Skipped{{podName, "not scheduled to a node yet"}}
	case pod.Spec.HostNetwork:
		return nil, []Skipped{{podName, "uses the host network, so it has no address of its own"}}
	case pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed:
		return nil, []Skipped{{podName, "has finished (phase " + string(pod.Status.Phase) + ")"}}
	}
	ips := podAddresses(pod)
	if len(ips) == 0 {
		return nil, []Skipped{{podName, "has no IP yet"}}
	}

	w := &workloadv1.Workload{
		Uid:            cfg.PodUID(pod.Namespace, pod.Name),
		Name:           pod.Name,
		Namespace:      pod.Namespace,
		Addresses:      ips,
		Network:        cfg.Network,
		Node:           pod.Spec.NodeName,
		ServiceAccount: cmp.Or(pod.Spec.ServiceAccountName, "default"),
		TrustDomain:    cfg.TrustDomain,
		TunnelProtocol: workloadv1.TunnelProtocol_NONE,
		Status:         workloadv1.WorkloadStatus_UNHEALTHY,
		ClusterId:      cfg.ClusterID,
	}
	if Enrolled(pod, in.Namespace) {
		w.TunnelProtocol = workloadv1.TunnelProtocol_HBONE
	}
	if podReady(pod) && pod.DeletionTimestamp == nil {
		w.Status = workloadv1.WorkloadStatus_HEALTHY
	}
	w.WorkloadName, w.WorkloadType = workloadOwner(pod)
	w.CanonicalName = firstLabel(pod.Labels, w.WorkloadName,
		"service.istio.io/canonical-name", "app.kubernetes.io/name", "app")
	w.CanonicalRevision = firstLabel(pod.Labels, "latest",
		"service.istio.io/canonical-revision", "app.kubernetes.io/version", "version")

	for _, svc := range in.Services {
		if svc.Namespace != pod.Namespace || len(svc.Spec.Selector) == 0 || !hasClusterIP(svc) ||
			!labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(pod.Labels)) {
			continue
		}
		ports, skip := servicePortsOnPod(svc, pod)
		skipped = append(skipped, skip...)
		if len(ports) == 0 {
			continue
		}
		if w.Services == nil {
			w.Services = make(map[string]*workloadv1.PortList)
		}
		w.Services[ServiceName(svc.Namespace, cfg.Hostname(svc.Namespace, svc.Name))] = &workloadv1.PortList{Ports: ports}
	}

	w.AuthorizationPolicies = selectingPolicies(pod, in, cfg)
	return &workloadv1.Address{Type: &workloadv1.Address_Workload{Workload: w}}, skipped
}

// Enrolled reports whether a pod is in the mesh (the rule ztunnel's
// capture follows too: see internal/ambient).
func Enrolled(pod *corev1.Pod, ns *corev1.Namespace) bool { return ambient.Enrolled(pod, ns) }

// podAddresses returns the pod's IPs as 4- or 16-byte slices.
func podAddresses(pod *corev1.Pod) [][]byte {
	var raw []string
	for _, ip := range pod.Status.PodIPs {
		raw = append(raw, ip.IP)
	}
	if len(raw) == 0 && pod.Status.PodIP != "" {
		raw = []string{pod.Status.PodIP}
	}
	var out [][]byte
	for _, s := range raw {
		if ip, err := netip.ParseAddr(s); err == nil {
			out = append(out, ip.Unmap().AsSlice())
		}
	}
	return out
}

func podReady(pod *corev1.Pod) bool {
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// workloadOwner names what runs the pod. A ReplicaSet created by a
// Deployment is named "<deployment>-<pod-template-hash>"; the hash label
// lets us strip it without looking the ReplicaSet up.
func workloadOwner(pod *corev1.Pod) (name, kind string) {
	for _, ref := range pod.OwnerReferences {
		if ref.Controller == nil || !*ref.Controller {
			continue
		}
		switch ref.Kind {
		case "ReplicaSet":
			if hash := pod.Labels["pod-template-hash"]; hash != "" {
				if d, ok := strings.CutSuffix(ref.Name, "-"+hash); ok {
					return d, "deployment"
				}
			}
			return ref.Name, "replicaset"
		case "Job":
			// A CronJob names its Jobs "<cronjob>-<schedule time>"; the
			// Job name is what the pod's labels carry, so keep it.
			return ref.Name, "job"
		default:
			return ref.Name, strings.ToLower(ref.Kind)
		}
	}
	return pod.Name, "pod"
}

func firstLabel(l map[string]string, fallback string, keys ...string) string {
	for _, k := range keys {
		if v := l[k]; v != "" {
			return v
		}
	}
	return fallback
}

// servicePortsOnPod maps the Service's TCP ports to ports of the pod. A
// named targetPort is looked up among the pod's container ports; a port the
// pod does not have is left out and reported.
func servicePortsOnPod(svc *corev1.Service, pod *corev1.Pod) (ports []*workloadv1.Port, skipped []Skipped) {
	for _, sp := range svc.Spec.Ports {
		if !isTCP(sp.Protocol) {
			continue
		}
		target, ok := resolveTargetPort(sp, pod)
		if !ok {
			skipped = append(skipped, Skipped{
				Object: "Service " + svc.Namespace + "/" + svc.Name + " port " + portName(sp) + " on Pod " + pod.Name,
				Reason: "targetPort " + sp.TargetPort.StrVal + " names no container port of the pod; add a container port with that name or use a number",
			})
			continue
		}
		ports = append(ports, &workloadv1.Port{ServicePort: uint32(sp.Port), TargetPort: target})
	}
	slices.SortStableFunc(ports, func(a, b *workloadv1.Port) int { return cmp.Compare(a.ServicePort, b.ServicePort) })
	return ports, skipped
}

func resolveTargetPort(sp corev1.ServicePort, pod *corev1.Pod) (uint32, bool) {
	switch {
	case sp.TargetPort.Type == intstr.String && sp.TargetPort.StrVal != "":
		for _, c := range pod.Spec.Containers {
			for _, cp := range c.Ports {
				if cp.Name == sp.TargetPort.StrVal && isTCP(cp.Protocol) {
					return uint32(cp.ContainerPort), true
				}
			}
		}
		return 0, false
	case sp.TargetPort.Type == intstr.Int && sp.TargetPort.IntVal > 0:
		return uint32(sp.TargetPort.IntVal), true
	}
	return uint32(sp.Port), true // an unset targetPort defaults to port
}

func isTCP(p corev1.Protocol) bool { return p == "" || p == corev1.ProtocolTCP }

func portName(sp corev1.ServicePort) string {
	if sp.Name != "" {
		return sp.Name
	}
	return strconv.Itoa(int(sp.Port))
}

// selectingPolicies returns the sorted names of the WORKLOAD_SELECTOR
// Authorizations that apply to the pod: AuthorizationPolicies with a
// selector in the pod's namespace or the root namespace whose labels match,
// and the converted PeerAuthentication that is effective for the pod.
func selectingPolicies(pod *corev1.Pod, in WorkloadInputs, cfg Config) []string {
	var names []string
	podLabels := labels.Set(pod.Labels)
	for _, p := range in.AuthorizationPolicies {
		if p.Namespace != pod.Namespace && p.Namespace != cfg.RootNamespace {
			continue
		}
		if !hasSelector(p.Spec.Selector) || !forZtunnel(p) ||
			!labels.SelectorFromSet(p.Spec.Selector.MatchLabels).Matches(podLabels) {
			continue
		}
		names = append(names, p.Namespace+"/"+p.Name)
	}
	if pa := EffectivePeerAuthentication(pod, in.PeerAuthentications, cfg.RootNamespace); pa != nil {
		if a, _ := BuildPeerAuthentication(pa, InheritedMTLSMode(pa, in.PeerAuthentications, cfg.RootNamespace), cfg.RootNamespace); a != nil {
			names = append(names, AuthorizationName(a))
		}
	}
	slices.Sort(names)
	return slices.Compact(names)
}

func hasSelector(s *securityv1.WorkloadSelector) bool { return s != nil && len(s.MatchLabels) > 0 }

// forZtunnel reports whether BuildAuthorization gives ztunnel an
// Authorization for the policy.
func forZtunnel(p *securityv1.AuthorizationPolicy) bool {
	if p.Spec.TargetRef != nil || len(p.Spec.TargetRefs) > 0 {
		return false
	}
	switch p.Spec.Action {
	case "", securityv1.ActionAllow, securityv1.ActionDeny:
		return true
	}
	return false
}
