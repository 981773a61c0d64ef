package benchlab

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/cairnmesh/cairn/integration/labharness"
	"github.com/cairnmesh/cairn/internal/manifest"
)

// kubectl runs the lab's kubectl against the lab and returns its standard
// output.
func kubectl(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, kubectlBin, append([]string{"--kubeconfig", cfg.KubeconfigPath()}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// podRef names a pod and the container commands run in.
type podRef struct{ ns, name, container string }

// exec runs cmd in the pod's container (kubectl exec); the pod's processes
// are the lab's, so what runs there is in the pod's network namespace.
func (p podRef) exec(ctx context.Context, cmd ...string) (string, error) {
	args := []string{"-n", p.ns, "exec", p.name}
	if p.container != "" {
		args = append(args, "-c", p.container)
	}
	return kubectl(ctx, append(append(args, "--"), cmd...)...)
}

// apply applies YAML to namespace ns, as a user's kubectl apply would.
func apply(ctx context.Context, ns, yaml string) error {
	a, err := manifest.New(restConfig, manifest.Options{FieldManager: "benchlab", Namespace: ns})
	if err != nil {
		return err
	}
	_, err = a.Apply(ctx, []byte(yaml))
	return err
}

// createNamespace creates namespace name with labels.
func createNamespace(ctx context.Context, name string, labels map[string]string) error {
	_, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
	}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("creating namespace %s: %w", name, err)
	}
	return nil
}

// waitPods waits until n pods match selector in ns and all are Ready, and
// returns them.
func waitPods(ctx context.Context, ns, selector string, n int) ([]corev1.Pod, error) {
	return labharness.WaitPods(ctx, client, ns, selector, n, 2*time.Minute)
}

// eventually retries f every 200 ms until it succeeds or timeout passes.
func eventually(ctx context.Context, timeout time.Duration, what string, f func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var err error
	for {
		if err = f(ctx); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w", what, err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}
