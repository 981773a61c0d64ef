package lab

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/cairnmesh/cairn/integration/lab/hostos"
)

func TestConfigDefaultsAndNames(t *testing.T) {
	c, err := Config{RepoDir: "/repo"}.WithDefaults()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{
		"dir":        c.Dir,
		"bridge":     c.BridgeName(),
		"veth":       c.HostVethName(2),
		"netns":      c.NetnsName(2),
		"node":       NodeName(2),
		"bridgeAddr": c.BridgeAddr().String(),
		"nodeAddr":   c.NodeAddr(2).String(),
		"podCIDR":    c.PodCIDR(2).String(),
		"api":        c.APIServerURL(),
		"nodeRoot":   c.NodeRoot(1),
		"cgroup":     c.CgroupParent(1),
		"lab binary": c.LabBinary,
	}
	want := map[string]string{
		"dir":        "/repo/.lab",
		"bridge":     "cairnlab0",
		"veth":       "cairnlab-n2",
		"netns":      "cairn-node-2",
		"node":       "lab-node-2",
		"bridgeAddr": "198.18.0.1/24",
		"nodeAddr":   "198.18.0.12/24",
		"podCIDR":    "198.18.2.0/24",
		"api":        "https://198.18.0.1:6443",
		"nodeRoot":   "/repo/.lab/nodes/lab-node-1/root",
		"cgroup":     "cairnlab/lab-node-1/kubepods",
		"lab binary": "/repo/bin/lab",
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("%s = %q, want %q", k, got[k], w)
		}
	}
	if c.Nodes != DefaultNodes {
		t.Errorf("nodes = %d, want %d", c.Nodes, DefaultNodes)
	}

	test, err := Config{RepoDir: "/repo", Dir: "/tmp/x", Prefix: "cairnt", Subnet: 100, Nodes: 3}.WithDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if test.BridgeName() != "cairntlab0" || test.NodeAddr(3).String() != "198.18.100.13/24" || test.PodCIDR(3).String() != "198.18.103.0/24" {
		t.Errorf("test lab: bridge %s, node 3 %s, pods %s", test.BridgeName(), test.NodeAddr(3), test.PodCIDR(3))
	}
	// Interface names stay within IFNAMSIZ-1 = 15 bytes.
	if n := test.HostVethName(MaxNodes); len(n) > 15 {
		t.Errorf("veth name %q is longer than 15 bytes", n)
	}
}

func TestConfigRejects(t *testing.T) {
	for name, c := range map[string]Config{
		"too many nodes":  {Nodes: MaxNodes + 1},
		"negative nodes":  {Nodes: -1},
		"long prefix":     {Prefix: "muchtoolong"},
		"subnet overflow": {Subnet: 254, Nodes: 2},
		"negative subnet": {Subnet: -1},
	} {
		c.RepoDir = "/repo"
		if _, err := c.WithDefaults(); err == nil {
			t.Errorf("%s: WithDefaults accepted %+v", name, c)
		}
	}
}

func TestCNIConflist(t *testing.T) {
	c, err := Config{RepoDir: "/repo", Subnet: 100}.WithDefaults()
	if err != nil {
		t.Fatal(err)
	}
	data, err := cniConflist(c, 2)
	if err != nil {
		t.Fatal(err)
	}
	var conf struct {
		Name    string `json:"name"`
		Plugins []struct {
			Type        string `json:"type"`
			IsGateway   bool   `json:"isGateway"`
			IPMasq      bool   `json:"ipMasq"`
			HairpinMode bool   `json:"hairpinMode"`
			IPAM        struct {
				Type    string                `json:"type"`
				Ranges  [][]map[string]string `json:"ranges"`
				DataDir string                `json:"dataDir"`
			} `json:"ipam"`
		} `json:"plugins"`
	}
	if err := json.Unmarshal(data, &conf); err != nil {
		t.Fatalf("%v\n%s", err, data)
	}
	if len(conf.Plugins) != 1 {
		t.Fatalf("plugins: %+v", conf.Plugins)
	}
	p := conf.Plugins[0]
	if p.Type != "bridge" || !p.IsGateway || p.IPMasq || !p.HairpinMode || p.IPAM.Type != "host-local" {
		t.Errorf("bridge plugin: %+v", p)
	}
	if r := p.IPAM.Ranges[0][0]; r["subnet"] != "198.18.102.0/24" || r["gateway"] != "198.18.102.1" {
		t.Errorf("ranges: %v", p.IPAM.Ranges)
	}
	if !strings.HasPrefix(p.IPAM.DataDir, c.NodeRoot(2)+"/") {
		t.Errorf("host-local dataDir %s is not under the node's root", p.IPAM.DataDir)
	}
}

func TestKubeProxyConfig(t *testing.T) {
	c, err := Config{RepoDir: "/repo"}.WithDefaults()
	if err != nil {
		t.Fatal(err)
	}
	var kp map[string]any
	if err := yaml.Unmarshal(kubeProxyConfig(c, 1), &kp); err != nil {
		t.Fatal(err)
	}
	if kp["kind"] != "KubeProxyConfiguration" || kp["mode"] != "iptables" || kp["hostnameOverride"] != "lab-node-1" ||
		kp["clusterCIDR"] != "198.18.0.0/16" || kp["bindAddress"] != "198.18.0.11" {
		t.Errorf("kube-proxy configuration: %v", kp)
	}
	// Nothing that writes global sysctls.
	ct := kp["conntrack"].(map[string]any)
	if ct["maxPerCore"] != float64(0) || ct["min"] != float64(0) {
		t.Errorf("conntrack: %v", ct)
	}
	if ipt := kp["iptables"].(map[string]any); ipt["localhostNodePorts"] != false {
		t.Errorf("iptables: %v", ipt)
	}
}

func TestKubeletArgs(t *testing.T) {
	c, err := Config{RepoDir: "/repo"}.WithDefaults()
	if err != nil {
		t.Fatal(err)
	}
	args := kubeletArgs(c, 2)
	for _, want := range []string{
		"kubelet", "--node-name=lab-node-2", "--node-ip=198.18.0.12", "--pod-cidr=198.18.2.0/24",
		"--node-root=/repo/.lab/nodes/lab-node-2/root", "--cluster-dns=198.19.0.10",
		"--bin-dir=/repo/bin", "--cgroup-parent=cairnlab/lab-node-2/kubepods",
	} {
		if !slices.Contains(args, want) {
			t.Errorf("kubelet args %v lack %s", args, want)
		}
	}

	c.Images = map[string]string{"haproxy": "/usr/sbin/haproxy", "networkstatic/iperf3": "/usr/bin/iperf3"}
	args = kubeletArgs(c, 1)
	if got := args[len(args)-2:]; !slices.Equal(got, []string{"--image=haproxy=/usr/sbin/haproxy", "--image=networkstatic/iperf3=/usr/bin/iperf3"}) {
		t.Errorf("kubelet image args: %v", got)
	}
}

func TestUnescapeMountPath(t *testing.T) {
	for in, want := range map[string]string{
		`/a/b`:           "/a/b",
		`/with\040space`: "/with space",
		`/tab\011x`:      "/tab\tx",
		`/back\134slash`: `/back\slash`,
	} {
		if got := hostos.UnescapeMountPath(in); got != want {
			t.Errorf("hostos.UnescapeMountPath(%q) = %q, want %q", in, got, want)
		}
	}
}
