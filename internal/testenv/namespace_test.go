package testenv

import (
	"regexp"
	"strings"
	"testing"
)

func TestNamespaceName(t *testing.T) {
	label := regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	for _, name := range []string{
		"TestPodStatus",
		"TestHTTPRoute/invalid_path_type",
		"Test__weird--Name__",
		"/",
		strings.Repeat("TestVeryLongName", 10),
	} {
		got := namespaceName(name)
		if len(got) > 63 || !label.MatchString(got) {
			t.Errorf("namespaceName(%q) = %q, not a DNS label", name, got)
		}
	}
	if got := namespaceName("TestHTTPRoute/invalid_path_type"); !strings.HasPrefix(got, "testhttproute-invalid-path-type-") {
		t.Errorf("got %q", got)
	}
	if first, second := namespaceName("TestX"), namespaceName("TestX"); first == second {
		t.Error("two namespaces for the same test got the same name")
	}
}
