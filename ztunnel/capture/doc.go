// Package capture is what ztunnel needs to capture a pod's TCP inside the
// pod's own network namespace (design §4): the iptables rules (Build, and
// IPTables to apply and remove them), the listeners (ListenConfig.Listen),
// ztunnel's own marked connections (Dialer), and the destination a
// redirected connection was meant for (OriginalDst).
//
// # The rules
//
// For one address family, with the default options and one probe source:
//
//	*mangle
//	-A OUTPUT -j CAIRN_OUTPUT
//	-A CAIRN_OUTPUT -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x539/0xfff
//	-A CAIRN_OUTPUT -m connmark --mark 0x539/0xfff -m mark ! --mark 0x539/0xfff -j MARK --set-xmark 0x111/0xfff
//	*nat
//	-A PREROUTING -j CAIRN_PREROUTING
//	-A OUTPUT -j CAIRN_OUTPUT
//	-A CAIRN_PREROUTING -s <probe source> -p tcp -j RETURN
//	-A CAIRN_PREROUTING -p tcp --dport 15008 -j RETURN
//	-A CAIRN_PREROUTING -p tcp --syn -j REDIRECT --to-ports 15006
//	-A CAIRN_OUTPUT -m mark --mark 0x539/0xfff -j RETURN
//	-A CAIRN_OUTPUT -o lo -j RETURN
//	-A CAIRN_OUTPUT -p tcp --syn -j REDIRECT --to-ports 15001
//
// (Comments, excluded ports and DNS left out; Build writes the rules the
// way iptables-save prints them.)
//
// REDIRECT, not TPROXY. REDIRECT rewrites the destination to the
// listener and conntrack remembers the original, which ztunnel reads back
// with SO_ORIGINAL_DST. TPROXY keeps the destination on the socket, but it
// needs IP_TRANSPARENT listeners and a policy route (an ip rule and a
// local route table) in every pod, plus connection marks to route the
// replies. That is more state to create, repair and remove per pod, for a
// gain (UDP, no conntrack) that a TCP mesh does not need. Istio uses
// REDIRECT for outbound and TPROXY for inbound; we use REDIRECT for both.
//
// Only SYNs are redirected. nat rules are consulted for the first packet
// conntrack sees of a connection, and with nf_conntrack_tcp_loose (the
// default) that can be a packet in the middle of a connection that
// existed before the rules: a pod enrolled while it runs (design §4) has
// such connections. Redirecting that packet to ztunnel, which has no
// socket for it, breaks the connection (the tests saw it go silent).
// Matching SYNs only leaves
// those connections alone until they close, and every new connection
// still starts with a SYN. Applying again (same or new options) keeps
// connections that are already going through ztunnel: the chains are
// replaced in one transaction and conntrack keeps their translation.
//
// Removing does not keep them. Once no rule in the namespace needs
// conntrack, the kernel stops tracking there, and a connection that was
// redirected to ztunnel loses its translation: its packets go out
// unchanged and it hangs without a reset (the tests saw this). So a pod
// is released in this order: ztunnel closes the pod's connections (the
// app sees them end), then Remove.
//
// ztunnel's own sockets carry the mark (SO_MARK, Dialer), and the first
// rule of nat OUTPUT lets them through; that is the only exemption REDIRECT
// needs, because nat sees only the first packet of each connection. The
// first mangle rule copies the mark onto the connection (CONNMARK), which
// makes ztunnel's flows visible in conntrack (conntrack -L --mark
// 0x539/0xfff); the second puts the reply mark (0x111) on every packet the
// app sends on such a flow.
//
// # Source addresses
//
// ztunnel connects to the app from the client's address, as Istio's
// ztunnel does, so that the app sees who called (Dialer.DialFrom: a
// transparent socket bound to that address). The app's replies go to the
// client's address, which the pod would route out of its interface, past
// ztunnel. The reply mark sends them back: ApplyRoutes adds a rule that
// packets with it look up the pod's table 1337, where every destination
// is local, so they reach ztunnel's socket on lo. ztunnel's own packets
// keep their mark (0x539), which the rule does not match: a single mark
// for both jobs would route ztunnel's connections to its peers into the
// pod too. A connection ztunnel opened from the pod's own address gets
// the reply mark as well, and is local anyway.
//
// Loopback. Traffic leaving through lo (to 127.0.0.0/8, ::1 or the pod's
// own addresses) is not captured: it never leaves the pod, so there is no
// peer to authenticate, and it includes ztunnel delivering a connection to
// the app on the pod's address. Loopback packets do not reach the nat
// PREROUTING rules at all, because their connection was already
// translated, or not, in OUTPUT.
//
// Probes. kubelet probes come from the node, through the pod's veth. A
// packet mark set on the node does not help: the kernel clears the mark
// when a packet changes namespace. So the exemption is by source address
// (Options.ProbeSources): either the node's address on the pod network,
// which also exempts anything else that comes from the node itself, or an
// address the node SNATs its own probe traffic to, which is narrower but
// needs a rule on the node (Istio SNATs to 169.254.7.127). The rule in the
// pod is the same for both; which address to use is the node agent's
// choice.
//
// HBONE. Inbound TCP to 15008 is not redirected: it reaches ztunnel's HBONE
// listener in the pod directly, with the pod's address as its local
// address.
//
// Idempotence and removal. All our chains start with CAIRN_ and hang off
// one jump each from the built-in chains. Apply reads iptables-save in the
// pod and writes an iptables-restore --noflush script (Ruleset.Script)
// that refills our chains, keeps exactly one jump into each and deletes any
// other CAIRN_ chain. Applied twice it leaves the same tables. Remove
// deletes every CAIRN_ chain and every jump to one, and nothing else.
//
// # Namespaces and threads
//
// Work inside a pod happens on a locked OS thread that returns to its own
// namespace afterwards or dies: listeners and the iptables runs through
// netns.Handle.Do; dials make only their socket there (netns.Handle.Socket)
// and connect from the caller's goroutine. iptables-save and iptables-restore are started from inside Do: the child
// process inherits the forking thread's namespace (internal/netns tests
// show it), so no ip netns exec or nsenter is needed. Listening sockets and
// connections keep the namespace they were made in, so the rest of ztunnel
// uses them from any goroutine.
package capture
