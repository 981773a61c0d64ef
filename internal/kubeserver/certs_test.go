package kubeserver

import (
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"net"
	"slices"
	"testing"
)

func parseCert(t *testing.T, pemBytes []byte) *x509.Certificate {
	t.Helper()
	block, rest := pem.Decode(pemBytes)
	if block == nil || block.Type != "CERTIFICATE" || len(rest) != 0 {
		t.Fatalf("not a single PEM certificate: %q", pemBytes)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func TestServingCertVerifiesAgainstCA(t *testing.T) {
	for _, alg := range []KeyAlgorithm{ECDSA, RSA} {
		t.Run(alg.String(), func(t *testing.T) {
			ca, err := NewCA("test-ca", alg)
			if err != nil {
				t.Fatal(err)
			}
			extra := net.ParseIP("198.18.0.1")
			kp, err := ca.IssueServing(
				[]net.IP{net.IPv4(127, 0, 0, 1), extra},
				[]string{"localhost", "api.lab.test"})
			if err != nil {
				t.Fatal(err)
			}
			cert := parseCert(t, kp.CertPEM)
			roots := x509.NewCertPool()
			if !roots.AppendCertsFromPEM(ca.CertPEM) {
				t.Fatal("CA PEM not accepted by CertPool")
			}
			for _, name := range []string{"127.0.0.1", "198.18.0.1", "localhost", "api.lab.test"} {
				_, err := cert.Verify(x509.VerifyOptions{
					DNSName:   name,
					Roots:     roots,
					KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
				})
				if err != nil {
					t.Errorf("verify for %s: %v", name, err)
				}
			}
			// A name that is not a SAN must fail, or the check above means nothing.
			if _, err := cert.Verify(x509.VerifyOptions{DNSName: "other.test", Roots: roots}); err == nil {
				t.Error("certificate verified for other.test, which is not a SAN")
			}
			// Not valid for client authentication.
			if _, err := cert.Verify(x509.VerifyOptions{Roots: roots,
				KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err == nil {
				t.Error("serving certificate verified for client auth")
			}
			// Signed by a different CA: must fail.
			other, err := NewCA("other-ca", alg)
			if err != nil {
				t.Fatal(err)
			}
			otherRoots := x509.NewCertPool()
			otherRoots.AppendCertsFromPEM(other.CertPEM)
			if _, err := cert.Verify(x509.VerifyOptions{DNSName: "localhost", Roots: otherRoots}); err == nil {
				t.Error("certificate verified against an unrelated CA")
			}
			if !ca.Cert.IsCA {
				t.Error("CA certificate is not marked IsCA")
			}
		})
	}
}

func TestClientCertCarriesUserAndGroups(t *testing.T) {
	ca, err := NewCA("test-ca", ECDSA)
	if err != nil {
		t.Fatal(err)
	}
	kp, err := ca.IssueClient("system:node:a", []string{"system:nodes", "extra"})
	if err != nil {
		t.Fatal(err)
	}
	cert := parseCert(t, kp.CertPEM)
	if cert.Subject.CommonName != "system:node:a" {
		t.Errorf("CN = %q", cert.Subject.CommonName)
	}
	// DER sorts a SET OF, so compare the groups as a set.
	if got := slices.Sorted(slices.Values(cert.Subject.Organization)); !slices.Equal(got, []string{"extra", "system:nodes"}) {
		t.Errorf("O = %q", cert.Subject.Organization)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca.CertPEM)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("client cert does not verify for client auth: %v", err)
	}
	if _, err := ca.IssueClient("", nil); err == nil {
		t.Error("IssueClient accepted an empty user")
	}
}

func TestKeyPEMMatchesCertificate(t *testing.T) {
	for _, alg := range []KeyAlgorithm{ECDSA, RSA} {
		ca, err := NewCA("test-ca", alg)
		if err != nil {
			t.Fatal(err)
		}
		kp, err := ca.IssueServing(nil, []string{"localhost"})
		if err != nil {
			t.Fatal(err)
		}
		block, _ := pem.Decode(kp.KeyPEM)
		if block == nil || block.Type != "PRIVATE KEY" {
			t.Fatalf("%v: key is not a PKCS#8 PEM block", alg)
		}
		key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		pub := parseCert(t, kp.CertPEM).PublicKey
		switch k := key.(type) {
		case *ecdsa.PrivateKey:
			if alg != ECDSA || !k.PublicKey.Equal(pub) {
				t.Errorf("%v: ECDSA key does not match certificate", alg)
			}
		case *rsa.PrivateKey:
			if alg != RSA || !k.PublicKey.Equal(pub) {
				t.Errorf("%v: RSA key does not match certificate", alg)
			}
		default:
			t.Errorf("%v: unexpected key type %T", alg, key)
		}
	}
}

func TestEncodePublicKey(t *testing.T) {
	key, err := GenerateKey(ECDSA)
	if err != nil {
		t.Fatal(err)
	}
	pubPEM, err := EncodePublicKey(key)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(pubPEM)
	if block == nil || block.Type != "PUBLIC KEY" {
		t.Fatalf("not a PUBLIC KEY block: %q", pubPEM)
	}
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if !key.Public().(*ecdsa.PublicKey).Equal(pub) {
		t.Error("decoded public key differs")
	}
}

func TestIssueServingNeedsAName(t *testing.T) {
	ca, err := NewCA("test-ca", ECDSA)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ca.IssueServing(nil, nil); err == nil {
		t.Error("IssueServing without IPs or names succeeded")
	}
}
