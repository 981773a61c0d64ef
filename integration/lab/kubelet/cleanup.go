package kubelet

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cairnmesh/cairn/integration/lab/hostos"
)

// Cleanup removes what the kubelets of a node left on the machine, for
// `lab down` once the kubelet process is stopped: it kills every
// container and monitor recorded under nodeRoot (by PID and start time,
// then whatever remains in their cgroups), removes their cgroups, and
// unmounts everything mounted under nodeRoot (the pods' network
// namespaces and the shared mount of <nodeRoot>/var/run/netns). It runs
// no CNI DEL: the node's network namespace, and with it every veth and
// bridge the plugins made there, goes with the node. Files under nodeRoot
// stay for the caller to remove. It is safe to call on a node that has
// nothing left.
func Cleanup(nodeRoot string) error {
	cfg := Config{NodeRoot: nodeRoot}
	recs, err := cfg.loadRecords()
	if err != nil {
		return fmt.Errorf("kubelet cleanup: %w", err)
	}
	var cgroupDirs []string
	for _, rec := range recs {
		for _, insts := range rec.Containers {
			for _, in := range insts {
				var st startedState
				if in.Started != nil {
					st = *in.Started
				} else {
					_ = readJSON(filepath.Join(in.Dir, stateFile), &st)
				}
				for _, p := range []struct {
					pid   int
					start uint64
				}{{st.MonitorPID, st.MonitorStart}, {st.PID, st.PIDStart}} {
					if alive(p.pid, p.start) {
						_ = unix.Kill(p.pid, unix.SIGKILL)
					}
				}
				cgroupDirs = append(cgroupDirs, in.Cgroups...)
			}
		}
		cgroupDirs = append(cgroupDirs, rec.Cgroups...)
	}
	killCgroups(cgroupDirs)
	var errs []error
	if err := removeCgroups(cgroupDirs, 5*time.Second); err != nil {
		errs = append(errs, err)
	}
	// The qos levels and the parents (kubepods) go too when no other node
	// uses them; rmdir fails on a cgroup that is still in use.
	var bases []string
	_ = readJSON(filepath.Join(cfg.stateDir(), cgroupBasesFile), &bases)
	for _, b := range bases {
		for _, qos := range []string{"besteffort", "burstable"} {
			_ = unix.Rmdir(filepath.Join(b, qos))
		}
		_ = unix.Rmdir(b)
	}
	root, err := filepath.Abs(nodeRoot)
	if err != nil {
		return err
	}
	mps, err := hostos.MountsUnder(root)
	if err != nil {
		errs = append(errs, err)
	}
	for _, mp := range mps {
		if err := unix.Unmount(mp, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmounting %s: %w", mp, err))
		}
	}
	if err := os.RemoveAll(cfg.stateDir()); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("kubelet cleanup: %w", err)
	}
	return nil
}
