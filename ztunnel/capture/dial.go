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
	// Dialer is the base for timeouts, keep-alive and the like; its
	// Control is replaced. Zero value if nil.
	Dialer *net.Dialer
}

// DialContext connects to address, which must be a literal IP:port: a host
// name would be resolved outside the pod and on other threads. The OS
// thread that makes the socket stays inside the pod's namespace until the
// connection is established or fails.
func (d *Dialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	if _, err := netip.ParseAddrPort(address); err != nil {
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
	nd.Control, nd.ControlContext = MarkControl(mark), nil
	var conn net.Conn
	err := d.Netns.Do(func() error {
		var err error
		conn, err = nd.DialContext(ctx, network, address)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("dialling %s from %s: %w", address, d.Netns, err)
	}
	return conn, nil
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
