package rawtcp

import (
	"net/netip"
	"testing"
)

// TestChecksum: the header carries the fields, and a segment with its
// checksum in place verifies (sums with its pseudo-header to zero) as a
// receiver checks it, for both families and an odd-length payload. That
// the kernel accepts these segments is shown by the capture tests, whose
// conntrack drops segments with a bad checksum.
func TestChecksum(t *testing.T) {
	for _, c := range []struct{ src, dst string }{
		{"10.0.0.1:40000", "10.0.0.2:80"},
		{"[2001:db8::1]:40000", "[2001:db8::2]:80"},
	} {
		s := Segment{Src: netip.MustParseAddrPort(c.src), Dst: netip.MustParseAddrPort(c.dst),
			Seq: 0x01020304, Ack: 0x0a0b0c0d, Flags: ACK | PSH, Payload: []byte("odd")}
		b := s.Bytes()
		if len(b) != 23 || b[13] != ACK|PSH || b[12] != 0x50 {
			t.Fatalf("%s: header % x", c.src, b[:20])
		}
		// Summing the pseudo-header and the segment, checksum included,
		// gives 0xffff, whose complement checksum() returns as 0.
		b[16], b[17] = 0, 0
		want := checksum(s.Src.Addr(), s.Dst.Addr(), b)
		got := s.Bytes()
		if uint16(got[16])<<8|uint16(got[17]) != want {
			t.Fatalf("%s: checksum %x, want %x", c.src, got[16:18], want)
		}
		if v := checksum(s.Src.Addr(), s.Dst.Addr(), got); v != 0 {
			t.Errorf("%s: segment with its checksum verifies to %#x, want 0", c.src, v)
		}
	}
}
