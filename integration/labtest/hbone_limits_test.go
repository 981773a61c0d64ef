package labtest

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cairnmesh/cairn/integration/lab"
	"github.com/cairnmesh/cairn/ztunnel/hbone"
)

// The defaults of ztunnel's HBONE limits that this test relies on: the
// lab runs install/manifests/ztunnel.yaml, which sets none of them.
const (
	nodeMaxConnections = hbone.DefaultMaxConnections
	sourceShare        = hbone.DefaultSourceShare // percent
	handshakeTimeout   = hbone.DefaultHandshakeTimeout
)

// TestHBONELimitsHoldUnderIdleAndHalfHandshakes: one client (the test
// process, on the lab bridge) opens thousands of TCP connections to a
// pod's HBONE port, some idle and some that send a TLS ClientHello and
// stop there. The node's ztunnel holds no more of them than one client's
// share of its connection limit, closing the rest at once, and closes
// those it held when their handshake timeout passes; meanwhile two
// client pods keep reaching the pod through that same ztunnel, one over
// its pooled connection, one with a new handshake. The node's ztunnel
// says so in its metrics, and its memory stays bounded.
func TestHBONELimitsHoldUnderIdleAndHalfHandshakes(t *testing.T) {
	setup(t)
	ns, echo2IP, _ := meshedApp(t)
	apply(t, ns, fmt.Sprintf(`
apiVersion: v1
kind: ServiceAccount
metadata: {name: other}
---
apiVersion: v1
kind: Pod
metadata: {name: client-2, labels: {app: client-2}}
spec:
  nodeName: %s
  serviceAccountName: other
  terminationGracePeriodSeconds: 1
  containers:
  - {name: client, image: "cairn/echoserver:latest"}
`, lab.NodeName(1)))
	waitPods(t, ns, "app=client-2", 1)
	eventually(t, 30*time.Second, "client-2 captured", func() error {
		if !captured(t, ns, "client-2") {
			return errors.New("not captured yet")
		}
		return nil
	})
	metrics := "http://" + net.JoinHostPort(cfg.NodeAddr(2).Addr().String(), "15020") + "/metrics"
	before, err := scrape(metrics)
	if err != nil {
		t.Fatal(err)
	}

	// The attack: 3000 connections from one address, a third of them
	// half-done handshakes.
	const total = 3000
	hello := clientHello(t)
	target := net.JoinHostPort(echo2IP, "15008")
	conns := make([]net.Conn, total)
	dialed := make([]time.Time, total)
	var wg sync.WaitGroup
	var next, dialErrs atomic.Int32
	start := time.Now()
	for range 50 {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= total {
					return
				}
				c, err := net.DialTimeout("tcp", target, 5*time.Second)
				if err != nil {
					dialErrs.Add(1) // refused so fast that the connect saw it
					continue
				}
				if i%3 == 0 {
					_, _ = c.Write(hello)
				}
				conns[i], dialed[i] = c, time.Now()
			}
		})
	}
	wg.Wait()
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	t.Logf("opened %d connections in %v (%d refused during connect)", total, time.Since(start).Round(time.Millisecond), dialErrs.Load())

	// Which were closed at once, which are held: reads on every
	// connection, in parallel, each until the connection ends.
	ended := make([]time.Duration, total)
	for i, c := range conns {
		if c == nil {
			continue
		}
		wg.Go(func() {
			_ = c.SetReadDeadline(time.Now().Add(handshakeTimeout + 60*time.Second)) // a safety net only
			_, err := io.Copy(io.Discard, c)
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				ended[i] = -1 // still open at the safety net
				return
			}
			ended[i] = time.Since(dialed[i])
		})
	}

	// Real traffic, meanwhile, through the same ztunnel to the same port:
	// the client's pooled connection, and client-2's first (a handshake).
	var ok, failed int
	var failures []string
	checked := false
	for time.Since(start) < handshakeTimeout+5*time.Second {
		for _, pod := range []string{"client", "client-2"} {
			if _, err := curlEcho(t, ns, pod, "http://"+echo2IP+":8080/"); err != nil {
				failed++
				failures = append(failures, fmt.Sprintf("%s at %v: %v", pod, time.Since(start).Round(time.Millisecond), err))
			} else {
				ok++
			}
		}
		if !checked {
			// Under attack: what the node's ztunnel holds.
			during, err := scrape(metrics)
			if err != nil {
				t.Fatal(err)
			}
			share := float64(nodeMaxConnections * sourceShare / 100)
			held := during[`ztunnel_hbone_limit_in_use{limit="connections"}`]
			t.Logf("during the attack: %v connections held, %v refused, %v handshakes in progress, RSS %.1f MB (%.1f MB before)",
				held, during[`ztunnel_hbone_limit_refused_total{limit="connections"}`], during[`ztunnel_hbone_limit_in_use{limit="handshakes"}`],
				during["process_resident_memory_bytes"]/1e6, before["process_resident_memory_bytes"]/1e6)
			if held > share+10 { // the attacker's share, and the two clients'
				t.Errorf("the node's ztunnel holds %v connections, want at most one client's share (%v) and a few", held, share)
			}
			if during[`ztunnel_hbone_limit_refused_total{limit="connections"}`] < total-share-10 {
				t.Errorf("%v connections refused, want the %v over the attacker's share", during[`ztunnel_hbone_limit_refused_total{limit="connections"}`], total-share)
			}
			if grew := during["process_resident_memory_bytes"] - before["process_resident_memory_bytes"]; grew > 64<<20 {
				t.Errorf("ztunnel's RSS grew by %.1f MB under the attack, want under 67 MB", grew/1e6)
			}
			checked = true
		}
	}
	t.Logf("real traffic during the attack: %d requests answered, %d failed", ok, failed)
	if failed > 0 {
		t.Errorf("requests failed while the attack went on: %s", strings.Join(failures, "; "))
	}
	if ok < 4 {
		t.Errorf("only %d requests went through during the attack", ok)
	}

	wg.Wait()
	var atOnce, byTimeout, open int
	for i, d := range ended {
		switch {
		case conns[i] == nil || d >= 0 && d < 2*time.Second:
			atOnce++
		case d < 0:
			open++
		default:
			byTimeout++
		}
	}
	t.Logf("of %d connections: %d closed at once (within 2 s), %d closed later (the handshake timeout), %d still open", total, atOnce, byTimeout, open)
	if open > 0 {
		t.Errorf("%d connections were still open %v after the handshake timeout", open, 60*time.Second)
	}
	if byTimeout > nodeMaxConnections*sourceShare/100 {
		t.Errorf("%d connections were held until their timeout, want at most the attacker's share (%d)", byTimeout, nodeMaxConnections*sourceShare/100)
	}
	after, err := scrape(metrics)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("after: %v connections held, RSS %.1f MB", after[`ztunnel_hbone_limit_in_use{limit="connections"}`], after["process_resident_memory_bytes"]/1e6)
	if _, err := curlEcho(t, ns, "client", "http://"+echo2IP+":8080/"); err != nil {
		t.Errorf("after the attack: %v", err)
	}
}

// clientHello returns the first record a TLS 1.3 client sends (its
// ClientHello, with a key share), to start handshakes and stop there.
func clientHello(t *testing.T) []byte {
	t.Helper()
	a, b := net.Pipe()
	defer b.Close()
	go func() {
		defer a.Close()
		_ = tls.Client(a, &tls.Config{MinVersion: tls.VersionTLS13, NextProtos: []string{"h2"}, InsecureSkipVerify: true}).Handshake() // the test checks the server's limits, not its identity
	}()
	hdr := make([]byte, 5)
	if _, err := io.ReadFull(b, hdr); err != nil {
		t.Fatal(err)
	}
	body := make([]byte, int(hdr[3])<<8|int(hdr[4]))
	if _, err := io.ReadFull(b, body); err != nil {
		t.Fatal(err)
	}
	return append(hdr, body...)
}

// scrape reads a Prometheus text page into name{labels} -> value.
func scrape(url string) (map[string]float64, error) {
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		out[line[:i]] = v
	}
	return out, sc.Err()
}
