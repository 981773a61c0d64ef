// Package route makes ztunnel's outbound decision: where a connection that
// an enrolled pod opened to an original destination address:port goes, and
// how. It is pure: it reads a state.Snapshot and its arguments and does no
// I/O, so the proxy can act on the Decision, cairnctl explain can show it,
// and tests can enumerate it.
package route

import (
	"net/netip"

	workloadv1 "github.com/cairnmesh/cairn/apis/workload/v1"
	"github.com/cairnmesh/cairn/internal/spiffe"
)

// DefaultHBONEPort is where a workload's ztunnel, and a waypoint that
// announces no port, accepts HBONE.
const DefaultHBONEPort = 15008

// Kind is what the proxy does with the connection.
type Kind int

const (
	// Fail refuses the connection (the client sees a reset). It is the
	// zero value so that a Decision nobody filled in fails closed.
	Fail Kind = iota
	// Passthrough: the destination is outside the mesh; plain TCP to the
	// original destination.
	Passthrough
	// Direct: the destination is a workload that is not in the mesh
	// (tunnel NONE); plain TCP to it.
	Direct
	// HBONE: HTTP/2 CONNECT in mutual TLS to Dial, checking that the peer
	// is Identity, asking for Authority.
	HBONE
)

func (k Kind) String() string {
	switch k {
	case Fail:
		return "Fail"
	case Passthrough:
		return "Passthrough"
	case Direct:
		return "Direct"
	case HBONE:
		return "HBONE"
	}
	return "Kind(?)"
}

// Decision is the outcome of Decide.
type Decision struct {
	Kind Kind

	// Reason says why, in words for a log line or cairnctl explain. Always
	// set; for Fail it is the error the proxy reports.
	Reason string

	// Dial is the address to connect to: the original destination for
	// Passthrough, the workload's address and target port for Direct, the
	// HBONE address (workload IP, port 15008 or the waypoint's HBONE port)
	// for HBONE. Invalid for Fail.
	Dial netip.AddrPort

	// Authority is the CONNECT request's :authority, for HBONE only: the
	// workload's IP and target port, or for a waypoint the address the
	// client asked for (the Service VIP:port, or the workload IP:port).
	Authority netip.AddrPort

	// Identity is the SPIFFE identity the HBONE peer must prove, for HBONE
	// only: the destination workload's, or the waypoint's.
	Identity spiffe.Identity

	// Workload is the workload the connection goes to: the endpoint picked,
	// the pod addressed, or the waypoint. Nil for Passthrough and Fail.
	Workload *workloadv1.Workload

	// Service is the Service whose VIP the client addressed, if it did,
	// also when the decision is Fail (for the access log and metrics).
	Service *workloadv1.Service

	// Waypoint is true when Workload is the destination's waypoint rather
	// than the destination itself.
	Waypoint bool
}

// Picker chooses one of n candidates (n > 0), returning an index in
// [0, n). The proxy passes math/rand/v2's IntN; tests pass a fixed choice.
// Candidates come sorted by workload uid, so an index names one workload.
type Picker func(n int) int
