package waypointxds

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// Outcome is what the translation says about one Service parentRef of a
// route: the conditions of its RouteParentStatus. The status writer adds
// the controller name and LastTransitionTime, and holds Accepted at
// Unknown/Pending until the waypoint has acknowledged the resources.
type Outcome struct {
	// Kind is HTTPRoute or GRPCRoute.
	Kind  string
	Route types.NamespacedName
	// Generation is the route's metadata.generation the conditions are
	// about (their ObservedGeneration).
	Generation int64
	// ParentIndex is the parentRef's index in spec.parentRefs, ParentRef a
	// copy of it.
	ParentIndex int
	ParentRef   gatewayv1.ParentReference
	// Conditions are Accepted, ResolvedRefs and, when some rules were
	// dropped, PartiallyInvalid.
	Conditions []metav1.Condition
}

// Condition returns the condition of the given type, or nil.
func (o Outcome) Condition(typ string) *metav1.Condition {
	for i := range o.Conditions {
		if o.Conditions[i].Type == typ {
			return &o.Conditions[i]
		}
	}
	return nil
}

// maxProblems bounds how many unresolved references a ResolvedRefs message
// names.
const maxProblems = 8

func (t *translator) outcomes(states []*parentState) []Outcome {
	var out []Outcome
	w := t.in.Waypoint
	for _, st := range states {
		r := st.route
		var accepted metav1.Condition
		var partial *metav1.Condition
		if st.notAccepted != "" {
			accepted = condition(r, gatewayv1.RouteConditionAccepted, false, st.reason, st.notAccepted)
		} else {
			ports := make([]string, len(st.ports))
			for i, p := range st.ports {
				ports[i] = fmt.Sprint(p)
			}
			msg := fmt.Sprintf("applied by waypoint %s/%s to Service %s port(s) %s", w.Namespace, w.Name,
				parentKey(r, st.parentIndex), strings.Join(ports, ", "))
			if len(st.lost) > 0 {
				msg += "; " + strings.Join(st.lost, "; ")
			}
			accepted = condition(r, gatewayv1.RouteConditionAccepted, true, gatewayv1.RouteReasonAccepted, msg)
			if len(r.dropped) > 0 {
				c := condition(r, gatewayv1.RouteConditionPartiallyInvalid, true, gatewayv1.RouteReasonUnsupportedValue,
					"Dropped Rule(s): "+strings.Join(r.dropped, "; "))
				partial = &c
			}
		}
		conds := []metav1.Condition{accepted, resolvedRefs(r)}
		if partial != nil {
			conds = append(conds, *partial)
		}
		out = append(out, Outcome{
			Kind: r.kind, Route: r.key, Generation: r.generation,
			ParentIndex: st.parentIndex, ParentRef: *r.parents[st.parentIndex].DeepCopy(),
			Conditions: conds,
		})
	}
	sortOutcomes(out)
	return out
}

func parentKey(r *compiledRoute, index int) types.NamespacedName {
	key, _ := serviceParent(r.key.Namespace, r.parents[index])
	return key
}

func resolvedRefs(r *compiledRoute) metav1.Condition {
	if len(r.refs) == 0 {
		return condition(r, gatewayv1.RouteConditionResolvedRefs, true, gatewayv1.RouteReasonResolvedRefs, "all references resolved")
	}
	var msgs []string
	for i, p := range r.refs {
		if i == maxProblems {
			msgs = append(msgs, fmt.Sprintf("and %d more", len(r.refs)-maxProblems))
			break
		}
		msgs = append(msgs, p.message)
	}
	return condition(r, gatewayv1.RouteConditionResolvedRefs, false, r.refs[0].reason,
		strings.Join(msgs, "; ")+"; requests to these backends get 500 (gRPC: UNAVAILABLE)")
}

func condition(r *compiledRoute, typ gatewayv1.RouteConditionType, ok bool, reason gatewayv1.RouteConditionReason, msg string) metav1.Condition {
	status := metav1.ConditionFalse
	if ok {
		status = metav1.ConditionTrue
	}
	return metav1.Condition{
		Type: string(typ), Status: status, Reason: string(reason), Message: msg,
		ObservedGeneration: r.generation,
	}
}

func sortOutcomes(out []Outcome) {
	slices.SortFunc(out, func(a, b Outcome) int {
		return cmp.Or(cmp.Compare(a.Kind, b.Kind), cmp.Compare(a.Route.String(), b.Route.String()), cmp.Compare(a.ParentIndex, b.ParentIndex))
	})
}

// UnboundOutcomes returns the outcomes of the Service parentRefs that no
// waypoint's translation reports: the Service does not exist, or it uses
// no waypoint, so nothing applies the route. in.Waypoint is not read.
func UnboundOutcomes(in Input) []Outcome {
	t := newTranslator(in)
	var routes []*compiledRoute
	for _, r := range in.HTTPRoutes {
		if r != nil {
			routes = append(routes, t.compileHTTPRoute(r))
		}
	}
	for _, r := range in.GRPCRoutes {
		if r != nil {
			routes = append(routes, t.compileGRPCRoute(r))
		}
	}
	var out []Outcome
	for _, r := range routes {
		for pi, ref := range r.parents {
			key, ok := serviceParent(r.key.Namespace, ref)
			if !ok {
				continue
			}
			svc, found := t.services[key]
			var msg string
			switch {
			case !found:
				msg = fmt.Sprintf("Service %s not found", key)
			case svc.Waypoint == nil:
				msg = fmt.Sprintf("Service %s uses no waypoint, so nothing applies this route: label the Service (or namespace %s) "+
					"istio.io/use-waypoint=<waypoint name>; `cairnctl waypoint apply -n %s --enroll-namespace` deploys one and labels the namespace",
					key, key.Namespace, key.Namespace)
			default:
				continue // the translation of its waypoint reports it
			}
			out = append(out, Outcome{
				Kind: r.kind, Route: r.key, Generation: r.generation,
				ParentIndex: pi, ParentRef: *ref.DeepCopy(),
				Conditions: []metav1.Condition{
					condition(r, gatewayv1.RouteConditionAccepted, false, gatewayv1.RouteReasonNoMatchingParent, msg),
					resolvedRefs(r),
				},
			})
		}
	}
	sortOutcomes(out)
	return out
}
