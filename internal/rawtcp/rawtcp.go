// Package rawtcp sends single hand-made TCP segments through a raw socket,
// as a process with CAP_NET_RAW (which container runtimes grant pods by
// default) can. Tests use it to play an attacker who sends what no TCP
// stack would, such as an ACK for a connection that never started.
package rawtcp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"golang.org/x/sys/unix"
)

// TCP flags.
const (
	FIN = 0x01
	SYN = 0x02
	RST = 0x04
	PSH = 0x08
	ACK = 0x10
)

// Segment is one TCP segment to send.
type Segment struct {
	Src, Dst netip.AddrPort
	Seq, Ack uint32
	Flags    uint8
	Window   uint16
	// Options are TCP options, padded with NOPs to a multiple of four
	// bytes; at most 40 bytes.
	Options []byte
	Payload []byte
}

// Send sends s from the calling thread's network namespace. For IPv4 it
// writes the IP header too (IP_HDRINCL, which CAP_NET_RAW allows), so the
// source may be any address: the kernel routes by the destination. For
// IPv6 the kernel writes the IP header from Src's address, which must be
// one the kernel accepts as a source there (a local one, or any with
// CAP_NET_ADMIN). The TCP header and its checksum are s's.
func Send(s Segment) error {
	src, dst := s.Src.Addr().Unmap(), s.Dst.Addr().Unmap()
	if src.Is4() != dst.Is4() {
		return errors.New("rawtcp: source and destination of different families")
	}
	if src.Is4() {
		return send4(s, src, dst)
	}
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return fmt.Errorf("rawtcp: raw socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptInt(fd, unix.SOL_IPV6, unix.IPV6_FREEBIND, 1); err != nil {
		return fmt.Errorf("rawtcp: IPV6_FREEBIND: %w", err)
	}
	local := &unix.SockaddrInet6{Addr: src.As16(), ZoneId: zoneIndex(s.Src.Addr())}
	remote := &unix.SockaddrInet6{Addr: dst.As16(), ZoneId: zoneIndex(s.Dst.Addr())}
	if err := unix.Bind(fd, local); err != nil {
		return fmt.Errorf("rawtcp: binding %s: %w", src, err)
	}
	if err := unix.Sendto(fd, s.Bytes(), 0, remote); err != nil {
		return fmt.Errorf("rawtcp: sending to %s: %w", s.Dst, err)
	}
	return nil
}

// send4 sends s with an IPv4 header of its own.
func send4(s Segment, src, dst netip.Addr) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW) // IP_HDRINCL implied
	if err != nil {
		return fmt.Errorf("rawtcp: raw socket: %w", err)
	}
	defer unix.Close(fd)
	tcp := s.Bytes()
	pkt := make([]byte, 20, 20+len(tcp))
	pkt[0] = 0x45 // version 4, five 32-bit words
	binary.BigEndian.PutUint16(pkt[2:], uint16(20+len(tcp)))
	binary.BigEndian.PutUint16(pkt[6:], 0x4000) // don't fragment
	pkt[8] = 64
	pkt[9] = unix.IPPROTO_TCP
	copy(pkt[12:16], src.AsSlice())
	copy(pkt[16:20], dst.AsSlice())
	// The kernel fills in the identification and the header checksum.
	pkt = append(pkt, tcp...)
	if err := unix.Sendto(fd, pkt, 0, &unix.SockaddrInet4{Addr: dst.As4()}); err != nil {
		return fmt.Errorf("rawtcp: sending to %s: %w", s.Dst, err)
	}
	return nil
}

// Bytes is the segment's TCP header (with its options) and payload,
// with the checksum over the IPv4 or IPv6 pseudo-header.
func (s Segment) Bytes() []byte {
	opts := append([]byte(nil), s.Options...)
	for len(opts)%4 != 0 {
		opts = append(opts, 1) // NOP
	}
	hdr := 20 + len(opts)
	b := make([]byte, hdr+len(s.Payload))
	binary.BigEndian.PutUint16(b[0:], s.Src.Port())
	binary.BigEndian.PutUint16(b[2:], s.Dst.Port())
	binary.BigEndian.PutUint32(b[4:], s.Seq)
	binary.BigEndian.PutUint32(b[8:], s.Ack)
	b[12] = byte(hdr/4) << 4 // data offset in 32-bit words
	b[13] = s.Flags
	w := s.Window
	if w == 0 {
		w = 65535
	}
	binary.BigEndian.PutUint16(b[14:], w)
	copy(b[20:], opts)
	copy(b[hdr:], s.Payload)
	binary.BigEndian.PutUint16(b[16:], checksum(s.Src.Addr().Unmap(), s.Dst.Addr().Unmap(), b))
	return b
}

// MD5Option is a TCP MD5 signature option (RFC 2385) with a zero digest.
// A Linux listener without an MD5 key drops a segment that carries one,
// without a reset.
func MD5Option() []byte { return append([]byte{19, 18}, make([]byte, 16)...) }

func checksum(src, dst netip.Addr, tcp []byte) uint16 {
	var pseudo []byte
	pseudo = append(pseudo, src.AsSlice()...)
	pseudo = append(pseudo, dst.AsSlice()...)
	if src.Is4() {
		pseudo = append(pseudo, 0, unix.IPPROTO_TCP)
		pseudo = binary.BigEndian.AppendUint16(pseudo, uint16(len(tcp)))
	} else {
		pseudo = binary.BigEndian.AppendUint32(pseudo, uint32(len(tcp)))
		pseudo = append(pseudo, 0, 0, 0, unix.IPPROTO_TCP)
	}
	var sum uint32
	for _, part := range [][]byte{pseudo, tcp} {
		for i := 0; i+1 < len(part); i += 2 {
			sum += uint32(binary.BigEndian.Uint16(part[i:]))
		}
		if len(part)%2 == 1 {
			sum += uint32(part[len(part)-1]) << 8
		}
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// zoneIndex is the interface index of a link-local address's zone
// ("fe80::1%eth0"), 0 if it has none.
func zoneIndex(a netip.Addr) uint32 {
	z := a.Zone()
	if z == "" {
		return 0
	}
	if ifi, err := net.InterfaceByName(z); err == nil {
		return uint32(ifi.Index)
	}
	return 0
}
