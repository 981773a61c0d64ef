// Package waypoint is `cairnctl waypoint`: generate, apply, delete, list
// and show the status of waypoints, the Gateway API Gateways of class
// istio-waypoint that istiod-lite turns into L7 proxies. Its flags and
// behaviour follow `istioctl waypoint`, so that scripts and habits carry
// over; where it differs, docs/cairnctl.md says so.
package waypoint

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/duration"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/cairnmesh/cairn/cairnctl/kube"
	"github.com/cairnmesh/cairn/internal/waypointspec"
)

// FieldManager is the server-side apply field manager of the Gateways and
// the manager named in the namespace labels cairnctl writes.
const FieldManager = "cairnctl"

// gatewayAPIInstall is what to run when the Gateway API CRDs are missing.
const gatewayAPIInstall = "kubectl apply --server-side -f https://github.com/kubernetes-sigs/gateway-api/releases/download/v1.6.3/standard-install.yaml"

// errNoGatewayAPI is returned (wrapped) when the cluster has no Gateway
// API: there can be no waypoint.
var errNoGatewayAPI = errors.New("the Gateway API CRDs are not installed in this cluster " +
	"(no gateway.networking.k8s.io/v1 Gateway); install them first (standard channel, v1.6 or later): " + gatewayAPIInstall)

// common holds what every subcommand shares.
type common struct {
	kube *kube.Flags
	name string
}

// Command returns `cairnctl waypoint` and its subcommands, connecting
// with the cluster flags kf (cairnctl's persistent flags).
func Command(kf *kube.Flags) *cobra.Command {
	o := &common{kube: kf}
	cmd := &cobra.Command{
		Use:   "waypoint",
		Short: "Deploy and inspect waypoints (L7 proxies for a namespace, Service or workload)",
		Long: `A waypoint is an L7 proxy that applies HTTPRoute, GRPCRoute and L7
AuthorizationPolicy to the traffic of the namespaces, Services or pods
that use it. It is a Gateway API Gateway of class istio-waypoint, with
one listener "mesh" on port 15008 (HBONE); istiod-lite deploys it.

Traffic goes through a waypoint once its namespace, Service or pod is
labelled istio.io/use-waypoint=<name> (add
istio.io/use-waypoint-namespace=<namespace> for a waypoint in another
namespace); --enroll-namespace labels the namespace for you.

The commands and flags are those of istioctl waypoint.`,
		Example: `  # A waypoint for the Services of namespace shop, used by the whole namespace
  cairnctl waypoint apply -n shop --enroll-namespace --wait

  # What waypoints exist, and what uses one
  cairnctl waypoint list -A
  cairnctl waypoint status -n shop`,
		Args: cobra.NoArgs,
	}
	cmd.PersistentFlags().StringVar(&o.name, "name", waypointspec.DefaultName, "name of the waypoint")
	cmd.AddCommand(generateCommand(o), applyCommand(o), deleteCommand(o), listCommand(o), statusCommand(o))
	return cmd
}

// generateCommand prints the Gateway that apply would apply.
func generateCommand(o *common) *cobra.Command {
	var forValue string
	cmd := &cobra.Command{
		Use:     "generate",
		Short:   "Print a waypoint's Gateway as YAML, to apply with kubectl",
		Example: `  cairnctl waypoint generate -n shop --for all | kubectl apply -f -`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			gw, err := waypointspec.Gateway(o.kube.Namespace, o.name, forValue)
			if err != nil {
				return err
			}
			b, err := marshalYAML(applyObject(gw))
			if err != nil {
				return err
			}
			_, err = cmd.OutOrStdout().Write(b)
			return err
		},
	}
	addForFlag(cmd, &forValue)
	return cmd
}

func addForFlag(cmd *cobra.Command, v *string) {
	cmd.Flags().StringVar(v, "for", waypointspec.ForService,
		"the traffic the waypoint handles: "+strings.Join(waypointspec.ForValues(), ", ")+
			" (sets its "+waypointspec.ForLabel+" label)")
}

// applyObject is the Gateway as cairnctl applies it: type, name, labels
// and spec, nothing the server owns.
func applyObject(gw *gatewayv1.Gateway) map[string]any {
	meta := map[string]any{"name": gw.Name, "labels": gw.Labels}
	if gw.Namespace != "" {
		meta["namespace"] = gw.Namespace
	}
	return map[string]any{
		"apiVersion": gw.APIVersion,
		"kind":       gw.Kind,
		"metadata":   meta,
		"spec":       gw.Spec,
	}
}

