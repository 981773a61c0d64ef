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
// The HTTP/2 layer is our own, small and made for CONNECT tunnels only,
// on golang.org/x/net/http2's Framer and HPACK codec (conn.go, stream.go,
// headers.go). A general HTTP/2 client and server move every frame across
// several goroutines; here one reader per connection writes each DATA
// payload straight to the destination socket when it takes it without
// blocking, writers send their frames themselves, and the TLS records of
// one write leave in one system call. Both half-closes are carried: either
// side may go on sending after the other has finished. The tests check the
// wire format against x/net's own client and server.
package hbone
