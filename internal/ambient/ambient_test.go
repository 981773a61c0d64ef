package ambient

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestEnrolled(t *testing.T) {
	ambientNS := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{DataplaneModeLabel: DataplaneModeAmbient}}}
	plainNS := &corev1.Namespace{}
	pod := func(label string, hostNetwork bool) *corev1.Pod {
		p := &corev1.Pod{Spec: corev1.PodSpec{HostNetwork: hostNetwork}}
		if label != "" {
			p.Labels = map[string]string{DataplaneModeLabel: label}
		}
		return p
	}
	for _, tc := range []struct {
		name string
		pod  *corev1.Pod
		ns   *corev1.Namespace
		want bool
	}{
		{"namespace enrolled", pod("", false), ambientNS, true},
		{"namespace not enrolled", pod("", false), plainNS, false},
		{"namespace unknown", pod("", false), nil, false},
		{"pod opts in", pod(DataplaneModeAmbient, false), plainNS, true},
		{"pod opts out", pod(DataplaneModeNone, false), ambientNS, false},
		{"host network never", pod(DataplaneModeAmbient, true), ambientNS, false},
		{"other value follows namespace", pod("sidecar", false), ambientNS, true},
	} {
		if got := Enrolled(tc.pod, tc.ns); got != tc.want {
			t.Errorf("%s: Enrolled = %v, want %v", tc.name, got, tc.want)
		}
	}
}
