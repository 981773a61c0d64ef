package hbone

import (
	"net/netip"
	"strconv"
	"strings"
	"testing"
)

// FuzzParseAuthority checks the parser of a CONNECT's :authority, which
// decides where the server dials: no panic, and what it accepts is exactly
// one IP (no zone, IPv4-mapped addresses unmapped, so that the check
// against the pod's addresses sees them as IPv4) and a port from 1 to
// 65535, that the input spells.
func FuzzParseAuthority(f *testing.F) {
	for _, s := range []string{
		"10.0.0.7:8080", "[fd00::7]:80", "[::ffff:10.0.0.7]:8080", "", "10.0.0.7", "10.0.0.7:0",
		"10.0.0.7:65536", "reviews:9080", "[fe80::1%eth0]:80", "10.0.0.7:80/x", "010.0.0.7:80",
		"10.0.0.7:+80", "10.0.0.7:0080", "[::1]:80 ", "1.2.3.4:80:80", "[1.2.3.4]:80", "::1:80",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ap, err := parseAuthority(s)
		if err != nil {
			if ap.IsValid() {
				t.Fatalf("parseAuthority(%q) failed with %v but returned %v", s, err, ap)
			}
			return
		}
		ip := ap.Addr()
		switch {
		case !ap.IsValid() || !ip.IsValid():
			t.Fatalf("parseAuthority(%q) = %v: not a valid address", s, ap)
		case ip.Zone() != "":
			t.Fatalf("parseAuthority(%q) = %v: has a zone", s, ap)
		case ip.Is4In6():
			t.Fatalf("parseAuthority(%q) = %v: IPv4-mapped, compares unequal to the pod's IPv4 address", s, ap)
		case ap.Port() == 0:
			t.Fatalf("parseAuthority(%q) = %v: port 0", s, ap)
		}
		// The input is host:port with the host spelling ip, and nothing
		// else: no name, no path, no userinfo.
		i := strings.LastIndex(s, ":")
		host, port := s[:i], s[i+1:]
		if n, err := strconv.ParseUint(port, 10, 16); err != nil || uint16(n) != ap.Port() {
			t.Fatalf("parseAuthority(%q) = %v: the port is not the input's %q", s, ap, port)
		}
		host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
		want, err := netip.ParseAddr(host)
		if err != nil || want.Unmap() != ip {
			t.Fatalf("parseAuthority(%q) = %v: the host %q is not that address (%v)", s, ap, host, err)
		}
		// And what it returns parses back to itself.
		if again, err := parseAuthority(ap.String()); err != nil || again != ap {
			t.Fatalf("parseAuthority(%q) = %v, but parseAuthority(%q) = %v, %v", s, ap, ap.String(), again, err)
		}
	})
}
