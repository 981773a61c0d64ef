package capture

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/cairnmesh/cairn/internal/netns"
)

// ListenConfig says how to open a pod's listeners.
type ListenConfig struct {
	// Ports to listen on; DefaultPorts() if zero. The DNS port is not
	// opened here: the DNS proxy owns its UDP and TCP sockets.
	Ports Ports
	// ReusePort sets SO_REUSEPORT, so that during a rolling update the new
	// ztunnel binds the same ports in the pod while the old one still
	// listens; the kernel then spreads new connections over both until the
	// old one closes its listeners. Both processes must set it and run as
	// the same user. A connection still in the old listener's accept
	// queue when it closes is reset, unless net.ipv4.tcp_migrate_req is 1
	// in the pod's namespace: then the kernel hands it to the new one.
	ReusePort bool
}

// Listeners are ztunnel's listening sockets inside one pod. They were
// created in the pod's network namespace and stay there: accept on them
// from any goroutine.
type Listeners struct {
	Outbound net.Listener // the app's redirected outbound TCP; see OriginalDst
	Inbound  net.Listener // redirected plaintext inbound TCP; see OriginalDst
	HBONE    net.Listener // HBONE, not redirected: the destination is LocalAddr
}

// Listen opens the outbound, inbound and HBONE listeners inside ns, on all
// of the pod's addresses (both families where the pod has IPv6). They must
// not be bound to one address: REDIRECT sends outbound connections to the
// loopback address and inbound ones to the pod's address.
func (c ListenConfig) Listen(ctx context.Context, ns *netns.Handle) (*Listeners, error) {
	ports := c.Ports
	if ports == (Ports{}) {
		ports = DefaultPorts()
	}
	lc := net.ListenConfig{}
	if c.ReusePort {
		lc.Control = reusePort
	}
	ls := &Listeners{}
	err := ns.Do(func() error {
		for _, l := range []struct {
			port uint16
			dst  *net.Listener
		}{{ports.Outbound, &ls.Outbound}, {ports.Inbound, &ls.Inbound}, {ports.HBONE, &ls.HBONE}} {
			ln, err := lc.Listen(ctx, "tcp", ":"+strconv.Itoa(int(l.port)))
			if err != nil {
				return fmt.Errorf("listening in %s: %w", ns, err)
			}
			*l.dst = ln
		}
		return nil
	})
	if err != nil {
		ls.Close()
		return nil, err
	}
	return ls, nil
}

// Close closes the listeners that are open. Connections already accepted
// stay open.
func (l *Listeners) Close() error {
	var errs []error
	for _, ln := range []net.Listener{l.Outbound, l.Inbound, l.HBONE} {
		if ln != nil {
			errs = append(errs, ln.Close())
		}
	}
	return errors.Join(errs...)
}

func reusePort(_, _ string, c syscall.RawConn) error {
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("setting SO_REUSEPORT: %w", serr)
	}
	return nil
}
