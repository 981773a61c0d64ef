package lab

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Phases of a lab, as the supervisor records them.
const (
	PhaseStarting = "starting" // the supervisor is starting the control plane and nodes
	PhaseRunning  = "running"  // every process started; the cluster may still be settling
	PhaseFailed   = "failed"   // start-up failed; see Error and the supervisor's log
	PhaseStopping = "stopping"
	PhaseStopped  = "stopped"
)

// State is what the supervisor writes to <Dir>/state.json whenever it
// starts or restarts a process: enough for `lab status` and for `lab down`
// to find every process even when the supervisor is gone.
type State struct {
	Phase      string    `json:"phase"`
	Error      string    `json:"error,omitempty"`
	Supervisor Proc      `json:"supervisor"`
	Processes  []Proc    `json:"processes,omitempty"`
	APIServer  string    `json:"apiServer,omitempty"`
	Cgroups    []string  `json:"cgroups,omitempty"` // the lab's cgroup in each hierarchy; the pods' are below
	Updated    time.Time `json:"updated"`
}

// Proc is one process of the lab.
type Proc struct {
	Name     string `json:"name"`           // e.g. kube-apiserver, kubelet
	Node     string `json:"node,omitempty"` // for per-node processes
	PID      int    `json:"pid"`
	Started  uint64 `json:"started"` // start time in clock ticks after boot (/proc/<pid>/stat), against PID reuse
	Restarts int    `json:"restarts,omitempty"`
	Log      string `json:"log,omitempty"`
}

func (c Config) statePath() string { return filepath.Join(c.Dir, stateFileName) }

// ReadState reads the state file; a missing file gives an error wrapping
// os.ErrNotExist.
func ReadState(c Config) (State, error) {
	var s State
	data, err := os.ReadFile(c.statePath())
	if err != nil {
		return s, fmt.Errorf("reading lab state: %w", err)
	}
	if err := json.Unmarshal(data, &s); err != nil {
		return s, fmt.Errorf("reading lab state %s: %w", c.statePath(), err)
	}
	return s, nil
}

// writeState replaces the state file atomically.
func writeState(c Config, s State) error {
	s.Updated = time.Now()
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	tmp := c.statePath() + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return fmt.Errorf("writing lab state: %w", err)
	}
	if err := os.Rename(tmp, c.statePath()); err != nil {
		return fmt.Errorf("writing lab state: %w", err)
	}
	return nil
}

// newProc describes a running process.
func newProc(name, node string, pid int, log string) Proc {
	st, _ := procStartTime(pid)
	return Proc{Name: name, Node: node, PID: pid, Started: st, Log: log}
}

// Alive reports whether the process still runs (and is the same process,
// not a new one that got its PID).
func (p Proc) Alive() bool {
	if p.PID <= 0 {
		return false
	}
	st, err := procStartTime(p.PID)
	if err != nil {
		return false
	}
	if p.Started != 0 && st != p.Started {
		return false
	}
	state, _ := procState(p.PID)
	return state != "Z"
}

// procStartTime returns field 22 of /proc/<pid>/stat, the process's start
// time in clock ticks after boot.
func procStartTime(pid int) (uint64, error) {
	f, err := procStatFields(pid)
	if err != nil {
		return 0, err
	}
	if len(f) < 20 {
		return 0, fmt.Errorf("short /proc/%d/stat", pid)
	}
	return strconv.ParseUint(f[19], 10, 64)
}

func procState(pid int) (string, error) {
	f, err := procStatFields(pid)
	if err != nil {
		return "", err
	}
	return f[0], nil
}

// procStatFields returns the fields of /proc/<pid>/stat after the command
// name (which may contain spaces), starting with the state.
func procStatFields(pid int) ([]string, error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil, err
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return nil, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) == 0 {
		return nil, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	return f, nil
}

// killAndWait sends sig to each process still alive, then waits up to
// timeout for all of them to go. It returns those still alive.
func killAndWait(procs []Proc, sig unix.Signal, timeout time.Duration) []Proc {
	var alive []Proc
	for _, p := range procs {
		if p.Alive() {
			_ = unix.Kill(p.PID, sig)
			alive = append(alive, p)
		}
	}
	deadline := time.Now().Add(timeout)
	for len(alive) > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
		for _, p := range alive {
			// Reap it if it is our child (the supervisor, when the lab
			// was started by this process); ECHILD otherwise.
			_, _ = unix.Wait4(p.PID, nil, unix.WNOHANG, nil)
		}
		alive = slices.DeleteFunc(alive, func(p Proc) bool { return !p.Alive() })
	}
	return alive
}
