package nodeagent

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/cairnmesh/cairn/internal/kubeclient"
	"github.com/cairnmesh/cairn/ztunnel/cni"
)

// Add is cairn-cni's ADD: the pod's sandbox exists, its app has not
// started. An enrolled pod is captured before Add returns.
func (a *Agent) Add(ctx context.Context, req cni.Pod) (cni.Reply, error) {
	if !a.Synced() {
		// Without the namespaces listed, an enrolled pod would look
		// unenrolled and start uncaptured: let the kubelet retry.
		return cni.Reply{}, fmt.Errorf("ztunnel is starting and has not listed its node's pods yet; retry")
	}
	pod, err := a.lookup(ctx, req.Namespace, req.Name)
	if err != nil {
		return cni.Reply{}, err
	}
	if req.UID != "" && pod.UID != req.UID {
		return cni.Reply{}, fmt.Errorf("pod %s/%s has uid %s, the runtime asked for %s", req.Namespace, req.Name, pod.UID, req.UID)
	}
	if !a.wanted(pod) {
		return cni.Reply{Captured: false, Message: "not enrolled"}, nil
	}
	p := podOf(pod)
	p.Netns = req.Netns
	p.IPs = nil // the status has none yet; the CNI result does
	for _, s := range req.IPs {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			return cni.Reply{}, fmt.Errorf("bad pod IP %q from the CNI result: %w", s, err)
		}
		p.IPs = append(p.IPs, ip)
	}
	key := req.Namespace + "/" + req.Name
	a.opMu.Lock()
	defer a.opMu.Unlock()
	a.mu.Lock()
	have, captured := a.captured[key]
	a.mu.Unlock()
	if captured && have.UID != p.UID {
		if err := a.release(ctx, key, have); err != nil {
			return cni.Reply{}, err
		}
	}
	if err := a.capture(ctx, key, p, pod); err != nil {
		return cni.Reply{}, err
	}
	return cni.Reply{Captured: true}, nil
}

// Del is cairn-cni's DEL: the sandbox is going away.
func (a *Agent) Del(ctx context.Context, req cni.Pod) error {
	key := req.Namespace + "/" + req.Name
	a.opMu.Lock()
	defer a.opMu.Unlock()
	a.mu.Lock()
	have, captured := a.captured[key]
	a.mu.Unlock()
	if !captured || (req.UID != "" && have.UID != req.UID) {
		return nil
	}
	return a.release(ctx, key, have)
}

// lookup finds a pod in the watch, waiting a little for a pod the API
// server has just bound, then asks the API server itself.
func (a *Agent) lookup(ctx context.Context, ns, name string) (*kubeclient.Pod, error) {
	deadline := time.Now().Add(a.cfg.CNIWait)
	for {
		if pod, ok := a.pods.Get(ns + "/" + name); ok {
			return pod, nil
		}
		if time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		case <-time.After(50 * time.Millisecond):
		}
	}
	var pod kubeclient.Pod
	if err := a.cfg.Kube.Get(ctx, kubeclient.Pods, ns, name, &pod); err != nil {
		return nil, fmt.Errorf("looking up pod %s/%s: %w", ns, name, err)
	}
	return &pod, nil
}
