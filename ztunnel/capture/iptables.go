package capture

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"strings"

	"github.com/cairnmesh/cairn/internal/netns"
)

// Commands are the iptables-save and iptables-restore binaries of one
// address family. They must use the same backend (nft or legacy) as
// anything else that programs the pod's namespace; in a pod that is
// normally only us.
type Commands struct {
	Save    string
	Restore string
}

// IPTables installs and removes capture rules in pods' network namespaces.
// It runs iptables-save and iptables-restore from inside the namespace
// (netns.Handle.Do), so the commands act on the pod's tables, not the
// node's. The zero value works.
//
// Calls for one namespace must not overlap: each reads the tables and then
// writes them, and two at once could both add the jump into our chains.
// (A later Apply repairs that: it keeps one jump and deletes the others.)
type IPTables struct {
	IPv4 Commands // default iptables-save, iptables-restore
	IPv6 Commands // default ip6tables-save, ip6tables-restore
	// Sysctls writes the pod's conntrack sysctl (see Apply): through the
	// node's /proc/sys/net as mounted, since a container's own
	// /proc/sys is read-only.
	Sysctls Sysctls
	// Log gets one line per change and the scripts at debug level;
	// discarded if nil.
	Log *slog.Logger
}

// ErrLoosePickup is wrapped by Apply's error when it cannot turn
// conntrack's loose pickup off in the pod: without that, a client with
// CAP_NET_RAW can open a way past the rules (see the package doc), so
// Apply leaves no rule in the pod and the pod must stay out of the mesh.
var ErrLoosePickup = errors.New("conntrack's loose pickup cannot be turned off in the pod")

// lockWait bounds how long iptables-restore waits for the xtables lock.
// Only the legacy backend has the lock, and it is one file for the whole
// host, shared with kube-proxy and the CNI; the nft backend ignores it.
const lockWait = "--wait=10"

// Apply installs the rules for o in ns: the capture rules for each family
// of o's pod IPs, and rules that refuse TCP for the other family (unless
// the kernel has no IPv6 at all). It also turns off conntrack's loose
// pickup of TCP in ns (see the package doc, "Only SYNs"); if it cannot,
// it leaves ns without rules and returns an error that wraps
// ErrLoosePickup. It can be called again with the same or different
// options: each call leaves exactly the rules of the options it was
// given, and connections already going through ztunnel keep going.
func (t *IPTables) Apply(ctx context.Context, ns *netns.Handle, o Options) error {
	if err := o.Validate(); err != nil {
		return fmt.Errorf("capture options: %w", err)
	}
	var sets []Ruleset
	for _, f := range AllFamilies {
		rs, err := Build(o, f)
		if err != nil {
			return err
		}
		sets = append(sets, rs)
	}
	return ns.Do(func() error {
		// Before the rules, so that no connection is picked up loose
		// once they are in, and so that a namespace where it cannot be
		// set gets no rules at all. The sysctl appears only once
		// conntrack is loaded, which the rules may do: then it is set
		// right after them.
		if err := t.setLoosePickup(false); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("capture in %s: %w: %w", ns, ErrLoosePickup, err)
		}
		for _, rs := range sets {
			if rs.Family == IPv6 && !kernelHasIPv6() {
				t.log().Debug("capture: the kernel has no IPv6, no ip6tables rules", "netns", ns.Path())
				continue
			}
			if err := t.reconcile(ctx, ns, rs.Family, rs); err != nil {
				return err
			}
		}
		if err := t.setLoosePickup(false); err != nil {
			// The rules without it would be a way around them: take
			// them out again.
			var undo []error
			for _, f := range AllFamilies {
				if err := t.reconcile(ctx, ns, f, Ruleset{Family: f}); err != nil && !errors.Is(err, exec.ErrNotFound) {
					undo = append(undo, err)
				}
			}
			return errors.Join(fmt.Errorf("capture in %s: %w: %w", ns, ErrLoosePickup, err), errors.Join(undo...))
		}
		return nil
	})
}

// loosePickup is the per-namespace switch of conntrack's loose pickup
// of TCP connections it did not see start, below net/.
const loosePickup = "netfilter/nf_conntrack_tcp_loose"

