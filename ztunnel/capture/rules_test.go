package capture

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

var (
	podIP4   = netip.MustParseAddr("198.18.250.2")
	nodeIP4  = netip.MustParseAddr("198.18.250.1")
	podIP6   = netip.MustParseAddr("fd00:cafe::2")
	probeIP6 = netip.MustParseAddr("fd00:cafe::1")
)

// The whole script for a fresh pod, IPv4, one probe source: the reference
// for what Build makes. The package doc shows the same without comments.
const wantDefaultIPv4 = `*mangle
:CAIRN_OUTPUT - [0:0]
-A CAIRN_OUTPUT -m mark --mark 0x539/0xfff -m comment --comment "cairn: ztunnel socket: tag the flow" -j CONNMARK --set-xmark 0x539/0xfff
-A CAIRN_OUTPUT -m connmark --mark 0x539/0xfff -m mark ! --mark 0x539/0xfff -m comment --comment "cairn: app packets on a ztunnel flow: back to ztunnel" -j MARK --set-xmark 0x111/0xfff
-I OUTPUT 1 -j CAIRN_OUTPUT
COMMIT
*nat
:CAIRN_PREROUTING - [0:0]
:CAIRN_OUTPUT - [0:0]
-A CAIRN_PREROUTING -s 198.18.250.1/32 -p tcp -m comment --comment "cairn: kubelet probe: not captured" -j RETURN
-A CAIRN_PREROUTING -p tcp -m tcp --dport 15008 -m comment --comment "cairn: HBONE: to ztunnel directly" -j RETURN
-A CAIRN_PREROUTING -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -m comment --comment "cairn: inbound TCP to ztunnel" -j REDIRECT --to-ports 15006
-A CAIRN_OUTPUT -m mark --mark 0x539/0xfff -m comment --comment "cairn: ztunnel socket: not captured" -j RETURN
-A CAIRN_OUTPUT -o lo -m comment --comment "cairn: traffic within the pod: not captured" -j RETURN
-A CAIRN_OUTPUT -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -m comment --comment "cairn: outbound TCP to ztunnel" -j REDIRECT --to-ports 15001
-I PREROUTING 1 -j CAIRN_PREROUTING
-I OUTPUT 1 -j CAIRN_OUTPUT
COMMIT
*raw
:CAIRN_OUTPUT - [0:0]
-A CAIRN_OUTPUT -m mark --mark 0x539/0xfff -m comment --comment "cairn: ztunnel socket: a conntrack zone of its own" -j CT --zone-orig 1337
-I OUTPUT 1 -j CAIRN_OUTPUT
COMMIT
`

func TestBuildDefaultIPv4(t *testing.T) {
	o := DefaultOptions(podIP4)
	o.ProbeSources = []netip.Addr{nodeIP4}
	rs, err := Build(o, IPv4)
	if err != nil {
		t.Fatal(err)
	}
	if got := rs.String(); got != wantDefaultIPv4 {
		t.Errorf("script:\n%s\nwant:\n%s", got, wantDefaultIPv4)
	}
}

// rulesOf flattens a ruleset to "table/chain rule" lines with the comments
// cut, for table tests that look at a few rules.
func rulesOf(rs Ruleset) []string {
	var out []string
	for _, tb := range rs.Tables {
		for _, c := range tb.Chains {
			for _, r := range c.Rules {
				if i := strings.Index(r, ` -m comment --comment "`); i >= 0 {
					end := strings.Index(r[i+len(` -m comment --comment "`):], `"`)
					r = r[:i] + r[i+len(` -m comment --comment "`)+end+1:]
				}
				out = append(out, tb.Name+"/"+c.Name+" "+r)
			}
		}
	}
	return out
}

