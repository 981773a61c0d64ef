package hbone

import (
	"net/netip"
	"testing"
)

func TestParseAuthority(t *testing.T) {
	for in, want := range map[string]string{
		"10.0.0.7:8080":          "10.0.0.7:8080",
		"[fd00::7]:80":           "[fd00::7]:80",
		"[::ffff:10.0.0.7]:8080": "10.0.0.7:8080", // compared with IPv4 pod IPs
		"":                       "",
		"10.0.0.7":               "",
		"10.0.0.7:0":             "",
		"10.0.0.7:65536":         "",
		"reviews:9080":           "",
		"[fe80::1%eth0]:80":      "",
		"10.0.0.7:80/x":          "",
	} {
		got, err := parseAuthority(in)
		if want == "" {
			if err == nil {
				t.Errorf("parseAuthority(%q) = %v, want an error", in, got)
			}
			continue
		}
		if err != nil || got != netip.MustParseAddrPort(want) {
			t.Errorf("parseAuthority(%q) = %v, %v; want %s", in, got, err, want)
		}
	}
}
