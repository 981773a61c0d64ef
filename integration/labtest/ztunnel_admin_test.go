package labtest

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// ztunnelGet fetches path from a ztunnel's own ports (admin on
// 127.0.0.1:15000, metrics on 15020, readiness on 15021), from inside
// the ztunnel's pod.
func ztunnelGet(t *testing.T, p corev1.Pod, port int, path string) (string, error) {
	t.Helper()
	return execIn(t, p.Namespace, p.Name, "curl", "-sS", "--max-time", "5", fmt.Sprintf("http://127.0.0.1:%d%s", port, path))
}

// ztunnelDump decodes one section of a ztunnel's /config_dump into out.
func ztunnelDump(t *testing.T, p corev1.Pod, section string, out any) error {
	t.Helper()
	body, err := ztunnelGet(t, p, 15000, "/config_dump?section="+section)
	if err != nil {
		return err
	}
	var dump map[string]json.RawMessage
	if err := json.Unmarshal([]byte(body), &dump); err != nil {
		return fmt.Errorf("decoding the config dump of %s: %w", p.Name, err)
	}
	return json.Unmarshal(dump[section], out)
}

// ztunnelMetric returns the value of a metric without labels that a
// ztunnel exports.
func ztunnelMetric(t *testing.T, p corev1.Pod, name string) (float64, error) {
	t.Helper()
	body, err := ztunnelGet(t, p, 15020, "/metrics")
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(body) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), name+" "); ok {
			return strconv.ParseFloat(v, 64)
		}
	}
	return 0, fmt.Errorf("%s exports no %s", p.Name, name)
}