func TestBuild(t *testing.T) {
	dual := DefaultOptions(podIP4, podIP6)
	dual.ProbeSources = []netip.Addr{nodeIP4, probeIP6}

	tests := []struct {
		name   string
		opts   func(*Options)
		family Family
		want   []string // rules that must be there, in this order
		absent []string // rules that must not be there
	}{{
		name:   "IPv6 uses its own probe source, as a /128",
		family: IPv6,
		want: []string{
			"nat/CAIRN_PREROUTING -s fd00:cafe::1/128 -p tcp -j RETURN",
			"nat/CAIRN_PREROUTING -p tcp -m tcp --dport 15008 -j RETURN",
			"nat/CAIRN_PREROUTING -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -j REDIRECT --to-ports 15006",
			"nat/CAIRN_OUTPUT -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -j REDIRECT --to-ports 15001",
		},
		absent: []string{"nat/CAIRN_PREROUTING -s 198.18.250.1/32 -p tcp -j RETURN"},
	}, {
		name:   "IPv4 leaves out the IPv6 probe source",
		family: IPv4,
		want:   []string{"nat/CAIRN_PREROUTING -s 198.18.250.1/32 -p tcp -j RETURN"},
		absent: []string{"nat/CAIRN_PREROUTING -s fd00:cafe::1/128 -p tcp -j RETURN"},
	}, {
		name: "excluded ports return before the redirects",
		opts: func(o *Options) {
			o.ExcludeInboundPorts = []uint16{9090}
			o.ExcludeOutboundPorts = []uint16{5432, 6379}
		},
		family: IPv4,
		want: []string{
			"nat/CAIRN_PREROUTING -p tcp -m tcp --dport 9090 -j RETURN",
			"nat/CAIRN_PREROUTING -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -j REDIRECT --to-ports 15006",
			"nat/CAIRN_OUTPUT -p tcp -m tcp --dport 5432 -j RETURN",
			"nat/CAIRN_OUTPUT -p tcp -m tcp --dport 6379 -j RETURN",
			"nat/CAIRN_OUTPUT -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -j REDIRECT --to-ports 15001",
		},
	}, {
		name:   "DNS capture comes after ztunnel's own sockets and loopback",
		opts:   func(o *Options) { o.CaptureDNS = true },
		family: IPv4,
		want: []string{
			"nat/CAIRN_OUTPUT -m mark --mark 0x539/0xfff -j RETURN",
			"nat/CAIRN_OUTPUT -o lo -j RETURN",
			"nat/CAIRN_OUTPUT -p udp -m udp --dport 53 -j REDIRECT --to-ports 15053",
			"nat/CAIRN_OUTPUT -p tcp -m tcp --dport 53 --tcp-flags FIN,SYN,RST,ACK SYN -j REDIRECT --to-ports 15053",
			"nat/CAIRN_OUTPUT -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -j REDIRECT --to-ports 15001",
		},
	}, {
		name:   "ztunnel's packets get a conntrack zone of their own, in the original direction",
		opts:   func(o *Options) { o.ConntrackZone = 77 },
		family: IPv4,
		want:   []string{"raw/CAIRN_OUTPUT -m mark --mark 0x539/0xfff -j CT --zone-orig 77"},
	}, {
		name:   "a family without a pod address refuses TCP, except within the pod",
		opts:   func(o *Options) { o.PodIPs = []netip.Addr{podIP4} },
		family: IPv6,
		want: []string{
			"filter/CAIRN_INPUT -i lo -j RETURN",
			"filter/CAIRN_INPUT -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -j REJECT --reject-with tcp-reset",
			"filter/CAIRN_OUTPUT -o lo -j RETURN",
			"filter/CAIRN_OUTPUT -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -j REJECT --reject-with tcp-reset",
		},
		absent: []string{
			"nat/CAIRN_PREROUTING -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -j REDIRECT --to-ports 15006",
			"raw/CAIRN_OUTPUT -m mark --mark 0x539/0xfff -j CT --zone-orig 1337",
		},
	}, {
		name:   "and so does IPv4 for an IPv6-only pod",
		opts:   func(o *Options) { o.PodIPs = []netip.Addr{podIP6} },
		family: IPv4,
		want:   []string{"filter/CAIRN_INPUT -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -j REJECT --reject-with tcp-reset"},
	}, {
		name:   "a family with a pod address is captured, not refused",
		family: IPv6,
		absent: []string{"filter/CAIRN_INPUT -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -j REJECT --reject-with tcp-reset"},
	}, {
		name:   "DNS is not captured by default",
		family: IPv4,
		absent: []string{"nat/CAIRN_OUTPUT -p udp -m udp --dport 53 -j REDIRECT --to-ports 15053"},
	}, {
		name: "other ports and mark",
		opts: func(o *Options) {
			o.Ports = Ports{Outbound: 25001, Inbound: 25006, HBONE: 25008, DNS: 25053}
			o.Mark, o.MarkMask, o.ReplyMark = 0x40, 0xf0, 0x20
		},
		family: IPv4,
		want: []string{
			"mangle/CAIRN_OUTPUT -m mark --mark 0x40/0xf0 -j CONNMARK --set-xmark 0x40/0xf0",
			"mangle/CAIRN_OUTPUT -m connmark --mark 0x40/0xf0 -m mark ! --mark 0x40/0xf0 -j MARK --set-xmark 0x20/0xf0",
			"nat/CAIRN_PREROUTING -p tcp -m tcp --dport 25008 -j RETURN",
			"nat/CAIRN_PREROUTING -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -j REDIRECT --to-ports 25006",
			"nat/CAIRN_OUTPUT -m mark --mark 0x40/0xf0 -j RETURN",
			"nat/CAIRN_OUTPUT -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -j REDIRECT --to-ports 25001",
		},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := dual
			if tc.opts != nil {
				tc.opts(&o)
			}
			rs, err := Build(o, tc.family)
			if err != nil {
				t.Fatal(err)
			}
			got := rulesOf(rs)
			at := 0
			for _, w := range tc.want {
				i := slices.Index(got[at:], w)
				if i < 0 {
					t.Fatalf("missing or out of order: %s\nrules:\n%s", w, strings.Join(got, "\n"))
				}
				at += i + 1
			}
			for _, a := range tc.absent {
				if slices.Contains(got, a) {
					t.Errorf("unexpected rule %s", a)
				}
			}
		})
	}
}

