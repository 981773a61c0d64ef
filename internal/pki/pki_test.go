package pki

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/cairnmesh/cairn/internal/spiffe"
)

const td = "cluster.local"

func ident(ns, sa string) spiffe.Identity {
	return spiffe.Identity{TrustDomain: td, Namespace: ns, ServiceAccount: sa}
}

// issue makes a key, a CSR for id, parses it back and signs it with ca.
func issue(t *testing.T, ca *CA, id spiffe.Identity) *x509svid.SVID {
	t.Helper()
	key, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	csrPEM, err := NewCSR(key, id)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := ParseCSR(csrPEM)
	if err != nil {
		t.Fatal(err)
	}
	got, err := CSRIdentity(csr)
	if err != nil || got != id {
		t.Fatalf("CSRIdentity = %v, %v; want %v", got, err, id)
	}
	leaf, err := ca.Sign(csr.PublicKey, id, LeafOptions{})
	if err != nil {
		t.Fatal(err)
	}
	svid, err := NewSVID(append([]*x509.Certificate{leaf, ca.Cert}, ca.Chain...), key)
	if err != nil {
		t.Fatal(err)
	}
	return svid
}

func TestSignVerifies(t *testing.T) {
	ca, err := NewRoot(td, 0)
	if err != nil {
		t.Fatal(err)
	}
	if ca.Cert.URIs[0].String() != "spiffe://cluster.local" {
		t.Errorf("root URI SAN = %v", ca.Cert.URIs)
	}
	id := ident("default", "web")
	svid := issue(t, ca, id)
	leaf := svid.Certificates[0]

	bundle, err := NewBundle(td, []*x509.Certificate{ca.Cert})
	if err != nil {
		t.Fatal(err)
	}
	gotID, _, err := x509svid.Verify(svid.Certificates, bundle)
	if err != nil {
		t.Fatalf("verifying against the root: %v", err)
	}
	if gotID.String() != id.String() {
		t.Errorf("verified ID %s, want %s", gotID, id)
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != "spiffe://cluster.local/ns/default/sa/web" {
		t.Errorf("leaf URIs = %v", leaf.URIs)
	}
	if len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) != 0 || leaf.IsCA {
		t.Errorf("leaf has extra SANs or is a CA: %+v", leaf)
	}
	if leaf.KeyUsage != x509.KeyUsageDigitalSignature {
		t.Errorf("key usage %v", leaf.KeyUsage)
	}
	if d := leaf.NotAfter.Sub(leaf.NotBefore); d < DefaultLeafTTL || d > DefaultLeafTTL+DefaultClockSkew+time.Minute {
		t.Errorf("validity %v", d)
	}
	if !leaf.NotBefore.Before(time.Now().Add(-DefaultClockSkew + time.Minute)) {
		t.Errorf("NotBefore %v not backdated", leaf.NotBefore)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool(ca.Cert), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("x509 verify: %v", err)
	}

	// Round trip through PEM.
	ca2, roots, err := LoadCA(EncodeCertPEM(ca.Cert), mustKeyPEM(t, ca), nil)
	if err != nil {
		t.Fatal(err)
	}
	if !ca2.Cert.Equal(ca.Cert) || len(roots) != 1 || len(ca2.Chain) != 0 {
		t.Errorf("LoadCA: %v roots, chain %d", len(roots), len(ca2.Chain))
	}
}

