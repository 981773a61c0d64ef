package hostos

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestUnescapeMountPath(t *testing.T) {
	for in, want := range map[string]string{
		`/plain/path`:           "/plain/path",
		`/with\040space`:        "/with space",
		`/tab\011and\012nl`:     "/tab\tand\nnl",
		`/back\134slash`:        `/back\slash`,
		`/not\08escape`:         `/not\08escape`,
		`/trailing\04`:          `/trailing\04`,
		`/two\040sp\040aces\\x`: `/two sp aces\\x`,
	} {
		if got := UnescapeMountPath(in); got != want {
			t.Errorf("UnescapeMountPath(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestCgroupPIDsWalksTheTree(t *testing.T) {
	root := t.TempDir()
	for dir, procs := range map[string]string{
		"":          "1\n",
		"pod1":      "10\n11\n",
		"pod1/ctr1": "12\n",
		"pod2":      "",
	} {
		d := filepath.Join(root, dir)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "cgroup.procs"), []byte(procs), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got := CgroupPIDs(filepath.Join(root, "pod1"), filepath.Join(root, "gone"))
	slices.Sort(got)
	if !slices.Equal(got, []int{10, 11, 12}) {
		t.Errorf("CgroupPIDs = %v, want [10 11 12]", got)
	}
}
