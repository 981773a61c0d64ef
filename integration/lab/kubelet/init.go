package kubelet

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cairnmesh/cairn/integration/lab/hostos"
)

// The container-init shim runs in three roles, each a re-exec of the
// kubelet's own binary (/proc/self/exe + Config.InitArgs):
//
//	monitor <spec>  the container's parent, like conmon: started by the
//	                kubelet in a new session, it outlives the kubelet. It
//	                starts the start stage, copies its stdout/stderr into
//	                the CRI log, waits for it and records the exit.
//	start <spec>    started by the monitor in new mount and UTS
//	                namespaces: joins the cgroups and the pod's network
//	                namespace, builds the container's root, then execs the
//	                container's program (it becomes the container).
//	enter ...       for exec: joins a container's cgroups, then execs
//	                nsenter, which joins its mount, UTS, network and
//	                cgroup namespaces (a multi-threaded Go process
//	                cannot) and execs this binary again, as
//	exec ...        which takes on the container's user, groups,
//	                capabilities and no_new_privs and execs the command.

// runMonitor is the monitor role. fd 3, when present, is the kubelet's
// status pipe: one JSON startedState is written to it.
func runMonitor(specPath string) error {
	signal.Ignore(syscall.SIGHUP, syscall.SIGINT, syscall.SIGTERM, syscall.SIGPIPE)
	var spec containerSpec
	if err := readJSON(specPath, &spec); err != nil {
		return err
	}
	status := os.NewFile(3, "status")
	report := func(st startedState) {
		if status != nil {
			_ = json.NewEncoder(status).Encode(st)
			status.Close()
			status = nil
		}
	}

	st, exit := monitor(spec, specPath, report)
	if exit == nil {
		return nil
	}
	if st.Error != "" {
		report(st)
	}
	if err := writeJSON(filepath.Join(spec.Dir, exitFile), exit, 0o644); err != nil {
		return err
	}
	return nil
}

func monitor(spec containerSpec, specPath string, report func(startedState)) (startedState, *exitState) {
	st := startedState{MonitorPID: os.Getpid()}
	st.MonitorStart, _ = procStartTime(os.Getpid())
	fail := func(reason string, err error) (startedState, *exitState) {
		st.Error = err.Error()
		return st, &exitState{ExitCode: 128, Reason: reason, Message: err.Error(), FinishedAt: time.Now()}
	}

	logf, err := os.OpenFile(spec.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return fail("StartError", fmt.Errorf("opening log: %w", err))
	}
	defer logf.Close()
	outR, outW, err := os.Pipe()
	if err != nil {
		return fail("StartError", err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		return fail("StartError", err)
	}
	initR, initW, err := os.Pipe()
	if err != nil {
		return fail("StartError", err)
	}

	cmd := exec.Command("/proc/self/exe", append(append([]string{}, spec.InitArgs...), "start", specPath)...)
	cmd.Env = []string{}
	cmd.Stdout = outW
	cmd.Stderr = errW
	cmd.ExtraFiles = []*os.File{initW}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: syscall.CLONE_NEWNS | syscall.CLONE_NEWUTS,
		// The container dies with its monitor. Pdeathsig follows the
		// forking thread, which therefore stays locked until Wait.
		Pdeathsig: syscall.SIGKILL,
	}

	type result struct {
		state *os.ProcessState
		err   error
	}
	started := make(chan error, 1)
	waited := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: see Pdeathsig above
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		err := cmd.Wait()
		waited <- result{cmd.ProcessState, err}
	}()
	err = <-started
	outW.Close()
	errW.Close()
	initW.Close()
	if err != nil {
		initR.Close()
		return fail("StartError", fmt.Errorf("starting container-init: %w", err))
	}

	logs := &criWriter{w: logf, now: time.Now}
	var copiers sync.WaitGroup
	copiers.Go(func() { _ = logs.copyStream("stdout", outR) })
	copiers.Go(func() { _ = logs.copyStream("stderr", errR) })

	// The start stage writes an error, or nothing before its exec closes
	// the pipe.
	msg, _ := io.ReadAll(initR)
	initR.Close()
	var startErr string
	if len(msg) > 0 {
		startErr = strings.TrimSpace(string(msg))
	} else {
		st.PID = cmd.Process.Pid
		st.PIDStart, _ = procStartTime(st.PID)
		st.StartedAt = time.Now()
		_ = writeJSON(filepath.Join(spec.Dir, stateFile), st, 0o644)
		report(st)
	}

	res := <-waited
	// Let the streams drain, but don't wait for processes the container
	// left behind that still hold them.
	deadline := time.Now().Add(500 * time.Millisecond)
	_ = outR.SetReadDeadline(deadline)
	_ = errR.SetReadDeadline(deadline)
	copiers.Wait()
	outR.Close()
	errR.Close()

	if startErr != "" {
		st.Error = startErr
		return st, &exitState{ExitCode: 128, Reason: "StartError", Message: startErr, FinishedAt: time.Now()}
	}
	exit := &exitState{FinishedAt: time.Now()}
	ws, _ := res.state.Sys().(syscall.WaitStatus)
	switch {
	case ws.Signaled():
		exit.Signal = int(ws.Signal())
		exit.ExitCode = 128 + exit.Signal
	default:
		exit.ExitCode = ws.ExitStatus()
	}
	exit.Reason = "Completed"
	if exit.ExitCode != 0 {
		exit.Reason = "Error"
	}
	return st, exit
}

