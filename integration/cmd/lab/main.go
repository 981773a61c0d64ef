// Command lab runs Cairn's lab: a multi-node Kubernetes cluster in network
// namespaces on this machine (see integration/lab).
//
//	lab up       start a fresh lab (removing any leftovers first)
//	lab status   show what runs
//	lab down     stop the lab and remove everything it made
//
// The lab's directory, node count, name prefix and subnet come from
// $LAB_DIR (default <repo>/.lab), $LAB_NODES (2), $LAB_PREFIX (cairn) and
// $LAB_SUBNET (0).
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/cairnmesh/cairn/integration/lab"
	"github.com/cairnmesh/cairn/internal/version"
)

// The main goroutine keeps the process's main thread to itself. The lab
// kubelet enters pods' network namespaces on threads it then throws away
// (locked, never unlocked), and the main thread, which cannot exit, would
// instead stay wedged in a pod's namespace: /proc/<pid>/ns/net shows the
// main thread's, and node agents would see the kubelet in a pod.
func init() { runtime.LockOSThread() }

func main() {
	root := &cobra.Command{
		Use:           "lab",
		Short:         "A multi-node Kubernetes cluster in network namespaces, for Cairn's demo and end-to-end tests",
		Version:       version.String(),
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(upCommand(), downCommand(), statusCommand(), superviseCommand())
	root.AddCommand(kubeletCommands()...)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := root.ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "lab:", err)
		os.Exit(1)
	}
}

func logger(verbose bool) *slog.Logger {
	level := slog.LevelWarn
	if verbose {
		level = slog.LevelInfo
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}

func config(verbose bool) (lab.Config, error) {
	c, err := lab.FromEnv()
	if err != nil {
		return c, err
	}
	c.Logger = logger(verbose)
	return c, nil
}
