//lint:file-ignore SA1019 HBONE is built on golang.org/x/net/http2 (a required library), whose types v0.62 marks deprecated in favour of net/http

package labtest

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/cairnmesh/cairn/internal/pki"
	"github.com/cairnmesh/cairn/internal/spiffe"
	"github.com/cairnmesh/cairn/istiod-lite/ca/kubeca"
)

// meshedApp installs the mesh and an enrolled app (client and echo pods),
// and waits until the client reaches echo-2 across nodes.
func meshedApp(t *testing.T) (ns string, echo2IP, echo1IP string) {
	t.Helper()
	installMesh(t)
	ns = namespace(t)
	enroll(t, ns)
	_, echo1, echo2 := meshApp(t, ns)
	eventually(t, 30*time.Second, "client reaches echo-2 through the mesh", func() error {
		if !captured(t, ns, "client") {
			return fmt.Errorf("client not captured yet")
		}
		_, err := curlEcho(t, ns, "client", "http://"+echo2.Status.PodIP+":8080/")
		return err
	})
	return ns, echo2.Status.PodIP, echo1.Status.PodIP
}

// TestMeshTrafficIsEncryptedOnTheWire: while the client sends a marker to
// the echo pod on the other node, a capture on the lab bridge (which every
// node-to-node packet crosses) never sees the marker, sees the traffic as
// TLS on port 15008, and sees nothing on the app's port.
func TestMeshTrafficIsEncryptedOnTheWire(t *testing.T) {
	setup(t)
	ns, echo2IP, _ := meshedApp(t)
	raw := make([]byte, 8)
	_, _ = rand.Read(raw)
	marker := "cairn-marker-" + hex.EncodeToString(raw)

	s := sniffBridge(t, cfg.BridgeName(), []byte(marker))
	for i := range 5 {
		if _, err := curl(t, ns, "client", fmt.Sprintf("http://%s:8080/%s?n=%d", echo2IP, marker, i)); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(200 * time.Millisecond) // let the last frames reach the socket; not a timing target
	s.stop()
	seen, byPort, err := s.summary()
	if err != nil {
		t.Fatalf("capture: %v", err)
	}
	t.Logf("capture on %s: %s", cfg.BridgeName(), s)
	if seen > 0 {
		t.Errorf("the marker crossed the bridge in the clear %d times", seen)
	}
	if byPort[15008] == 0 {
		t.Error("no HBONE (port 15008) traffic crossed the bridge")
	}
	if byPort[8080] > 0 {
		t.Errorf("%d segments to the app's port 8080 crossed the bridge in the clear", byPort[8080])
	}

	// The control: the same request in a namespace that is not enrolled
	// is seen in the clear, so the capture above could have seen it.
	plain := namespace(t)
	_, _, plainEcho2 := meshApp(t, plain)
	control := sniffBridge(t, cfg.BridgeName(), []byte(marker))
	if _, err := curl(t, plain, "client", fmt.Sprintf("http://%s:8080/%s", plainEcho2.Status.PodIP, marker)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // as above
	control.stop()
	if seen, _, _ := control.summary(); seen == 0 {
		t.Errorf("the capture did not see the marker of plaintext traffic either (%s): it proves nothing", control)
	}
}

// TestDenyPolicyBlocksAndAllowingAgainWorks: an AuthorizationPolicy that
// denies the client's identity at the echo pods blocks it; deleting the
// policy lets it through again.
func TestDenyPolicyBlocksAndAllowingAgainWorks(t *testing.T) {
	setup(t)
	ns, echo2IP, _ := meshedApp(t)
	apply(t, ns, fmt.Sprintf(`
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-client}
spec:
  selector: {matchLabels: {app: echo}}
  action: DENY
  rules:
  - from: [{source: {principals: ["cluster.local/ns/%s/sa/default"]}}]
`, ns))
	eventually(t, 30*time.Second, "the DENY policy blocks the client", func() error {
		if _, err := curl(t, ns, "client", "http://"+echo2IP+":8080/"); err == nil {
			return fmt.Errorf("still allowed")
		}
		return nil
	})
	ctx := testContext(t)
	if _, err := kubectl(ctx, "-n", ns, "delete", "authorizationpolicy", "deny-client"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "the client is allowed again", func() error {
		_, err := curlEcho(t, ns, "client", "http://"+echo2IP+":8080/")
		return err
	})
}

// TestOutsideTheMeshIsPassedThrough: an enrolled pod reaches a server that
// is not in the mesh (on the lab's bridge address, outside the cluster) as
// plain TCP.
func TestOutsideTheMeshIsPassedThrough(t *testing.T) {
	setup(t)
	ns, _, _ := meshedApp(t)
	bridge := cfg.BridgeAddr().Addr().String()
	ln, err := net.Listen("tcp", net.JoinHostPort(bridge, "0"))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "outside, from %s\n", r.RemoteAddr)
	}), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	out, err := curl(t, ns, "client", "http://"+ln.Addr().String()+"/")
	if err != nil || !strings.HasPrefix(out, "outside, from ") {
		t.Fatalf("passthrough: %q, %v", out, err)
	}
}

