package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// PrintStatus writes what runs in the lab: its phase, its processes, and
// the nodes and pods the API server knows.
func PrintStatus(ctx context.Context, c Config, w io.Writer) error {
	st, err := ReadState(c)
	if errors.Is(err, os.ErrNotExist) {
		fmt.Fprintf(w, "no lab in %s\n", c.Dir)
		return nil
	}
	if err != nil {
		return err
	}
	phase := st.Phase
	if !st.Supervisor.Alive() && phase != PhaseStopped {
		phase += " (supervisor gone: run `lab down`, then `lab up`)"
	}
	fmt.Fprintf(w, "lab %s: %s, API server %s, kubeconfig %s\n", c.Dir, phase, st.APIServer, c.KubeconfigPath())
	if st.Error != "" {
		fmt.Fprintf(w, "error: %s\n", st.Error)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PROCESS\tNODE\tPID\tSTATE\tRESTARTS\tLOG")
	for _, p := range append([]Proc{st.Supervisor}, st.Processes...) {
		state := "running"
		if !p.Alive() {
			state = "gone"
		}
		node := p.Node
		if node == "" {
			node = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%d\t%s\n", p.Name, node, p.PID, state, p.Restarts, p.Log)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if !st.Supervisor.Alive() {
		return nil
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", c.KubeconfigPath())
	if err != nil {
		return nil
	}
	cfg.Timeout = 3 * time.Second
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	nodes, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		fmt.Fprintf(w, "API server: %v\n", err)
		return nil
	}
	pods, err := client.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		fmt.Fprintf(w, "API server: %v\n", err)
		return nil
	}
	perNode := map[string]int{}
	for _, p := range pods.Items {
		perNode[p.Spec.NodeName]++
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tREADY\tINTERNAL-IP\tPOD-CIDR\tPODS")
	for i := range nodes.Items {
		n := &nodes.Items[i]
		ip := "-"
		for _, a := range n.Status.Addresses {
			if a.Type == "InternalIP" {
				ip = a.Address
			}
		}
		fmt.Fprintf(tw, "%s\t%v\t%s\t%s\t%d\n", n.Name, nodeReady(n), ip, n.Spec.PodCIDR, perNode[n.Name])
	}
	return tw.Flush()
}
