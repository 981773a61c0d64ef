package main

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/cairnmesh/cairn/integration/lab"
)

func upCommand() *cobra.Command {
	var verbose bool
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Start a fresh lab and wait until it is usable",
		Long: `up removes what a previous lab left behind, then creates the network
(a bridge and one network namespace per node), starts a detached supervisor
that runs the control plane and, in each node, a lab kubelet and kube-proxy,
and returns once every node and CoreDNS are Ready.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := config(verbose)
			if err != nil {
				return err
			}
			_, t, err := lab.Up(cmd.Context(), c)
			if err != nil {
				return err
			}
			fmt.Printf("lab up: %d nodes ready in %s (cleanup %s, network %s, control plane %s, nodes %s, DNS %s)\n",
				c.Nodes, secs(t.Total), secs(t.Cleanup), secs(t.Network), secs(t.ControlPlane), secs(t.Nodes), secs(t.DNS))
			fmt.Printf("\n  export KUBECONFIG=%s\n  %s get nodes,pods -A -o wide\n\n",
				relPath(c.KubeconfigPath()), relPath(filepath.Join(c.K8sBinDir(), "kubectl")))
			fmt.Printf("logs in %s; `lab status` shows what runs; `lab down` removes it all\n", relPath(c.LogDir()))
			return nil
		},
	}
	cmd.Flags().BoolVarP(&verbose, "verbose", "v", false, "log progress")
	return cmd
}

func downCommand() *cobra.Command {
	var verbose bool
	cmd := &cobra.Command{
		Use:   "down",
		Short: "Stop the lab and remove everything it made",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := config(verbose)
			if err != nil {
				return err
			}
			if saved, err := lab.LoadConfig(c.Dir); err == nil {
				saved.Logger = c.Logger
				c = saved
			}
			r, err := lab.Down(cmd.Context(), c)
			if err != nil {
				return err
			}
			if !r.Stopped && !r.RemovedDir && len(r.Netns)+len(r.Links)+len(r.Killed) == 0 {
				fmt.Println("lab down: nothing to do")
				return nil
			}
			fmt.Printf("lab down: removed in %s (%d network namespaces, %d links, %d mounts, %d cgroups; %d processes killed after the supervisor)\n",
				secs(r.Took), len(r.Netns), len(r.Links), len(r.Unmounted), len(r.Cgroups), len(r.Killed))
			return nil
		},
	}
	cmd.Flags().BoolVarP(&verbose, "verbose", "v", false, "log progress")
	return cmd
}

func statusCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show the lab's processes and nodes",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := config(false)
			if err != nil {
				return err
			}
			if saved, err := lab.LoadConfig(c.Dir); err == nil {
				c = saved
			}
			return lab.PrintStatus(cmd.Context(), c, os.Stdout)
		},
	}
}

func superviseCommand() *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:    "supervise",
		Short:  "Run the lab's processes (started by `lab up`)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
			return lab.Supervise(cmd.Context(), dir, log.With("component", "supervisor"))
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "the lab directory")
	_ = cmd.MarkFlagRequired("dir")
	return cmd
}

func secs(d time.Duration) string { return fmt.Sprintf("%.1fs", d.Seconds()) }

// relPath shortens p relative to the working directory when it is below it.
func relPath(p string) string {
	wd, err := os.Getwd()
	if err != nil {
		return p
	}
	if r, err := filepath.Rel(wd, p); err == nil && !filepath.IsAbs(r) && len(r) < len(p) && !strings.HasPrefix(r, "..") {
		return r
	}
	return p
}