// TestHBONEPortRefusesBadInput: a pod's HBONE port refuses plaintext,
// HTTP/1, a client certificate from another CA, and a CONNECT (with a
// valid mesh certificate) to an address that is not that pod: no relaying
// through ztunnel.
func TestHBONEPortRefusesBadInput(t *testing.T) {
	setup(t)
	_, echo2IP, echo1IP := meshedApp(t)
	hbone := net.JoinHostPort(echo2IP, "15008")

	// Plaintext: the connection ends without an answer.
	c, err := net.DialTimeout("tcp", hbone, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	if b, _ := io.ReadAll(c); strings.Contains(string(b), "HTTP/1.1 200") {
		t.Errorf("plaintext got an HTTP answer: %q", b)
	}
	c.Close()

	// A certificate from a CA the mesh does not trust.
	foreign, err := pki.NewRoot("cluster.local", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	id := spiffe.Identity{TrustDomain: "cluster.local", Namespace: "attacker", ServiceAccount: "default"}
	if _, err := connect(t, foreign, id, hbone, netip.MustParseAddrPort(echo2IP+":8080"), "h2"); err == nil {
		t.Error("a certificate from a foreign CA was accepted")
	}

	// The mesh's own CA (read from its Secret, as only an admin can).
	sec, err := client.CoreV1().Secrets("cairn-system").Get(testContext(t), kubeca.DefaultSecretName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	mesh, _, err := pki.LoadCA(sec.Data[kubeca.SecretCert], sec.Data[kubeca.SecretKey], sec.Data[kubeca.SecretBundle])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := connect(t, mesh, id, hbone, netip.MustParseAddrPort(echo2IP+":8080"), "http/1.1"); err == nil {
		t.Error("HTTP/1.1 over TLS was accepted")
	}
	status, err := connect(t, mesh, id, hbone, netip.MustParseAddrPort(echo1IP+":8080"), "h2")
	if err != nil {
		t.Fatalf("CONNECT to another pod: %v", err)
	}
	if status != http.StatusForbidden {
		t.Errorf("CONNECT through echo-2's ztunnel to echo-1: status %d, want 403", status)
	}
	status, err = connect(t, mesh, id, hbone, netip.MustParseAddrPort(echo2IP+":8080"), "h2")
	if err != nil || status != http.StatusOK {
		t.Errorf("a well-formed CONNECT with a mesh certificate: %d, %v", status, err)
	}
}

// connect opens HBONE to addr with a certificate for id signed by ca and
// sends one CONNECT for authority; it returns the response status.
func connect(t *testing.T, ca *pki.CA, id spiffe.Identity, addr string, authority netip.AddrPort, alpn string) (int, error) {
	t.Helper()
	key, err := pki.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.Sign(key.Public(), id, pki.LeafOptions{TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	conf := &tls.Config{
		MinVersion:         tls.VersionTLS13,
		NextProtos:         []string{alpn},
		InsecureSkipVerify: true, // the test checks the server's refusals, not its identity
		Certificates:       []tls.Certificate{{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert}},
	}
	ctx, cancel := context.WithTimeout(testContext(t), 10*time.Second)
	defer cancel()
	raw, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return 0, err
	}
	tc := tls.Client(raw, conf)
	defer tc.Close()
	if err := tc.HandshakeContext(ctx); err != nil {
		return 0, err
	}
	if tc.ConnectionState().NegotiatedProtocol != "h2" {
		return 0, fmt.Errorf("negotiated %q", tc.ConnectionState().NegotiatedProtocol)
	}
	cc, err := (&http2.Transport{}).NewClientConn(tc)
	if err != nil {
		return 0, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodConnect, "https://"+authority.String(), nil)
	if err != nil {
		return 0, err
	}
	req.Host = authority.String()
	resp, err := cc.RoundTrip(req)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}
