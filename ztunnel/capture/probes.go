package capture

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os/exec"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/cairnmesh/cairn/internal/netns"
)

// Probes keeps, in the node's network namespace, what lets the kubelet's
// probes into enrolled pods and nothing else (BuildNode): the node's
// rules, and the ipsets of the enrolled pods' addresses (ProbeSetName).
// Its methods may be called from several goroutines.
//
// The rules and the sets outlive the ztunnel that made them: a new
// ztunnel on the node (a rolling update) finds them in place, writes the
// same rules again and adds the addresses of the pods it captures; the
// old one leaves them when it exits. Remove, for an uninstall, takes them
// out.
type Probes struct {
	// Netns is the node's network namespace: ztunnel's own, on the host
	// network.
	Netns    *netns.Handle
	IPTables *IPTables
	// Sources are the probe source addresses, one per family
	// (DefaultProbeSources).
	Sources []netip.Addr
	// KubeletCgroup returns the kubelet's cgroup, as NodeOptions take it,
	// and the cgroup namespace the path is read in (nil: ztunnel's own),
	// which Probes closes; it runs inside Netns. Kubelet.Cgroup finds
	// both by the kubelet's port; a fixed path does for a node whose
	// layout is known (with Kubelet.CgroupNamespace). On an error it
	// returns no namespace. If it fails, the
	// node's rules rewrite nothing and the kubelet's probes are captured
	// like any other plaintext (they fail under STRICT): ztunnel says so
	// in its log, and tries again on every Reconcile.
	KubeletCgroup func() (string, *netns.Handle, error)
	Log           *slog.Logger

	mu       sync.Mutex // one Reconcile or Remove at a time
	applied  NodeOptions
	done     bool      // applied is in the namespace
	verified time.Time // when the namespace was last seen to hold applied
	lastErr  string    // the last failure to find the kubelet, logged once
}

// probeVerifyInterval is how often Run reads the node's rules back to
// repair them (two iptables-save runs per family, tens of milliseconds);
// finding the kubelet's cgroup, on every tick, costs a millisecond or two.
const probeVerifyInterval = time.Minute

// Run reconciles every interval until ctx ends: it follows the kubelet
// into a new cgroup (a restart under systemd makes a new one) at once,
// and repairs rules someone else deleted within a minute. Failures are
// logged (once until they change), not returned.
func (p *Probes) Run(ctx context.Context, interval time.Duration) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	last := ""
	for {
		err := p.reconcile(ctx, false)
		switch {
		case err != nil && ctx.Err() == nil && err.Error() != last:
			p.log().Warn("probe rules on the node; trying again", "err", err, "every", interval)
			last = err.Error()
		case err == nil && last != "":
			p.log().Info("probe rules on the node in place again")
			last = ""
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Reconcile makes the node's sets and rules what they should be now.
// It rewrites the rules only when they differ from what is there.
func (p *Probes) Reconcile(ctx context.Context) error { return p.reconcile(ctx, true) }

// reconcile is Reconcile; unless verify, it trusts rules it wrote itself
// less than probeVerifyInterval ago instead of reading them back.
func (p *Probes) reconcile(ctx context.Context, verify bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	o := NodeOptions{ProbeSources: p.Sources}
	var cg string
	var cgns *netns.Handle
	var findErr error
	if err := p.Netns.Do(func() error {
		if err := ensureProbeSets(); err != nil {
			return err
		}
		cg, cgns, findErr = p.KubeletCgroup()
		return nil
	}); err != nil {
		return err
	}
	if cgns != nil {
		defer cgns.Close()
	}
	switch {
	case findErr != nil && findErr.Error() != p.lastErr:
		p.log().Error("cannot tell the kubelet's probes apart: they are captured like any other plaintext client "+
			"(under PeerAuthentication STRICT or a policy that denies them, they fail)", "err", findErr)
		p.lastErr = findErr.Error()
	case findErr == nil && p.lastErr != "":
		p.log().Info("found the kubelet's cgroup: its probes of enrolled pods are let through", "cgroup", cg)
		p.lastErr = ""
	}
	if findErr == nil {
		o.KubeletCgroup = cg
	}
	// The cgroup match resolves its path in the cgroup namespace of the
	// process that installs the rule: iptables-restore, started from this
	// thread, is in the kubelet's.
	return netns.Do(func() error {
		if p.done && o.KubeletCgroup == p.applied.KubeletCgroup {
			if !verify && time.Since(p.verified) < probeVerifyInterval {
				return nil
			}
			// Check the namespace still has them: cheaper than the
			// restore, and a flushed chain is repaired.
			ok, err := p.inPlace(ctx, o)
			if err != nil {
				return err
			}
			if ok {
				p.verified = time.Now()
				return nil
			}
		}
		for _, f := range AllFamilies {
			rs, err := BuildNode(o, f)
			if err != nil {
				return err
			}
			if f == IPv6 && !kernelHasIPv6() {
				continue
			}
			if err := p.IPTables.reconcile(ctx, p.Netns, f, rs); err != nil {
				return err
			}
		}
		p.applied, p.done, p.verified = o, true, time.Now()
		p.log().Info("probe rules on the node", "kubelet_cgroup", o.KubeletCgroup, "probe_sources", o.ProbeSources)
		return nil
	}, p.Netns, cgns)
}

// inPlace says whether the namespace holds exactly o's rules. It runs
// inside Do.
func (p *Probes) inPlace(ctx context.Context, o NodeOptions) (bool, error) {
	for _, f := range AllFamilies {
		if f == IPv6 && !kernelHasIPv6() {
			continue
		}
		rs, err := BuildNode(o, f)
		if err != nil {
			return false, err
		}
		cur, err := p.IPTables.save(ctx, f)
		if err != nil {
			return false, err
		}
		if !rs.Applied(cur) {
			return false, nil
		}
	}
	return true, nil
}

// Add puts pod addresses in the probe sets. Do it before the pod's own
// rules go in, so that its first probe already has the probe source.
func (p *Probes) Add(ips ...netip.Addr) error {
	return p.Netns.Do(func() error {
		if err := ensureProbeSets(); err != nil {
			return err
		}
		for _, ip := range ips {
			ip = ip.Unmap()
			// Replace: an address already there is no error.
			e := &netlink.IPSetEntry{IP: net.IP(ip.AsSlice()), Replace: true}
			if err := netlink.IpsetAdd(ProbeSetName(familyOf(ip)), e); err != nil {
				return fmt.Errorf("adding %s to %s: %w", ip, ProbeSetName(familyOf(ip)), err)
			}
		}
		return nil
	})
}

// Del takes pod addresses out of the probe sets; one not there is no
// error.
func (p *Probes) Del(ips ...netip.Addr) error {
	return p.Netns.Do(func() error {
		var errs []error
		for _, ip := range ips {
			ip = ip.Unmap()
			e := &netlink.IPSetEntry{IP: net.IP(ip.AsSlice()), Replace: true}
			err := netlink.IpsetDel(ProbeSetName(familyOf(ip)), e)
			if err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("removing %s from %s: %w", ip, ProbeSetName(familyOf(ip)), err))
			}
		}
		return errors.Join(errs...)
	})
}

