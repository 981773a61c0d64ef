package hbone

import (
	"net/netip"
	"time"

	"github.com/cairnmesh/cairn/internal/spiffe"
)

// Peer is the authenticated other end of an inbound HBONE connection: the
// identity its certificate proved, and the address it connected from.
type Peer struct {
	Identity spiffe.Identity
	Addr     netip.AddrPort
}

// Connection is one proxied connection accepted by a Server: from Peer,
// through the tunnel, to Destination (the CONNECT's :authority, which is
// the pod's own IP and the application's port).
type Connection struct {
	Peer        Peer
	Destination netip.AddrPort
}

// Traffic is what a proxied connection carried. Received counts bytes from
// the peer to the application, Sent bytes from the application to the peer:
// the directions of Istio's istio_tcp_received_bytes_total and
// istio_tcp_sent_bytes_total as reported by the destination.
type Traffic struct {
	Received int64
	Sent     int64
	Duration time.Duration
}

// Reason says why a Server refused a connection or a CONNECT. The values are
// stable: metrics use them as label values.
type Reason string

// Refusal reasons.
const (
	// ReasonHandshake: the TLS handshake failed (plaintext, a certificate
	// that does not verify, no certificate of our own in time, a timeout).
	ReasonHandshake Reason = "tls_handshake"
	// ReasonALPN: TLS succeeded but the peer did not negotiate h2 (an
	// HTTP/1.1 client).
	ReasonALPN Reason = "alpn"
	// ReasonPreface: TLS succeeded but the client did not start HTTP/2
	// (its connection preface was wrong or did not come in time).
	ReasonPreface Reason = "preface"
	// ReasonHeaders: the request's header list was over the limit (431).
	ReasonHeaders Reason = "header_size"
	// ReasonMethod: a request other than CONNECT (405).
	ReasonMethod Reason = "method"
	// ReasonAuthority: :authority is not an IP:port (400).
	ReasonAuthority Reason = "authority"
	// ReasonMisdirected: :authority names an IP that is not this pod's; we
	// never relay (403).
	ReasonMisdirected Reason = "misdirected"
	// ReasonDenied: the Authorize hook said no (403).
	ReasonDenied Reason = "denied"
	// ReasonDial: the application could not be reached (503).
	ReasonDial Reason = "dial"
	// ReasonFlood: the client flooded the connection (frames it made us
	// owe and did not read, or frames that carry nothing): it was ended
	// with GOAWAY ENHANCE_YOUR_CALM, its tunnels with it.
	ReasonFlood Reason = "flood"
)

// Refusal describes a refused connection or CONNECT. Fields that were not
// known yet when it was refused are zero: no Peer identity before the
// handshake completed, no Destination before :authority was parsed, no
// Status when the refusal happened below HTTP.
type Refusal struct {
	Peer        Peer
	Destination netip.AddrPort
	Status      int
	Reason      Reason
	Err         error
}

// Observer learns what a Server does, for metrics. Its methods are called
// synchronously from connection goroutines, concurrently, and must return
// quickly. Every Opened is followed by exactly one Closed.
type Observer interface {
	// Opened: a CONNECT was accepted and the application connected.
	Opened(Connection)
	// Closed: a connection reported by Opened ended.
	Closed(Connection, Traffic)
	// Refused: a connection or CONNECT was turned away.
	Refused(Refusal)
}

// nopObserver is the Observer when none is configured.
type nopObserver struct{}

func (nopObserver) Opened(Connection)          {}
func (nopObserver) Closed(Connection, Traffic) {}
func (nopObserver) Refused(Refusal)            {}

var _ Observer = nopObserver{}