// runStart is the start role. On success it does not return: the process
// becomes the container. Errors go to fd 3 (the monitor reads them) and
// end the process.
func runStart(specPath string) error {
	runtime.LockOSThread() // setns(CLONE_NEWNET) and credentials are per thread; exec from this one
	errPipe := os.NewFile(3, "init-error")
	unix.CloseOnExec(3)
	fail := func(err error) error {
		if errPipe != nil {
			fmt.Fprint(errPipe, err.Error())
		}
		fmt.Fprintln(os.Stderr, "container-init:", err)
		os.Exit(128)
		return err
	}
	var spec containerSpec
	if err := readJSON(specPath, &spec); err != nil {
		return fail(err)
	}
	if err := joinCgroups(spec.Cgroups); err != nil {
		return fail(err)
	}
	if spec.Security.CgroupNS {
		// After joining: the new namespace's root is the container's
		// cgroup, as runc makes it.
		if err := unix.Unshare(unix.CLONE_NEWCGROUP); err != nil {
			return fail(fmt.Errorf("a cgroup namespace of its own: %w", err))
		}
	}
	if spec.NetNS != "" {
		if err := hostos.JoinNetns(spec.NetNS); err != nil {
			return fail(err)
		}
	}
	if err := buildRoot(spec); err != nil {
		return fail(fmt.Errorf("building the container's root: %w", err))
	}
	if spec.Hostname != "" {
		if err := unix.Sethostname([]byte(spec.Hostname)); err != nil {
			return fail(fmt.Errorf("setting hostname: %w", err))
		}
	}
	if err := os.Chdir(spec.WorkingDir); err != nil {
		return fail(fmt.Errorf("working dir %s: %w", spec.WorkingDir, err))
	}
	prog, err := lookPath(spec.Argv[0], spec.Env)
	if err != nil {
		return fail(err)
	}
	if err := applyCredentials(spec.Security); err != nil {
		return fail(err)
	}
	err = unix.Exec(prog, spec.Argv, spec.Env)
	return fail(fmt.Errorf("exec %s: %w", spec.Argv[0], err))
}

// enterSpec is what the enter role needs to run a command in a running
// container (exec).
type enterSpec struct {
	// PID is the container's process, whose namespaces, root and
	// working directory the command gets.
	PID int `json:"pid"`
	// Cgroups are the container's cgroup directories, joined first.
	Cgroups []string `json:"cgroups"`
	// Nsenter is util-linux's nsenter on the host.
	Nsenter string `json:"nsenter"`
	// InitArgs reach the container-init command (Config.InitArgs).
	InitArgs []string `json:"initArgs"`
	// Security is the container's: the command gets its user, groups,
	// capabilities, no_new_privs and cgroup namespace, as a runtime's
	// exec does.
	Security securitySpec `json:"security"`
}

