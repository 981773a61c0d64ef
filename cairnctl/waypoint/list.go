package waypoint

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/yaml"

	"github.com/cairnmesh/cairn/internal/waypointspec"
)

type listOptions struct {
	*common
	allNamespaces bool
	output        string
}

func listCommand(c *common) *cobra.Command {
	o := &listOptions{common: c}
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List waypoints",
		Long: `list shows the waypoints of a namespace (-n) or of all namespaces (-A): what
traffic each handles (FOR), whether istiod-lite has programmed it, its
address and its age. -o json or -o yaml prints the Gateways themselves,
as a GatewayList.`,
		Example: `  cairnctl waypoint list -n shop
  cairnctl waypoint list -A -o yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.run(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	cmd.Flags().BoolVarP(&o.allNamespaces, "all-namespaces", "A", false, "list the waypoints of every namespace")
	cmd.Flags().StringVarP(&o.output, "output", "o", "", "output format: json or yaml (default: a table)")
	return cmd
}

func (o *listOptions) run(ctx context.Context, out, errOut io.Writer) error {
	switch o.output {
	case "", "json", "yaml":
	default:
		return fmt.Errorf("output format %q: want json or yaml, or no -o for a table", o.output)
	}
	c, err := o.kube.Clients()
	if err != nil {
		return err
	}
	ns := c.Namespace
	if o.allNamespaces {
		ns = metav1.NamespaceAll
	}
	gws, err := listWaypoints(ctx, c, ns)
	if err != nil {
		return err
	}
	switch o.output {
	case "json":
		b, err := json.MarshalIndent(gatewayList(gws), "", "  ")
		if err != nil {
			return fmt.Errorf("encoding the waypoints: %w", err)
		}
		_, err = out.Write(append(b, '\n'))
		return err
	case "yaml":
		b, err := marshalYAML(gatewayList(gws))
		if err != nil {
			return err
		}
		_, err = out.Write(b)
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
	w := tabwriter.NewWriter(out, 0, 8, 3, ' ', 0)
	fmt.Fprintln(w, "NAMESPACE\tNAME\tFOR\tPROGRAMMED\tADDRESS\tAGE")
	now := time.Now()
	for i := range gws {
		gw := &gws[i]
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", gw.Namespace, gw.Name, waypointspec.For(gw),
			programmedColumn(gw), addresses(gw, false), age(gw.CreationTimestamp, now))
	}
	return w.Flush()
}

// gatewayList wraps gws as kubectl prints a list: each with its type, and
// without managedFields, which say nothing to a reader.
func gatewayList(gws []gatewayv1.Gateway) *gatewayv1.GatewayList {
	list := &gatewayv1.GatewayList{
		TypeMeta: metav1.TypeMeta{APIVersion: gatewayv1.GroupVersion.String(), Kind: "GatewayList"},
		Items:    make([]gatewayv1.Gateway, 0, len(gws)),
	}
	for _, gw := range gws {
		gw.APIVersion = gatewayv1.GroupVersion.String()
		gw.Kind = "Gateway"
		gw.ManagedFields = nil
		list.Items = append(list.Items, gw)
	}
	return list
}

func marshalYAML(v any) ([]byte, error) {
	b, err := yaml.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encoding YAML: %w", err)
	}
	return b, nil
}