func TestBuildIsDeterministic(t *testing.T) {
	o := DefaultOptions(podIP4, podIP6)
	o.ProbeSources = []netip.Addr{nodeIP4, probeIP6}
	o.ExcludeInboundPorts = []uint16{1, 2, 3}
	a, _ := Build(o, IPv6)
	b, _ := Build(o, IPv6)
	if a.String() != b.String() {
		t.Error("two Builds of the same options differ")
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name    string
		opts    func(*Options)
		wantErr string // "" for valid
	}{
		{"defaults", func(*Options) {}, ""},
		{"no pod IPs", func(o *Options) { o.PodIPs = nil }, "no pod IPs"},
		{"same port twice", func(o *Options) { o.Ports.Inbound = o.Ports.Outbound }, "both 15001"},
		{"unset port", func(o *Options) { o.Ports.HBONE = 0 }, "HBONE port is not set"},
		{"DNS port only needed with DNS capture", func(o *Options) { o.Ports.DNS = 0 }, ""},
		{"DNS port needed with DNS capture", func(o *Options) { o.Ports.DNS, o.CaptureDNS = 0, true }, "DNS port is not set"},
		{"mark outside mask", func(o *Options) { o.Mark = 0x1539 }, "inside mask"},
		{"no mark", func(o *Options) { o.Mark = 0 }, "non-zero"},
		{"reply mark is the mark", func(o *Options) { o.ReplyMark = o.Mark }, "not the mark"},
		{"reply mark outside mask", func(o *Options) { o.ReplyMark = 0x1111 }, "reply mark"},
		{"main route table", func(o *Options) { o.RouteTable = 254 }, "route table 254"},
		{"4in6 probe source", func(o *Options) { o.ProbeSources = []netip.Addr{netip.MustParseAddr("::ffff:198.18.250.1")} }, "plain IPv4 or IPv6"},
		{"invalid pod IP", func(o *Options) { o.PodIPs = []netip.Addr{{}} }, "plain IPv4 or IPv6"},
		{"excluded port 0", func(o *Options) { o.ExcludeOutboundPorts = []uint16{0} }, "excluded port 0"},
		{"conntrack zone 0", func(o *Options) { o.ConntrackZone = 0 }, "conntrack zone 0"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := DefaultOptions(podIP4)
			tc.opts(&o)
			err := o.Validate()
			switch {
			case tc.wantErr == "" && err != nil:
				t.Errorf("Validate = %v, want nil", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Errorf("Validate = %v, want an error containing %q", err, tc.wantErr)
			}
			if _, berr := Build(o, IPv4); (berr == nil) != (err == nil) {
				t.Errorf("Build error %v disagrees with Validate %v", berr, err)
			}
		})
	}
}

func TestFamilies(t *testing.T) {
	for _, tc := range []struct {
		ips  []netip.Addr
		want []Family
	}{
		{[]netip.Addr{podIP4}, []Family{IPv4}},
		{[]netip.Addr{podIP6}, []Family{IPv6}},
		{[]netip.Addr{podIP6, podIP4}, []Family{IPv4, IPv6}},
	} {
		if got := DefaultOptions(tc.ips...).Families(); !slices.Equal(got, tc.want) {
			t.Errorf("Families(%v) = %v, want %v", tc.ips, got, tc.want)
		}
	}
}
