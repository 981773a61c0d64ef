package nodepath

import "testing"

func TestPaths(t *testing.T) {
	lab := map[string]string{RootAnnotation: "/tmp/lab/nodes/node-1/root"}
	for _, tc := range []struct {
		name string
		got  string
		want string
	}{
		{"real node", OnNode(nil, "/var/run/cairn/cni.sock"), "/var/run/cairn/cni.sock"},
		{"root annotation /", OnNode(map[string]string{RootAnnotation: "/"}, "/var/run/x"), "/var/run/x"},
		{"lab node", OnNode(lab, "/var/run/cairn/cni.sock"), "/tmp/lab/nodes/node-1/root/var/run/cairn/cni.sock"},
		{"netns in pod, real", InPod(nil, "/var/run/netns", "/host/netns", "/var/run/netns/cni-1"), "/host/netns/cni-1"},
		{"netns in pod, lab", InPod(lab, "/var/run/netns", "/host/netns", "/tmp/lab/nodes/node-1/root/var/run/netns/cni-1"), "/host/netns/cni-1"},
		{"outside the mount", InPod(lab, "/var/run/netns", "/host/netns", "/var/run/netns/cni-1"), ""},
		{"a sibling with the same prefix", InPod(nil, "/var/run/netns", "/host/netns", "/var/run/netns2/x"), ""},
	} {
		if tc.got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, tc.got, tc.want)
		}
	}
}
