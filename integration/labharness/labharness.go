// Package labharness holds what the lab's test suites (integration/labtest
// and the benchmarks of integration/benchlab) share: building the binaries
// the lab runs from the checkout, and waiting for pods. Only tests import
// it.
package labharness

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
)

// BuildBinaries builds the lab command into labBin, and the echo server,
// istiod-lite, ztunnel and cairn-cni into <repo>/bin, where the lab's
// images cairn/<name> find them, so that a suite runs the checkout. They
// are built as `make build` builds them (no cgo, -trimpath, the
// grpcnotrace tag), so that a suite started by make test reuses the
// packages compiled for bin/ rather than compiling them again.
func BuildBinaries(repo, labBin string) error {
	bin := filepath.Join(repo, "bin") + "/"
	for _, b := range []struct{ out, pkg string }{
		{labBin + "/", "./integration/cmd/lab"},
		{bin, "./integration/apps/echo/cmd/echoserver"},
		{bin, "./istiod-lite/cmd/istiod-lite"},
		{bin, "./ztunnel/cmd/ztunnel"},
		{bin, "./ztunnel/cmd/cairn-cni"},
	} {
		cmd := exec.Command("go", "build", "-trimpath", "-tags", "grpcnotrace", "-o", b.out, b.pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		cmd.Dir = repo
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build %s: %w\n%s", b.pkg, err, out)
		}
	}
	return nil
}

// WaitPods waits up to timeout until n pods match selector in ns and all
// are Ready, and returns them. The error describes the pods as last seen.
func WaitPods(ctx context.Context, c kubernetes.Interface, ns, selector string, n int, timeout time.Duration) ([]corev1.Pod, error) {
	var pods []corev1.Pod
	var last string
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		list, err := c.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
		if err != nil {
			return false, nil // the API server may be busy; poll again
		}
		pods = list.Items
		var ready int
		var states []string
		for i := range pods {
			if PodReady(&pods[i]) && pods[i].DeletionTimestamp == nil {
				ready++
			}
			states = append(states, PodSummary(&pods[i]))
		}
		last = strings.Join(states, "; ")
		return len(pods) == n && ready == n, nil
	})
	if err != nil {
		return nil, fmt.Errorf("waiting for %d Ready pods %q in %s: %w (pods: %s)", n, selector, ns, err, last)
	}
	return pods, nil
}

// PodReady reports whether p's Ready condition is true.
func PodReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// PodSummary describes a pod's state for failure messages.
func PodSummary(p *corev1.Pod) string {
	s := fmt.Sprintf("%s %s on %q ip %s ready=%v", p.Name, p.Status.Phase, p.Spec.NodeName, p.Status.PodIP, PodReady(p))
	for _, cs := range p.Status.ContainerStatuses {
		switch {
		case cs.State.Waiting != nil:
			s += fmt.Sprintf(" [%s waiting: %s %s]", cs.Name, cs.State.Waiting.Reason, cs.State.Waiting.Message)
		case cs.State.Terminated != nil:
			s += fmt.Sprintf(" [%s terminated: %s %d]", cs.Name, cs.State.Terminated.Reason, cs.State.Terminated.ExitCode)
		}
	}
	for _, c := range p.Status.Conditions {
		if c.Status != corev1.ConditionTrue && c.Message != "" {
			s += fmt.Sprintf(" (%s: %s)", c.Type, c.Message)
		}
	}
	return s
}
