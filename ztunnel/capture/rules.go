package capture

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// ChainPrefix starts the name of every chain this package makes. Remove
// deletes every chain with the prefix and every rule that jumps to one, so
// chains of an older ztunnel with other names go too.
const ChainPrefix = "CAIRN_"

// synOnly matches the first packet of a TCP connection, written the way
// iptables-save prints --syn. See the package doc for why the redirects
// match only SYNs.
const synOnly = "-m tcp --tcp-flags FIN,SYN,RST,ACK SYN"

// Ruleset is the capture configuration of one address family: the chains
// we own, each with the built-in chain that jumps to it. Rules are written
// the way iptables-save prints them, so what is in a namespace can be
// compared with what should be, line by line.
type Ruleset struct {
	Family Family
	Tables []Table
}

// Table is one iptables table ("nat", "mangle").
type Table struct {
	Name   string
	Chains []Chain
}

// Chain is one of our chains. Hook is the built-in chain whose first rule
// jumps to it. Rules are rule specifications, without "-A <chain>".
type Chain struct {
	Name  string
	Hook  string
	Rules []string
}

// Build returns the rules that capture a pod's TCP for family f, or, if
// the pod has no address of family f, the rules that refuse TCP in that
// family (Refuse). It is pure: the same options give the same rules.
func Build(o Options, f Family) (Ruleset, error) {
	if err := o.Validate(); err != nil {
		return Ruleset{}, fmt.Errorf("capture options: %w", err)
	}
	if !slices.ContainsFunc(o.PodIPs, f.has) {
		return refuse(f), nil
	}
	mark := fmt.Sprintf("%#x/%#x", o.Mark, o.MarkMask)
	reply := fmt.Sprintf("%#x/%#x", o.ReplyMark, o.MarkMask)
	hostLen := 32
	if f == IPv6 {
		hostLen = 128
	}

	// raw: ztunnel's packets get their own conntrack zone in the original
	// direction, before conntrack sees them (see the package doc).
	rawOut := Chain{Name: ChainPrefix + "OUTPUT", Hook: "OUTPUT", Rules: []string{
		"-m mark --mark " + mark + comment("ztunnel socket: a conntrack zone of its own") +
			fmt.Sprintf(" -j CT --zone-orig %d", o.ConntrackZone),
	}}

	// mangle: tag ztunnel's flows, and send the app's packets on them back
	// to ztunnel (the reply mark selects the pod's route table for it).
	mangleOut := Chain{Name: ChainPrefix + "OUTPUT", Hook: "OUTPUT", Rules: []string{
		"-m mark --mark " + mark + comment("ztunnel socket: tag the flow") + " -j CONNMARK --set-xmark " + mark,
		"-m connmark --mark " + mark + " -m mark ! --mark " + mark + comment("app packets on a ztunnel flow: back to ztunnel") +
			" -j MARK --set-xmark " + reply,
	}}

	// nat PREROUTING: inbound, from outside the pod.
	var in []string
	for _, src := range o.ProbeSources {
		if f.has(src) {
			in = append(in, fmt.Sprintf("-s %s -p tcp%s -j RETURN",
				netip.PrefixFrom(src, hostLen), comment("kubelet probe: not captured")))
		}
	}
	in = append(in, dport(o.Ports.HBONE)+comment("HBONE: to ztunnel directly")+" -j RETURN")
	for _, p := range o.ExcludeInboundPorts {
		in = append(in, dport(p)+comment("excluded inbound port")+" -j RETURN")
	}
	in = append(in, "-p tcp "+synOnly+comment("inbound TCP to ztunnel")+
		fmt.Sprintf(" -j REDIRECT --to-ports %d", o.Ports.Inbound))

	// nat OUTPUT: outbound, from the pod's own processes.
	out := []string{
		"-m mark --mark " + mark + comment("ztunnel socket: not captured") + " -j RETURN",
		"-o lo" + comment("traffic within the pod: not captured") + " -j RETURN",
	}
	for _, p := range o.ExcludeOutboundPorts {
		out = append(out, dport(p)+comment("excluded outbound port")+" -j RETURN")
	}
	if o.CaptureDNS {
		out = append(out,
			"-p udp -m udp --dport 53"+comment("DNS to ztunnel")+fmt.Sprintf(" -j REDIRECT --to-ports %d", o.Ports.DNS),
			"-p tcp -m tcp --dport 53 --tcp-flags FIN,SYN,RST,ACK SYN"+comment("DNS to ztunnel")+
				fmt.Sprintf(" -j REDIRECT --to-ports %d", o.Ports.DNS))
	}
	out = append(out, "-p tcp "+synOnly+comment("outbound TCP to ztunnel")+
		fmt.Sprintf(" -j REDIRECT --to-ports %d", o.Ports.Outbound))

	return Ruleset{Family: f, Tables: []Table{
		{Name: "mangle", Chains: []Chain{mangleOut}},
		{Name: "nat", Chains: []Chain{
			{Name: ChainPrefix + "PREROUTING", Hook: "PREROUTING", Rules: in},
			{Name: ChainPrefix + "OUTPUT", Hook: "OUTPUT", Rules: out},
		}},
		{Name: "raw", Chains: []Chain{rawOut}},
	}}, nil
}

// refuse is the ruleset of a family the pod has no address of: new TCP
// connections in that family, other than within the pod, are refused with
// a reset both ways. There is nothing to capture them for (no workload
// address to authorize them against), and left alone they would reach the
// app uncaptured: every interface has an IPv6 link-local address, and an
// app that listens on the dual-stack wildcard answers on it. Only SYNs are
// refused, as only SYNs are redirected: a connection that existed before
// the rules goes on, and the resets the rules send leave the pod.
func refuse(f Family) Ruleset {
	why := comment("no " + f.String() + " address in the mesh: TCP refused")
	return Ruleset{Family: f, Tables: []Table{{Name: "filter", Chains: []Chain{
		{Name: ChainPrefix + "INPUT", Hook: "INPUT", Rules: []string{
			"-i lo" + comment("traffic within the pod") + " -j RETURN",
			"-p tcp " + synOnly + why + " -j REJECT --reject-with tcp-reset",
		}},
		{Name: ChainPrefix + "OUTPUT", Hook: "OUTPUT", Rules: []string{
			"-o lo" + comment("traffic within the pod") + " -j RETURN",
			"-p tcp " + synOnly + why + " -j REJECT --reject-with tcp-reset",
		}},
	}}}}
}

// String is the iptables-restore input that installs r in a namespace
// without any of our rules: Script of an empty iptables-save.
func (r Ruleset) String() string { return r.Script(Saved{}) }

func dport(p uint16) string { return fmt.Sprintf("-p tcp -m tcp --dport %d", p) }

// comment labels a rule, so that someone reading iptables-save in a pod
// sees why it is there. The text must not contain quotes.
func comment(text string) string {
	if strings.ContainsAny(text, `"'`) {
		panic("capture: rule comment with a quote (iptables-save escapes it): " + text)
	}
	return ` -m comment --comment "cairn: ` + text + `"`
}
