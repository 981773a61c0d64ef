package capture

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cairnmesh/cairn/internal/netns/netnstest"
)

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// TestCaptureInPod applies the rules in a pod namespace, opens ztunnel's
// listeners there, and follows connections to see where each one lands.
func TestCaptureInPod(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	l.apply(t, l.options())
	ctx := testContext(t)

	ls, err := ListenConfig{}.Listen(ctx, l.pod.Handle)
	if err != nil {
		t.Fatal(err)
	}
	sw := newSwitchboard()
	sw.watch(t, "ztunnel outbound", ls.Outbound)
	sw.watch(t, "ztunnel inbound", ls.Inbound)
	sw.watch(t, "ztunnel HBONE", ls.HBONE)
	sw.watch(t, "app", listen(t, l.pod, ":"+itoa(appPort)))
	sw.watch(t, "node server", listen(t, l.node, hostPort(labNode, nodePort)))
	ztunnel := &Dialer{Netns: l.pod.Handle, Mark: DefaultMark}

	// Counts the app's packets that carry the reply mark; also a rule of
	// someone else's that Remove must leave alone.
	netnstest.Run(t, "ip", "netns", "exec", l.pod.Name, "iptables", "-t", "mangle", "-A", "POSTROUTING",
		"-p", "tcp", "--sport", itoa(appPort), "-m", "mark", "--mark", "0x111/0xfff")

	t.Run("outbound from the app is captured with its destination", func(t *testing.T) {
		for _, dst := range []netip.AddrPort{labRemote, netip.AddrPortFrom(labNode, nodePort)} {
			c := dial(t, l.pod, netip.Addr{}, dst.String())
			got := sw.expect(t, "ztunnel outbound")
			exchange(t, c, got)
			orig, err := OriginalDst(got)
			if err != nil || orig != dst {
				t.Errorf("OriginalDst = %v, %v; want %v", orig, err, dst)
			}
		}
	})

	t.Run("ztunnel's marked socket goes straight out, from the pod's address", func(t *testing.T) {
		c, err := ztunnel.DialContext(ctx, "tcp", hostPort(labNode, nodePort))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		got := sw.expect(t, "node server")
		exchange(t, c, got)
		if from := got.RemoteAddr().(*net.TCPAddr).AddrPort().Addr(); from != labPod {
			t.Errorf("node server saw the connection from %v, want the pod's %v", from, labPod)
		}
	})

	t.Run("inbound from outside lands on 15006 with the app's address", func(t *testing.T) {
		c := dial(t, l.node, labClient, hostPort(labPod, appPort))
		got := sw.expect(t, "ztunnel inbound")
		exchange(t, c, got)
		want := netip.AddrPortFrom(labPod, appPort)
		if orig, err := OriginalDst(got); err != nil || orig != want {
			t.Errorf("OriginalDst = %v, %v; want %v", orig, err, want)
		}
	})

	t.Run("HBONE is not redirected", func(t *testing.T) {
		c := dial(t, l.node, labClient, hostPort(labPod, HBONEPort))
		got := sw.expect(t, "ztunnel HBONE")
		exchange(t, c, got)
		want := netip.AddrPortFrom(labPod, HBONEPort)
		if local := got.LocalAddr().(*net.TCPAddr).AddrPort(); netip.AddrPortFrom(local.Addr().Unmap(), local.Port()) != want {
			t.Errorf("HBONE local address %v, want %v", local, want)
		}
		if orig, err := OriginalDst(got); !errors.Is(err, ErrNotRedirected) || orig != want {
			t.Errorf("OriginalDst = %v, %v; want %v, ErrNotRedirected", orig, err, want)
		}
	})

	t.Run("probe from the node's address reaches the app", func(t *testing.T) {
		before := markedPackets(t, l)
		c := dial(t, l.node, labNode, hostPort(labPod, appPort))
		exchange(t, c, sw.expect(t, "app"))
		if after := markedPackets(t, l); after != before {
			t.Errorf("the app's replies to a probe carry the reply mark (%d packets)", after-before)
		}
	})

	// The mark exempts this connection in nat OUTPUT; that it does not
	// then land on 15006 shows that nat PREROUTING never sees loopback
	// connections (it has no mark rule).
	t.Run("ztunnel delivers to the app on the pod's address", func(t *testing.T) {
		before := markedPackets(t, l)
		c, err := ztunnel.DialContext(ctx, "tcp", hostPort(labPod, appPort))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		exchange(t, c, sw.expect(t, "app"))
		// The connection mark puts the reply mark on the app's replies.
		if after := markedPackets(t, l); after <= before {
			t.Error("the app's replies to ztunnel carry no mark")
		}
	})

	// labClient is the node's: without the reply routes the app's answer
	// would go there, and the connection would never be set up.
	t.Run("ztunnel connects to the app from the client's address", func(t *testing.T) {
		if err := ApplyRoutes(l.pod.Handle, l.options()); err != nil {
			t.Fatal(err)
		}
		if err := ApplyRoutes(l.pod.Handle, l.options()); err != nil {
			t.Fatalf("ApplyRoutes again: %v", err)
		}
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		c, err := ztunnel.DialFrom(dctx, labClient, "tcp", hostPort(labPod, appPort))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		app := sw.expect(t, "app")
		if from := app.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap(); from != labClient {
			t.Errorf("the app sees the connection from %v, want the client's %v", from, labClient)
		}
		exchange(t, c, app)

		if err := RemoveRoutes(l.pod.Handle, l.options()); err != nil {
			t.Fatal(err)
		}
		if out := netnstest.Run(t, "ip", "-n", l.pod.Name, "rule", "show"); strings.Contains(out, "0x111") {
			t.Errorf("the reply rule is still there after RemoveRoutes:\n%s", out)
		}
		if err := RemoveRoutes(l.pod.Handle, l.options()); err != nil {
			t.Errorf("second RemoveRoutes: %v", err)
		}
	})

	t.Run("the app calling its own address stays in the pod", func(t *testing.T) {
		c := dial(t, l.pod, netip.Addr{}, hostPort(labPod, appPort))
		exchange(t, c, sw.expect(t, "app"))
		c = dial(t, l.pod, netip.Addr{}, "127.0.0.1:"+itoa(appPort))
		exchange(t, c, sw.expect(t, "app"))
	})

	t.Run("a direct connection to a ztunnel port is not redirected", func(t *testing.T) {
		dial(t, l.pod, netip.Addr{}, "127.0.0.1:"+itoa(OutboundPort))
		got := sw.expect(t, "ztunnel outbound")
		if _, err := OriginalDst(got); !errors.Is(err, ErrNotRedirected) {
			t.Errorf("OriginalDst = %v, want ErrNotRedirected", err)
		}
		// From outside, the port is captured like any other (to 15006),
		// and forwarding it would come back to 15006: refused as well.
		dial(t, l.node, labClient, hostPort(labPod, InboundPort))
		got = sw.expect(t, "ztunnel inbound")
		if _, err := OriginalDst(got); !errors.Is(err, ErrNotRedirected) {
			t.Errorf("OriginalDst = %v, want ErrNotRedirected", err)
		}
	})

	t.Run("applying again keeps connections that go through ztunnel", func(t *testing.T) {
		c := dial(t, l.pod, netip.Addr{}, labRemote.String())
		got := sw.expect(t, "ztunnel outbound")
		l.apply(t, l.options())
		exchange(t, c, got)
	})

	t.Run("excluded ports are left alone", func(t *testing.T) {
		o := l.options()
		o.ExcludeInboundPorts = []uint16{appPort}
		o.ExcludeOutboundPorts = []uint16{nodePort}
		l.apply(t, o)
		defer l.apply(t, l.options())
		exchange(t, dial(t, l.node, labClient, hostPort(labPod, appPort)), sw.expect(t, "app"))
		exchange(t, dial(t, l.pod, netip.Addr{}, hostPort(labNode, nodePort)), sw.expect(t, "node server"))
	})

	sw.quiet(t)

	t.Run("Remove deletes our chains and jumps and nothing else", func(t *testing.T) {
		if err := l.ipt.Remove(ctx, l.pod.Handle); err != nil {
			t.Fatal(err)
		}
		s := l.saved(t, IPv4)
		if len(s.Chains()) != 0 || len(s.Jumps()) != 0 {
			t.Errorf("after Remove: chains %v, jumps %v", s.Chains(), s.Jumps())
		}
		if rules := s.Rules("mangle", "POSTROUTING"); len(rules) != 1 {
			t.Errorf("someone else's rule is gone: mangle POSTROUTING = %q", rules)
		}
		if err := l.ipt.Remove(ctx, l.pod.Handle); err != nil {
			t.Errorf("second Remove: %v", err)
		}
		// Nothing is captured any more.
		exchange(t, dial(t, l.pod, netip.Addr{}, hostPort(labNode, nodePort)), sw.expect(t, "node server"))
		exchange(t, dial(t, l.node, labClient, hostPort(labPod, appPort)), sw.expect(t, "app"))
	})
	sw.quiet(t)
}