// Members lists the addresses in the probe sets.
func (p *Probes) Members() ([]netip.Addr, error) {
	var out []netip.Addr
	err := p.Netns.Do(func() error {
		for _, f := range AllFamilies {
			res, err := netlink.IpsetList(ProbeSetName(f))
			if errors.Is(err, unix.ENOENT) {
				continue
			}
			if err != nil {
				return fmt.Errorf("listing %s: %w", ProbeSetName(f), err)
			}
			for _, e := range res.Entries {
				if a, ok := netip.AddrFromSlice(e.IP); ok {
					out = append(out, a.Unmap())
				}
			}
		}
		return nil
	})
	return out, err
}

// Remove takes the node's rules and the probe sets out: ztunnel is being
// uninstalled. It removes every CAIRN_ chain of the node's namespace.
func (p *Probes) Remove(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done = false
	return p.Netns.Do(func() error {
		var errs []error
		for _, f := range AllFamilies {
			if f == IPv6 && !kernelHasIPv6() {
				continue
			}
			err := p.IPTables.reconcile(ctx, p.Netns, f, Ruleset{Family: f})
			if !errors.Is(err, exec.ErrNotFound) {
				errs = append(errs, err)
			}
		}
		if err := errors.Join(errs...); err != nil {
			return err // the sets are still referenced
		}
		for _, f := range AllFamilies {
			if err := netlink.IpsetDestroy(ProbeSetName(f)); err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("destroying %s: %w", ProbeSetName(f), err))
			}
		}
		return errors.Join(errs...)
	})
}

func (p *Probes) log() *slog.Logger {
	if p.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return p.Log
}

// ensureProbeSets creates the probe sets that are missing, in the calling
// thread's namespace. An existing set of the same type is no error.
func ensureProbeSets() error {
	for _, f := range AllFamilies {
		fam := uint8(unix.AF_INET)
		if f == IPv6 {
			fam = unix.AF_INET6
		}
		err := netlink.IpsetCreate(ProbeSetName(f), "hash:ip", netlink.IpsetCreateOptions{Family: fam, Replace: true})
		if err != nil {
			if errors.Is(err, nl.IPSetError(nl.IPSET_ERR_EXIST)) {
				return fmt.Errorf("ipset %s exists with another type or family than hash:ip %v: %w", ProbeSetName(f), f, err)
			}
			return fmt.Errorf("creating ipset %s: %w", ProbeSetName(f), err)
		}
	}
	return nil
}
