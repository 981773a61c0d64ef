// Package hbone carries TCP connections between meshed pods over HBONE, the
// tunnel protocol of Istio's ambient mode: HTTP/2 CONNECT inside mutual TLS
// 1.3 (ALPN "h2"), to port 15008 of the destination pod. The CONNECT's
// :authority is the destination pod's IP and the application's port; both
// ends prove SPIFFE identities spiffe://<td>/ns/<ns>/sa/<sa> with their
// certificates' URI SANs. Speaking the same wire protocol as Istio's ztunnel
// keeps the two interoperable.
//
// Server is the inbound side for one pod: it accepts a CONNECT only to the
// pod's own addresses, asks an Authorize hook (L4 policy lives elsewhere),
// dials the application and copies both ways with half-close. Pool is the
// outbound side: it opens Tunnels over connections pooled per Key (source
// identity, expected destination identity, address), many streams per
// connection.
//
// The HTTP/2 implementation is golang.org/x/net/http2. Two of its
// properties shape this package: its server needs a completed TLS
// handshake before ServeConn, and it can end a response only when the
// handler returns, so once the application has closed its side of a
// tunnel, data the client still sends is discarded (see Server).
package hbone