// TestApplyIsIdempotent: the namespace holds exactly Build's rules, and a
// second Apply leaves iptables-save as it was.
func TestApplyIsIdempotent(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	o := l.options()
	o.CaptureDNS = true
	o.ExcludeInboundPorts = []uint16{9090}
	l.apply(t, o)
	first := l.saved(t, IPv4)
	l.apply(t, o)
	second := l.saved(t, IPv4)

	want, err := Build(o, IPv4)
	if err != nil {
		t.Fatal(err)
	}
	for _, tb := range want.Tables {
		for _, c := range tb.Chains {
			for _, s := range []Saved{first, second} {
				if got := s.Rules(tb.Name, c.Name); !slices.Equal(got, c.Rules) {
					t.Errorf("%s/%s in the namespace:\n%s\nwant:\n%s", tb.Name, c.Name,
						strings.Join(got, "\n"), strings.Join(c.Rules, "\n"))
				}
			}
		}
	}
	wantJumps := []string{"mangle/OUTPUT -j CAIRN_OUTPUT", "nat/OUTPUT -j CAIRN_OUTPUT", "nat/PREROUTING -j CAIRN_PREROUTING", "raw/OUTPUT -j CAIRN_OUTPUT"}
	for _, s := range []Saved{first, second} {
		if got := s.Jumps(); !slices.Equal(got, wantJumps) {
			t.Errorf("jumps %v, want %v", got, wantJumps)
		}
	}
	a := saveText(t, l, "iptables-save")
	l.apply(t, o)
	if b := saveText(t, l, "iptables-save"); a != b {
		t.Errorf("iptables-save changed on a repeated Apply:\n%s\nthen:\n%s", a, b)
	}

	// A duplicated jump (two ztunnels racing, say) is repaired, and a
	// chain of ours that these options do not make (an older ztunnel's)
	// goes, with its jump.
	exec := func(args ...string) {
		netnstest.Run(t, "ip", append([]string{"netns", "exec", l.pod.Name, "iptables"}, args...)...)
	}
	exec("-t", "nat", "-A", "OUTPUT", "-j", "CAIRN_OUTPUT")
	exec("-t", "raw", "-N", "CAIRN_OLD")
	exec("-t", "raw", "-A", "CAIRN_OLD", "-p", "udp", "-j", "CT", "--zone", "1")
	exec("-t", "raw", "-A", "PREROUTING", "-p", "udp", "-j", "CAIRN_OLD")
	l.apply(t, o)
	s := l.saved(t, IPv4)
	if got := s.Jumps(); !slices.Equal(got, wantJumps) {
		t.Errorf("after repair: jumps %v, want %v", got, wantJumps)
	}
	if slices.Contains(s.Chains(), "raw/CAIRN_OLD") {
		t.Errorf("after repair: stale chain left: %v", s.Chains())
	}
}

