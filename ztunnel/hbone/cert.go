package hbone

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/cairnmesh/cairn/internal/pki"
	"github.com/cairnmesh/cairn/internal/spiffe"
)

// alpnH2 is the only application protocol HBONE speaks.
const alpnH2 = "h2"

// maxCertPoll caps the interval between two looks at a certificate source
// that has no certificate yet. Sources cannot notify, so we poll; the cap
// keeps the extra latency after issuance small.
const maxCertPoll = 50 * time.Millisecond

// awaitCertificate returns src's current SVID as a TLS certificate. When src
// has none yet (a pod whose certificate the CA has not issued), it polls
// until one appears, wait passes, or ctx (the handshake's) ends: a
// connection that arrives before its certificate waits instead of failing.
func awaitCertificate(ctx context.Context, src x509svid.Source, wait time.Duration) (*tls.Certificate, error) {
	svid, err := src.GetX509SVID()
	if err == nil {
		return tlsCertificate(svid)
	}
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	delay := time.Millisecond
	timer := time.NewTimer(delay)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("no certificate within %v: %w", wait, errors.Join(err, ctx.Err()))
		case <-timer.C:
		}
		if svid, err = src.GetX509SVID(); err == nil {
			return tlsCertificate(svid)
		}
		delay = min(2*delay, maxCertPoll)
		timer.Reset(delay)
	}
}

// tlsCertificate turns an SVID into what crypto/tls presents.
func tlsCertificate(svid *x509svid.SVID) (*tls.Certificate, error) {
	if svid == nil || len(svid.Certificates) == 0 || svid.PrivateKey == nil {
		return nil, errors.New("certificate source returned an empty SVID")
	}
	c := &tls.Certificate{PrivateKey: svid.PrivateKey, Leaf: svid.Certificates[0]}
	for _, cert := range svid.Certificates {
		c.Certificate = append(c.Certificate, cert.Raw)
	}
	return c, nil
}

// authorizeWorkload accepts any peer whose certificate chained to the trust
// bundle and names a workload (spiffe://<td>/ns/<ns>/sa/<sa>). Which
// workloads may connect is the Authorize hook's decision, made per CONNECT
// with the destination in hand; the handshake only establishes who it is.
func authorizeWorkload(id spiffeid.ID, _ [][]*x509.Certificate) error {
	_, err := spiffe.FromID(id)
	return err
}

// serverTLSConfig is TLS 1.3 with a required, verified client certificate,
// ALPN h2 only, and the pod's certificate fetched per handshake (so rotation
// needs no rebuild) with a bounded wait for the first one.
//
// The handshake runs under a connection deadline of handshakeTimeout. When
// the certificate had to be waited for, the deadline starts afresh after
// the wait: the wait is ours, not the client's, and a client that sends
// nothing is still dropped after handshakeTimeout.
func serverTLSConfig(src x509svid.Source, bundle x509bundle.Source, wait, handshakeTimeout time.Duration) *tls.Config {
	c := pki.ServerConfig(src, bundle, authorizeWorkload)
	c.NextProtos = []string{alpnH2}
	c.GetCertificate = func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
		if svid, err := src.GetX509SVID(); err == nil {
			return tlsCertificate(svid)
		}
		cert, err := awaitCertificate(hello.Context(), src, wait)
		if err == nil {
			err = hello.Conn.SetDeadline(time.Now().Add(handshakeTimeout))
		}
		return cert, err
	}
	return c
}

// clientTLSConfig is TLS 1.3 with ALPN h2 that presents src's certificate
// and accepts only a server that proves exactly the identity dst: a valid
// chain alone is not enough, or any workload could impersonate any other.
func clientTLSConfig(src x509svid.Source, bundle x509bundle.Source, dst spiffe.Identity, wait time.Duration) *tls.Config {
	c := pki.ClientConfig(src, bundle, pki.AuthorizeIdentity(dst))
	c.NextProtos = []string{alpnH2}
	c.GetClientCertificate = func(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
		return awaitCertificate(cri.Context(), src, wait)
	}
	return c
}
