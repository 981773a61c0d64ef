// Package capture is what ztunnel needs to capture a pod's TCP inside the
// pod's own network namespace (design §4): the iptables rules (Build, and
// IPTables to apply and remove them), the listeners (ListenConfig.Listen),
// ztunnel's own marked connections (Dialer), and the destination a
// redirected connection was meant for (OriginalDst).
//
// # The rules
//
// For one address family the pod has an address of, with the default
// options:
//
//	*raw
//	-A OUTPUT -j CAIRN_OUTPUT
//	-A CAIRN_OUTPUT -m mark --mark 0x539/0xfff -j CT --zone-orig 1337
//	*mangle
//	-A OUTPUT -j CAIRN_OUTPUT
//	-A CAIRN_OUTPUT -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x539/0xfff
//	-A CAIRN_OUTPUT -m connmark --mark 0x539/0xfff -m mark ! --mark 0x539/0xfff -j MARK --set-xmark 0x111/0xfff
//	*nat
//	-A PREROUTING -j CAIRN_PREROUTING
//	-A OUTPUT -j CAIRN_OUTPUT
//	-A CAIRN_PREROUTING -s 169.254.7.127/32 -p tcp -j RETURN
//	-A CAIRN_PREROUTING -p tcp --dport 15008 -j RETURN
//	-A CAIRN_PREROUTING -p tcp --syn -j REDIRECT --to-ports 15006
//	-A CAIRN_OUTPUT -m mark --mark 0x539/0xfff -j RETURN
//	-A CAIRN_OUTPUT -o lo -j RETURN
//	-A CAIRN_OUTPUT -p tcp --syn -j REDIRECT --to-ports 15001
//
// (Comments, excluded ports and DNS left out; Build writes the rules the
// way iptables-save prints them.) A family the pod has no address of
// gets, in the filter table, a reset for every SYN in or out other than
// on lo (see "Other families" below). And conntrack's loose pickup is
// off in the pod (see "Only SYNs").
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
// kernel's default) that can be a packet in the middle of a connection
// that existed before the rules: a pod enrolled while it runs (design §4)
// has such connections. Redirecting that packet to ztunnel, which has no
// socket for it, breaks the connection (the tests saw it go silent).
// Matching SYNs only leaves those connections alone until they close, and
// every new connection still starts with a SYN. Applying again (same or
// new options) keeps connections that are already going through ztunnel:
// the chains are replaced in one transaction and conntrack keeps their
// translation.
//
// Loose pickup is also a way around the redirect, so Apply turns it off
// in the pod (net.netfilter.nf_conntrack_tcp_loose=0, a per-namespace
// sysctl; Remove turns it back on), and leaves the pod without rules
// (ErrLoosePickup) if it cannot: rules with loose pickup on would look
// like capture and not be. ztunnel's container has /proc/sys read-only,
// so the sysctl is written through the node's /proc/sys/net mounted
// elsewhere (Sysctls), from a thread inside the pod's namespace, which is
// the namespace such a file stands for. A client with CAP_NET_RAW, which
// pods have by default, sends the pod an ACK for a connection that never
// started; conntrack takes it for the middle of one and makes an entry,
// which nat, seeing it first in the middle, leaves untranslated. If
// nothing answers the ACK with a reset (a TCP MD5 option makes the app's
// kernel drop it silently), a SYN from the same address and port then
// finds that entry, is not redirected and reaches the app
// (TestBareACKDoesNotOpenAWayPastCapture). Without loose pickup such an
// ACK is invalid and makes no entry; only a SYN starts one. Connections
// that existed before the rules still pass: their packets are invalid
// now, so nat never sees them, and nothing drops them.
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
// transparent socket bound to that address), over HBONE and plaintext
// alike. The app's replies go to the
// client's address, which the pod would route out of its interface, past
// ztunnel. The reply mark sends them back: ApplyRoutes adds a rule that
// packets with it look up the pod's table 1337, where every destination
// is local, so they reach ztunnel's socket on lo. ztunnel's own packets
// keep their mark (0x539), which the rule does not match: a single mark
// for both jobs would route ztunnel's connections to its peers into the
// pod too. A connection ztunnel opened from the pod's own address gets
// the reply mark as well, and is local anyway.
//
// Conntrack zone. A plaintext client's connection, redirected to 15006,
// leaves conntrack an entry whose original tuple is the client's
// address and port to the app's port. ztunnel's transparent dial for it
// (or for any other connection from that client) binds the client's
// address with a port the kernel picks, and the kernel only avoids ports
// of local sockets: it may pick that same port, and conntrack would then
// take ztunnel's SYN for the client's connection and redirect it back to
// 15006. So the first raw rule puts the packets of ztunnel's own sockets
// (the mark) in a zone of their own, in the original direction only
// (CT --zone-orig, Options.ConntrackZone): their original tuples can
// never meet a client's, and the app's replies, in the default zone,
// still find ztunnel's entry by its reply tuple
// (TestDialFromTheClientsOwnPort forces the port).
//
// Loopback. Traffic leaving through lo (to 127.0.0.0/8, ::1 or the pod's
// own addresses) is not captured: it never leaves the pod, so there is no
// peer to authenticate, and it includes ztunnel delivering a connection to
// the app on the pod's address. Loopback packets do not reach the nat
// PREROUTING rules at all, because their connection was already
// translated, or not, in OUTPUT.
//
// Probes. The kubelet's probes come from the node, through the pod's
// veth, and must reach the app whatever the pod's policies say. A packet
// mark set on the node does not help: the kernel clears the mark when a
// packet changes namespace. The node's own address does not either:
// NodePort traffic that kube-proxy masquerades, host-network pods and any
// other process on the node come from it too. So the node gives the
// kubelet's connections, and only those, an address of their own, and
// the pod lets through only that (Options.ProbeSources, 169.254.7.127 and
// an IPv6 unique local address by default, DefaultProbeSources). The
// node's rules (BuildNode, kept by Probes in ztunnel's own namespace, the
// node's) SNAT to it the TCP of sockets in the kubelet's cgroup (v2) to
// the addresses of enrolled pods (an ipset per family, ProbeSetName), and
// drop packets that carry it anywhere else: arriving from off the node
// (a pod forging it; bridged frames pass the same hooks) or leaving a
// local socket bound to it. The kubelet is found by its port (Kubelet):
// the socket listening there names its cgroup, which on a real node is
// the kubelet's alone (system.slice/kubelet.service under systemd), and
// never a pod's, host-network pods included; a cgroup that would cover
// more (the root one, one with children) is refused. The cgroup's path
// is read in the kubelet's own cgroup namespace, through the process
// that holds the socket, and the rule is installed from a thread in that
// namespace: the kernel resolves the cgroup match's path there, and
// ztunnel's own, in a container, is rooted at its own cgroup. If the
// kubelet's cgroup cannot be found, nothing gets the probe source and
// probes are captured like any other plaintext (they fail under STRICT):
// safe, and said in ztunnel's log.
//
// Other families. A pod whose addresses are all IPv4 still has an IPv6
// link-local address on every interface, and an app that listens on the
// dual-stack wildcard answers on it: a neighbour on the same link would
// reach it uncaptured. ztunnel has nothing to authorize such a connection
// against, so the rules of a family the pod has no address of refuse TCP
// (a reset for every SYN in or out, other than on lo).
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