func TestApplyRefusesBadOptions(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	if err := l.ipt.Apply(testContext(t), l.pod.Handle, Options{Ports: DefaultPorts(), Mark: DefaultMark, MarkMask: DefaultMarkMask}); err == nil {
		t.Error("Apply without pod IPs succeeded")
	}
}

// TestIPv6Rules: the ip6tables rules go in, are idempotent and come out,
// and so do the IPv6 reply routes.
// The test network has no IPv6 addresses; the pod address only selects
// the family, so it is from the documentation prefix.
func TestIPv6Rules(t *testing.T) {
	t.Parallel()
	netnstest.Require(t, "ip6tables-save", "ip6tables-restore")
	l := newLab(t)
	o := l.options()
	o.PodIPs = append(o.PodIPs, netip.MustParseAddr("2001:db8::2"))
	o.ProbeSources = append(o.ProbeSources, netip.MustParseAddr("2001:db8::1"))
	l.apply(t, o)
	want, err := Build(o, IPv6)
	if err != nil {
		t.Fatal(err)
	}
	a := saveText(t, l, "ip6tables-save")
	s := l.saved(t, IPv6)
	for _, tb := range want.Tables {
		for _, c := range tb.Chains {
			if got := s.Rules(tb.Name, c.Name); !slices.Equal(got, c.Rules) {
				t.Errorf("%s/%s:\n%s\nwant:\n%s", tb.Name, c.Name, strings.Join(got, "\n"), strings.Join(c.Rules, "\n"))
			}
		}
	}
	l.apply(t, o)
	if b := saveText(t, l, "ip6tables-save"); a != b {
		t.Errorf("ip6tables-save changed on a repeated Apply:\n%s\nthen:\n%s", a, b)
	}
	if err := l.ipt.Remove(testContext(t), l.pod.Handle); err != nil {
		t.Fatal(err)
	}
	for _, f := range []Family{IPv4, IPv6} {
		if s := l.saved(t, f); len(s.Chains()) != 0 || len(s.Jumps()) != 0 {
			t.Errorf("%v after Remove: chains %v, jumps %v", f, s.Chains(), s.Jumps())
		}
	}

	// The reply routes of both families go in and come out.
	if err := ApplyRoutes(l.pod.Handle, o); err != nil {
		t.Fatal(err)
	}
	for _, fam := range []string{"-4", "-6"} {
		rules := netnstest.Run(t, "ip", fam, "-n", l.pod.Name, "rule", "show")
		routes := netnstest.Run(t, "ip", fam, "-n", l.pod.Name, "route", "show", "table", "1337")
		if !strings.Contains(rules, "fwmark 0x111/0xfff lookup 1337") || !strings.Contains(routes, "local default dev lo") {
			t.Errorf("ip %s after ApplyRoutes: rules\n%s\nroutes in table 1337\n%s", fam, rules, routes)
		}
	}
	if err := RemoveRoutes(l.pod.Handle, o); err != nil {
		t.Fatal(err)
	}
	for _, fam := range []string{"-4", "-6"} {
		if rules := netnstest.Run(t, "ip", fam, "-n", l.pod.Name, "rule", "show"); strings.Contains(rules, "1337") {
			t.Errorf("ip %s rule after RemoveRoutes:\n%s", fam, rules)
		}
	}
}

