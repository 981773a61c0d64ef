// Package identity holds the workload certificates of Cairn's proxies and
// the trust bundle they are verified with: ztunnel's, one per service
// account with pods on its node, and the waypoint's own (Single).
//
// # Identities
//
// ztunnel presents, for each pod on its node, the X.509-SVID of the pod's
// service account, spiffe://<trust-domain>/ns/<namespace>/sa/<account>.
// Many pods share an account, so the Manager holds one certificate per
// identity, counted by pods: the pod lifecycle calls Want when a pod
// arrives and Release when it leaves, and the last Release starts a grace
// period (Config.Linger) after which the certificate is dropped. A
// waypoint holds one identity, its own, for its whole life: Single wants
// it once and never releases it.
//
// # Obtaining a certificate
//
// For each identity the Manager makes a new ECDSA P-256 key and a CSR
// with the SPIFFE ID as its only name, and calls istiod-lite's
// CreateCertificate (apis/ca/v1) with ztunnel's own projected service
// account token as bearer token. The CA signs only identities with a pod
// on the caller's node (node authorization), so one compromised node
// cannot obtain every identity of the mesh. The token is read from its
// file for every request, since the kubelet rotates it.
//
// The answer is checked before use: the leaf must name exactly the
// requested identity, carry the CSR's key, and chain to the current trust
// bundle. A refused answer counts as a failure.
//
// # Renewal and failure
//
// A certificate is renewed at half its lifetime, a little earlier by a
// random amount so that renewals spread out. Failures are retried with
// exponential back-off and jitter, and meanwhile the previous certificate
// stays in use for as long as it is valid. A rotation swaps the
// certificate atomically: the next handshake gets the new one and
// connections already established are not touched.
//
// # Waiting for the first certificate
//
// A connection can reach a pod's listener before the pod's first
// certificate has arrived. Source.Await waits for it, bounded by the
// caller's context, so such a connection is late rather than refused.
//
// # Trust bundle
//
// Bundle reads the roots from a file (the cairn-root-cert ConfigMap,
// mounted) and reloads them when the file changes. It is the
// x509bundle.Source of HBONE servers and clients and of the CA connection,
// which verifies istiod's certificate for istiod.<namespace>.svc against
// it. When the roots change, certificates that no longer chain to them
// are renewed at once.
//
// # Goroutines
//
// Manager.Run and Bundle.Run own every goroutine of the package, one per
// identity and one poller, and return only once all of them ended with
// their context.
package identity
