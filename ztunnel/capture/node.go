package capture

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// NodeOptions say how the node lets the kubelet's probes into enrolled
// pods uncaptured, and nothing else (see the package doc, "Probes").
type NodeOptions struct {
	// ProbeSources are the addresses, one per family, that the kubelet's
	// connections to enrolled pods are rewritten to (SNAT). The pods let
	// TCP from them through uncaptured (Options.ProbeSources).
	ProbeSources []netip.Addr

	// KubeletCgroup is the kubelet's cgroup (v2), as iptables' cgroup
	// match takes it: a path from the root of the cgroup namespace that
	// iptables runs in. Only connections from sockets in it (or below
	// it) are rewritten. Empty: no connection is, and the kubelet's
	// probes are captured like any other plaintext client's.
	KubeletCgroup string
}

// ProbeSetName is the name of the ipset, in the node's network namespace,
// of the enrolled pods' addresses of family f: the destinations whose
// connections from the kubelet are rewritten to the probe source.
func ProbeSetName(f Family) string {
	if f == IPv6 {
		return "cairn-probe-v6"
	}
	return "cairn-probe-v4"
}

// Validate reports every problem with o at once.
func (o NodeOptions) Validate() error {
	var errs []error
	seen := map[Family]bool{}
	for _, a := range o.ProbeSources {
		if !a.IsValid() || a.Is4In6() || a.Zone() != "" {
			errs = append(errs, fmt.Errorf("probe source %v: want a plain IPv4 or IPv6 address", a))
			continue
		}
		f := familyOf(a)
		if seen[f] {
			errs = append(errs, fmt.Errorf("two %v probe sources", f))
		}
		seen[f] = true
	}
	if strings.ContainsAny(o.KubeletCgroup, "\"' \t\n") {
		errs = append(errs, fmt.Errorf("kubelet cgroup %q: quotes and spaces are not supported", o.KubeletCgroup))
	}
	if p := strings.Trim(o.KubeletCgroup, "/"); o.KubeletCgroup != "" && (p == "" || p == ".") {
		errs = append(errs, errors.New("kubelet cgroup is the root cgroup: every socket on the node is in it"))
	}
	return errors.Join(errs...)
}

// ProbeSource is o's probe source of family f; invalid if it has none.
func (o NodeOptions) ProbeSource(f Family) netip.Addr {
	for _, a := range o.ProbeSources {
		if f.has(a) {
			return a
		}
	}
	return netip.Addr{}
}

// BuildNode returns the node's rules for family f, which go in the node's
// own network namespace (ztunnel's, on the host network):
//
//	*raw
//	-A PREROUTING -j CAIRN_PREROUTING
//	-A OUTPUT -j CAIRN_OUTPUT
//	-A CAIRN_PREROUTING -s <probe source> -j DROP
//	-A CAIRN_OUTPUT -s <probe source> -j DROP
//	*nat
//	-A POSTROUTING -j CAIRN_POSTROUTING
//	-A CAIRN_POSTROUTING -p tcp -m cgroup --path <kubelet> -m set --match-set cairn-probe-v4 dst -j SNAT --to-source <probe source>
//
// The SNAT gives the kubelet's connections to enrolled pods the probe
// source, which the pods let through. The drops keep anyone else from
// using it: in PREROUTING, a packet that arrives with it (a pod or a host
// elsewhere that forges it; bridged frames pass these hooks too, with
// bridge-nf-call-iptables); in OUTPUT, a local socket bound to it (with
// IP_FREEBIND, say) before the SNAT. The kubelet's own packets pass
// OUTPUT with the node's address and get the probe source only in
// POSTROUTING, after both. A family without a probe source gets no rules.
func BuildNode(o NodeOptions, f Family) (Ruleset, error) {
	if err := o.Validate(); err != nil {
		return Ruleset{}, fmt.Errorf("node options: %w", err)
	}
	src := o.ProbeSource(f)
	if !src.IsValid() {
		return Ruleset{Family: f}, nil
	}
	host := netip.PrefixFrom(src, src.BitLen()).String()
	raw := Table{Name: "raw", Chains: []Chain{
		{Name: ChainPrefix + "PREROUTING", Hook: "PREROUTING", Rules: []string{
			"-s " + host + comment("probe source from off the node: forged") + " -j DROP",
		}},
		{Name: ChainPrefix + "OUTPUT", Hook: "OUTPUT", Rules: []string{
			"-s " + host + comment("probe source on a local socket: only the kubelet SNAT may use it") + " -j DROP",
		}},
	}}
	var post []string
	if o.KubeletCgroup != "" {
		post = append(post, "-p tcp -m cgroup --path "+cgroupPathArg(o.KubeletCgroup)+
			" -m set --match-set "+ProbeSetName(f)+" dst"+comment("kubelet to an enrolled pod: probe source")+
			" -j SNAT --to-source "+src.String())
	}
	nat := Table{Name: "nat", Chains: []Chain{
		{Name: ChainPrefix + "POSTROUTING", Hook: "POSTROUTING", Rules: post},
	}}
	return Ruleset{Family: f, Tables: []Table{nat, raw}}, nil
}

// cgroupPathArg writes a cgroup path the way iptables-save prints a
// string: in double quotes unless it is all letters, digits, - and _.
func cgroupPathArg(p string) string {
	if p != "" && strings.Trim(p, "_-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") == "" {
		return p
	}
	return `"` + p + `"`
}

func familyOf(a netip.Addr) Family {
	if a.Is4() {
		return IPv4
	}
	return IPv6
}
