package waypoint

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/cairnmesh/cairn/internal/waypointspec"
)

type deleteOptions struct {
	*common
	all            bool
	ignoreNotFound bool
}

func deleteCommand(c *common) *cobra.Command {
	o := &deleteOptions{common: c}
	cmd := &cobra.Command{
		Use:   "delete [NAME...]",
		Short: "Delete waypoints",
		Long: `delete removes waypoint Gateways (and with them, through istiod-lite, their
Deployment and Service). Without a name it deletes the waypoint --name
(default "waypoint"); --all deletes every waypoint in the namespace. Only
Gateways of class istio-waypoint are deleted.

Labels that still name a deleted waypoint are not removed: delete says
which namespaces and Services have them, and how to remove them.`,
		Example: `  cairnctl waypoint delete -n shop
  cairnctl waypoint delete -n shop reviews-wp ratings-wp
  cairnctl waypoint delete -n shop --all`,
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.run(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr(), args)
		},
	}
	cmd.Flags().BoolVar(&o.all, "all", false, "delete every waypoint in the namespace")
	cmd.Flags().BoolVar(&o.ignoreNotFound, "ignore-not-found", false, "succeed when a named waypoint does not exist")
	return cmd
}

func (o *deleteOptions) run(ctx context.Context, out, errOut io.Writer, names []string) error {
	if o.all && len(names) > 0 {
		return errors.New("give waypoint names or --all, not both")
	}
	c, err := o.kube.Clients()
	if err != nil {
		return err
	}
	ns := c.Namespace
	var targets []string
	switch {
	case o.all:
		gws, err := listWaypoints(ctx, c, ns)
		if err != nil {
			return err
		}
		if len(gws) == 0 {
			fmt.Fprintf(errOut, "No waypoints found in namespace %s.\n", ns)
			return nil
		}
		for _, gw := range gws {
			targets = append(targets, gw.Name)
		}
	case len(names) > 0:
		targets = names
	default:
		targets = []string{o.name}
	}

	var errs []error
	deleted := map[waypointspec.Ref]bool{}
	for _, name := range targets {
		if _, err := getWaypoint(ctx, c, ns, name); err != nil {
			if errors.Is(err, errNotFound) && o.ignoreNotFound {
				continue
			}
			errs = append(errs, err)
			continue
		}
		err := c.Gateway.GatewayV1().Gateways(ns).Delete(ctx, name, metav1.DeleteOptions{})
		switch {
		case apierrors.IsNotFound(err) && o.ignoreNotFound:
		case err != nil:
			errs = append(errs, fmt.Errorf("deleting waypoint %s/%s: %w", ns, name, err))
		default:
			fmt.Fprintf(out, "waypoint %s/%s deleted\n", ns, name)
			deleted[waypointspec.Ref{Namespace: ns, Name: name}] = true
		}
	}
	if len(deleted) > 0 {
		users, err := findUsers(ctx, c, deleted)
		if err != nil {
			warn(errOut, "could not check which namespaces and Services still name the deleted waypoints: %v", err)
		}
		for _, u := range users {
			warn(errOut, "%s still has %s: its traffic has no waypoint %s to go through; apply the waypoint again, or remove the label: %s",
				u, u.labels, u.waypoint, u.unlabelCommand())
		}
	}
	return errors.Join(errs...)
}
