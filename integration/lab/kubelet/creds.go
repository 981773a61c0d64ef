package kubelet

import (
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// applyCredentials gives the calling thread the user, groups and
// capabilities of s, and no_new_privs if s asks, in runc's order: the
// bounding set first (while CAP_SETPCAP is held), then groups, group and
// user with the capabilities kept across the change, then the permitted
// and effective sets, the inheritable and ambient ones empty. The caller
// must execve from this same locked thread next: credentials are per
// thread, and execve turns them into the program's (a program that does
// not run as root keeps no capability: its inheritable and ambient sets
// are empty).
//
// A spec that is not Confined (a privileged container) keeps the
// caller's capabilities and changes only the user and groups it names.
func applyCredentials(s securitySpec) error {
	var keep [2]uint32 // the capability bit mask, two 32-bit words
	if s.Confined {
		for _, name := range s.Caps {
			n, ok := capNumbers[name]
			if !ok {
				return fmt.Errorf("unknown capability %s", name)
			}
			keep[n/32] |= 1 << (n % 32)
		}
		for c := 0; c < 64; c++ {
			if keep[c/32]&(1<<(c%32)) != 0 {
				continue
			}
			if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil {
				if errors.Is(err, unix.EINVAL) {
					break // past the kernel's last capability
				}
				return fmt.Errorf("dropping capability %d from the bounding set: %w", c, err)
			}
		}
	}
	if s.Confined || s.UID != 0 || s.GID != 0 || len(s.Groups) > 0 {
		if err := unix.Prctl(unix.PR_SET_KEEPCAPS, 1, 0, 0, 0); err != nil {
			return fmt.Errorf("keeping capabilities across the user change: %w", err)
		}
		// Raw system calls: Go's own apply to every thread, and only this
		// one matters (it execs).
		groups := make([]uint32, len(s.Groups))
		for i, g := range s.Groups {
			groups[i] = uint32(g)
		}
		var gp unsafe.Pointer
		if len(groups) > 0 {
			gp = unsafe.Pointer(&groups[0])
		}
		if _, _, e := unix.RawSyscall(unix.SYS_SETGROUPS, uintptr(len(groups)), uintptr(gp), 0); e != 0 {
			return fmt.Errorf("setgroups %v: %w", s.Groups, e)
		}
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESGID, uintptr(s.GID), uintptr(s.GID), uintptr(s.GID)); e != 0 {
			return fmt.Errorf("setresgid %d: %w", s.GID, e)
		}
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, uintptr(s.UID), uintptr(s.UID), uintptr(s.UID)); e != 0 {
			return fmt.Errorf("setresuid %d: %w", s.UID, e)
		}
		if err := unix.Prctl(unix.PR_SET_KEEPCAPS, 0, 0, 0, 0); err != nil {
			return fmt.Errorf("keeping capabilities across the user change: %w", err)
		}
	}
	if s.Confined {
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		data := [2]unix.CapUserData{
			{Effective: keep[0], Permitted: keep[0]},
			{Effective: keep[1], Permitted: keep[1]},
		}
		if err := unix.Capset(&hdr, &data[0]); err != nil {
			return fmt.Errorf("setting capabilities %v: %w", s.Caps, err)
		}
		if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("clearing ambient capabilities: %w", err)
		}
	}
	if s.NoNewPrivs {
		if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
			return fmt.Errorf("setting no_new_privs: %w", err)
		}
	}
	return nil
}
