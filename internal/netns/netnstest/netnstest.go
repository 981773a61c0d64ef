// Package netnstest makes throwaway network namespaces for tests that need
// root. Each namespace has a unique name and is deleted in t.Cleanup, even
// when the test fails.
package netnstest

import (
	"crypto/rand"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/cairnmesh/cairn/internal/netns"
)

// Require skips the test unless it runs as root and every command is on
// PATH. When CI is "true" it fails instead: CI must never pass by skipping.
func Require(t testing.TB, commands ...string) {
	t.Helper()
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	for _, c := range commands {
		if _, err := exec.LookPath(c); err != nil {
			missing = append(missing, c)
		}
	}
	if len(missing) == 0 {
		return
	}
	msg := "needs " + strings.Join(missing, ", ") + " (network namespaces and iptables; `make deps` installs the packages)"
	if os.Getenv("CI") == "true" {
		t.Fatal(msg + "; CI=true, so this is a failure, not a skip")
	}
	t.Skip(msg)
}

// NS is a throwaway named network namespace.
type NS struct {
	Name   string // as `ip netns` knows it
	Path   string // /var/run/netns/<Name>
	Handle *netns.Handle
}

// New creates a network namespace named prefix-<random> with its loopback
// up. t.Cleanup closes the handle and deletes it. The prefix should say
// which package made it, so a leftover is easy to trace.
func New(t testing.TB, prefix string) *NS {
	t.Helper()
	Require(t, "ip")
	name := prefix + "-" + suffix(8)
	Run(t, "ip", "netns", "add", name)
	ns := &NS{Name: name, Path: "/var/run/netns/" + name}
	t.Cleanup(func() {
		if ns.Handle != nil {
			ns.Handle.Close()
		}
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("deleting network namespace %s: %v: %s", name, err, out)
		}
	})
	h, err := netns.Open(ns.Path)
	if err != nil {
		t.Fatal(err)
	}
	ns.Handle = h
	Run(t, "ip", "-n", name, "link", "set", "lo", "up")
	return ns
}

// Run runs a command and fails the test, with the command's output, if it
// fails. It returns the standard output.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, out, stderr.String())
	}
	return string(out)
}

func suffix(n int) string {
	const alphabet = "bcdfghjklmnpqrstvwxz2456789" // no vowels: no words by accident
	buf := make([]byte, n)
	_, _ = rand.Read(buf) // never fails
	for i, c := range buf {
		buf[i] = alphabet[int(c)%len(alphabet)]
	}
	return string(buf)
}
