package kubelet

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"time"
)

// podRecord is the kubelet's on-disk state of one pod
// (<NodeRoot>/var/lib/cairn-kubelet/pods/<uid>/pod.json): what a new
// kubelet needs to adopt the pod or clean it up.
type podRecord struct {
	UID         string    `json:"uid"`
	Namespace   string    `json:"namespace"`
	Name        string    `json:"name"`
	HostNetwork bool      `json:"hostNetwork"`
	SandboxID   string    `json:"sandboxID"`
	NetNS       string    `json:"netns,omitempty"`
	IPs         []string  `json:"ips,omitempty"`
	Cgroups     []string  `json:"cgroups,omitempty"`
	StartTime   time.Time `json:"startTime"`
	// SandboxReady: netns, CNI and cgroups are in place.
	SandboxReady bool `json:"sandboxReady"`
	// Rejected: admission failed; the pod never runs.
	Rejected *waiting `json:"rejected,omitempty"`
	// Finished: every container stopped for good and the sandbox is
	// gone; only logs and status remain.
	Finished bool `json:"finished,omitempty"`
	// Failed: an init container failed under restartPolicy Never.
	Failed bool `json:"failed,omitempty"`
	// Containers holds the last two instances of each container (init
	// and main), oldest first.
	Containers map[string][]*instanceRecord `json:"containers"`
	// Crashes counts consecutive exits per container for the back-off.
	Crashes map[string]int `json:"crashes,omitempty"`
}

// instanceRecord is one run of a container.
type instanceRecord struct {
	ID           string        `json:"id"`
	Name         string        `json:"name"`
	RestartCount int           `json:"restartCount"`
	Dir          string        `json:"dir"`
	LogPath      string        `json:"logPath"`
	Cgroups      []string      `json:"cgroups"`
	Binary       string        `json:"binary"`
	CreatedAt    time.Time     `json:"createdAt"`
	Started      *startedState `json:"started,omitempty"`
	Exit         *exitState    `json:"exit,omitempty"`
}

func (r *instanceRecord) info() *instanceInfo {
	if r == nil {
		return nil
	}
	in := &instanceInfo{ID: r.ID, RestartCount: r.RestartCount, Exit: r.Exit}
	if r.Started != nil {
		in.StartedAt = r.Started.StartedAt
	}
	return in
}

// cgroupBasesFile (in the state dir) lists the cgroup parents of the
// node's pods, for Cleanup.
const cgroupBasesFile = "cgroups.json"

func (c Config) podStateDir(uid string) string { return filepath.Join(c.stateDir(), "pods", uid) }

func (c Config) saveRecord(rec *podRecord) error {
	return writeJSON(filepath.Join(c.podStateDir(rec.UID), "pod.json"), rec, 0o600)
}

// loadRecords reads every pod record on disk.
func (c Config) loadRecords() (map[string]*podRecord, error) {
	dir := filepath.Join(c.stateDir(), "pods")
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return map[string]*podRecord{}, nil
	}
	if err != nil {
		return nil, err
	}
	out := map[string]*podRecord{}
	for _, e := range entries {
		var rec podRecord
		if err := readJSON(filepath.Join(dir, e.Name(), "pod.json"), &rec); err != nil {
			// A pod whose record never got written has nothing to adopt,
			// but may have left a directory: keep its UID for clean-up.
			rec = podRecord{UID: e.Name()}
		}
		if rec.Containers == nil {
			rec.Containers = map[string][]*instanceRecord{}
		}
		if rec.Crashes == nil {
			rec.Crashes = map[string]int{}
		}
		out[rec.UID] = &rec
	}
	return out, nil
}

// newID returns a random container or sandbox ID (64 hex digits, as
// container runtimes use).
func newID() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