// runEnter is the enter role: join the container's cgroups, then exec
// nsenter, which joins its mount, UTS and network namespaces (and its
// cgroup namespace, if it has its own), its root and working directory,
// and execs this same binary in the exec role, which takes on the
// container's credentials and execs argv. This binary is handed over as
// an open file (/proc/self/fd/N): inside the container's root it has no
// path.
func runEnter(specJSON string, argv []string) error {
	if len(argv) == 0 {
		return errors.New("enter: no command")
	}
	var spec enterSpec
	if err := json.Unmarshal([]byte(specJSON), &spec); err != nil {
		return fmt.Errorf("enter: parsing the spec: %w", err)
	}
	if err := joinCgroups(spec.Cgroups); err != nil {
		return err
	}
	self, err := unix.Open("/proc/self/exe", unix.O_RDONLY, 0) // inherited by nsenter and its exec
	if err != nil {
		return fmt.Errorf("enter: opening this binary: %w", err)
	}
	sec, err := json.Marshal(spec.Security)
	if err != nil {
		return err
	}
	args := []string{spec.Nsenter, "--target", strconv.Itoa(spec.PID), "--mount", "--uts", "--net"}
	if spec.Security.CgroupNS {
		args = append(args, "--cgroup")
	}
	// --root and --wd without a value take the container's root and
	// working directory (nsenter would open a path given here in the
	// kubelet's root, before entering).
	args = append(args, "--root", "--wd", "--", "/proc/self/fd/"+strconv.Itoa(self))
	args = append(args, spec.InitArgs...)
	args = append(args, "exec", "--security", string(sec), "--")
	args = append(args, argv...)
	return unix.Exec(spec.Nsenter, args, os.Environ())
}

// runExec is the exec role, inside the container's namespaces and root:
// close every inherited file but the standard ones at exec, take on the
// container's credentials and exec argv, found in the PATH of the
// environment.
func runExec(secJSON string, argv []string) error {
	runtime.LockOSThread() // credentials are per thread; exec from this one
	if len(argv) == 0 {
		return errors.New("exec: no command")
	}
	var sec securitySpec
	if err := json.Unmarshal([]byte(secJSON), &sec); err != nil {
		return fmt.Errorf("exec: parsing the security spec: %w", err)
	}
	if err := unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC); err != nil {
		return fmt.Errorf("exec: %w", err)
	}
	prog, err := lookPath(argv[0], os.Environ())
	if err != nil {
		return err
	}
	if err := applyCredentials(sec); err != nil {
		return err
	}
	return fmt.Errorf("exec %s: %w", argv[0], unix.Exec(prog, argv, os.Environ()))
}

func joinCgroups(dirs []string) error {
	for _, d := range dirs {
		if err := os.WriteFile(filepath.Join(d, "cgroup.procs"), []byte("0"), 0); err != nil {
			return fmt.Errorf("joining cgroup %s: %w", d, err)
		}
	}
	return nil
}

// lookPath finds name in the PATH of env, inside the container's root.
func lookPath(name string, env []string) (string, error) {
	if strings.Contains(name, "/") {
		return name, nil
	}
	p := defaultPath
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			p = v
		}
	}
	for _, dir := range filepath.SplitList(p) {
		if dir == "" {
			dir = "."
		}
		f := filepath.Join(dir, name)
		if fi, err := os.Stat(f); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return f, nil
		}
	}
	return "", fmt.Errorf("executable %q not found in $PATH (%s)", name, p)
}

const oldRoot = "/.oldroot"

