package lab

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/cairnmesh/cairn/integration/lab/hostos"
)

// netnsDir is where named network namespaces are bind-mounted, as with
// `ip netns add`, so `ip netns exec cairn-node-1 ...` works too.
const netnsDir = "/var/run/netns"

// NetnsPath is the bind mount of node i's network namespace.
func (c Config) NetnsPath(i int) string { return filepath.Join(netnsDir, c.NetnsName(i)) }

// createNetns creates the named network namespace name, as `ip netns add`
// does: /var/run/netns is made a shared mount point first (a bind mount
// of itself if need be), so the namespaces bind-mounted in it are seen by
// other mount namespaces, and a later `ip netns add` (or anything that
// follows iproute2) does not mount over them. The namespace is made on a
// goroutine whose thread is locked and never unlocked: the Go runtime ends
// such a thread when the goroutine returns, so no other goroutine ever
// runs in the new namespace.
func createNetns(name string) error {
	if err := ensureNetnsDir(); err != nil {
		return fmt.Errorf("creating network namespace %s: %w", name, err)
	}
	path := filepath.Join(netnsDir, name)
	if isNsfs(path) {
		return fmt.Errorf("creating network namespace %s: it exists", name)
	}
	// A file left by a namespace whose mount was hidden by a later mount
	// on /var/run/netns can't be removed (EBUSY), but can be mounted over.
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE, 0o444)
	if err != nil {
		return fmt.Errorf("creating network namespace %s: %w", name, err)
	}
	f.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // no Unlock: the thread dies with the goroutine
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		errc <- unix.Mount("/proc/thread-self/ns/net", path, "none", unix.MS_BIND, "")
	}()
	if err := <-errc; err != nil {
		_ = os.Remove(path)
		return fmt.Errorf("creating network namespace %s: %w", name, err)
	}
	return nil
}

// ensureNetnsDir makes /var/run/netns a shared mount point, as iproute2
// does.
func ensureNetnsDir() error {
	if err := os.MkdirAll(netnsDir, 0o755); err != nil {
		return err
	}
	err := unix.Mount("", netnsDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if errors.Is(err, unix.EINVAL) { // not a mount point yet
		if err := unix.Mount(netnsDir, netnsDir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind-mounting %s: %w", netnsDir, err)
		}
		err = unix.Mount("", netnsDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	}
	if err != nil {
		return fmt.Errorf("making %s shared: %w", netnsDir, err)
	}
	return nil
}

// deleteNetns unmounts and removes a named network namespace; a missing one
// is not an error. The namespace itself goes once nothing uses it. A file
// that is busy although nothing is mounted on it in our view sits on a
// mount that a later mount on /var/run/netns hides: it can't be removed
// (createNetns reuses it).
func deleteNetns(path string) error {
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmounting %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, unix.EBUSY) {
		return fmt.Errorf("removing %s: %w", path, err)
	}
	return nil
}

// inNetns runs fn on a thread that has joined the network namespace at
// path. The thread is thrown away afterwards (see createNetns).
func inNetns(path string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // no Unlock: the thread dies with the goroutine
		if err := hostos.JoinNetns(path); err != nil {
			errc <- err
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// netnsLauncher starts processes inside one network namespace. A child
// forked by a thread shares that thread's namespaces, so the launcher owns
// one goroutine, locked to a thread that joined the namespace, and every
// cmd.Start runs there. The thread lives as long as the launcher, which
// matters because the children get Pdeathsig: the kernel sends it when the
// forking *thread* exits, so they die with the supervisor but not with a
// random runtime thread.
type netnsLauncher struct {
	reqs chan launchRequest
	done chan struct{}
}

type launchRequest struct {
	cmd *exec.Cmd
	res chan error
}

func newNetnsLauncher(path string) (*netnsLauncher, error) {
	l := &netnsLauncher{reqs: make(chan launchRequest), done: make(chan struct{})}
	ready := make(chan error, 1)
	go func() {
		defer close(l.done)
		runtime.LockOSThread() // no Unlock: see the type's comment
		if err := hostos.JoinNetns(path); err != nil {
			ready <- err
			return
		}
		ready <- nil
		for req := range l.reqs {
			req.res <- req.cmd.Start()
		}
	}()
	if err := <-ready; err != nil {
		return nil, err
	}
	return l, nil
}

// start runs cmd.Start inside the namespace, with Pdeathsig SIGKILL.
func (l *netnsLauncher) start(cmd *exec.Cmd) error {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	res := make(chan error, 1)
	l.reqs <- launchRequest{cmd: cmd, res: res}
	return <-res
}

// close ends the launcher's thread. Children still running then get
// SIGKILL, so close only after they have been stopped.
func (l *netnsLauncher) close() {
	close(l.reqs)
	<-l.done
}

// netnsInode returns the inode of the network namespace at path (a bind
// mount or /proc/<pid>/ns/net), which identifies the namespace.
func netnsInode(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}
