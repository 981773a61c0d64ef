package kubelet

import (
	"context"
	"fmt"
	"path/filepath"
	"runtime"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/cairnmesh/cairn/internal/nodepath"
	"github.com/cairnmesh/cairn/internal/version"
)

// Node heartbeats, as a kubelet with the NodeLease feature: the Lease is
// renewed every leaseInterval, the Node's status (Ready and its
// heartbeat) every statusInterval.
const (
	leaseInterval  = 10 * time.Second
	leaseDuration  = 40
	statusInterval = 30 * time.Second
	leaseNamespace = "kube-node-lease"
)

// kubeletVersion is what the Node reports; the control plane is v1.37.
const kubeletVersion = "v1.37.0-cairn-lab"

// registerNode creates the Node, or takes over an existing one of the same
// name, and writes its status.
func (k *Kubelet) registerNode(ctx context.Context) error {
	cfg := k.cfg
	nodes := k.client.CoreV1().Nodes()
	want := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name: cfg.NodeName,
			Labels: map[string]string{
				corev1.LabelHostname:   cfg.NodeName,
				corev1.LabelOSStable:   runtime.GOOS,
				corev1.LabelArchStable: runtime.GOARCH,
			},
		},
		Spec: corev1.NodeSpec{PodCIDR: cfg.PodCIDR.String(), PodCIDRs: []string{cfg.PodCIDR.String()}},
	}
	if root := filepath.Clean(cfg.NodeRoot); root != "/" {
		// Node agents (ztunnel) translate hostPath paths to the node's.
		want.Annotations = map[string]string{nodepath.RootAnnotation: root}
	}
	node, err := nodes.Create(ctx, want, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		node, err = nodes.Get(ctx, cfg.NodeName, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("kubelet: reading node %s: %w", cfg.NodeName, err)
		}
		changed := false
		if node.Spec.PodCIDR == "" {
			node.Spec.PodCIDR, node.Spec.PodCIDRs = want.Spec.PodCIDR, want.Spec.PodCIDRs
			changed = true
		} else if node.Spec.PodCIDR != want.Spec.PodCIDR {
			return fmt.Errorf("kubelet: node %s exists with podCIDR %s, not %s (delete the Node first)", cfg.NodeName, node.Spec.PodCIDR, want.Spec.PodCIDR)
		}
		for key, v := range want.Labels {
			if node.Labels[key] != v {
				if node.Labels == nil {
					node.Labels = map[string]string{}
				}
				node.Labels[key] = v
				changed = true
			}
		}
		for key, v := range want.Annotations {
			if node.Annotations[key] != v {
				if node.Annotations == nil {
					node.Annotations = map[string]string{}
				}
				node.Annotations[key] = v
				changed = true
			}
		}
		if changed {
			if node, err = nodes.Update(ctx, node, metav1.UpdateOptions{}); err != nil {
				return fmt.Errorf("kubelet: updating node %s: %w", cfg.NodeName, err)
			}
		}
	} else if err != nil {
		return fmt.Errorf("kubelet: registering node %s: %w", cfg.NodeName, err)
	}
	if err := k.updateNodeStatus(ctx, node); err != nil {
		return err
	}
	if err := k.renewLease(ctx, node); err != nil {
		return err
	}
	k.log.Info("node registered", "uid", node.UID)
	return nil
}

