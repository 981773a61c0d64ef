package hbone

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/netip"
)

// connect opens one HBONE connection for key: TCP through the Dialer,
// mutual TLS 1.3 that accepts only the expected destination identity, then
// HTTP/2. The connection's reader and control writer run on the pool's
// wait group until the connection ends.
func (p *Pool) connect(ctx context.Context, key Key) (*poolConn, error) {
	src, err := p.cfg.Certificate(key.Source)
	if err != nil {
		return nil, fmt.Errorf("hbone: certificate of %s: %w", key.Source, err)
	}
	raw, err := p.cfg.Dialer(ctx, "tcp", key.Address.String())
	if err != nil {
		return nil, fmt.Errorf("hbone: dialing %s: %w", key.Address, err)
	}
	bc := newBatchConn(raw)
	tc := tls.Client(bc, clientTLSConfig(src, p.cfg.Bundle, key.Destination, p.cfg.CertificateWait))
	hctx, cancel := context.WithTimeout(ctx, p.cfg.HandshakeTimeout+p.cfg.CertificateWait)
	err = tc.HandshakeContext(hctx)
	cancel()
	if err != nil {
		raw.Close()
		return nil, fmt.Errorf("hbone: TLS handshake with %s (expecting %s): %w", key.Address, key.Destination, err)
	}
	if proto := tc.ConnectionState().NegotiatedProtocol; proto != alpnH2 {
		raw.Close()
		return nil, fmt.Errorf("hbone: %s negotiated ALPN %q, not %q", key.Address, proto, alpnH2)
	}
	pc := &poolConn{key: key, local: raw.LocalAddr()}
	c := newConn(tc, bc, true, p.connConfig, p.log)
	c.onGoAway = func() { p.markDead(pc) }
	pc.c = c
	if err := c.start(); err != nil {
		c.close()
		return nil, fmt.Errorf("hbone: starting HTTP/2 with %s: %w", key.Address, err)
	}
	p.wg.Go(func() {
		err := c.readLoop()
		p.log.Debug("hbone connection ended", "dst", key.Address, "error", err)
	})
	p.wg.Go(c.controlWriter)
	return pc, nil
}

// open sends the CONNECT on pc's reserved stream, with first if it is
// not nil, and waits for the answer.
func (p *Pool) open(ctx context.Context, pc *poolConn, authority netip.AddrPort, first *firstBytes) (*Tunnel, error) {
	addr := authority.String()
	st, err := pc.c.openStream(ctx, addr, first)
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%w)", ctx.Err(), err)
		}
		return nil, fmt.Errorf("hbone: CONNECT %s via %s: %w", addr, pc.key.Address, err)
	}
	return &Tunnel{
		st:      st,
		local:   pc.local,
		remote:  net.TCPAddrFromAddrPort(authority),
		first:   first,
		release: func() { p.release(pc) },
	}, nil
}
