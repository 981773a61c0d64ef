package waypoint

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/cairnmesh/cairn/internal/waypointspec"
)

type statusOptions struct {
	*common
	allNamespaces bool
}

func statusCommand(c *common) *cobra.Command {
	o := &statusOptions{common: c}
	cmd := &cobra.Command{
		Use:   "status [NAME...]",
		Short: "Show waypoints' conditions, addresses and what uses them",
		Long: `status shows, for each waypoint, the conditions its controller wrote
(Accepted, Programmed, and those of its listener), its addresses, and the
namespaces and Services whose istio.io/use-waypoint label sends their
traffic through it. Without a name (or --name) it shows every waypoint of
the namespace, or of all namespaces with -A.`,
		Example: `  cairnctl waypoint status -n shop
  cairnctl waypoint status -n shop reviews-wp`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 && cmd.Flags().Changed("name") {
				args = []string{o.name}
			}
			return o.run(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr(), args)
		},
	}
	cmd.Flags().BoolVarP(&o.allNamespaces, "all-namespaces", "A", false, "show the waypoints of every namespace")
	return cmd
}

func (o *statusOptions) run(ctx context.Context, out, errOut io.Writer, names []string) error {
	if o.allNamespaces && len(names) > 0 {
		return errors.New("give waypoint names or -A, not both")
	}
	c, err := o.kube.Clients()
	if err != nil {
		return err
	}
	ns := c.Namespace
	var gws []gatewayv1.Gateway
	if len(names) == 0 {
		scope := ns
		if o.allNamespaces {
			scope = metav1.NamespaceAll
		}
		if gws, err = listWaypoints(ctx, c, scope); err != nil {
			return err
		}
		if len(gws) == 0 {
			if o.allNamespaces {
				fmt.Fprintln(errOut, "No waypoints found.")
			} else {
				fmt.Fprintf(errOut, "No waypoints found in namespace %s (deploy one with: cairnctl waypoint apply -n %s).\n", ns, ns)
			}
			return nil
		}
	}
	var errs []error
	for _, name := range names {
		gw, err := getWaypoint(ctx, c, ns, name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		gws = append(gws, *gw)
	}
	want := map[waypointspec.Ref]bool{}
	for _, gw := range gws {
		want[waypointspec.Ref{Namespace: gw.Namespace, Name: gw.Name}] = true
	}
	users, err := findUsers(ctx, c, want)
	if err != nil {
		warn(errOut, "could not list every namespace and Service that uses these waypoints: %v", err)
	}
	now := time.Now()
	for i := range gws {
		if i > 0 {
			fmt.Fprintln(out)
		}
		if err := printStatus(out, &gws[i], users, now); err != nil {
			return err
		}
	}
	return errors.Join(errs...)
}

// printStatus writes one waypoint's status block.
func printStatus(out io.Writer, gw *gatewayv1.Gateway, users []user, now time.Time) error {
	ref := waypointspec.Ref{Namespace: gw.Namespace, Name: gw.Name}
	w := tabwriter.NewWriter(out, 0, 8, 2, ' ', 0)
	fmt.Fprintf(w, "Waypoint:\t%s\n", ref)
	fmt.Fprintf(w, "For:\t%s\n", waypointspec.For(gw))
	fmt.Fprintf(w, "Programmed:\t%s\n", programmedColumn(gw))
	if !Programmed(gw) {
		fmt.Fprintf(w, "Why not:\t%s\n", notProgrammedReason(gw))
	}
	fmt.Fprintf(w, "Addresses:\t%s\n", addresses(gw, true))
	fmt.Fprintf(w, "Age:\t%s\n", age(gw.CreationTimestamp, now))
	if err := w.Flush(); err != nil {
		return err
	}

	fmt.Fprintln(out, "Conditions:")
	w = tabwriter.NewWriter(out, 0, 8, 2, ' ', 0)
	fmt.Fprintln(w, "  TYPE\tSTATUS\tREASON\tAGE\tMESSAGE")
	for _, c := range gw.Status.Conditions {
		fmt.Fprintf(w, "  %s\t%s\t%s\t%s\t%s\n", c.Type, c.Status, c.Reason, age(c.LastTransitionTime, now), oneLine(c.Message))
	}
	for _, l := range gw.Status.Listeners {
		for _, c := range l.Conditions {
			fmt.Fprintf(w, "  listener %s: %s\t%s\t%s\t%s\t%s\n", l.Name, c.Type, c.Status, c.Reason, age(c.LastTransitionTime, now), oneLine(c.Message))
		}
	}
	if err := w.Flush(); err != nil {
		return err
	}

	fmt.Fprintln(out, "Used by:")
	n := 0
	for _, u := range users {
		if u.waypoint != ref {
			continue
		}
		n++
		fmt.Fprintf(out, "  %s (%s)\n", u, u.labels)
	}
	if n == 0 {
		fmt.Fprintf(out, "  nothing: no namespace or Service is labelled %s=%s", waypointspec.UseWaypointLabel, gw.Name)
		fmt.Fprintf(out, "; send a namespace's traffic through it with: kubectl label namespace %s %s=%s\n",
			gw.Namespace, waypointspec.UseWaypointLabel, gw.Name)
	}
	return nil
}

// oneLine keeps a condition message on its row of the table.
func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }
