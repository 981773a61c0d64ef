package capture

import (
	"net/netip"
	"strings"
	"testing"
)

// The node's rules for IPv4 with the kubelet's cgroup known: the
// reference for what BuildNode makes.
const wantNodeIPv4 = `*nat
:CAIRN_POSTROUTING - [0:0]
-A CAIRN_POSTROUTING -p tcp -m cgroup --path "/system.slice/kubelet.service" -m set --match-set cairn-probe-v4 dst -m comment --comment "cairn: kubelet to an enrolled pod: probe source" -j SNAT --to-source 169.254.7.127
-I POSTROUTING 1 -j CAIRN_POSTROUTING
COMMIT
*raw
:CAIRN_PREROUTING - [0:0]
:CAIRN_OUTPUT - [0:0]
-A CAIRN_PREROUTING -s 169.254.7.127/32 -m comment --comment "cairn: probe source from off the node: forged" -j DROP
-A CAIRN_OUTPUT -s 169.254.7.127/32 -m comment --comment "cairn: probe source on a local socket: only the kubelet SNAT may use it" -j DROP
-I PREROUTING 1 -j CAIRN_PREROUTING
-I OUTPUT 1 -j CAIRN_OUTPUT
COMMIT
`

func TestBuildNode(t *testing.T) {
	o := NodeOptions{ProbeSources: DefaultProbeSources, KubeletCgroup: "/system.slice/kubelet.service"}
	rs, err := BuildNode(o, IPv4)
	if err != nil {
		t.Fatal(err)
	}
	if got := rs.String(); got != wantNodeIPv4 {
		t.Errorf("script:\n%s\nwant:\n%s", got, wantNodeIPv4)
	}

	v6, err := BuildNode(o, IPv6)
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(rulesOf(v6), "\n")
	for _, want := range []string{
		"nat/CAIRN_POSTROUTING -p tcp -m cgroup --path \"/system.slice/kubelet.service\" -m set --match-set cairn-probe-v6 dst -j SNAT --to-source fd16:9254:7127:1337:ffff:ffff:ffff:ffff",
		"raw/CAIRN_PREROUTING -s fd16:9254:7127:1337:ffff:ffff:ffff:ffff/128 -j DROP",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("IPv6 rules lack %s:\n%s", want, got)
		}
	}

	// Without the kubelet's cgroup nothing is rewritten, and the probe
	// source is still kept from everyone else.
	o.KubeletCgroup = ""
	none, err := BuildNode(o, IPv4)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(rulesOf(none), "\n"); strings.Contains(got, "SNAT") || !strings.Contains(got, "-j DROP") {
		t.Errorf("without the kubelet's cgroup:\n%s", got)
	}
	// A family without a probe source gets no rules at all.
	o.ProbeSources = DefaultProbeSources[:1]
	if rs, err := BuildNode(o, IPv6); err != nil || len(rs.Tables) != 0 {
		t.Errorf("IPv6 without a probe source: %v, %v", rs.Tables, err)
	}
}

func TestCgroupPathArg(t *testing.T) {
	for in, want := range map[string]string{
		"kubelet":                       "kubelet",
		"/system.slice/kubelet.service": `"/system.slice/kubelet.service"`,
		"lab-node_1":                    "lab-node_1",
		"kubelet.service":               `"kubelet.service"`,
	} {
		if got := cgroupPathArg(in); got != want {
			t.Errorf("cgroupPathArg(%q) = %s, want %s", in, got, want)
		}
	}
}

func TestNodeOptionsValidate(t *testing.T) {
	for _, tc := range []struct {
		name    string
		o       NodeOptions
		wantErr string
	}{
		{"defaults", NodeOptions{ProbeSources: DefaultProbeSources, KubeletCgroup: "/k"}, ""},
		{"no cgroup", NodeOptions{ProbeSources: DefaultProbeSources}, ""},
		{"root cgroup", NodeOptions{ProbeSources: DefaultProbeSources, KubeletCgroup: "/"}, "root cgroup"},
		{"quoted cgroup", NodeOptions{KubeletCgroup: `/a"b`}, "quotes"},
		{"two IPv4 sources", NodeOptions{ProbeSources: []netip.Addr{probeSource, netip.MustParseAddr("169.254.7.128")}}, "two IPv4"},
		{"mapped source", NodeOptions{ProbeSources: []netip.Addr{netip.MustParseAddr("::ffff:169.254.7.127")}}, "plain"},
	} {
		err := tc.o.Validate()
		if (tc.wantErr == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("%s: Validate = %v, want %q", tc.name, err, tc.wantErr)
		}
	}
}

// TestApplied: a namespace holding exactly the rules is Applied; a rule
// less, a stale chain or a missing jump is not.
func TestApplied(t *testing.T) {
	rs, err := BuildNode(NodeOptions{ProbeSources: DefaultProbeSources, KubeletCgroup: "/k"}, IPv4)
	if err != nil {
		t.Fatal(err)
	}
	var saved strings.Builder
	for _, tb := range rs.Tables {
		saved.WriteString("*" + tb.Name + "\n:POSTROUTING ACCEPT [0:0]\n")
		for _, c := range tb.Chains {
			saved.WriteString(":" + c.Name + " - [0:0]\n-A " + c.Hook + " -j " + c.Name + "\n")
			for _, r := range c.Rules {
				saved.WriteString("-A " + c.Name + " " + r + "\n")
			}
		}
		saved.WriteString("COMMIT\n")
	}
	full := saved.String()
	if !rs.Applied(mustParse(t, full)) {
		t.Errorf("the rules as saved are not Applied:\n%s", full)
	}
	for name, s := range map[string]string{
		"a rule less":   strings.Replace(full, "-A CAIRN_OUTPUT -s", "-A CAIRN_OTHER -s", 1),
		"no jump":       strings.Replace(full, "-A POSTROUTING -j CAIRN_POSTROUTING\n", "", 1),
		"a stale chain": full + "*filter\n:CAIRN_OLD - [0:0]\nCOMMIT\n",
		"empty":         "",
	} {
		if rs.Applied(mustParse(t, s)) {
			t.Errorf("%s: Applied", name)
		}
	}
}
