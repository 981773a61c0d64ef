package main

import (
	"strings"
	"testing"

	"github.com/cairnmesh/cairn/ztunnel/hbone"
)

func TestByteSizes(t *testing.T) {
	for in, want := range map[string]int64{"65536": 65536, "64Ki": 64 << 10, "16Mi": 16 << 20, "1Gi": 1 << 30, "0": 0} {
		got, err := parseBytes(in)
		if err != nil || got != want {
			t.Errorf("parseBytes(%q) = %d, %v; want %d", in, got, err, want)
		}
		if back := formatBytes(got); in != "65536" && back != in {
			t.Errorf("formatBytes(%d) = %q, want %q", got, back, in)
		}
	}
	for _, bad := range []string{"", "16MB", "-1", "1.5Mi", "Mi", "9999999999Gi"} {
		if n, err := parseBytes(bad); err == nil {
			t.Errorf("parseBytes(%q) = %d, want an error", bad, n)
		}
	}
}

// The limit flags reach the configuration, and their defaults are hbone's.
func TestLimitFlags(t *testing.T) {
	cmd := command()
	if err := cmd.ParseFlags([]string{"--hbone-max-buffered=8Mi", "--hbone-connection-window=1Mi", "--hbone-max-connections=10"}); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{
		"hbone-max-buffered": "8Mi", "hbone-connection-window": "1Mi", "hbone-max-connections": "10",
		"hbone-max-streams": "2048", "hbone-source-share": "25", "write-timeout": hbone.DefaultWriteTimeout.String(),
	} {
		if got := cmd.Flags().Lookup(name).Value.String(); got != want {
			t.Errorf("--%s = %s, want %s", name, got, want)
		}
	}
	if err := cmd.ParseFlags([]string{"--hbone-connection-window=4Gi"}); err == nil || !strings.Contains(err.Error(), "too large") {
		t.Errorf("a 4Gi window: %v, want an error", err)
	}
}