// TestOriginalDstIPv6 redirects a connection to ::1 (the only IPv6
// address the test may use) with a rule of its own, to read the original
// destination through IP6T_SO_ORIGINAL_DST.
func TestOriginalDstIPv6(t *testing.T) {
	t.Parallel()
	netnstest.Require(t, "ip6tables")
	ns := netnstest.New(t, "cairn-cap-v6")
	ls, err := ListenConfig{}.Listen(testContext(t), ns.Handle)
	if err != nil {
		t.Fatal(err)
	}
	defer ls.Close()
	netnstest.Run(t, "ip", "netns", "exec", ns.Name, "ip6tables", "-t", "nat", "-A", "OUTPUT",
		"-d", "::1", "-p", "tcp", "--dport", "7777", "-j", "REDIRECT", "--to-ports", itoa(OutboundPort))
	sw := newSwitchboard()
	sw.watch(t, "ztunnel outbound", ls.Outbound)
	dial(t, ns, netip.Addr{}, "[::1]:7777")
	got := sw.expect(t, "ztunnel outbound")
	if orig, err := OriginalDst(got); err != nil || orig != netip.MustParseAddrPort("[::1]:7777") {
		t.Errorf("OriginalDst = %v, %v; want [::1]:7777", orig, err)
	}
}

