package identity

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"github.com/cairnmesh/cairn/internal/pki"
)

// tlsPair is one mutual TLS connection whose server presents a Source's
// certificate, as an HBONE listener would; the server echoes.
type tlsPair struct {
	client *tls.Conn
	done   chan struct{}
}

// newTLSPair connects a client, with a certificate of its own from root,
// to a server presenting src's certificate, over an in-memory pipe. Both
// sides trust bundle; the client accepts only src's identity.
func newTLSPair(t *testing.T, src *Source, bundle *Bundle, root *pki.CA) *tlsPair {
	t.Helper()
	key, err := pki.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := root.Sign(key.Public(), identity("client"), pki.LeafOptions{})
	if err != nil {
		t.Fatal(err)
	}
	svid, err := pki.NewSVID([]*x509.Certificate{leaf}, key)
	if err != nil {
		t.Fatal(err)
	}
	clientSrc := &pki.Source{}
	clientSrc.Set(svid)

	sc, cc := net.Pipe()
	server := tls.Server(sc, pki.ServerConfig(src, bundle, tlsconfig.AuthorizeAny()))
	client := tls.Client(cc, pki.ClientConfig(clientSrc, bundle, pki.AuthorizeIdentity(src.Identity())))
	p := &tlsPair{client: client, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		defer server.Close()
		_, _ = io.Copy(server, server)
	}()
	t.Cleanup(func() {
		client.Close()
		<-p.done
	})
	if err := client.SetDeadline(time.Now().Add(wait)); err != nil {
		t.Fatal(err)
	}
	if err := client.Handshake(); err != nil {
		t.Fatalf("handshake: %v", err)
	}
	p.roundTrip(t) // with TLS 1.3, a refused client certificate shows here
	return p
}

// serverSerial is the serial of the certificate the server presented.
func (p *tlsPair) serverSerial(t *testing.T) string {
	t.Helper()
	cs := p.client.ConnectionState()
	if len(cs.PeerCertificates) == 0 {
		t.Fatal("server presented no certificate")
	}
	return cs.PeerCertificates[0].SerialNumber.Text(16)
}

// roundTrip sends a message and reads the echo.
func (p *tlsPair) roundTrip(t *testing.T) {
	t.Helper()
	msg := []byte("ping")
	if _, err := p.client.Write(msg); err != nil {
		t.Fatalf("write: %v", err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(p.client, buf); err != nil {
		t.Fatalf("read: %v", err)
	}
}

// awaitClosed waits for a channel to be closed.
func awaitClosed(t *testing.T, c <-chan struct{}) {
	t.Helper()
	select {
	case <-c:
	case <-time.After(wait):
		t.Fatal("channel not closed in time")
	}
}
