package kubelet

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// containerSpec is everything the container-init shim needs to run one
// instance of a container. The kubelet writes it as spec.json into the
// instance's directory; the monitor and the start stage read it from
// there. It holds no Kubernetes types: by the time it is written, every
// decision (argv, env, mounts, cgroups, namespace) has been made.
type containerSpec struct {
	ID           string `json:"id"`
	PodUID       string `json:"podUID"`
	Namespace    string `json:"namespace"`
	Pod          string `json:"pod"`
	Container    string `json:"container"`
	RestartCount int    `json:"restartCount"`

	// Argv[0] is a path inside the container, or a bare name looked up
	// in the PATH of Env once the container's root is in place.
	Argv       []string `json:"argv"`
	Env        []string `json:"env"`
	WorkingDir string   `json:"workingDir"`
	Hostname   string   `json:"hostname"`

	// NetNS is the network namespace to join; empty keeps the monitor's
	// (the node's, for hostNetwork pods).
	NetNS string `json:"netns,omitempty"`
	// Cgroups are the cgroup directories (one per hierarchy) the
	// container joins before anything else.
	Cgroups []string `json:"cgroups"`
	// RootDir is an empty directory under the lab dir on which the
	// container's root (a tmpfs) is mounted inside its own mount
	// namespace; nothing is ever mounted there in the node's.
	RootDir string `json:"rootDir"`
	// Mounts are applied in order inside the new root.
	Mounts []mountSpec `json:"mounts"`

	// LogPath is the CRI-format log file the monitor appends to.
	LogPath string `json:"logPath"`
	// Dir is the instance's directory (spec.json, state.json, exit.json).
	Dir string `json:"dir"`
	// InitArgs are the arguments after /proc/self/exe that reach the
	// container-init command (Config.InitArgs).
	InitArgs []string `json:"initArgs"`
	// Security is what the runtime enforces for the container's process
	// and for exec (securityOf).
	Security securitySpec `json:"security"`
}

// Mount kinds.
const (
	mountBind    = "bind"    // bind Source (a host path) on Target
	mountRBind   = "rbind"   // recursive bind, sub-mounts included
	mountTmpfs   = "tmpfs"   // a fresh tmpfs
	mountProc    = "proc"    // a fresh procfs
	mountSysfs   = "sysfs"   // a fresh sysfs (shows the container's network namespace)
	mountSymlink = "symlink" // Target becomes a symlink to Source
	mountOverlay = "overlay" // Source (host dir) as the lower layer, a tmpfs upper layer
	mountCgroup2 = "cgroup2" // a fresh cgroup2 mount: the container's cgroup namespace's root
	// mountReadOnly makes what is at Target read-only (a bind of it on
	// itself, remounted read-only), as runc does for readonlyPaths.
	mountReadOnly = "readonly"
	// mountMask hides Target: an empty read-only tmpfs on a directory,
	// /dev/null on a file, as runc does for maskedPaths.
	mountMask = "mask"
)

// mountSpec is one step of building a container's root. Source is a host
// path (or the link text for symlinks); Target is a path in the container.
type mountSpec struct {
	Kind     string `json:"kind"`
	Source   string `json:"source,omitempty"`
	Target   string `json:"target"`
	ReadOnly bool   `json:"readOnly,omitempty"`
	// File says the target is a file (created empty if missing) rather
	// than a directory.
	File bool `json:"file,omitempty"`
	// Optional mounts are skipped when their source is missing.
	Optional bool `json:"optional,omitempty"`
	// Owned says the kubelet made the source (a volume under the lab
	// dir), so mount points of later mounts may be created inside it. Any
	// other bound directory is the host's and is never written to.
	Owned bool `json:"owned,omitempty"`
}

// startedState is what the monitor records once the container process
// runs (state.json), and sends to the kubelet on its status pipe.
type startedState struct {
	MonitorPID   int       `json:"monitorPID"`
	MonitorStart uint64    `json:"monitorStart"`
	PID          int       `json:"pid"`
	PIDStart     uint64    `json:"pidStart"`
	StartedAt    time.Time `json:"startedAt"`
	Error        string    `json:"error,omitempty"`
}

// exitState is what the monitor records when the container has exited
// (exit.json).
type exitState struct {
	ExitCode   int       `json:"exitCode"`
	Signal     int       `json:"signal,omitempty"`
	Reason     string    `json:"reason"`
	Message    string    `json:"message,omitempty"`
	FinishedAt time.Time `json:"finishedAt"`
}

// File names inside an instance directory.
const (
	specFile    = "spec.json"
	stateFile   = "state.json"
	exitFile    = "exit.json"
	monitorLog  = "monitor.log"
	rootDirName = "rootfs"
)

func readJSON(path string, v any) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("parsing %s: %w", path, err)
	}
	return nil
}

// writeJSON writes v to path atomically (temporary file, then rename).
func writeJSON(path string, v any, mode os.FileMode) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(path, data, mode)
}

func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	_, werr := tmp.Write(data)
	cerr := tmp.Close()
	if err := firstErr(werr, cerr, os.Chmod(tmp.Name(), mode)); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

func firstErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}