// TestEnrollingKeepsExistingConnections: connections that exist when the
// rules go in (a running pod being enrolled) keep working, while new ones
// are captured. This is why the redirects match SYNs only.
func TestEnrollingKeepsExistingConnections(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	ls, err := ListenConfig{}.Listen(testContext(t), l.pod.Handle)
	if err != nil {
		t.Fatal(err)
	}
	sw := newSwitchboard()
	sw.watch(t, "ztunnel outbound", ls.Outbound)
	sw.watch(t, "ztunnel inbound", ls.Inbound)
	sw.watch(t, "ztunnel HBONE", ls.HBONE)
	sw.watch(t, "app", listen(t, l.pod, ":"+itoa(appPort)))
	sw.watch(t, "node server", listen(t, l.node, hostPort(labNode, nodePort)))

	out := dial(t, l.pod, netip.Addr{}, hostPort(labNode, nodePort))
	outPeer := sw.expect(t, "node server")
	in := dial(t, l.node, labClient, hostPort(labPod, appPort))
	inPeer := sw.expect(t, "app")
	exchange(t, out, outPeer)
	exchange(t, in, inPeer)

	l.apply(t, l.options())

	exchange(t, out, outPeer)
	exchange(t, in, inPeer)
	exchange(t, inPeer, in) // the app speaks first, too
	exchange(t, dial(t, l.pod, netip.Addr{}, hostPort(labNode, nodePort)), sw.expect(t, "ztunnel outbound"))
	exchange(t, dial(t, l.node, labClient, hostPort(labPod, appPort)), sw.expect(t, "ztunnel inbound"))
	sw.quiet(t)
}

// TestListenReusePort: with SO_REUSEPORT a second ztunnel binds the same
// ports in the pod while the first still listens, and keeps serving after
// the first closes; without it the second bind fails.
//
// Not parallel: a process forked by another test (ip, iptables) holds a
// copy of every descriptor until it execs, so the old listener can outlive
// its Close for a moment and take, then drop, the connection meant for the
// new one.
func TestListenReusePort(t *testing.T) {
	ns := netnstest.New(t, "cairn-cap-rp")
	ctx := testContext(t)
	old, err := ListenConfig{ReusePort: true}.Listen(ctx, ns.Handle)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := (ListenConfig{}).Listen(ctx, ns.Handle); !errors.Is(err, unix.EADDRINUSE) {
		t.Fatalf("second Listen without SO_REUSEPORT: %v, want EADDRINUSE", err)
	}
	next, err := ListenConfig{ReusePort: true}.Listen(ctx, ns.Handle)
	if err != nil {
		t.Fatalf("second Listen with SO_REUSEPORT: %v", err)
	}
	defer next.Close()
	old.Close()
	sw := newSwitchboard()
	sw.watch(t, "new HBONE", next.HBONE)
	exchange(t, dial(t, ns, netip.Addr{}, "127.0.0.1:"+itoa(HBONEPort)), sw.expect(t, "new HBONE"))
}

func TestDialerWantsALiteralAddress(t *testing.T) {
	d := &Dialer{}
	if _, err := d.DialContext(t.Context(), "tcp", "example.com:80"); err == nil {
		t.Error("dialled a host name")
	}
}

// TestApplyReportsTheFailingRule: an iptables-restore error names the
// command, its complaint, the namespace and where in the script it failed
// (the nft backend finds a missing chain only at COMMIT, so that is the
// table rather than the rule).
func TestApplyReportsTheFailingRule(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	o := l.options()
	o.Ports.Outbound = 15001
	rs, err := Build(o, IPv4)
	if err != nil {
		t.Fatal(err)
	}
	rs.Tables[1].Chains[1].Rules = append(rs.Tables[1].Chains[1].Rules, "-j NO_SUCH_CHAIN")
	err = l.pod.Handle.Do(func() error { return l.ipt.reconcile(testContext(t), l.pod.Handle, IPv4, rs) })
	if err == nil {
		t.Fatal("a bad rule applied")
	}
	for _, want := range []string{"iptables-restore", "NO_SUCH_CHAIN", "line ", "nat", l.pod.Path} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	// All or nothing, per table: the failed script left no chain behind.
	if s := l.saved(t, IPv4); slices.Contains(s.Chains(), "nat/CAIRN_OUTPUT") {
		t.Errorf("a failed Apply left %v", s.Chains())
	}
}

func saveText(t *testing.T, l *lab, cmd string) string {
	t.Helper()
	out := netnstest.Run(t, "ip", "netns", "exec", l.pod.Name, cmd)
	var keep []string
	for _, line := range strings.Split(out, "\n") {
		if !strings.HasPrefix(line, "#") { // the date
			keep = append(keep, line)
		}
	}
	return strings.Join(keep, "\n")
}

func itoa(n int) string { return strconv.Itoa(n) }
