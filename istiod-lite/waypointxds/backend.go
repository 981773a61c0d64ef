package waypointxds

import (
	"fmt"

	"k8s.io/apimachinery/pkg/types"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// target is a Service port that requests are sent to: the cluster
// "outbound|<port>||<service FQDN>".
type target struct {
	service types.NamespacedName
	port    int32
}

// problem is why a reference did not resolve: a ResolvedRefs reason and a
// message naming the reference.
type problem struct {
	reason  gatewayv1.RouteConditionReason
	message string
}

// resolveBackend resolves a backendRef (or a mirror's) of a route of the
// given kind in routeNS. The ReferenceGrant is checked before the Service
// is looked up, so that a route cannot learn whether a Service exists in a
// namespace that did not grant it access.
//
// A consumer route (in another namespace than the Service it is for) may
// send to that Service without a ReferenceGrant when it is the route's only
// parent: the route then applies only to its own namespace's requests to
// that Service, which reach the same Service and the same waypoint, with
// the same policies, as without the route. Any other Service in another
// namespace needs a grant.
func (t *translator) resolveBackend(kind, routeNS string, parents []gatewayv1.ParentReference, ref gatewayv1.BackendObjectReference) (target, *problem) {
	group, refKind := "", "Service"
	if ref.Group != nil {
		group = string(*ref.Group)
	}
	if ref.Kind != nil {
		refKind = string(*ref.Kind)
	}
	ns := routeNS
	if ref.Namespace != nil && *ref.Namespace != "" {
		ns = string(*ref.Namespace)
	}
	name := types.NamespacedName{Namespace: ns, Name: string(ref.Name)}
	if (group != "" && group != "core") || refKind != "Service" {
		return target{}, &problem{gatewayv1.RouteReasonInvalidKind, fmt.Sprintf(
			"backendRef %s %s (group %q) is not supported: a waypoint sends only to Services", refKind, name, group)}
	}
	if ns != routeNS && !t.granted(kind, routeNS, name) && !onlyParent(routeNS, parents, name) {
		return target{}, &problem{gatewayv1.RouteReasonRefNotPermitted, fmt.Sprintf(
			"backendRef Service %s is in another namespace: add a ReferenceGrant in namespace %s from %s in namespace %s to Service %s",
			name, ns, kind, routeNS, name.Name)}
	}
	svc, ok := t.services[name]
	if !ok {
		return target{}, &problem{gatewayv1.RouteReasonBackendNotFound, fmt.Sprintf("backendRef Service %s not found", name)}
	}
	if ref.Port == nil {
		return target{}, &problem{gatewayv1.RouteReasonBackendNotFound, fmt.Sprintf(
			"backendRef Service %s has no port: name one of the Service's ports", name)}
	}
	port := int32(*ref.Port)
	if _, ok := svc.port(port); !ok {
		return target{}, &problem{gatewayv1.RouteReasonBackendNotFound, fmt.Sprintf(
			"backendRef Service %s has no port %d (its ports: %s)", name, port, portList(svc))}
	}
	return target{service: name, port: port}, nil
}

// granted reports whether a ReferenceGrant in the Service's namespace lets
// routes of kind in fromNS refer to it.
func (t *translator) granted(kind, fromNS string, svc types.NamespacedName) bool {
	for _, g := range t.in.ReferenceGrants {
		if g == nil || g.Namespace != svc.Namespace {
			continue
		}
		from := false
		for _, f := range g.Spec.From {
			if string(f.Group) == gatewayv1.GroupName && string(f.Kind) == kind && string(f.Namespace) == fromNS {
				from = true
				break
			}
		}
		if !from {
			continue
		}
		for _, to := range g.Spec.To {
			if (to.Group == "" || to.Group == "core") && to.Kind == "Service" && (to.Name == nil || string(*to.Name) == svc.Name) {
				return true
			}
		}
	}
	return false
}

// onlyParent reports whether svc is the one Service every Service parentRef
// of a route names.
func onlyParent(routeNS string, parents []gatewayv1.ParentReference, svc types.NamespacedName) bool {
	found := false
	for _, ref := range parents {
		key, ok := serviceParent(routeNS, ref)
		if !ok {
			continue
		}
		if key != svc {
			return false
		}
		found = true
	}
	return found
}

func portList(s Service) string {
	out := ""
	for i, p := range s.Ports {
		if i > 0 {
			out += ", "
		}
		out += fmt.Sprint(p.Port)
	}
	if out == "" {
		return "none"
	}
	return out
}
