package capture

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/cairnmesh/cairn/internal/netns"
)

// Dialer opens ztunnel's own connections from inside a pod: to the app
// (inbound delivery), to a peer's HBONE port, or to a destination outside
// the mesh (passthrough). The socket is created in the pod's namespace, so
// the connection leaves from the pod's address as the app's own would, and
// carries Mark, so the capture rules let it through instead of sending it
// back to ztunnel.
type Dialer struct {
	Netns *netns.Handle
	// Mark is the socket mark; DefaultMark if zero. It must be the Mark
	// the pod's rules were built with.
	Mark uint32
	// Dialer is the base for timeouts, keep-alive, the local address and
	// the like; its Control and ControlContext are replaced. Zero value if
	// nil.
	Dialer *net.Dialer
}

// DialContext connects to address, which must be a literal IP:port: a host
// name would be resolved outside the pod.
//
// Only the socket is made inside the pod's namespace (netns.Handle.Socket):
// a socket stays in the namespace it was created in whichever thread uses
// it, so the connect, and the wait for the handshake, run on the caller's
// goroutine through the runtime's poller like any other dial. Dialling
// inside Do instead held a locked OS thread in the pod for the whole
// handshake, and the runtime had to wake that particular thread when it
// ended: in BenchmarkDialerInNamespace that took 1.2 to 1.9 times the CPU
// per dial, the more dials at once the more.
//
// The socket gets into net.Dialer through its Control hook, which runs
// after the dialer made a socket in the process's namespace and before it
// binds, connects or registers it with the poller: the hook puts the pod's
// socket on the same descriptor number (dup3), and net.Dialer goes on
// with it, unaware. Everything else is net.Dialer's own: ctx, Timeout and
// Deadline (a cancelled dial closes the socket), LocalAddr, keep-alive,
// errors, and a *net.TCPConn with the right addresses. Building the
// connection from the descriptor instead (net.FileConn) takes more system
// calls, and cannot be done before the handshake ends (a connecting socket
// has no peer address yet), so waiting for it would need a second wrapper
// (an os.File) registered with the poller.
func (d *Dialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	return d.dial(ctx, netip.Addr{}, network, address)
}

// DialFrom is DialContext from src, an address that need not be the
// pod's: ztunnel connecting to the app from the client's address, so that
// the app sees who called. The socket is transparent (IP_TRANSPARENT or
// IPV6_TRANSPARENT, which need CAP_NET_ADMIN) and bound to src with a port
// of the kernel's choosing. The app's replies reach ztunnel only if the
// pod has the reply routes (ApplyRoutes).
func (d *Dialer) DialFrom(ctx context.Context, src netip.Addr, network, address string) (net.Conn, error) {
	if !src.IsValid() {
		return nil, fmt.Errorf("dialling %s from %s: no source address", address, d.Netns)
	}
	return d.dial(ctx, src.Unmap(), network, address)
}

func (d *Dialer) dial(ctx context.Context, src netip.Addr, network, address string) (net.Conn, error) {
	dst, err := netip.ParseAddrPort(address)
	if err != nil {
		return nil, fmt.Errorf("dialling %s from %s: want a literal IP:port: %w", address, d.Netns, err)
	}
	var nd net.Dialer
	if d.Dialer != nil {
		nd = *d.Dialer
	}
	mark := d.Mark
	if mark == 0 {
		mark = DefaultMark
	}
	transparent := src.IsValid()
	if transparent {
		if src.Is4() != dst.Addr().Unmap().Is4() {
			return nil, fmt.Errorf("dialling %s from %s in %s: the addresses are of different families", address, src, d.Netns)
		}
		nd.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0))
	}
	nd.Control = nil
	nd.ControlContext = func(_ context.Context, _, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) { serr = d.replace(int(fd), mark, transparent) }); err != nil {
			return err
		}
		return serr
	}
	conn, err := nd.DialContext(ctx, network, address)
	if err != nil {
		if transparent {
			return nil, fmt.Errorf("dialling %s from %s in %s: %w", address, src, d.Netns, err)
		}
		return nil, fmt.Errorf("dialling %s from %s: %w", address, d.Netns, err)
	}
	return conn, nil
}

// replace puts a socket made in the pod, marked, on descriptor fd in place
// of the socket net.Dialer made there. The pod's socket gets the same
// domain, type and protocol, and the options net sets on every new socket;
// transparent lets it bind an address that is not the pod's.
func (d *Dialer) replace(fd int, mark uint32, transparent bool) error {
	var kind [3]int // domain, type, protocol
	for i, opt := range []int{unix.SO_DOMAIN, unix.SO_TYPE, unix.SO_PROTOCOL} {
		v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, opt)
		if err != nil {
			return fmt.Errorf("inspecting the new socket: %w", err)
		}
		kind[i] = v
	}
	domain, typ, proto := kind[0], kind[1], kind[2]
	pod, err := d.Netns.Socket(domain, typ|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		return err
	}
	// After dup3, fd holds the pod's socket too; this descriptor is spare.
	defer unix.Close(pod)
	if domain == unix.AF_INET6 {
		if err := copyOption(fd, pod, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY); err != nil {
			return err
		}
	}
	if typ != unix.SOCK_STREAM {
		if err := copyOption(fd, pod, unix.SOL_SOCKET, unix.SO_BROADCAST); err != nil {
			return err
		}
	}
	if err := unix.SetsockoptInt(pod, unix.SOL_SOCKET, unix.SO_MARK, int(mark)); err != nil {
		return fmt.Errorf("setting SO_MARK %#x: %w", mark, err)
	}
	if transparent {
		level, opt := unix.SOL_IP, unix.IP_TRANSPARENT
		if domain == unix.AF_INET6 {
			level, opt = unix.SOL_IPV6, unix.IPV6_TRANSPARENT
		}
		if err := unix.SetsockoptInt(pod, level, opt, 1); err != nil {
			return fmt.Errorf("making the socket transparent: %w", err)
		}
	}
	// dup3 closes the socket net made and reuses its number in one step,
	// so no other goroutine can be handed that number in between.
	if err := unix.Dup3(pod, fd, unix.O_CLOEXEC); err != nil {
		return fmt.Errorf("installing the pod's socket: %w", err)
	}
	return nil
}

// copyOption sets an integer socket option of to to its value on from.
func copyOption(from, to, level, name int) error {
	v, err := unix.GetsockoptInt(from, level, name)
	if err == nil {
		err = unix.SetsockoptInt(to, level, name, v)
	}
	if err != nil {
		return fmt.Errorf("copying socket option %d/%d: %w", level, name, err)
	}
	return nil
}

// MarkControl returns a net.Dialer or net.ListenConfig Control function
// that sets SO_MARK on the socket before it connects or binds. Setting the
// mark needs CAP_NET_ADMIN.
func MarkControl(mark uint32) func(network, address string, c syscall.RawConn) error {
	return func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(mark))
		}); err != nil {
			return err
		}
		if serr != nil {
			return fmt.Errorf("setting SO_MARK %#x: %w", mark, serr)
		}
		return nil
	}
}