// setLoosePickup turns conntrack's loose TCP pickup on (the kernel's
// default) or off in the namespace of the calling thread. With it on, a
// packet in the middle of a connection that conntrack never saw start (a
// bare ACK from a client with CAP_NET_RAW) makes an entry, and nat, which
// sees only the first packet of an entry, has already passed it by: a
// SYN from the same address and port then reuses the entry and reaches
// the app without the redirect. With it off such packets are invalid and
// make no entry; only a SYN starts one.
func (t *IPTables) setLoosePickup(on bool) error {
	v := "0"
	if on {
		v = "1"
	}
	return t.Sysctls.Set(loosePickup, v)
}

// kernelHasIPv6 says whether the calling thread's namespace has IPv6 (it
// has not when the kernel was booted with ipv6.disable=1).
func kernelHasIPv6() bool {
	_, err := os.Stat("/proc/sys/net/ipv6")
	return err == nil
}

// Remove deletes every CAIRN_ chain and every jump to one in ns, for both
// families, and nothing else, and turns conntrack's loose pickup back on
// (the kernel's default). A family whose commands are not installed is
// skipped: it cannot have rules.
//
// Close the pod's connections through ztunnel first: with the rules gone
// the kernel stops tracking connections in the namespace, and one still
// redirected to ztunnel would hang instead of ending (package doc).
func (t *IPTables) Remove(ctx context.Context, ns *netns.Handle) error {
	return ns.Do(func() error {
		var errs []error
		for _, f := range []Family{IPv4, IPv6} {
			err := t.reconcile(ctx, ns, f, Ruleset{Family: f})
			if errors.Is(err, exec.ErrNotFound) {
				t.log().Debug("capture: no iptables for family, nothing to remove", "netns", ns.Path(), "family", f)
				continue
			}
			errs = append(errs, err)
		}
		if err := t.setLoosePickup(true); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("capture in %s: %w", ns, err))
		}
		return errors.Join(errs...)
	})
}

// Saved returns what iptables-save shows in ns for family f.
func (t *IPTables) Saved(ctx context.Context, ns *netns.Handle, f Family) (Saved, error) {
	var s Saved
	err := ns.Do(func() error {
		var err error
		s, err = t.save(ctx, f)
		return err
	})
	return s, err
}

// reconcile takes family f of the namespace the thread is in to want.
// It must run inside Do.
func (t *IPTables) reconcile(ctx context.Context, ns *netns.Handle, f Family, want Ruleset) error {
	cur, err := t.save(ctx, f)
	if err != nil {
		return fmt.Errorf("capture in %s: %w", ns, err)
	}
	script := want.Script(cur)
	if script == "" {
		return nil
	}
	restore := t.commands(f).Restore
	if _, err := run(ctx, script, restore, "--noflush", lockWait); err != nil {
		if line := failedLine(err.Error(), script); line != "" {
			err = fmt.Errorf("%w (%s)", err, line)
		}
		return fmt.Errorf("capture in %s: %w", ns, err)
	}
	t.log().Info("capture: iptables updated", "netns", ns.Path(), "family", f,
		"removed", len(want.Tables) == 0)
	t.log().Debug("capture: iptables-restore input", "netns", ns.Path(), "family", f, "script", script)
	return nil
}

func (t *IPTables) save(ctx context.Context, f Family) (Saved, error) {
	out, err := run(ctx, "", t.commands(f).Save)
	if err != nil {
		return Saved{}, err
	}
	return ParseSave(out)
}

func (t *IPTables) commands(f Family) Commands {
	c, def := t.IPv4, Commands{Save: "iptables-save", Restore: "iptables-restore"}
	if f == IPv6 {
		c, def = t.IPv6, Commands{Save: "ip6tables-save", Restore: "ip6tables-restore"}
	}
	if c.Save == "" {
		c.Save = def.Save
	}
	if c.Restore == "" {
		c.Restore = def.Restore
	}
	return c
}

func (t *IPTables) log() *slog.Logger {
	if t.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return t.Log
}

// run runs a command with stdin and returns its standard output. Its error
// carries the command's standard error, which is where iptables says what
// it did not like.
func run(ctx context.Context, stdin, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		var complaint []string
		for _, line := range strings.Split(strings.TrimSpace(stderr.String()), "\n") {
			if !strings.HasPrefix(line, "Try `") { // "Try `iptables-restore -h' ..."
				complaint = append(complaint, line)
			}
		}
		return "", fmt.Errorf("%s: %w: %s", strings.Join(cmd.Args, " "), err, strings.Join(complaint, "; "))
	}
	return stdout.String(), nil
}