func TestTTLCappedByCA(t *testing.T) {
	ca, err := NewRoot(td, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := GenerateKey()
	leaf, err := ca.Sign(key.Public(), ident("a", "b"), LeafOptions{TTL: 48 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if leaf.NotAfter.After(ca.Cert.NotAfter) {
		t.Errorf("leaf outlives CA")
	}
}

func TestServerDNSNames(t *testing.T) {
	ca, _ := NewRoot(td, 0)
	key, _ := GenerateKey()
	leaf, err := ca.Sign(key.Public(), ident("cairn-system", "istiod"), LeafOptions{DNSNames: []string{"istiod.cairn-system.svc"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := leaf.VerifyHostname("istiod.cairn-system.svc"); err != nil {
		t.Error(err)
	}
	if _, err := NewSVID([]*x509.Certificate{leaf, ca.Cert}, key); err != nil {
		t.Errorf("a leaf with DNS SANs is still an SVID: %v", err)
	}
}

func TestIntermediateCA(t *testing.T) {
	root, _ := NewRoot(td, 0)
	// An intermediate signed by root: reuse Sign's machinery by hand.
	ikey, _ := GenerateKey()
	tmpl := &x509.Certificate{
		SerialNumber: mustSerial(t), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour * 100),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true,
	}
	tmpl.Subject.CommonName = "intermediate"
	der, err := x509.CreateCertificate(randReader, tmpl, root.Cert, ikey.Public(), root.Key)
	if err != nil {
		t.Fatal(err)
	}
	inter, _ := x509.ParseCertificate(der)
	keyPEM, _ := EncodeKeyPEM(ikey)
	ca, roots, err := LoadCA(EncodeCertPEM(inter), keyPEM, EncodeCertPEM(root.Cert))
	if err != nil {
		t.Fatal(err)
	}
	if len(roots) != 1 || !ca.Root().Equal(root.Cert) || len(ca.Chain) != 1 {
		t.Fatalf("chain %d, roots %d", len(ca.Chain), len(roots))
	}
	svid := issue(t, ca, ident("x", "y"))
	bundle, _ := NewBundle(td, roots)
	if _, _, err := x509svid.Verify(svid.Certificates, bundle); err != nil {
		t.Fatalf("verify via intermediate: %v", err)
	}

	// Without the root the CA cannot be loaded.
	if _, _, err := LoadCA(EncodeCertPEM(inter), keyPEM, nil); err == nil {
		t.Error("LoadCA without a root succeeded")
	}
	// A key that does not match.
	other, _ := GenerateKey()
	otherPEM, _ := EncodeKeyPEM(other)
	if _, _, err := LoadCA(EncodeCertPEM(inter), otherPEM, EncodeCertPEM(root.Cert)); err == nil {
		t.Error("LoadCA with a foreign key succeeded")
	}
}

func TestParseCSRRejects(t *testing.T) {
	for name, in := range map[string]string{
		"empty":   "",
		"garbage": "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
		"cert":    "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
	} {
		if _, err := ParseCSR([]byte(in)); err == nil {
			t.Errorf("%s: ParseCSR succeeded", name)
		}
	}
	// A valid CSR with a tampered body fails its signature check.
	key, _ := GenerateKey()
	p, _ := NewCSR(key, ident("a", "b"))
	csr, _ := ParseCSR(p)
	raw := append([]byte(nil), csr.Raw...)
	i := strings.Index(string(raw), "/ns/a/sa/b")
	raw[i+4] = 'z'
	if _, err := x509.ParseCertificateRequest(raw); err == nil {
		bad := pemCSRBlock(raw)
		if _, err := ParseCSR(bad); err == nil || !strings.Contains(err.Error(), "signature") {
			t.Errorf("tampered CSR: %v", err)
		}
	}
}

// handshake runs one mTLS exchange over loopback: the client writes a byte,
// the server answers. It returns the client's and the server's error.
func handshake(t *testing.T, srv, cli *tls.Config) (clientErr, serverErr error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		tc := tls.Server(c, srv)
		_ = tc.SetDeadline(time.Now().Add(5 * time.Second))
		if err := tc.Handshake(); err != nil {
			done <- err
			return
		}
		b := make([]byte, 1)
		if _, err := io.ReadFull(tc, b); err != nil {
			done <- err
			return
		}
		_, err = tc.Write(b)
		done <- err
	}()
	c, err := tls.Dial("tcp", ln.Addr().String(), cli)
	if err == nil {
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err = c.Write([]byte{1}); err == nil {
			_, err = io.ReadFull(c, make([]byte, 1))
		}
		if err == nil && c.ConnectionState().Version != tls.VersionTLS13 {
			t.Errorf("TLS version %x", c.ConnectionState().Version)
		}
		c.Close()
	}
	return err, <-done
}

func TestMTLS(t *testing.T) {
	ca, _ := NewRoot(td, 0)
	foreign, _ := NewRoot(td, 0) // same trust domain name, different key
	bundle, _ := NewBundle(td, []*x509.Certificate{ca.Cert})
	web, reviews := ident("default", "web"), ident("default", "reviews")
	webSVID, reviewsSVID := issue(t, ca, web), issue(t, ca, reviews)
	intruder := issue(t, foreign, web)

	var src Source
	src.Set(reviewsSVID)
	server := func(allow ...spiffe.Identity) *tls.Config {
		return ServerConfig(&src, bundle, AuthorizeIdentity(allow...))
	}
	client := func(s x509svid.Source, b x509bundle.Source, expect spiffe.Identity) *tls.Config {
		return ClientConfig(s, b, AuthorizeIdentity(expect))
	}

	t.Run("ok", func(t *testing.T) {
		cerr, serr := handshake(t, server(web), client(webSVID, bundle, reviews))
		if cerr != nil || serr != nil {
			t.Fatalf("client %v, server %v", cerr, serr)
		}
	})
	t.Run("client from a foreign CA", func(t *testing.T) {
		cerr, serr := handshake(t, server(web), client(intruder, bundle, reviews))
		if serr == nil || !strings.Contains(serr.Error(), "unknown authority") {
			t.Errorf("server error %v, want unknown authority", serr)
		}
		if cerr == nil {
			t.Error("client succeeded")
		}
	})
	t.Run("server from a foreign CA", func(t *testing.T) {
		fb, _ := NewBundle(td, []*x509.Certificate{foreign.Cert})
		cerr, _ := handshake(t, server(web), client(intruder, fb, reviews))
		if cerr == nil || !strings.Contains(cerr.Error(), "unknown authority") {
			t.Errorf("client error %v, want unknown authority", cerr)
		}
	})
	t.Run("server has the wrong identity", func(t *testing.T) {
		cerr, _ := handshake(t, server(web), client(webSVID, bundle, ident("default", "ratings")))
		if cerr == nil || !strings.Contains(cerr.Error(), "unexpected ID") {
			t.Errorf("client error %v, want unexpected ID", cerr)
		}
	})
	t.Run("client has the wrong identity", func(t *testing.T) {
		cerr, serr := handshake(t, server(ident("default", "ratings")), client(webSVID, bundle, reviews))
		if serr == nil || !strings.Contains(serr.Error(), "unexpected ID") {
			t.Errorf("server error %v, want unexpected ID", serr)
		}
		if cerr == nil {
			t.Error("client succeeded")
		}
	})
	t.Run("rotation", func(t *testing.T) {
		ca2, _ := NewRoot(td, 0)
		both, _ := NewBundle(td, []*x509.Certificate{ca.Cert, ca2.Cert})
		src.Set(issue(t, ca2, reviews))
		cerr, serr := handshake(t, ServerConfig(&src, both, AuthorizeIdentity(web)), client(webSVID, both, reviews))
		if cerr != nil || serr != nil {
			t.Fatalf("client %v, server %v", cerr, serr)
		}
	})
}

func TestPeerIdentity(t *testing.T) {
	ca, _ := NewRoot(td, 0)
	svid := issue(t, ca, ident("n", "s"))
	got, err := PeerIdentity(tls.ConnectionState{PeerCertificates: svid.Certificates})
	if err != nil || got != ident("n", "s") {
		t.Fatalf("PeerIdentity = %v, %v", got, err)
	}
	var _ tlsconfig.Authorizer = AuthorizeIdentity()
}

func BenchmarkSign(b *testing.B) {
	ca, _ := NewRoot(td, 0)
	key, _ := GenerateKey()
	p, _ := NewCSR(key, ident("default", "web"))
	b.ResetTimer()
	for b.Loop() {
		csr, err := ParseCSR(p)
		if err != nil {
			b.Fatal(err)
		}
		id, err := CSRIdentity(csr)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := ca.Sign(csr.PublicKey, id, LeafOptions{}); err != nil {
			b.Fatal(err)
		}
	}
}
