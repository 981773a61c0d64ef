package benchlab

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/cairnmesh/cairn/integration/lab"
	"github.com/cairnmesh/cairn/internal/manifest"
)

// installMesh installs the CRDs, istiod-lite and ztunnel from install/ as a
// user does, and returns the ztunnel pod of each node (index i-1 for
// lab-node-i) once istiod-lite and every ztunnel are Ready.
func installMesh(ctx context.Context) ([]corev1.Pod, error) {
	applier, err := manifest.New(restConfig, manifest.Options{FieldManager: "benchlab"})
	if err != nil {
		return nil, err
	}
	crdFiles, err := filepath.Glob(filepath.Join(cfg.RepoDir, "install", "crds", "*.yaml"))
	if err != nil || len(crdFiles) == 0 {
		return nil, fmt.Errorf("no CRDs in install/crds (err %v)", err)
	}
	crds, err := applier.ApplyFiles(ctx, crdFiles...)
	if err != nil {
		return nil, fmt.Errorf("applying the CRDs: %w", err)
	}
	if err := applier.WaitForCRDs(ctx, manifest.CRDNames(crds)); err != nil {
		return nil, err
	}
	for _, f := range []string{"istiod-lite.yaml", "ztunnel.yaml"} {
		if _, err := applier.ApplyFiles(ctx, filepath.Join(cfg.RepoDir, "install", "manifests", f)); err != nil {
			return nil, fmt.Errorf("applying %s: %w", f, err)
		}
	}
	if _, err := waitPods(ctx, "cairn-system", "app=istiod-lite", 1); err != nil {
		return nil, err
	}
	pods, err := waitPods(ctx, "cairn-system", "app=ztunnel", cfg.Nodes)
	if err != nil {
		return nil, err
	}
	byNode := make([]corev1.Pod, cfg.Nodes)
	for _, p := range pods {
		for i := 1; i <= cfg.Nodes; i++ {
			if p.Spec.NodeName == lab.NodeName(i) {
				byNode[i-1] = p
			}
		}
	}
	for i, p := range byNode {
		if p.Name == "" {
			return nil, fmt.Errorf("no ztunnel on %s", lab.NodeName(i+1))
		}
	}
	return byNode, nil
}

// captured says whether a pod's network namespace has Cairn's capture
// rules.
func captured(ctx context.Context, p podRef) (bool, error) {
	h, err := podNetns(ctx, p)
	if err != nil {
		return false, err
	}
	defer h.Close()
	var out []byte
	if err := h.Do(func() error {
		out, err = exec.CommandContext(ctx, "iptables-save", "-t", "nat").Output()
		return err
	}); err != nil {
		return false, fmt.Errorf("iptables-save in %s/%s: %w", p.ns, p.name, err)
	}
	return strings.Contains(string(out), "CAIRN_"), nil
}
