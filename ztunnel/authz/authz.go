// Package authz decides whether ztunnel lets an inbound connection through
// to a workload, given the L4 Authorizations that apply to it (see
// state.Snapshot.Policies). It is pure, so the inbound listeners, cairnctl
// explain and the tests share one implementation.
//
// The semantics are Istio's:
//
//   - Any matching DENY policy denies; DENY is checked first and wins.
//   - Otherwise, if no ALLOW policy applies, the connection is allowed.
//   - Otherwise it is allowed only if some ALLOW policy matches.
//
// A policy matches if any of its rules does. A policy without rules
// matches nothing (Istio: "If not set, the match will never occur"): an
// ALLOW policy without rules therefore denies everything no other ALLOW
// policy allows, and a DENY policy without rules denies nothing. A rule
// matches if all its clauses do, so a rule without clauses matches every
// connection. A clause matches if any of its matches does; one without
// matches matches nothing (the control plane never sends one, and
// state.Store rejects it). A Match holds if every field that is set holds;
// a Match with no field set holds for every connection.
//
// Identity fields (principals, namespaces, service accounts) are mTLS-only,
// as in Istio: a connection without a peer identity never matches a
// positive one, and always satisfies a negated one, since no entry can
// match. This is what lets not_principals = [presence] select exactly the
// plaintext connections (the encoding of a STRICT PeerAuthentication), and
// it is also why an ALLOW policy written only with notNamespaces admits
// plaintext (Istio's advisory ISTIO-SECURITY-2021-004).
package authz

import (
	"fmt"
	"net/netip"
	"strings"

	workloadv1 "github.com/cairnmesh/cairn/apis/workload/v1"
	"github.com/cairnmesh/cairn/internal/spiffe"
)

// convertedPeerAuthenticationPrefix starts the name of the DENY policy that
// istiod-lite makes from a STRICT PeerAuthentication (the control plane's
// naming, repeated here because ztunnel may not import istiod-lite); it
// only makes the reason clearer.
const convertedPeerAuthenticationPrefix = "converted_peer_authentication_"

// Conn is what ztunnel knows about an inbound connection.
type Conn struct {
	// SourceIdentity is the peer's identity from its mTLS certificate;
	// zero for plaintext.
	SourceIdentity spiffe.Identity
	// SourceIP is the client's address.
	SourceIP netip.Addr
	// DestinationIP is the workload address the connection is for.
	DestinationIP netip.Addr
	// DestinationPort is the port on the workload (after the Service's
	// targetPort mapping).
	DestinationPort uint16
	// Mesh is true when the connection arrived over mTLS (HBONE). The
	// identity counts only then: a plaintext connection cannot prove one.
	Mesh bool
}

// peer is the connection's identity in the forms the matches compare.
type peer struct {
	authenticated  bool
	principal      string // "<td>/ns/<ns>/sa/<sa>", without spiffe://
	namespace      string
	serviceAccount string
}

func (c Conn) peer() peer {
	id := c.SourceIdentity
	if !c.Mesh || id.IsZero() {
		return peer{}
	}
	return peer{
		authenticated:  true,
		principal:      strings.TrimPrefix(id.String(), "spiffe://"),
		namespace:      id.Namespace,
		serviceAccount: id.ServiceAccount,
	}
}

// Evaluate decides whether c may reach the workload that policies apply
// to. reason names the policy that decided, for the access log and
// cairnctl explain. Nil entries are ignored.
func Evaluate(policies []*workloadv1.Authorization, c Conn) (allowed bool, reason string) {
	p := c.peer()
	var allows []string
	for _, pol := range policies {
		if pol == nil {
			continue
		}
		switch pol.GetAction() {
		case workloadv1.Action_ALLOW:
			allows = append(allows, name(pol))
		case workloadv1.Action_DENY:
			if matches(pol, c, p) {
				return false, denyReason(pol)
			}
		default:
			// A newer control plane's action: enforcing less than it asks
			// could admit what it means to refuse, so refuse.
			return false, fmt.Sprintf("policy %s has action %d, which this ztunnel does not know: denied", name(pol), pol.GetAction())
		}
	}
	if len(allows) == 0 {
		return true, "no DENY policy matched and no ALLOW policy applies"
	}
	for _, pol := range policies {
		if pol != nil && pol.GetAction() == workloadv1.Action_ALLOW && matches(pol, c, p) {
			return true, "allowed by ALLOW policy " + name(pol)
		}
	}
	return false, "no ALLOW policy matched (" + strings.Join(allows, ", ") + ")"
}

// Matches reports whether c matches the rules of pol, whatever its action.
func Matches(pol *workloadv1.Authorization, c Conn) bool {
	return matches(pol, c, c.peer())
}

func name(pol *workloadv1.Authorization) string {
	return pol.GetNamespace() + "/" + pol.GetName()
}

func denyReason(pol *workloadv1.Authorization) string {
	if pa, ok := strings.CutPrefix(pol.GetName(), convertedPeerAuthenticationPrefix); ok {
		return fmt.Sprintf("denied by DENY policy %s: PeerAuthentication %s/%s requires mTLS", name(pol), pol.GetNamespace(), pa)
	}
	return "denied by DENY policy " + name(pol)
}
