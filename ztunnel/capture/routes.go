package capture

import (
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/cairnmesh/cairn/internal/netns"
)

// rulePriority places our policy-routing rule ahead of the main table's
// (32766). It matches only packets with the reply mark.
const rulePriority = 100

// ApplyRoutes puts in the pod the policy routing that returns the app's
// replies on ztunnel's connections to ztunnel: packets with o.ReplyMark
// (set by the mangle rules) look up o.RouteTable, which delivers every
// destination locally. Without it, a connection ztunnel opened to the app
// from a client's address would have its replies routed to the client,
// past ztunnel. It is idempotent.
func ApplyRoutes(ns *netns.Handle, o Options) error {
	if err := o.Validate(); err != nil {
		return fmt.Errorf("capture options: %w", err)
	}
	return withNetlink(ns, func(h *netlink.Handle, lo int) error {
		for _, f := range o.Families() {
			route := localRoute(f, o.RouteTable, lo)
			if err := h.RouteReplace(route); err != nil {
				return fmt.Errorf("route %s in table %d of %s: %w", route.Dst, o.RouteTable, ns, err)
			}
			if err := h.RuleAdd(replyRule(f, o)); err != nil && !errors.Is(err, unix.EEXIST) {
				return fmt.Errorf("rule for mark %#x in %s: %w", o.ReplyMark, ns, err)
			}
		}
		return nil
	})
}

// RemoveRoutes removes what ApplyRoutes put in the pod; what is already
// gone is no error.
func RemoveRoutes(ns *netns.Handle, o Options) error {
	return withNetlink(ns, func(h *netlink.Handle, lo int) error {
		var errs []error
		for _, f := range o.Families() {
			if err := h.RuleDel(replyRule(f, o)); err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("rule for mark %#x in %s: %w", o.ReplyMark, ns, err))
			}
			if err := h.RouteDel(localRoute(f, o.RouteTable, lo)); err != nil && !errors.Is(err, unix.ESRCH) {
				errs = append(errs, fmt.Errorf("route in table %d of %s: %w", o.RouteTable, ns, err))
			}
		}
		return errors.Join(errs...)
	})
}

// withNetlink runs fn with a netlink handle inside ns and the index of
// ns's loopback interface.
func withNetlink(ns *netns.Handle, fn func(h *netlink.Handle, lo int) error) error {
	return ns.Do(func() error {
		h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
		if err != nil {
			return fmt.Errorf("netlink in %s: %w", ns, err)
		}
		defer h.Close()
		lo, err := h.LinkByName("lo")
		if err != nil {
			return fmt.Errorf("loopback of %s: %w", ns, err)
		}
		return fn(h, lo.Attrs().Index)
	})
}

// replyRule sends packets with the reply mark to the pod's route table.
func replyRule(f Family, o Options) *netlink.Rule {
	r := netlink.NewRule()
	r.Family = f.netlinkFamily()
	r.Priority = rulePriority
	r.Mark = o.ReplyMark
	mask := o.MarkMask
	r.Mask = &mask
	r.Table = o.RouteTable
	return r
}

// localRoute delivers every destination of family f on this host.
func localRoute(f Family, table, lo int) *netlink.Route {
	dst := &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
	if f == IPv6 {
		dst = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
	}
	return &netlink.Route{
		Dst:       dst,
		Table:     table,
		Type:      unix.RTN_LOCAL,
		Scope:     netlink.SCOPE_HOST,
		LinkIndex: lo,
		Family:    f.netlinkFamily(),
	}
}

func (f Family) netlinkFamily() int {
	if f == IPv6 {
		return unix.AF_INET6
	}
	return unix.AF_INET
}
