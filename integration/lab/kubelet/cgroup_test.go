package kubelet

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The kubelet's own cgroup sits beside its pods', never above them: a
// match on it (ztunnel's probe exemption) would cover the pods too.
func TestKubeletCgroupIsNotAbovePods(t *testing.T) {
	base := Config{NodeName: "n", NodeIP: netip.MustParseAddr("198.18.0.11"), PodCIDR: netip.MustParsePrefix("198.18.1.0/24"),
		NodeRoot: t.TempDir(), Kubeconfig: "k", CgroupParent: "lab/node/kubepods"}
	for cgroup, wantErr := range map[string]bool{
		"lab/node/kubelet":   false,
		"/lab/node/kubelet/": false,
		"lab/node":           true, // the pods' parent's parent
		"lab/node/kubepods":  true,
		"lab":                true,
	} {
		c := base
		c.Cgroup = cgroup
		_, err := c.withDefaults()
		if (err != nil) != wantErr {
			t.Errorf("Cgroup %q: %v, want error %v", cgroup, err, wantErr)
		}
	}
}

// discoverCgroups puts the kubelet's own cgroup and its pods' side by
// side, below the cgroup it starts in, in every hierarchy.
func TestDiscoverCgroupsSelf(t *testing.T) {
	if _, err := os.Stat("/proc/self/cgroup"); err != nil {
		t.Skip(err)
	}
	cg, err := discoverCgroups("lab/node/kubepods", "lab/node/kubelet")
	if err != nil {
		t.Skip(err)
	}
	if len(cg.self) != len(cg.bases) || len(cg.bases) == 0 {
		t.Fatalf("bases %v, self %v", cg.bases, cg.self)
	}
	for i := range cg.bases {
		if filepath.Dir(cg.bases[i]) != filepath.Dir(cg.self[i]) || !strings.HasSuffix(cg.self[i], "/lab/node/kubelet") {
			t.Errorf("pods under %s, kubelet in %s: want siblings", cg.bases[i], cg.self[i])
		}
	}
}
