package capture

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
)

// The ports ztunnel listens on inside every captured pod (design §2).
const (
	OutboundPort = 15001 // the app's outbound TCP, redirected
	InboundPort  = 15006 // plaintext inbound TCP, redirected
	HBONEPort    = 15008 // inbound HBONE, reached directly, never redirected
	DNSPort      = 15053 // the app's DNS, redirected only when Options.CaptureDNS is set
)

// DefaultMark is the socket mark ztunnel puts on its own sockets inside a
// pod (SO_MARK, which needs CAP_NET_ADMIN). It is Istio's value (1337), so
// people who know one mesh read the other's rules without a key.
// DefaultMarkMask keeps the mark to the low 12 bits; kube-proxy (0x4000,
// 0x8000) and most CNIs use higher bits of the same packet mark.
const (
	DefaultMark     = 0x539
	DefaultMarkMask = 0xfff
)

// DefaultReplyMark marks the packets an app sends on connections ztunnel
// opened to it, and DefaultRouteTable is the pod's routing table that sends
// packets with that mark back to ztunnel (see the package doc, "Source
// addresses"). Istio uses 0x111 for the same job.
const (
	DefaultReplyMark  = 0x111
	DefaultRouteTable = 1337
)

// DefaultConntrackZone is the conntrack zone of the original direction of
// ztunnel's own connections in a pod (see the package doc, "Source
// addresses"). Any zone but 0 does; 1337 matches the mark.
const DefaultConntrackZone = 1337

// DefaultProbeSources are the addresses the node rewrites the kubelet's
// connections to enrolled pods to (NodeOptions.ProbeSources), and the only
// sources a pod lets through uncaptured (Options.ProbeSources): a
// link-local IPv4 address and an IPv6 unique local address, neither of
// which a node or a pod has. They are Istio's, so that rules written for
// one mesh's probes (a NetworkPolicy, say) serve the other's.
var DefaultProbeSources = []netip.Addr{
	netip.MustParseAddr("169.254.7.127"),
	netip.MustParseAddr("fd16:9254:7127:1337:ffff:ffff:ffff:ffff"),
}

// Ports are ztunnel's listening ports inside a pod.
type Ports struct {
	Outbound uint16
	Inbound  uint16
	HBONE    uint16
	DNS      uint16
}

// DefaultPorts are the ports of design §2.
func DefaultPorts() Ports {
	return Ports{Outbound: OutboundPort, Inbound: InboundPort, HBONE: HBONEPort, DNS: DNSPort}
}

// Options say what to capture in one pod.
type Options struct {
	Ports Ports

	// Mark is the SO_MARK value of ztunnel's own sockets in the pod and
	// MarkMask the bits of the packet mark it owns. Connections from a
	// socket with Mark are never redirected, so ztunnel's onward
	// connections leave the pod instead of coming back to it. The same
	// value, saved as the connection mark, tags ztunnel's flows in
	// conntrack in both directions (see the package doc).
	Mark     uint32
	MarkMask uint32

	// ReplyMark (inside MarkMask, not Mark) is put on the packets the app
	// sends on connections ztunnel opened to it, and RouteTable is the
	// pod's routing table, selected by ReplyMark, that delivers them to
	// ztunnel whatever their destination: how ztunnel connects to the app
	// from the client's address (Routes, Dialer.DialFrom).
	ReplyMark  uint32
	RouteTable int

	// ConntrackZone is the conntrack zone of the original direction of
	// ztunnel's own connections (packets with Mark), so that a connection
	// ztunnel opens to the app from a client's address and port never
	// shares conntrack's entry with the client's own connection from that
	// address and port (see the package doc, "Source addresses").
	ConntrackZone uint16

	// PodIPs are the pod's addresses. They choose what each address
	// family gets: the capture rules for a family the pod has an address
	// of, and for the other family rules that refuse TCP (the pod still
	// has link-local IPv6 addresses, and an app listening on the
	// dual-stack wildcard would answer on them).
	PodIPs []netip.Addr

	// ProbeSources are the addresses the kubelet's probes arrive from:
	// the addresses the node rewrites the kubelet's own connections to
	// (NodeOptions, DefaultProbeSources). Inbound TCP from them goes
	// straight to the app, uncaptured. A packet mark cannot do this job:
	// the kernel clears the mark when a packet crosses the veth into the
	// pod. Not the node's own address: NodePort traffic that kube-proxy
	// masquerades and host-network pods come from that one too.
	ProbeSources []netip.Addr

	// ExcludeInboundPorts are pod ports whose inbound TCP is not captured;
	// ExcludeOutboundPorts are destination ports whose outbound TCP is
	// not captured.
	ExcludeInboundPorts  []uint16
	ExcludeOutboundPorts []uint16

	// CaptureDNS redirects the app's DNS (UDP and TCP port 53) to
	// Ports.DNS. Off by default: it needs ztunnel's DNS proxy listening
	// on both protocols.
	CaptureDNS bool
}

