package capture

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ip6tSoOriginalDst is IP6T_SO_ORIGINAL_DST from
// linux/netfilter_ipv6/ip6_tables.h, which x/sys/unix does not define. It
// has the same number as SO_ORIGINAL_DST, at level SOL_IPV6.
const ip6tSoOriginalDst = 80

// ErrNotRedirected is returned (with the address) by OriginalDst when the
// connection's original destination is the listener itself: it came
// straight to a ztunnel port, not through a capture rule. Forwarding it to
// that destination would bring it back to ztunnel, so callers refuse it.
var ErrNotRedirected = errors.New("connection was not redirected: its original destination is the listener itself")

// OriginalDst returns where the client meant to connect before a REDIRECT
// rule sent the connection to ztunnel: the app's chosen destination for
// connections accepted on Listeners.Outbound, the pod's address and app
// port for Listeners.Inbound. It asks conntrack (SO_ORIGINAL_DST, or
// IP6T_SO_ORIGINAL_DST for IPv6), so conn must be the accepted *net.TCPConn
// itself, not a wrapper such as a TLS connection.
func OriginalDst(conn net.Conn) (netip.AddrPort, error) {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("original destination: %T has no socket", conn)
	}
	tcp, ok := conn.LocalAddr().(*net.TCPAddr)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("original destination: %v is not a TCP address", conn.LocalAddr())
	}
	local := tcp.AddrPort()
	local = netip.AddrPortFrom(local.Addr().Unmap(), local.Port())
	raw, err := sc.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination: %w", err)
	}
	var orig netip.AddrPort
	var serr error
	if err := raw.Control(func(fd uintptr) {
		// An IPv4 connection accepted on a dual-stack socket is still
		// tracked by IPv4 conntrack, so the local address decides.
		if local.Addr().Is4() {
			orig, serr = origDst4(fd)
		} else {
			orig, serr = origDst6(fd)
		}
	}); err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination: %w", err)
	}
	if serr != nil {
		// ENOENT: conntrack has no entry, so nothing redirected it.
		return netip.AddrPort{}, fmt.Errorf("original destination of %v: %w", conn.RemoteAddr(), serr)
	}
	if orig == local {
		return orig, ErrNotRedirected
	}
	return orig, nil
}

func origDst4(fd uintptr) (netip.AddrPort, error) {
	var sa unix.RawSockaddrInet4
	if err := getsockopt(fd, unix.SOL_IP, unix.SO_ORIGINAL_DST, unsafe.Pointer(&sa), unsafe.Sizeof(sa)); err != nil {
		return netip.AddrPort{}, err
	}
	return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), netPort(&sa.Port)), nil
}

func origDst6(fd uintptr) (netip.AddrPort, error) {
	var sa unix.RawSockaddrInet6
	if err := getsockopt(fd, unix.SOL_IPV6, ip6tSoOriginalDst, unsafe.Pointer(&sa), unsafe.Sizeof(sa)); err != nil {
		return netip.AddrPort{}, err
	}
	return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), netPort(&sa.Port)), nil
}

// getsockopt is the raw system call: x/sys/unix has no getter that returns
// a sockaddr.
func getsockopt(fd uintptr, level, name int, val unsafe.Pointer, size uintptr) error {
	n := uint32(size)
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, uintptr(level), uintptr(name),
		uintptr(val), uintptr(unsafe.Pointer(&n)), 0)
	if errno != 0 {
		return fmt.Errorf("getsockopt: %w", errno)
	}
	return nil
}

// netPort reads a port stored in network byte order.
func netPort(p *uint16) uint16 {
	b := (*[2]byte)(unsafe.Pointer(p))
	return uint16(b[0])<<8 | uint16(b[1])
}
