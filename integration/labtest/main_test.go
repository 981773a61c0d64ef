// Package labtest holds the lab's end-to-end tests: TestMain brings up a
// lab of two nodes in a temporary directory, with its own names and subnet
// (prefix cairnt, 198.18.100.0/24) so it runs next to a developer's lab,
// and takes it down at the end, checking that nothing of it is left.
//
// They need root; without it they skip, except under CI=true, where they
// fail. LAB_TEST_KEEP=1 leaves the lab running after the tests (then
// `LAB_DIR=<dir> LAB_PREFIX=cairnt bin/lab down` removes it).
// LAB_TEST_PREFIX and LAB_TEST_SUBNET change the names and subnet, so two
// runs (two checkouts) can share a machine.
package labtest

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/cairnmesh/cairn/integration/lab"
	"github.com/cairnmesh/cairn/integration/labharness"
	"github.com/cairnmesh/cairn/internal/kubeserver"
)

// The lab every test uses.
var (
	cfg        lab.Config
	restConfig *rest.Config
	client     kubernetes.Interface
	kubectlBin string
	skipReason string
)

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	flag.Parse()
	ci := os.Getenv("CI") == "true"
	if os.Geteuid() != 0 {
		if ci {
			fmt.Fprintln(os.Stderr, "labtest: the lab's end-to-end tests need root (CI=true: failing)")
			return 1
		}
		skipReason = "labtest: the lab needs root"
		return m.Run()
	}
	level := slog.LevelWarn
	if testing.Verbose() {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	tmp, err := os.MkdirTemp("", "cairn-labtest-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "labtest:", err)
		return 1
	}
	prefix, subnet := "cairnt", 100
	if p := os.Getenv("LAB_TEST_PREFIX"); p != "" {
		prefix = p
	}
	if s := os.Getenv("LAB_TEST_SUBNET"); s != "" {
		if subnet, err = strconv.Atoi(s); err != nil {
			fmt.Fprintf(os.Stderr, "labtest: LAB_TEST_SUBNET=%q: %v\n", s, err)
			return 1
		}
	}
	c, err := lab.Config{
		Dir:    filepath.Join(tmp, "lab"),
		Nodes:  2,
		Prefix: prefix,
		Subnet: subnet,
		Logger: log,
	}.WithDefaults()
	if err != nil {
		fmt.Fprintln(os.Stderr, "labtest:", err)
		return 1
	}
	if err := labharness.BuildBinaries(c.RepoDir, filepath.Join(tmp, "bin")); err != nil {
		fmt.Fprintln(os.Stderr, "labtest:", err)
		return 1
	}
	c.LabBinary = filepath.Join(tmp, "bin", "lab")
	kubectlBin = filepath.Join(c.K8sBinDir(), "kubectl")
	cfg = c

	rulesBefore := rootRules()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute) // includes building CoreDNS once
	var timings lab.UpTimings
	restConfig, timings, err = lab.Up(ctx, c)
	cancel()
	switch {
	case errors.Is(err, kubeserver.ErrBinaryNotFound) && !ci:
		skipReason = fmt.Sprintf("labtest: %v", err)
		fmt.Fprintln(os.Stderr, skipReason)
		return m.Run()
	case err != nil:
		fmt.Fprintf(os.Stderr, "labtest: lab up: %v\n", err)
		downAndCheck(c, rulesBefore)
		return 1
	}
	fmt.Fprintf(os.Stderr, "labtest: lab up in %.1fs (network %.1fs, control plane %.1fs, nodes %.1fs, DNS %.1fs) at %s\n",
		timings.Total.Seconds(), timings.Network.Seconds(), timings.ControlPlane.Seconds(),
		timings.Nodes.Seconds(), timings.DNS.Seconds(), c.APIServerURL())
	if client, err = kubernetes.NewForConfig(restConfig); err != nil {
		fmt.Fprintln(os.Stderr, "labtest:", err)
		return 1
	}

	code := m.Run()

	if os.Getenv("LAB_TEST_KEEP") != "" {
		fmt.Fprintf(os.Stderr, "labtest: LAB_TEST_KEEP: the lab stays up; remove it with\n  LAB_DIR=%s LAB_PREFIX=%s LAB_SUBNET=%d bin/lab down\n",
			c.Dir, c.Prefix, c.Subnet)
		return code
	}
	if !downAndCheck(c, rulesBefore) && code == 0 {
		code = 1
	}
	if code == 0 {
		_ = os.RemoveAll(tmp)
	}
	return code
}

// downAndCheck takes the lab down and checks that nothing of it is left
// and that the root namespace's iptables rules are as before. It prints a
// FAIL line and returns false otherwise.
func downAndCheck(c lab.Config, rulesBefore string) bool {
	before := lab.TakeInventory(c)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	report, err := lab.Down(ctx, c)
	if err != nil {
		fmt.Fprintf(os.Stderr, "--- FAIL: lab down: %v\n", err)
		return false
	}
	fmt.Fprintf(os.Stderr, "labtest: lab down in %.1fs (had %d processes, %d netns, %d pod netns, %d links, %d mounts, %d cgroups)\n",
		report.Took.Seconds(), len(before.Processes), len(before.Netns), len(before.PodNetns), len(before.Links), len(before.Mounts), len(before.Cgroups))
	ok := true
	if after := lab.TakeInventory(c); !after.Empty() {
		fmt.Fprintf(os.Stderr, "--- FAIL: after lab down, left: %s\n", after)
		ok = false
	}
	for _, p := range before.Processes {
		if p.Alive() {
			fmt.Fprintf(os.Stderr, "--- FAIL: after lab down, process %s[%d] is alive\n", p.Name, p.PID)
			ok = false
		}
	}
	if after := rootRules(); after != rulesBefore {
		fmt.Fprintf(os.Stderr, "--- FAIL: the root network namespace's rules or sysctls changed:\nbefore:\n%s\nafter:\n%s\n", rulesBefore, after)
		ok = false
	}
	if ok {
		fmt.Fprintln(os.Stderr, "labtest: after lab down nothing of the lab is left; the root namespace's rules and sysctls are unchanged")
	}
	return ok
}

// rootRules returns the root network namespace's iptables and nftables
// rules (without counters) and the sysctls kube-proxy could change, to
// show that the lab leaves them alone. (Links and routes are not compared:
// other tests running in parallel may add their own.)
func rootRules() string {
	var b strings.Builder
	for _, args := range [][]string{{"iptables-save"}, {"ip6tables-save"}, {"nft", "list", "ruleset"}} {
		out, err := exec.Command(args[0], args[1:]...).Output()
		if err != nil {
			continue // the tool is not installed
		}
		for _, line := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(line, "#") {
				continue
			}
			if strings.HasPrefix(line, ":") { // chain policy with counters
				if i := strings.Index(line, " ["); i > 0 {
					line = line[:i]
				}
			}
			b.WriteString(line + "\n")
		}
	}
	for _, key := range []string{
		"net/ipv4/ip_forward",
		"net/ipv4/conf/all/route_localnet",
		"net/bridge/bridge-nf-call-iptables",
		"net/netfilter/nf_conntrack_max",
		"net/netfilter/nf_conntrack_tcp_timeout_established",
		"net/netfilter/nf_conntrack_tcp_timeout_close_wait",
	} {
		v, err := os.ReadFile("/proc/sys/" + key)
		if err == nil {
			fmt.Fprintf(&b, "%s = %s", key, v)
		}
	}
	return b.String()
}

// setup skips the test when the lab is not there (no root locally).
func setup(t *testing.T) {
	t.Helper()
	if skipReason != "" {
		t.Skip(skipReason)
	}
}
