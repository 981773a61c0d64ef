package enroll

import (
	"testing"
)

// BenchmarkProcessScan is one scan of the node's /proc for a pod's
// processes: what Find costs per pod found running.
func BenchmarkProcessScan(b *testing.B) {
	f := NetnsFinder{ProcDir: "/proc", NetnsDir: "/var/run/netns"}
	for b.Loop() {
		if _, err := f.processes(victimUID); err != nil {
			b.Fatal(err)
		}
	}
}
