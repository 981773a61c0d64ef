package model

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	securityv1 "github.com/cairnmesh/cairn/apis/security/v1"
	workloadv1 "github.com/cairnmesh/cairn/apis/workload/v1"
)

// ConvertedPeerAuthenticationPrefix starts the name of the Authorization
// made from a PeerAuthentication. The underscores keep it apart from any
// AuthorizationPolicy, whose names cannot contain them.
const ConvertedPeerAuthenticationPrefix = "converted_peer_authentication_"

// BuildPeerAuthentication converts a PeerAuthentication into the
// Authorization that makes ztunnel refuse plaintext where the policy says
// STRICT, or nil when it says STRICT nowhere. The encoding: a DENY policy
// with one rule, one clause and one Match with not_principals = [presence]
// (no peer identity, i.e. plaintext), narrowed by destination_ports to the
// ports that portLevelMtls makes STRICT, or widened to all ports but
// not_destination_ports, those that portLevelMtls makes PERMISSIVE.
//
// Its scope is always WORKLOAD_SELECTOR: BuildWorkload lists it only on the
// workloads whose EffectivePeerAuthentication pa is, so a more specific
// PERMISSIVE policy wins over a less specific STRICT one, as in Istio.
//
// inherited is the mode that an UNSET mode of pa stands for
// (InheritedMTLSMode). DISABLE is treated as PERMISSIVE, as in Istio
// ambient, and reported in the condition.
func BuildPeerAuthentication(pa *securityv1.PeerAuthentication, inherited securityv1.MTLSMode, rootNamespace string) (*workloadv1.Authorization, []metav1.Condition) {
	base := normalMode(modeOf(pa.Spec.Mtls))
	if base == securityv1.MTLSModeUnset {
		base = normalMode(inherited)
		if base == securityv1.MTLSModeUnset {
			base = securityv1.MTLSModePermissive
		}
	}
	var notes []string
	if modeOf(pa.Spec.Mtls) == securityv1.MTLSModeDisable {
		notes = append(notes, "mode DISABLE is treated as PERMISSIVE in ambient mode")
	}
	var strictPorts, openPorts []uint32
	if len(pa.Spec.PortLevelMtls) > 0 && !hasSelector(pa.Spec.Selector) {
		notes = append(notes, "portLevelMtls is ignored because the policy has no selector; add a selector to set modes per port")
	} else {
		for _, key := range slices.Sorted(maps.Keys(pa.Spec.PortLevelMtls)) {
			n, err := strconv.ParseUint(key, 10, 16)
			if err != nil || n == 0 {
				notes = append(notes, fmt.Sprintf("portLevelMtls key %q is not a port number and is ignored", key))
				continue
			}
			m := pa.Spec.PortLevelMtls[key]
			if m.Mode == securityv1.MTLSModeDisable {
				notes = append(notes, fmt.Sprintf("port %d: mode DISABLE is treated as PERMISSIVE in ambient mode", n))
			}
			switch mode := normalMode(m.Mode); {
			case mode == securityv1.MTLSModeStrict && base != securityv1.MTLSModeStrict:
				strictPorts = append(strictPorts, uint32(n))
			case mode == securityv1.MTLSModePermissive && base == securityv1.MTLSModeStrict:
				openPorts = append(openPorts, uint32(n))
			}
		}
	}
	slices.Sort(strictPorts)
	slices.Sort(openPorts)

	conds := condition(metav1.ConditionTrue, ReasonAccepted, "ztunnel enforces the policy")
	if len(notes) > 0 {
		conds = condition(metav1.ConditionFalse, ReasonUnsupportedValue, strings.Join(notes, "; "))
	}
	m := &workloadv1.Match{
		NotPrincipals: []*workloadv1.StringMatch{stringMatch("*")},
	}
	switch {
	case base == securityv1.MTLSModeStrict:
		m.NotDestinationPorts = openPorts
	case len(strictPorts) > 0:
		m.DestinationPorts = strictPorts
	default:
		return nil, conds
	}
	a := &workloadv1.Authorization{
		Name:      ConvertedPeerAuthenticationPrefix + pa.Name,
		Namespace: pa.Namespace,
		Scope:     workloadv1.Scope_WORKLOAD_SELECTOR,
		Action:    workloadv1.Action_DENY,
		Rules:     []*workloadv1.Rule{{Clauses: []*workloadv1.Clause{{Matches: []*workloadv1.Match{m}}}}},
	}
	if hasSelector(pa.Spec.Selector) {
		a.Selector = maps.Clone(pa.Spec.Selector.MatchLabels)
	}
	return a, conds
}

