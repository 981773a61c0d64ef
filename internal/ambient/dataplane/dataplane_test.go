package dataplane

import "testing"

func TestEnrolled(t *testing.T) {
	ambientNS := map[string]string{ModeLabel: ModeAmbient}
	plainNS := map[string]string{}
	pod := func(label string) map[string]string {
		if label == "" {
			return nil
		}
		return map[string]string{ModeLabel: label}
	}
	for _, tc := range []struct {
		name        string
		pod         map[string]string
		hostNetwork bool
		ns          map[string]string
		want        bool
	}{
		{"namespace enrolled", pod(""), false, ambientNS, true},
		{"namespace not enrolled", pod(""), false, plainNS, false},
		{"namespace unknown", pod(""), false, nil, false},
		{"pod opts in", pod(ModeAmbient), false, plainNS, true},
		{"pod opts in, namespace unknown", pod(ModeAmbient), false, nil, true},
		{"pod opts out", pod(ModeNone), false, ambientNS, false},
		{"host network never", pod(ModeAmbient), true, ambientNS, false},
		{"other value follows namespace", pod("sidecar"), false, ambientNS, true},
	} {
		if got := Enrolled(tc.pod, tc.hostNetwork, tc.ns); got != tc.want {
			t.Errorf("%s: Enrolled = %v, want %v", tc.name, got, tc.want)
		}
	}
}
