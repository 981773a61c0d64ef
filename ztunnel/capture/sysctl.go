package capture

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// DefaultSysctlDir is the directory of network sysctls where the process
// runs on the node itself. ztunnel's DaemonSet mounts the node's
// /proc/sys/net (a hostPath volume) instead, at /host/proc-sys-net: a
// container that is not privileged has /proc/sys read-only, as runc
// mounts it.
const DefaultSysctlDir = "/proc/sys/net"

// Sysctls writes the network sysctls of pods' namespaces. Network
// sysctls are per network namespace, and a file under /proc/sys/net
// stands for the namespace of the thread that opens it, whichever proc
// mount it is reached through: opened from a thread inside a pod's
// namespace (netns.Handle.Do), a file of the node's /proc/sys/net sets
// the pod's value. The zero value writes through DefaultSysctlDir.
type Sysctls struct {
	// Dir is the node's /proc/sys/net as mounted (writable).
	Dir string
}

// Set writes value to the sysctl key, a path below net/ such as
// "netfilter/nf_conntrack_tcp_loose", of the calling thread's network
// namespace. Run it inside netns.Handle.Do. A key the kernel does not
// have (its module is not loaded) is an error that wraps fs.ErrNotExist.
func (s Sysctls) Set(key, value string) error {
	if key == "" || strings.Contains(key, "..") || filepath.IsAbs(key) {
		return fmt.Errorf("sysctl net/%s: not a key below net/", key)
	}
	p := filepath.Join(s.dir(), key)
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("setting net/%s to %s (through %s): %w", key, value, s.dir(), err)
	}
	_, werr := f.WriteString(value)
	cerr := f.Close()
	if err := errors.Join(werr, cerr); err != nil {
		return fmt.Errorf("setting net/%s to %s (through %s): %w", key, value, s.dir(), err)
	}
	return nil
}

// Get reads the sysctl key of the calling thread's network namespace.
func (s Sysctls) Get(key string) (string, error) {
	data, err := os.ReadFile(filepath.Join(s.dir(), key))
	if err != nil {
		return "", fmt.Errorf("reading net/%s (through %s): %w", key, s.dir(), err)
	}
	return strings.TrimSpace(string(data)), nil
}

func (s Sysctls) dir() string {
	if s.Dir == "" {
		return DefaultSysctlDir
	}
	return s.Dir
}