// listWaypoints returns the waypoints in namespace ("" for all), sorted by
// namespace and name.
func listWaypoints(ctx context.Context, c *kube.Clients, namespace string) ([]gatewayv1.Gateway, error) {
	list, err := c.Gateway.GatewayV1().Gateways(namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		if apierrors.IsNotFound(err) {
			return nil, errNoGatewayAPI
		}
		return nil, fmt.Errorf("listing Gateways: %w", err)
	}
	var out []gatewayv1.Gateway
	for _, gw := range list.Items {
		if waypointspec.IsWaypoint(&gw) {
			out = append(out, gw)
		}
	}
	slices.SortFunc(out, func(a, b gatewayv1.Gateway) int {
		if c := strings.Compare(a.Namespace, b.Namespace); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	return out, nil
}

// getWaypoint reads one waypoint. A missing Gateway is reported as "not
// found" (errNotFound), a Gateway of another class as not a waypoint.
func getWaypoint(ctx context.Context, c *kube.Clients, namespace, name string) (*gatewayv1.Gateway, error) {
	gw, err := c.Gateway.GatewayV1().Gateways(namespace).Get(ctx, name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return nil, fmt.Errorf("waypoint %s/%s %w (cairnctl waypoint list -n %s shows the waypoints there)", namespace, name, errNotFound, namespace)
	case err != nil:
		return nil, fmt.Errorf("reading Gateway %s/%s: %w", namespace, name, err)
	case !waypointspec.IsWaypoint(gw):
		return nil, fmt.Errorf("the Gateway %s/%s is not a waypoint (its class is %q, not %q)", namespace, name, gw.Spec.GatewayClassName, waypointspec.ClassName)
	}
	return gw, nil
}

var errNotFound = errors.New("not found")

// condition returns gw's condition of type t, or nil.
func condition(gw *gatewayv1.Gateway, t gatewayv1.GatewayConditionType) *metav1.Condition {
	for i := range gw.Status.Conditions {
		if gw.Status.Conditions[i].Type == string(t) {
			return &gw.Status.Conditions[i]
		}
	}
	return nil
}

// Programmed reports whether a controller has programmed gw as it is now:
// Programmed is True and observed at gw's current generation (a True left
// over from before a change of the spec does not count).
func Programmed(gw *gatewayv1.Gateway) bool {
	c := condition(gw, gatewayv1.GatewayConditionProgrammed)
	return c != nil && c.Status == metav1.ConditionTrue && c.ObservedGeneration >= gw.Generation
}

// programmedColumn is the PROGRAMMED column of list: the condition's
// status, or Unknown without one.
func programmedColumn(gw *gatewayv1.Gateway) string {
	c := condition(gw, gatewayv1.GatewayConditionProgrammed)
	if c == nil {
		return string(metav1.ConditionUnknown)
	}
	return string(c.Status)
}

// pendingDefault reports whether c is the placeholder the Gateway CRD's
// schema defaults the status to, i.e. no controller has written it.
func pendingDefault(c *metav1.Condition) bool {
	return c.Status == metav1.ConditionUnknown && c.Reason == string(gatewayv1.GatewayReasonPending) &&
		c.Message == "Waiting for controller"
}

// notProgrammedReason says, for a user, why gw is not programmed yet and
// what to check.
func notProgrammedReason(gw *gatewayv1.Gateway) string {
	accepted := condition(gw, gatewayv1.GatewayConditionAccepted)
	programmed := condition(gw, gatewayv1.GatewayConditionProgrammed)
	switch {
	case programmed == nil || pendingDefault(programmed) && (accepted == nil || pendingDefault(accepted)):
		return "no controller has taken it (its status still says \"Waiting for controller\"): check that istiod-lite is running " +
			"(kubectl -n cairn-system get deploy istiod-lite) and that GatewayClass " + waypointspec.ClassName +
			" exists (kubectl get gatewayclass " + waypointspec.ClassName + ")"
	case accepted != nil && accepted.Status == metav1.ConditionFalse:
		return fmt.Sprintf("the controller did not accept it: Accepted=False, reason %s: %s", accepted.Reason, accepted.Message)
	case programmed.Status == metav1.ConditionTrue:
		return fmt.Sprintf("Programmed=True was observed at generation %d, the Gateway is at generation %d: the controller has not caught up yet",
			programmed.ObservedGeneration, gw.Generation)
	}
	msg := fmt.Sprintf("Programmed=%s, reason %s", programmed.Status, programmed.Reason)
	if programmed.Message != "" {
		msg += ": " + programmed.Message
	}
	if len(gw.Status.Addresses) == 0 {
		msg += " (no address assigned yet)"
	}
	return msg
}

// age formats the time since t as kubectl does, "-" for no time.
func age(t metav1.Time, now time.Time) string {
	if t.IsZero() || t.Year() < 2000 {
		return "-"
	}
	return duration.HumanDuration(now.Sub(t.Time))
}

// addresses formats gw's status addresses, "<none>" without any.
func addresses(gw *gatewayv1.Gateway, withType bool) string {
	if len(gw.Status.Addresses) == 0 {
		return "<none>"
	}
	parts := make([]string, 0, len(gw.Status.Addresses))
	for _, a := range gw.Status.Addresses {
		s := a.Value
		if withType && a.Type != nil {
			s += " (" + string(*a.Type) + ")"
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, ", ")
}

func warn(w io.Writer, format string, args ...any) {
	fmt.Fprintf(w, "Warning: "+format+"\n", args...)
}