// nodeStatus computes the Node's status.
func (k *Kubelet) nodeStatus(old corev1.NodeStatus, now time.Time) corev1.NodeStatus {
	cfg := k.cfg
	capacity := corev1.ResourceList{
		corev1.ResourceCPU:              *resource.NewQuantity(int64(k.cpus), resource.DecimalSI),
		corev1.ResourceMemory:           *resource.NewQuantity(k.memory, resource.BinarySI),
		corev1.ResourcePods:             *resource.NewQuantity(int64(cfg.MaxPods), resource.DecimalSI),
		corev1.ResourceEphemeralStorage: resource.MustParse("100Gi"),
	}
	st := corev1.NodeStatus{
		Capacity:    capacity,
		Allocatable: capacity.DeepCopy(),
		Phase:       corev1.NodeRunning,
		Addresses: []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: cfg.NodeIP.String()},
			{Type: corev1.NodeHostName, Address: cfg.NodeName},
		},
		DaemonEndpoints: corev1.NodeDaemonEndpoints{KubeletEndpoint: corev1.DaemonEndpoint{Port: int32(cfg.APIPort)}},
		NodeInfo: corev1.NodeSystemInfo{
			MachineID:               cfg.NodeName,
			SystemUUID:              cfg.NodeName,
			BootID:                  bootID(),
			KernelVersion:           kernelVersion(),
			OSImage:                 "Cairn lab node",
			ContainerRuntimeVersion: "cairn-lab://" + version.String(),
			KubeletVersion:          kubeletVersion,
			OperatingSystem:         runtime.GOOS,
			Architecture:            runtime.GOARCH,
		},
		Images: old.Images,
	}
	beat := metav1.NewTime(now).Rfc3339Copy()
	conds := []corev1.NodeCondition{
		{Type: corev1.NodeMemoryPressure, Status: corev1.ConditionFalse, Reason: "KubeletHasSufficientMemory", Message: "kubelet has sufficient memory available"},
		{Type: corev1.NodeDiskPressure, Status: corev1.ConditionFalse, Reason: "KubeletHasNoDiskPressure", Message: "kubelet has no disk pressure"},
		{Type: corev1.NodePIDPressure, Status: corev1.ConditionFalse, Reason: "KubeletHasSufficientPID", Message: "kubelet has sufficient PID available"},
		{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady", Message: "lab kubelet is posting ready status"},
	}
	for _, c := range conds {
		c.LastHeartbeatTime = beat
		c.LastTransitionTime = beat
		for _, o := range old.Conditions {
			if o.Type == c.Type && o.Status == c.Status {
				c.LastTransitionTime = o.LastTransitionTime
			}
		}
		st.Conditions = append(st.Conditions, c)
	}
	return st
}

func (k *Kubelet) updateNodeStatus(ctx context.Context, node *corev1.Node) error {
	n := node.DeepCopy()
	n.Status = k.nodeStatus(node.Status, time.Now())
	_, err := k.client.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
	if apierrors.IsConflict(err) {
		fresh, gerr := k.client.CoreV1().Nodes().Get(ctx, node.Name, metav1.GetOptions{})
		if gerr != nil {
			return fmt.Errorf("kubelet: node status: %w", gerr)
		}
		fresh.Status = k.nodeStatus(fresh.Status, time.Now())
		_, err = k.client.CoreV1().Nodes().UpdateStatus(ctx, fresh, metav1.UpdateOptions{})
	}
	if err != nil {
		return fmt.Errorf("kubelet: node status: %w", err)
	}
	return nil
}

// renewLease creates or renews the node's Lease in kube-node-lease.
func (k *Kubelet) renewLease(ctx context.Context, node *corev1.Node) error {
	leases := k.client.CoordinationV1().Leases(leaseNamespace)
	now := metav1.NewMicroTime(time.Now())
	lease, err := leases.Get(ctx, k.cfg.NodeName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		lease = &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: k.cfg.NodeName, Namespace: leaseNamespace},
			Spec: coordinationv1.LeaseSpec{
				HolderIdentity:       ptr.To(k.cfg.NodeName),
				LeaseDurationSeconds: ptr.To(int32(leaseDuration)),
				RenewTime:            &now,
			},
		}
		if node != nil {
			lease.OwnerReferences = []metav1.OwnerReference{{
				APIVersion: "v1", Kind: "Node", Name: node.Name, UID: node.UID,
			}}
		}
		_, err = leases.Create(ctx, lease, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("kubelet: creating lease: %w", err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("kubelet: reading lease: %w", err)
	}
	lease.Spec.RenewTime = &now
	lease.Spec.HolderIdentity = ptr.To(k.cfg.NodeName)
	lease.Spec.LeaseDurationSeconds = ptr.To(int32(leaseDuration))
	if _, err := leases.Update(ctx, lease, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("kubelet: renewing lease: %w", err)
	}
	return nil
}

// heartbeat renews the Lease and the Node's status until ctx ends.
func (k *Kubelet) heartbeat(ctx context.Context) {
	lease := time.NewTicker(leaseInterval)
	defer lease.Stop()
	status := time.NewTicker(statusInterval)
	defer status.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-lease.C:
			if err := k.renewLease(ctx, nil); err != nil && ctx.Err() == nil {
				k.log.Warn("lease", "err", err)
			}
		case <-status.C:
			node, err := k.client.CoreV1().Nodes().Get(ctx, k.cfg.NodeName, metav1.GetOptions{})
			if err == nil {
				err = k.updateNodeStatus(ctx, node)
			}
			if err != nil && ctx.Err() == nil {
				k.log.Warn("node status", "err", err)
			}
		}
	}
}
