// Package waypointspec says what a waypoint is in the Kubernetes API: a
// Gateway API Gateway of class istio-waypoint with one HBONE listener, and
// the labels that deploy it (istio.io/waypoint-for) and that send traffic
// through it (istio.io/use-waypoint, istio.io/use-waypoint-namespace).
// The names and values are Istio ambient's, so that manifests and habits
// carry over.
//
// istiod-lite (which turns such Gateways into waypoint deployments and
// selects waypoints for Services and workloads) and cairnctl (which
// creates them) share these definitions; the components never import
// each other, so they live here.
package waypointspec

import (
	"fmt"
	"slices"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// The Gateway of a waypoint.
const (
	// ClassName is the GatewayClass of every waypoint Gateway.
	ClassName = "istio-waypoint"
	// ListenerName, ListenerPort and ListenerProtocol describe the one
	// listener of a waypoint Gateway: HBONE (HTTP/2 CONNECT in mutual TLS)
	// on 15008, where ztunnels send the traffic the waypoint handles.
	ListenerName     = "mesh"
	ListenerPort     = 15008
	ListenerProtocol = "HBONE"
	// DefaultName is the name `cairnctl waypoint` (and istioctl) give a
	// waypoint when none is given.
	DefaultName = "waypoint"
)

// Labels that select waypoints, as Istio ambient spells them.
const (
	// ForLabel on a waypoint Gateway says which traffic it handles: one of
	// the For* values. Absent means ForService.
	ForLabel = "istio.io/waypoint-for"
	// UseWaypointLabel on a namespace, Service or pod names the waypoint
	// its traffic goes through, or is UseWaypointNone to opt out of one
	// set on its namespace.
	UseWaypointLabel = "istio.io/use-waypoint"
	// UseWaypointNamespaceLabel, next to UseWaypointLabel, names the
	// namespace of the waypoint when it is not the object's own.
	UseWaypointNamespaceLabel = "istio.io/use-waypoint-namespace"
	// UseWaypointNone as the value of UseWaypointLabel opts out. It is
	// therefore not a valid waypoint name.
	UseWaypointNone = "none"
)

// The values of ForLabel.
const (
	// ForService: traffic addressed to a Service (its VIP) that uses the
	// waypoint. The default.
	ForService = "service"
	// ForWorkload: traffic addressed to a pod (its IP) that uses it.
	ForWorkload = "workload"
	// ForAll: both.
	ForAll = "all"
	// ForNone: neither; the waypoint is deployed but receives nothing.
	ForNone = "none"
)

// ForValues lists the values of ForLabel, the default first.
func ForValues() []string { return []string{ForService, ForWorkload, ForAll, ForNone} }

// ValidFor reports whether v is a value of ForLabel.
func ValidFor(v string) bool { return slices.Contains(ForValues(), v) }

// For returns what traffic gw handles: its ForLabel, or ForService when
// the label is absent. An unknown value is returned as it is; callers
// check it with ValidFor.
func For(gw *gatewayv1.Gateway) string {
	if v, ok := gw.Labels[ForLabel]; ok {
		return v
	}
	return ForService
}

// IsWaypoint reports whether gw is a waypoint: its class is ClassName.
func IsWaypoint(gw *gatewayv1.Gateway) bool {
	return string(gw.Spec.GatewayClassName) == ClassName
}

// ValidateName checks a waypoint's name. The controller names the
// waypoint's Deployment, Service and ServiceAccount after the Gateway, so
// the name must be valid for a Service (an RFC 1035 label), and it may not
// be UseWaypointNone, which in UseWaypointLabel means "no waypoint".
func ValidateName(name string) error {
	if name == UseWaypointNone {
		return fmt.Errorf("waypoint name %q is reserved: %s=%s means \"no waypoint\"", name, UseWaypointLabel, UseWaypointNone)
	}
	if errs := validation.IsDNS1035Label(name); len(errs) > 0 {
		return fmt.Errorf("waypoint name %q is not valid (a Service is named after it): %s", name, strings.Join(errs, "; "))
	}
	return nil
}

// Gateway returns the waypoint Gateway named name in namespace handling
// the traffic for (one of ForValues). It carries ForLabel explicitly, so
// that what the waypoint does is readable on the object.
func Gateway(namespace, name, forValue string) (*gatewayv1.Gateway, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	if !ValidFor(forValue) {
		return nil, fmt.Errorf("waypoint traffic type %q is not one of %s", forValue, strings.Join(ForValues(), ", "))
	}
	return &gatewayv1.Gateway{
		TypeMeta: metav1.TypeMeta{
			APIVersion: gatewayv1.GroupVersion.String(),
			Kind:       "Gateway",
		},
		ObjectMeta: metav1.ObjectMeta{
			Name:      name,
			Namespace: namespace,
			Labels:    map[string]string{ForLabel: forValue},
		},
		Spec: gatewayv1.GatewaySpec{
			GatewayClassName: ClassName,
			Listeners: []gatewayv1.Listener{{
				Name:     ListenerName,
				Port:     ListenerPort,
				Protocol: ListenerProtocol,
			}},
		},
	}, nil
}

// Ref names a waypoint: a Gateway's namespace and name.
type Ref struct {
	Namespace, Name string
}

func (r Ref) String() string { return r.Namespace + "/" + r.Name }

// UseWaypoint reads UseWaypointLabel and UseWaypointNamespaceLabel from the
// labels of an object in namespace. set is false when the object does not
// name a waypoint; optOut is true when it says UseWaypointNone (which
// overrides a waypoint set on its namespace). Without
// UseWaypointNamespaceLabel the waypoint is in the object's namespace.
func UseWaypoint(labels map[string]string, namespace string) (ref Ref, set, optOut bool) {
	name, ok := labels[UseWaypointLabel]
	if !ok || name == "" {
		return Ref{}, false, false
	}
	if name == UseWaypointNone {
		return Ref{}, false, true
	}
	ns := labels[UseWaypointNamespaceLabel]
	if ns == "" {
		ns = namespace
	}
	return Ref{Namespace: ns, Name: name}, true, false
}
