package labtest

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// sniffer records the IPv4 TCP segments that cross an interface of the
// root network namespace, with an AF_PACKET socket: no tcpdump needed. A
// packet socket on a bridge sees only what the bridge delivers to the host,
// not what it forwards between its ports; sniffBridge therefore listens on
// every port of the lab's bridge, which every node-to-node packet crosses.
type sniffer struct {
	marker []byte
	done   chan struct{}

	mu         sync.Mutex
	markerSeen int            // segments whose payload holds the marker
	byPort     map[uint16]int // payload-carrying segments by the lower of their two ports
	err        error
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func sniff(t *testing.T, ifname string, marker []byte) *sniffer {
	t.Helper()
	s := &sniffer{marker: marker, done: make(chan struct{}), byPort: map[uint16]int{}}
	sniffInto(t, s, ifname)
	return s
}

// sniffInto adds an interface to a sniffer.
func sniffInto(t *testing.T, s *sniffer, ifname string) {
	t.Helper()
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(htons(unix.ETH_P_ALL)))
	if err != nil {
		t.Fatalf("packet socket: %v", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
		unix.Close(fd)
		t.Fatalf("binding the packet socket to %s: %v", ifname, err)
	}
	tv := unix.NsecToTimeval((100 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		buf := make([]byte, 65536)
		for {
			select {
			case <-s.done:
				return
			default:
			}
			n, _, err := unix.Recvfrom(fd, buf, 0)
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil {
				s.mu.Lock()
				s.err = err
				s.mu.Unlock()
				return
			}
			s.record(buf[:n])
		}
	}()
	t.Cleanup(func() { s.stop(); <-stopped; unix.Close(fd) })
}

// sniffBridge sniffs every port of a bridge, into one sniffer's counts.
func sniffBridge(t *testing.T, bridge string, marker []byte) *sniffer {
	t.Helper()
	ports, err := os.ReadDir(filepath.Join("/sys/class/net", bridge, "brif"))
	if err != nil || len(ports) == 0 {
		t.Fatalf("ports of bridge %s: %v", bridge, err)
	}
	first := sniff(t, ports[0].Name(), marker)
	for _, p := range ports[1:] {
		sniffInto(t, first, p.Name())
	}
	return first
}

func (s *sniffer) stop() {
	select {
	case <-s.done:
	default:
		close(s.done)
	}
}

// record parses Ethernet / IPv4 / TCP and notes the ports and the marker.
func (s *sniffer) record(frame []byte) {
	if len(frame) < 14+20 || binary.BigEndian.Uint16(frame[12:14]) != 0x0800 {
		return
	}
	ip := frame[14:]
	ihl := int(ip[0]&0x0f) * 4
	if ip[9] != 6 || len(ip) < ihl+20 {
		return
	}
	total := int(binary.BigEndian.Uint16(ip[2:4]))
	if total > len(ip) {
		total = len(ip)
	}
	tcp := ip[ihl:total]
	off := int(tcp[12]>>4) * 4
	if len(tcp) < off {
		return
	}
	payload := tcp[off:]
	s.mu.Lock()
	defer s.mu.Unlock()
	if bytes.Contains(payload, s.marker) {
		s.markerSeen++
	}
	if len(payload) > 0 {
		sp, dp := binary.BigEndian.Uint16(tcp[0:2]), binary.BigEndian.Uint16(tcp[2:4])
		s.byPort[min(sp, dp)]++
	}
}

// summary returns what was seen so far.
func (s *sniffer) summary() (markerSeen int, byPort map[uint16]int, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[uint16]int, len(s.byPort))
	for k, v := range s.byPort {
		out[k] = v
	}
	return s.markerSeen, out, s.err
}

func (s *sniffer) String() string {
	m, p, err := s.summary()
	return fmt.Sprintf("marker seen %d times; payload segments by port %v; err %v", m, p, err)
}
