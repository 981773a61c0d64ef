// Package proxy is ztunnel's connection path for one captured pod. It owns
// the pod's three listeners (opened in the pod's network namespace by
// ztunnel/capture) and decides, then does:
//
//   - outbound (15001): the app's redirected connection; its original
//     destination and the pod's workload go through route.Decide; the
//     decision is carried out over HBONE (hbone.Pool), as plain TCP
//     (passthrough or a workload outside the mesh), or refused;
//   - HBONE (15008): mutual TLS with the pod's own certificate (hbone.Server),
//     L4 authorization of the destination workload (authz.Evaluate), then
//     the app;
//   - inbound plaintext (15006): connections from outside the mesh, allowed
//     unless an authorization (such as PeerAuthentication STRICT) denies
//     plaintext.
//
// Every onward socket is made inside the pod (Config.Dialer for the pod),
// so it leaves from the pod's own address, and is marked so the pod's
// capture rules let it through. Each connection ends with one access-log
// line and the L4 metrics (ztunnel/telemetry).
package proxy