// DefaultOptions are the options for a pod with the given addresses: the
// default ports, mark and zone, no probe exemption, no exclusions, no DNS.
func DefaultOptions(podIPs ...netip.Addr) Options {
	return Options{
		Ports:         DefaultPorts(),
		Mark:          DefaultMark,
		MarkMask:      DefaultMarkMask,
		ReplyMark:     DefaultReplyMark,
		RouteTable:    DefaultRouteTable,
		ConntrackZone: DefaultConntrackZone,
		PodIPs:        podIPs,
	}
}

// Validate reports every problem with o at once.
func (o Options) Validate() error {
	var errs []error
	ports := map[string]uint16{"outbound": o.Ports.Outbound, "inbound": o.Ports.Inbound, "HBONE": o.Ports.HBONE}
	if o.CaptureDNS {
		ports["DNS"] = o.Ports.DNS
	}
	seen := map[uint16]string{}
	for _, name := range []string{"outbound", "inbound", "HBONE", "DNS"} {
		p, ok := ports[name]
		if !ok {
			continue
		}
		if p == 0 {
			errs = append(errs, fmt.Errorf("%s port is not set", name))
			continue
		}
		if other, dup := seen[p]; dup {
			errs = append(errs, fmt.Errorf("%s and %s ports are both %d", other, name, p))
		}
		seen[p] = name
	}
	if o.Mark == 0 || o.MarkMask == 0 || o.Mark&^o.MarkMask != 0 {
		errs = append(errs, fmt.Errorf("mark %#x must be non-zero and inside mask %#x", o.Mark, o.MarkMask))
	}
	if o.ReplyMark == 0 || o.ReplyMark&^o.MarkMask != 0 || o.ReplyMark == o.Mark {
		errs = append(errs, fmt.Errorf("reply mark %#x must be non-zero, inside mask %#x and not the mark %#x", o.ReplyMark, o.MarkMask, o.Mark))
	}
	if o.RouteTable <= 0 || o.RouteTable == 253 || o.RouteTable == 254 || o.RouteTable == 255 {
		errs = append(errs, fmt.Errorf("route table %d: want a positive number that is not one of the kernel's (253 default, 254 main, 255 local)", o.RouteTable))
	}
	if o.ConntrackZone == 0 {
		errs = append(errs, errors.New("conntrack zone 0: ztunnel's side of its connections needs a zone of its own"))
	}
	if len(o.PodIPs) == 0 {
		errs = append(errs, errors.New("no pod IPs: nothing says which address families to capture"))
	}
	for _, ip := range slices.Concat(o.PodIPs, o.ProbeSources) {
		if !ip.IsValid() || ip.Is4In6() {
			errs = append(errs, fmt.Errorf("address %v: want a plain IPv4 or IPv6 address", ip))
		}
	}
	for _, p := range slices.Concat(o.ExcludeInboundPorts, o.ExcludeOutboundPorts) {
		if p == 0 {
			errs = append(errs, errors.New("excluded port 0"))
		}
	}
	return errors.Join(errs...)
}

// Families are the address families o captures (those of the pod's
// addresses), IPv4 first. The others get rules that refuse TCP.
func (o Options) Families() []Family {
	var fams []Family
	if slices.ContainsFunc(o.PodIPs, netip.Addr.Is4) {
		fams = append(fams, IPv4)
	}
	if slices.ContainsFunc(o.PodIPs, netip.Addr.Is6) {
		fams = append(fams, IPv6)
	}
	return fams
}

// Family is an IP address family, which iptables keeps in separate tables
// (iptables for IPv4, ip6tables for IPv6).
type Family int

const (
	IPv4 Family = 4
	IPv6 Family = 6
)

// AllFamilies are the families Apply programs in every pod.
var AllFamilies = []Family{IPv4, IPv6}

func (f Family) String() string {
	if f == IPv6 {
		return "IPv6"
	}
	return "IPv4"
}

func (f Family) has(a netip.Addr) bool {
	if f == IPv6 {
		return a.Is6()
	}
	return a.Is4()
}