// buildRoot makes the container's root: a tmpfs on spec.RootDir becomes
// "/" (pivot_root), and the mounts are made with sources from the old root,
// which is then detached. Mounts are slaves of the node's, so mounts made
// later under a hostPath (e.g. new network namespaces in /var/run/netns)
// appear in the container, and nothing leaks back.
func buildRoot(spec containerSpec) error {
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_SLAVE, ""); err != nil {
		return fmt.Errorf("making / a slave: %w", err)
	}
	if err := unix.Mount("tmpfs", spec.RootDir, "tmpfs", unix.MS_NOSUID, "mode=755"); err != nil {
		return fmt.Errorf("mounting the root tmpfs on %s: %w", spec.RootDir, err)
	}
	if err := os.Mkdir(filepath.Join(spec.RootDir, oldRoot), 0o700); err != nil {
		return err
	}
	if err := unix.PivotRoot(spec.RootDir, filepath.Join(spec.RootDir, oldRoot)); err != nil {
		return fmt.Errorf("pivot_root: %w", err)
	}
	if err := os.Chdir("/"); err != nil {
		return err
	}
	// The working directory is made before anything turns read-only.
	b := rootBuilder{workDir: spec.WorkingDir}
	for i, m := range spec.Mounts {
		if err := b.apply(i, m); err != nil {
			return fmt.Errorf("%s %s: %w", m.Kind, m.Target, err)
		}
	}
	if err := b.ensureWorkDir(); err != nil {
		return err
	}
	if err := unix.Unmount(oldRoot, unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detaching the old root: %w", err)
	}
	if err := os.Remove(oldRoot); err != nil {
		return err
	}
	if spec.Security.ReadOnlyRoot {
		if err := remountReadOnly("/"); err != nil {
			return fmt.Errorf("making the root read-only: %w", err)
		}
	}
	return nil
}

// rootBuilder applies mounts and refuses to create mount points inside
// what belongs to the host (a bind of a host directory, /proc, /sys):
// those must exist already.
type rootBuilder struct {
	hostOwned []string
	// workDir is made (once) before the first mount that makes a part
	// of the root read-only.
	workDir     string
	workDirDone bool
}

// ensureWorkDir makes the working directory if it is missing, once.
func (b *rootBuilder) ensureWorkDir() error {
	if b.workDirDone || b.workDir == "" {
		return nil
	}
	b.workDirDone = true
	if err := os.MkdirAll(b.workDir, 0o755); err != nil {
		return fmt.Errorf("working dir %s: %w", b.workDir, err)
	}
	return nil
}

// remountReadOnly makes the mount at target read-only, keeping its
// nosuid, nodev and noexec.
func remountReadOnly(target string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(target, &st); err != nil {
		return err
	}
	flags := uintptr(unix.MS_BIND | unix.MS_REMOUNT | unix.MS_RDONLY)
	for _, f := range []struct{ st, ms uintptr }{
		{unix.ST_NOSUID, unix.MS_NOSUID}, {unix.ST_NODEV, unix.MS_NODEV}, {unix.ST_NOEXEC, unix.MS_NOEXEC},
	} {
		if uintptr(st.Flags)&f.st != 0 {
			flags |= f.ms
		}
	}
	return unix.Mount("", target, "", flags, "")
}

