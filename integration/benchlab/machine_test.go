package benchlab

import (
	"fmt"
	"net"
	"os"
	"strings"
)

// machineNote says how busy the machine is: its load average and the
// other labs whose bridges are up (CI's cairnt, a developer's cairn),
// since figures taken next to them are noisy.
func machineNote() string {
	load := "?"
	if data, err := os.ReadFile("/proc/loadavg"); err == nil {
		if f := strings.Fields(string(data)); len(f) >= 3 {
			load = strings.Join(f[:3], " ")
		}
	}
	var others []string
	ifs, _ := net.Interfaces()
	for _, i := range ifs {
		if strings.HasSuffix(i.Name, "lab0") && i.Name != cfg.BridgeName() {
			others = append(others, i.Name)
		}
	}
	labs := "none"
	if len(others) > 0 {
		labs = strings.Join(others, " ")
	}
	return fmt.Sprintf("load average %s, other labs up: %s", load, labs)
}