func modeOf(m *securityv1.MutualTLS) securityv1.MTLSMode {
	if m == nil || m.Mode == "" {
		return securityv1.MTLSModeUnset
	}
	return m.Mode
}

// normalMode maps DISABLE to PERMISSIVE (ambient ignores DISABLE) and ""
// to UNSET.
func normalMode(m securityv1.MTLSMode) securityv1.MTLSMode {
	switch m {
	case "":
		return securityv1.MTLSModeUnset
	case securityv1.MTLSModeDisable:
		return securityv1.MTLSModePermissive
	}
	return m
}

// EffectivePeerAuthentication returns the PeerAuthentication that decides
// the mTLS mode of a pod: the one with a matching selector in the pod's
// namespace, else the one without selector in the pod's namespace, else the
// one without selector in rootNamespace; nil if none. Selector policies in
// the root namespace apply to its own pods only. Among several candidates
// of one level the oldest wins (then the first by name), as in Istio.
func EffectivePeerAuthentication(pod *corev1.Pod, pas []*securityv1.PeerAuthentication, rootNamespace string) *securityv1.PeerAuthentication {
	if rootNamespace == "" {
		rootNamespace = Config{}.withDefaults().RootNamespace
	}
	podLabels := labels.Set(pod.Labels)
	var workload, namespace, mesh *securityv1.PeerAuthentication
	for _, pa := range pas {
		switch {
		case pa.Namespace == pod.Namespace && hasSelector(pa.Spec.Selector):
			if labels.SelectorFromSet(pa.Spec.Selector.MatchLabels).Matches(podLabels) {
				workload = older(workload, pa)
			}
		case pa.Namespace == pod.Namespace:
			namespace = older(namespace, pa)
		case pa.Namespace == rootNamespace && !hasSelector(pa.Spec.Selector):
			mesh = older(mesh, pa)
		}
	}
	return cmp.Or(workload, namespace, mesh)
}

// InheritedMTLSMode is the mode that an UNSET mode of pa stands for: for a
// policy with a selector, the mode of its namespace's policy, else the
// mesh's; for a namespace's policy, the mesh's; PERMISSIVE at the top.
func InheritedMTLSMode(pa *securityv1.PeerAuthentication, pas []*securityv1.PeerAuthentication, rootNamespace string) securityv1.MTLSMode {
	if rootNamespace == "" {
		rootNamespace = Config{}.withDefaults().RootNamespace
	}
	var namespace, mesh *securityv1.PeerAuthentication
	for _, p := range pas {
		if hasSelector(p.Spec.Selector) {
			continue
		}
		if p.Namespace == pa.Namespace {
			namespace = older(namespace, p)
		}
		if p.Namespace == rootNamespace {
			mesh = older(mesh, p)
		}
	}
	var chain []*securityv1.PeerAuthentication
	if hasSelector(pa.Spec.Selector) {
		chain = append(chain, namespace)
	}
	if pa.Namespace != rootNamespace || hasSelector(pa.Spec.Selector) {
		chain = append(chain, mesh)
	}
	for _, p := range chain {
		if p == nil || p == pa {
			continue
		}
		if m := normalMode(modeOf(p.Spec.Mtls)); m != securityv1.MTLSModeUnset {
			return m
		}
	}
	return securityv1.MTLSModePermissive
}

// older returns the older of two policies (nil-safe), then the first by
// name.
func older(a, b *securityv1.PeerAuthentication) *securityv1.PeerAuthentication {
	switch {
	case a == nil:
		return b
	case b == nil:
		return a
	case !a.CreationTimestamp.Equal(&b.CreationTimestamp):
		if a.CreationTimestamp.Before(&b.CreationTimestamp) {
			return a
		}
		return b
	case b.Name < a.Name:
		return b
	}
	return a
}