func (b *rootBuilder) apply(i int, m mountSpec) error {
	target := path.Clean(m.Target)
	switch m.Kind {
	case mountSymlink:
		if err := b.ensureParent(target); err != nil {
			return err
		}
		return os.Symlink(m.Source, target)
	case mountTmpfs:
		if err := b.ensure(target, false); err != nil {
			return err
		}
		return unix.Mount("tmpfs", target, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=1777")
	case mountProc:
		if err := b.ensure(target, false); err != nil {
			return err
		}
		if err := unix.Mount("proc", target, "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
			if err := unix.Mount(oldRoot+"/proc", target, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
				return err
			}
		}
		b.hostOwned = append(b.hostOwned, target)
		return nil
	case mountSysfs:
		if err := b.ensure(target, false); err != nil {
			return err
		}
		flags := uintptr(unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC)
		if m.ReadOnly {
			flags |= unix.MS_RDONLY
		}
		if err := unix.Mount("sysfs", target, "sysfs", flags, ""); err != nil {
			if err := unix.Mount(oldRoot+"/sys", target, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
				return err
			}
			if m.ReadOnly {
				if err := remountReadOnly(target); err != nil {
					return err
				}
			}
		}
		b.hostOwned = append(b.hostOwned, target)
		return nil
	case mountCgroup2:
		// Mounted from the container's cgroup namespace, a cgroup2
		// filesystem shows that namespace's root: the container's cgroup.
		if err := b.ensure(target, false); err != nil {
			return err
		}
		flags := uintptr(unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC)
		if m.ReadOnly {
			flags |= unix.MS_RDONLY
		}
		if err := unix.Mount("cgroup2", target, "cgroup2", flags, ""); err != nil {
			return err
		}
		b.hostOwned = append(b.hostOwned, target)
		return nil
	case mountReadOnly:
		if err := b.ensureWorkDir(); err != nil {
			return err
		}
		if _, err := os.Lstat(target); err != nil {
			if m.Optional && errors.Is(err, os.ErrNotExist) {
				return nil
			}
			return err
		}
		if err := unix.Mount(target, target, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return err
		}
		return remountReadOnly(target)
	case mountMask:
		fi, err := os.Stat(target)
		if err != nil {
			if m.Optional && errors.Is(err, os.ErrNotExist) {
				return nil
			}
			return err
		}
		if fi.IsDir() {
			return unix.Mount("tmpfs", target, "tmpfs", unix.MS_RDONLY, "")
		}
		return unix.Mount("/dev/null", target, "", unix.MS_BIND, "")
	case mountOverlay:
		src := oldRoot + m.Source
		if err := b.ensure(target, false); err != nil {
			return err
		}
		layers := fmt.Sprintf("/.cairn/overlay%d", i)
		upper, work := layers+"/upper", layers+"/work"
		if err := os.MkdirAll(upper, 0o755); err != nil {
			return err
		}
		if err := os.MkdirAll(work, 0o755); err != nil {
			return err
		}
		opts := "lowerdir=" + src + ",upperdir=" + upper + ",workdir=" + work
		if err := unix.Mount("overlay", target, "overlay", 0, opts); err == nil {
			return nil
		}
		// No overlayfs: the host's directory, read-only.
		if err := unix.Mount(src, target, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return err
		}
		b.hostOwned = append(b.hostOwned, target)
		return unix.Mount("", target, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, "")
	case mountBind, mountRBind:
		src := oldRoot + m.Source
		fi, err := os.Stat(src)
		if err != nil {
			if m.Optional {
				return nil
			}
			return fmt.Errorf("source: %w", err)
		}
		if err := b.ensure(target, !fi.IsDir()); err != nil {
			return err
		}
		flags := uintptr(unix.MS_BIND)
		if m.Kind == mountRBind {
			flags |= unix.MS_REC
		}
		if err := unix.Mount(src, target, "", flags, ""); err != nil {
			return err
		}
		if fi.IsDir() && !m.Owned {
			b.hostOwned = append(b.hostOwned, target)
		}
		if m.ReadOnly {
			return unix.Mount("", target, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, "")
		}
		return nil
	}
	return fmt.Errorf("unknown mount kind %q", m.Kind)
}

func (b *rootBuilder) ensureParent(target string) error {
	return b.ensure(path.Dir(target), false)
}

// ensure creates target (a directory, or an empty file) unless it exists,
// refusing to create anything inside host-owned mounts.
func (b *rootBuilder) ensure(target string, file bool) error {
	if _, err := os.Stat(target); err == nil {
		return nil
	}
	// The deepest existing ancestor decides where we would write.
	anc := target
	for {
		anc = path.Dir(anc)
		if _, err := os.Stat(anc); err == nil || anc == "/" {
			break
		}
	}
	real, err := filepath.EvalSymlinks(anc)
	if err != nil {
		real = anc
	}
	for _, h := range b.hostOwned {
		if real == h || strings.HasPrefix(real, h+"/") {
			return fmt.Errorf("mount point %s does not exist, and %s is the host's: it cannot be created there", target, h)
		}
	}
	if !file {
		return os.MkdirAll(target, 0o755)
	}
	if err := os.MkdirAll(path.Dir(target), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(target, os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	return f.Close()
}
