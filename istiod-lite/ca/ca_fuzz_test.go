package ca

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"log/slog"
	"net"
	"net/url"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	cav1 "github.com/cairnmesh/cairn/apis/ca/v1"
	"github.com/cairnmesh/cairn/internal/pki"
	"github.com/cairnmesh/cairn/internal/spiffe"
)

// fuzzKeyPEM is a P-256 key made for this test only. It is fixed so that
// the to-be-signed requests in the corpus keep matching the key that signs
// them in every fuzzing process.
const fuzzKeyPEM = `-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgKHGEtvTkDIj/6iX8
jW/1vrQKWnITRdiZzobzV4mCQqehRANCAATROO9GQrruoFhM1XoI+7pzF++e1Khm
wOHToglDxOMSkw/M0CDD/7YtZ2borU2fO3yeQRnwyaXw2Ks7q1nl+lZK
-----END PRIVATE KEY-----
`

// fuzzMaxTTL is the CA's MaxTTL in the fuzz target.
const fuzzMaxTTL = 48 * time.Hour

// callerKey carries the fuzzed Caller to fuzzAuth.
type callerKey struct{}

// fuzzAuth authenticates whoever the fuzz input says calls.
type fuzzAuth struct{}

func (fuzzAuth) Authenticate(ctx context.Context) (Caller, error) {
	return ctx.Value(callerKey{}).(Caller), nil
}

// fuzzPods: the node agent pod cairn-system/ztunnel-a runs on node-a with
// app/web; app/db runs on node-b; ztunnel-x is not scheduled.
var fuzzPods = fakePods{pods: map[string]PodInfo{
	"cairn-system/ztunnel-a": {UID: "uid-za", ServiceAccount: "ztunnel", NodeName: "node-a"},
	"cairn-system/ztunnel-x": {UID: "uid-zx", ServiceAccount: "ztunnel"},
	"app/web-1":              {UID: "u1", ServiceAccount: "web", NodeName: "node-a"},
	"app/db-1":               {UID: "u2", ServiceAccount: "db", NodeName: "node-b"},
}}

// mayHold is the oracle of FuzzCreateCertificate, written from fuzzPods
// rather than from authorize: the identities a caller may be issued are
// its own, and for the node agent ztunnel-a with a token bound to its pod
// (and, if the token names a node, to node-a), those of the service
// accounts with a pod on node-a.
func mayHold(c Caller, id spiffe.Identity) bool {
	if c.Namespace == id.Namespace && c.ServiceAccount == id.ServiceAccount {
		return true
	}
	agentA := c == Caller{Namespace: "cairn-system", ServiceAccount: "ztunnel", PodName: "ztunnel-a", PodUID: "uid-za", NodeName: c.NodeName} &&
		(c.NodeName == "" || c.NodeName == "node-a")
	onNodeA := id.Namespace == "app" && id.ServiceAccount == "web" || id.Namespace == "cairn-system" && id.ServiceAccount == "ztunnel"
	return agentA && onNodeA
}

