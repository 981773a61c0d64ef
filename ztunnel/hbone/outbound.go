//lint:file-ignore SA1019 HBONE is built on golang.org/x/net/http2 (a required library), whose types v0.62 marks deprecated in favour of net/http

package hbone

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
)

// connect opens one HBONE connection for key: TCP through the Dialer,
// mutual TLS 1.3 that accepts only the expected destination identity, then
// HTTP/2.
func (p *Pool) connect(ctx context.Context, key Key) (*poolConn, error) {
	src, err := p.cfg.Certificate(key.Source)
	if err != nil {
		return nil, fmt.Errorf("hbone: certificate of %s: %w", key.Source, err)
	}
	raw, err := p.cfg.Dialer(ctx, "tcp", key.Address.String())
	if err != nil {
		return nil, fmt.Errorf("hbone: dialing %s: %w", key.Address, err)
	}
	pc := &poolConn{key: key, local: raw.LocalAddr()}
	wc := &watchedConn{Conn: raw, down: func() { p.markDead(pc) }}
	tc := tls.Client(wc, clientTLSConfig(src, p.cfg.Bundle, key.Destination, p.cfg.CertificateWait))
	hctx, cancel := context.WithTimeout(ctx, p.cfg.HandshakeTimeout+p.cfg.CertificateWait)
	err = tc.HandshakeContext(hctx)
	cancel()
	if err != nil {
		raw.Close()
		return nil, fmt.Errorf("hbone: TLS handshake with %s (expecting %s): %w", key.Address, key.Destination, err)
	}
	if proto := tc.ConnectionState().NegotiatedProtocol; proto != alpnH2 {
		tc.Close()
		return nil, fmt.Errorf("hbone: %s negotiated ALPN %q, not %q", key.Address, proto, alpnH2)
	}
	cc, err := p.h2.NewClientConn(tc)
	if err != nil {
		tc.Close()
		return nil, fmt.Errorf("hbone: starting HTTP/2 with %s: %w", key.Address, err)
	}
	pc.cc = cc
	return pc, nil
}

// maxReasonBytes bounds how much of a refusal's body Dial reads.
const maxReasonBytes = 256

// open sends the CONNECT on pc's reserved stream and waits for the answer.
func (p *Pool) open(ctx context.Context, pc *poolConn, authority netip.AddrPort) (*Tunnel, error) {
	addr := authority.String()
	pr, pw := io.Pipe()
	// The stream's context must outlive ctx, as a net.Dialer's connection
	// outlives the dial's context; ctx only bounds the wait for the answer.
	sctx, scancel := context.WithCancel(context.WithoutCancel(ctx))
	stop := context.AfterFunc(ctx, scancel)
	fail := func(err error) (*Tunnel, error) {
		stop()
		pw.CloseWithError(err)
		scancel()
		return nil, fmt.Errorf("hbone: CONNECT %s via %s: %w", addr, pc.key.Address, err)
	}
	req := (&http.Request{
		Method: http.MethodConnect,
		URL:    &url.URL{Host: addr},
		Host:   addr,
		// A nil User-Agent entry keeps the transport from adding its own.
		Header: http.Header{"User-Agent": nil},
		Body:   pr,
	}).WithContext(sctx)
	resp, err := pc.cc.RoundTrip(req)
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%w)", ctx.Err(), err)
		}
		return fail(err)
	}
	if resp.StatusCode != http.StatusOK {
		reason, _ := io.ReadAll(io.LimitReader(resp.Body, maxReasonBytes))
		resp.Body.Close()
		return fail(&StatusError{Code: resp.StatusCode, Reason: strings.TrimSpace(string(reason))})
	}
	if !stop() {
		// ctx ended as the answer arrived and cancelled the stream.
		resp.Body.Close()
		return fail(ctx.Err())
	}
	return &Tunnel{
		body:    resp.Body,
		pw:      pw,
		cancel:  scancel,
		local:   pc.local,
		remote:  net.TCPAddrFromAddrPort(authority),
		release: func() { p.release(pc) },
	}, nil
}

// watchedConn reports the first read error or close of the TCP connection
// under TLS: the moment a pooled connection is broken, whatever the
// HTTP/2 layer makes of it.
type watchedConn struct {
	net.Conn
	once sync.Once
	down func()
}

func (c *watchedConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if err != nil {
		c.once.Do(c.down)
	}
	return n, err
}

func (c *watchedConn) Close() error {
	c.once.Do(c.down)
	return c.Conn.Close()
}
