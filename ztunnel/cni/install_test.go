package cni

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const labConflist = `{
  "cniVersion": "1.0.0",
  "name": "lab",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local", "ranges": [[{"subnet": "198.18.1.0/24"}]]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}`

func installFixture(t *testing.T) (Install, string) {
	t.Helper()
	root := t.TempDir()
	in := Install{
		Binary:  filepath.Join(root, "src", "cairn-cni"),
		BinDir:  filepath.Join(root, "opt/cni/bin"),
		ConfDir: filepath.Join(root, "etc/cni/net.d"),
		Socket:  "/var/run/cairn/cni.sock",
	}
	for _, d := range []string{filepath.Dir(in.Binary), in.ConfDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(in.Binary, []byte("#!plugin v1"), 0o755); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(in.ConfDir, "10-lab.conflist")
	if err := os.WriteFile(conf, []byte(labConflist), 0o644); err != nil {
		t.Fatal(err)
	}
	return in, conf
}

func pluginTypes(t *testing.T, path string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var conf struct {
		Plugins []map[string]any `json:"plugins"`
	}
	if err := json.Unmarshal(data, &conf); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, p := range conf.Plugins {
		out = append(out, p["type"].(string))
	}
	return out
}

func TestEnsureChainsOnceAndRemoveUndoes(t *testing.T) {
	in, conf := installFixture(t)
	changed, err := in.Ensure()
	if err != nil || !changed {
		t.Fatalf("first Ensure: changed %v, %v", changed, err)
	}
	if got := strings.Join(pluginTypes(t, conf), ","); got != "bridge,portmap,cairn-cni" {
		t.Errorf("plugins %s, want cairn-cni chained last", got)
	}
	if b, err := os.ReadFile(filepath.Join(in.BinDir, "cairn-cni")); err != nil || string(b) != "#!plugin v1" {
		t.Errorf("binary not installed: %q %v", b, err)
	}
	changed, err = in.Ensure()
	if err != nil || changed {
		t.Errorf("second Ensure: changed %v, %v; want nothing to do", changed, err)
	}
	// The cluster's CNI rewrites its file: Ensure chains again.
	if err := os.WriteFile(conf, []byte(labConflist), 0o644); err != nil {
		t.Fatal(err)
	}
	if changed, err := in.Ensure(); err != nil || !changed {
		t.Errorf("Ensure after a rewrite: changed %v, %v", changed, err)
	}
	if err := in.Remove(); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(pluginTypes(t, conf), ","); got != "bridge,portmap" {
		t.Errorf("plugins after Remove %s", got)
	}
	if _, err := os.Stat(filepath.Join(in.BinDir, "cairn-cni")); !os.IsNotExist(err) {
		t.Errorf("binary still there after Remove: %v", err)
	}
	if err := in.Remove(); err != nil {
		t.Errorf("second Remove: %v", err)
	}
}

func TestEnsureWithoutConfiguration(t *testing.T) {
	in, conf := installFixture(t)
	if err := os.Remove(conf); err != nil {
		t.Fatal(err)
	}
	if _, err := in.Ensure(); err == nil || !strings.Contains(err.Error(), "no CNI configuration list") {
		t.Errorf("Ensure with no configuration: %v", err)
	}
	if err := os.WriteFile(filepath.Join(in.ConfDir, "05-single.conf"), []byte(`{"cniVersion":"1.0.0","name":"x","type":"bridge"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := in.Ensure(); err == nil || !strings.Contains(err.Error(), "single-plugin") {
		t.Errorf("Ensure with a .conf: %v", err)
	}
}

// TestEnsureReplacesAChangedBinary: a new plugin binary (same size,
// other content, as a rebuilt binary can be) replaces the installed one,
// and so does an installed one that was changed by hand.
func TestEnsureReplacesAChangedBinary(t *testing.T) {
	in, _ := installFixture(t)
	if _, err := in.Ensure(); err != nil {
		t.Fatal(err)
	}
	installed := filepath.Join(in.BinDir, "cairn-cni")
	if err := os.WriteFile(in.Binary, []byte("#!plugin v2"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := in.Ensure(); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(installed); string(b) != "#!plugin v2" {
		t.Errorf("installed %q after the binary changed, want v2", b)
	}
	if err := os.WriteFile(installed, []byte("#!tampered"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := in.Ensure(); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(installed); string(b) != "#!plugin v2" {
		t.Errorf("installed %q after it was changed by hand, want v2 again", b)
	}
}

// The runtime uses the first configuration file by name, skipping
// directories and other files; Ensure chains into that one and leaves the
// others alone.
func TestEnsureChainsIntoTheRuntimesFile(t *testing.T) {
	in, first := installFixture(t)
	later := filepath.Join(in.ConfDir, "20-other.conflist")
	if err := os.WriteFile(later, []byte(labConflist), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"00-dir.conflist", "05-notes.txt"} {
		p := filepath.Join(in.ConfDir, d)
		var err error
		if filepath.Ext(d) == ".txt" {
			err = os.WriteFile(p, []byte("not CNI"), 0o644)
		} else {
			err = os.Mkdir(p, 0o755)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if _, err := in.Ensure(); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(first); !strings.Contains(string(got), PluginType) {
		t.Errorf("%s does not chain %s:\n%s", first, PluginType, got)
	}
	if got, _ := os.ReadFile(later); strings.Contains(string(got), PluginType) {
		t.Errorf("%s, not the runtime's file, was changed:\n%s", later, got)
	}
}