// FuzzCreateCertificate sends the CA arbitrary certificate requests from
// arbitrary callers. The request is either csr as sent (PEM, or anything
// else), or, when signTBS is set, csr taken as the DER of a PKCS#10
// CertificationRequestInfo that the test signs with fuzzKeyPEM's key: so
// the request's content (subject, public key, SAN and other extensions,
// attributes) is fuzzed behind a signature that verifies, and the checks
// after the signature check are reached.
//
// Invariants: no panic; refusals are InvalidArgument or PermissionDenied,
// never Internal or Unknown; and a certificate that is issued is an
// X.509-SVID that verifies against the CA as exactly one identity, the
// one the request asked for, which the caller may hold (mayHold), in the
// CA's trust domain, for the request's public key, not a CA, with no other
// SAN, and within MaxTTL.
func FuzzCreateCertificate(f *testing.F) {
	key, err := pki.ParseKeyPEM([]byte(fuzzKeyPEM))
	if err != nil {
		f.Fatal(err)
	}
	signer := key.(*ecdsa.PrivateKey)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 1024) // too short: refused
	if err != nil {
		f.Fatal(err)
	}
	uri := func(s string) *url.URL {
		u, err := url.Parse(s)
		if err != nil {
			f.Fatal(err)
		}
		return u
	}
	tbs := func(tmpl *x509.CertificateRequest) []byte {
		der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, signer)
		if err != nil {
			f.Fatal(err)
		}
		csr, err := x509.ParseCertificateRequest(der)
		if err != nil {
			f.Fatal(err)
		}
		return csr.RawTBSCertificateRequest
	}
	pemCSR := func(tmpl *x509.CertificateRequest, k any) []byte {
		der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, k)
		if err != nil {
			f.Fatal(err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
	}
	web := &x509.CertificateRequest{URIs: []*url.URL{uri("spiffe://cluster.local/ns/app/sa/web")}}
	db := &x509.CertificateRequest{URIs: []*url.URL{uri("spiffe://cluster.local/ns/app/sa/db")}}
	sanExt, err := asn1.Marshal([]asn1.RawValue{{Class: asn1.ClassContextSpecific, Tag: 6, Bytes: []byte("spiffe://cluster.local/ns/app/sa/web")}})
	if err != nil {
		f.Fatal(err)
	}
	seeds := []struct {
		csr       []byte
		signTBS   bool
		ns, sa    string
		pod, uid  string
		node      string
		validity  int64
		signedFor string // what the seed gets, "" if refused; checked below
	}{
		{pemCSR(web, signer), false, "app", "web", "", "", "", 0, "app/web"},
		{tbs(web), true, "app", "web", "web-1", "u1", "node-a", 3600, "app/web"},
		{tbs(web), true, "cairn-system", "ztunnel", "ztunnel-a", "uid-za", "", 0, "app/web"},
		{tbs(db), true, "cairn-system", "ztunnel", "ztunnel-a", "uid-za", "node-a", 0, ""},
		{tbs(db), true, "app", "web", "", "", "", 0, ""},
		{tbs(&x509.CertificateRequest{URIs: web.URIs, DNSNames: []string{"web.app.svc"}}), true, "app", "web", "", "", "", 0, ""},
		{tbs(&x509.CertificateRequest{URIs: []*url.URL{web.URIs[0], db.URIs[0]}}), true, "app", "web", "", "", "", 0, ""},
		{tbs(&x509.CertificateRequest{URIs: []*url.URL{uri("spiffe://evil.org/ns/app/sa/web")}}), true, "app", "web", "", "", "", 0, ""},
		{tbs(&x509.CertificateRequest{URIs: []*url.URL{uri("spiffe://cluster.local/ns/app/sa/web/x")}}), true, "app", "web", "", "", "", 0, ""},
		{tbs(&x509.CertificateRequest{IPAddresses: []net.IP{net.ParseIP("10.0.0.1")}, URIs: web.URIs}), true, "app", "web", "", "", "", 0, ""},
		{tbs(&x509.CertificateRequest{Subject: pkix.Name{CommonName: "web"}, ExtraExtensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 17}, Critical: true, Value: sanExt}}}), true, "app", "web", "", "", "", 1 << 40, "app/web"},
		{pemCSR(web, rsaKey), false, "app", "web", "", "", "", 0, ""},
		{[]byte("-----BEGIN CERTIFICATE REQUEST-----\nMAA=\n-----END CERTIFICATE REQUEST-----\n"), false, "app", "web", "", "", "", 0, ""},
	}
	for _, s := range seeds {
		f.Add(s.csr, s.signTBS, s.ns, s.sa, s.pod, s.uid, s.node, s.validity)
	}

	srv, err := New(Config{Authenticator: fuzzAuth{}, Pods: fuzzPods, MaxTTL: fuzzMaxTTL, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		f.Fatal(err)
	}
	root, err := pki.NewRoot("cluster.local", 0)
	if err != nil {
		f.Fatal(err)
	}
	srv.SetAuthority(root)
	bundle, err := pki.NewBundle("cluster.local", []*x509.Certificate{root.Cert})
	if err != nil {
		f.Fatal(err)
	}

	// The seeds must do what they are there for, or they explore little.
	for i, s := range seeds {
		ctx := context.WithValue(context.Background(), callerKey{}, Caller{Namespace: s.ns, ServiceAccount: s.sa, PodName: s.pod, PodUID: s.uid, NodeName: s.node})
		req := s.csr
		if s.signTBS {
			req = signRequestInfo(f, s.csr, signer)
		}
		resp, err := srv.CreateCertificate(ctx, &cav1.CreateCertificateRequest{Csr: string(req), ValiditySeconds: s.validity})
		if (err == nil) != (s.signedFor != "") {
			f.Fatalf("seed %d: signed %v, error %v; want signed for %q", i, resp != nil, err, s.signedFor)
		}
	}

	f.Fuzz(func(t *testing.T, csr []byte, signTBS bool, ns, sa, pod, uid, node string, validity int64) {
		caller := Caller{Namespace: ns, ServiceAccount: sa, PodName: pod, PodUID: uid, NodeName: node}
		req := csr
		if signTBS {
			req = signRequestInfo(t, csr, signer)
		}
		ctx := context.WithValue(context.Background(), callerKey{}, caller)
		start := time.Now()
		resp, err := srv.CreateCertificate(ctx, &cav1.CreateCertificateRequest{Csr: string(req), ValiditySeconds: validity})
		if err != nil {
			if c := status.Code(err); c != codes.InvalidArgument && c != codes.PermissionDenied {
				t.Fatalf("refused with %v (%v); want InvalidArgument or PermissionDenied", c, err)
			}
			return
		}

		// What the request asked for, parsed here on its own.
		block, _ := pem.Decode(req)
		if block == nil {
			t.Fatalf("signed a request that is not PEM")
		}
		asked, perr := x509.ParseCertificateRequest(block.Bytes)
		if perr != nil {
			t.Fatalf("signed a request that does not parse: %v", perr)
		}
		if len(asked.URIs) != 1 || len(asked.DNSNames)+len(asked.EmailAddresses)+len(asked.IPAddresses) > 0 {
			t.Fatalf("signed a request with SANs %v %v %v %v; want one URI and nothing else", asked.URIs, asked.DNSNames, asked.EmailAddresses, asked.IPAddresses)
		}
		askedID, perr := spiffe.Parse(asked.URIs[0].String())
		if perr != nil {
			t.Fatalf("signed a request for %q, which is no workload identity: %v", asked.URIs[0], perr)
		}

		var chain []*x509.Certificate
		for _, p := range resp.GetCertChain() {
			certs, perr := pki.ParseCertsPEM([]byte(p))
			if perr != nil {
				t.Fatalf("the response's chain does not parse: %v", perr)
			}
			chain = append(chain, certs...)
		}
		if len(chain) == 0 {
			t.Fatal("signed, but the chain is empty")
		}
		leaf := chain[0]
		id, _, verr := x509svid.Verify(chain[:1], bundle)
		if verr != nil {
			t.Fatalf("the issued certificate is no valid X.509-SVID: %v", verr)
		}
		got, ferr := spiffe.FromID(id)
		if ferr != nil {
			t.Fatalf("the issued certificate names %v, no workload identity: %v", id, ferr)
		}
		switch {
		case got != askedID:
			t.Fatalf("the request asked for %v, the certificate is for %v", askedID, got)
		case got.TrustDomain != "cluster.local":
			t.Fatalf("issued %v, outside the CA's trust domain", got)
		case !mayHold(caller, got):
			t.Fatalf("caller %+v was issued %v, which it may not hold", caller, got)
		case len(leaf.URIs) != 1 || leaf.URIs[0].String() != got.String():
			t.Fatalf("the certificate's URI SANs are %v, want exactly %s", leaf.URIs, got)
		case len(leaf.DNSNames)+len(leaf.EmailAddresses)+len(leaf.IPAddresses) > 0:
			t.Fatalf("the certificate has SANs besides the SPIFFE ID: %v %v %v", leaf.DNSNames, leaf.EmailAddresses, leaf.IPAddresses)
		case leaf.IsCA || leaf.KeyUsage&x509.KeyUsageCertSign != 0:
			t.Fatal("the issued certificate can sign certificates")
		case !asked.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(leaf.PublicKey):
			t.Fatal("the certificate is not for the request's public key")
		case leaf.NotAfter.After(start.Add(fuzzMaxTTL).Add(time.Second)):
			t.Fatalf("the certificate is valid until %v, beyond MaxTTL %v", leaf.NotAfter, fuzzMaxTTL)
		}
	})
}

// signRequestInfo makes a PEM PKCS#10 request of info, taken as the DER of
// a CertificationRequestInfo, signed with key (ECDSA with SHA-256). info is
// not checked: a request the CA cannot parse is a test of the CA.
func signRequestInfo(t testing.TB, info []byte, key *ecdsa.PrivateKey) []byte {
	t.Helper()
	digest := sha256.Sum256(info)
	sig, err := ecdsa.SignASN1(rand.Reader, key, digest[:])
	if err != nil {
		t.Fatal(err)
	}
	der, err := asn1.Marshal(struct {
		Info      asn1.RawValue
		Algorithm pkix.AlgorithmIdentifier
		Signature asn1.BitString
	}{
		Info:      asn1.RawValue{FullBytes: info},
		Algorithm: pkix.AlgorithmIdentifier{Algorithm: asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 2}},
		Signature: asn1.BitString{Bytes: sig, BitLength: 8 * len(sig)},
	})
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}
