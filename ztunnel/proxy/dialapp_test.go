package proxy

import (
	"context"
	"net"
	"net/netip"
	"testing"
)

// The app is dialled from the client's address when the pod has the
// reply routes (DialFrom is set), and from its own address otherwise.
func TestDialAppFromTheClient(t *testing.T) {
	podIP := netip.MustParseAddr("198.18.1.10")
	app := "198.18.1.10:8080"
	tests := []struct {
		name     string
		dialFrom bool
		src      netip.Addr
		wantFrom netip.Addr // invalid: the plain dial
	}{
		{"client in the mesh", true, netip.MustParseAddr("198.18.2.7"), netip.MustParseAddr("198.18.2.7")},
		{"IPv4-mapped client", true, netip.MustParseAddr("::ffff:198.18.2.7"), netip.MustParseAddr("198.18.2.7")},
		{"no reply routes in the pod", false, netip.MustParseAddr("198.18.2.7"), netip.Addr{}},
		{"the pod calling itself", true, podIP, netip.Addr{}},
		{"no client address", true, netip.Addr{}, netip.Addr{}},
		{"client of the other family", true, netip.MustParseAddr("fd00::7"), netip.Addr{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var gotFrom netip.Addr
			plain := false
			p := &Proxy{pod: Pod{IPs: []netip.Addr{podIP},
				Dial: func(context.Context, string, string) (net.Conn, error) {
					plain = true
					return nil, nil
				},
			}}
			if tc.dialFrom {
				p.pod.DialFrom = func(_ context.Context, src netip.Addr, _, _ string) (net.Conn, error) {
					gotFrom = src
					return nil, nil
				}
			}
			if _, err := p.dialApp(context.Background(), tc.src, app); err != nil {
				t.Fatal(err)
			}
			if gotFrom != tc.wantFrom || plain == tc.wantFrom.IsValid() {
				t.Errorf("dialled from %v (plain dial: %v), want from %v", gotFrom, plain, tc.wantFrom)
			}
		})
	}
}
