package waypoint

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/cairnmesh/cairn/cairnctl/kube"
	"github.com/cairnmesh/cairn/internal/ambient"
	"github.com/cairnmesh/cairn/internal/waypointspec"
)

// DefaultWaitTimeout bounds --wait unless --waypoint-timeout says
// otherwise (istioctl's default).
const DefaultWaitTimeout = 90 * time.Second

// pollInterval is how often --wait reads the Gateway.
const pollInterval = 500 * time.Millisecond

type applyOptions struct {
	*common
	forValue  string
	enroll    bool
	overwrite bool
	wait      bool
	timeout   time.Duration
}

func applyCommand(c *common) *cobra.Command {
	o := &applyOptions{common: c}
	cmd := &cobra.Command{
		Use:   "apply",
		Short: "Create or update a waypoint, and optionally send a namespace's traffic through it",
		Long: `apply creates the waypoint's Gateway (class istio-waypoint, listener "mesh"
on 15008/HBONE, label istio.io/waypoint-for), or updates it to what the
flags say. istiod-lite then deploys the waypoint and marks the Gateway
Programmed.

--enroll-namespace labels the namespace istio.io/use-waypoint=<name>, so
that its traffic goes through the waypoint. With --wait the label is set
only once the waypoint is Programmed: traffic is never sent to a waypoint
that is not there yet. A namespace that already uses another waypoint
keeps it unless --overwrite is given.`,
		Example: `  # A waypoint named "waypoint" in the current namespace
  cairnctl waypoint apply

  # A waypoint for Services and pods, used by the whole namespace, once ready
  cairnctl waypoint apply -n shop --for all --enroll-namespace --wait

  # Move namespace shop from its current waypoint to "reviews-wp"
  cairnctl waypoint apply -n shop --name reviews-wp --enroll-namespace --overwrite`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.run(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	addForFlag(cmd, &o.forValue)
	fs := cmd.Flags()
	fs.BoolVar(&o.enroll, "enroll-namespace", false,
		"label the namespace "+waypointspec.UseWaypointLabel+"=<name>, so that its traffic goes through this waypoint")
	fs.BoolVar(&o.overwrite, "overwrite", false,
		"with --enroll-namespace: replace the namespace's "+waypointspec.UseWaypointLabel+" label if it names another waypoint")
	fs.BoolVarP(&o.wait, "wait", "w", false, "wait until the waypoint is Programmed (ready to take traffic)")
	fs.DurationVar(&o.timeout, "waypoint-timeout", DefaultWaitTimeout, "how long --wait waits")
	return cmd
}

func (o *applyOptions) run(ctx context.Context, out, errOut io.Writer) error {
	if o.overwrite && !o.enroll {
		return errors.New("--overwrite replaces the namespace's " + waypointspec.UseWaypointLabel +
			" label and goes with --enroll-namespace")
	}
	if o.timeout <= 0 {
		return fmt.Errorf("--waypoint-timeout %v: want a positive duration", o.timeout)
	}
	// Check the flags before touching the cluster.
	gw, err := waypointspec.Gateway("", o.name, o.forValue)
	if err != nil {
		return err
	}
	c, err := o.kube.Clients()
	if err != nil {
		return err
	}
	ns := c.Namespace
	gw.Namespace = ns

	nsObj, err := c.Kube.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return fmt.Errorf("namespace %s does not exist: create it (kubectl create namespace %s) or choose another with -n", ns, ns)
	case err != nil:
		return fmt.Errorf("reading namespace %s: %w", ns, err)
	}
	if o.enroll {
		if err := checkEnrollment(nsObj, o.name, o.overwrite); err != nil {
			return err
		}
	}
	if err := checkGatewayAPI(c); err != nil {
		return err
	}
	checkGatewayClass(ctx, c, errOut)
	if nsObj.Labels[ambient.DataplaneModeLabel] != ambient.DataplaneModeAmbient {
		warn(errOut, "namespace %s is not enrolled in the ambient mesh, so its pods' traffic does not reach the waypoint; "+
			"enroll it with: kubectl label namespace %s %s=%s", ns, ns, ambient.DataplaneModeLabel, ambient.DataplaneModeAmbient)
	}

	applied, verb, err := applyGateway(ctx, c, gw)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "waypoint %s/%s %s (for %s)\n", ns, gw.Name, verb, waypointspec.For(applied))

	if o.wait {
		if err := waitProgrammed(ctx, c, ns, gw.Name, o.timeout); err != nil {
			if o.enroll {
				err = fmt.Errorf("%w\nnamespace %s was not labelled %s=%s: run this command again once the waypoint is ready",
					err, ns, waypointspec.UseWaypointLabel, gw.Name)
			}
			return err
		}
		fmt.Fprintf(out, "waypoint %s/%s is programmed\n", ns, gw.Name)
		if o.enroll {
			// The wait may have been long: check the namespace again.
			if nsObj, err = c.Kube.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{}); err != nil {
				return fmt.Errorf("reading namespace %s: %w", ns, err)
			}
			if err := checkEnrollment(nsObj, o.name, o.overwrite); err != nil {
				return err
			}
		}
	}
	if o.enroll {
		return enrollNamespace(ctx, c, nsObj, gw.Name, out)
	}
	return nil
}

// checkEnrollment refuses to move a namespace that already uses another
// waypoint (or opts out of waypoints) unless overwrite is set.
func checkEnrollment(ns *corev1.Namespace, name string, overwrite bool) error {
	cur, set, optOut := waypointspec.UseWaypoint(ns.Labels, ns.Name)
	want := waypointspec.Ref{Namespace: ns.Name, Name: name}
	if overwrite || (!set && !optOut) || (set && cur == want) {
		return nil
	}
	have := useLabels(ns.Labels)
	if optOut {
		return fmt.Errorf("namespace %s opts out of waypoints (%s); run again with --overwrite to send its traffic through waypoint %s instead",
			ns.Name, have, name)
	}
	return fmt.Errorf("namespace %s already uses waypoint %s (%s); run again with --overwrite to use waypoint %s instead",
		ns.Name, cur, have, want)
}

// useLabels formats the waypoint-selecting labels of an object.
func useLabels(labels map[string]string) string {
	s := waypointspec.UseWaypointLabel + "=" + labels[waypointspec.UseWaypointLabel]
	if v, ok := labels[waypointspec.UseWaypointNamespaceLabel]; ok {
		s += ", " + waypointspec.UseWaypointNamespaceLabel + "=" + v
	}
	return s
}

// checkGatewayAPI makes sure the cluster serves Gateway API Gateways.
func checkGatewayAPI(c *kube.Clients) error {
	res, err := c.Kube.Discovery().ServerResourcesForGroupVersion(gatewayv1.GroupVersion.String())
	if apierrors.IsNotFound(err) {
		return errNoGatewayAPI
	}
	if err != nil {
		return fmt.Errorf("asking the API server for the Gateway API: %w", err)
	}
	if !slices.ContainsFunc(res.APIResources, func(r metav1.APIResource) bool { return r.Name == "gateways" }) {
		return errNoGatewayAPI
	}
	return nil
}

// checkGatewayClass warns when the istio-waypoint GatewayClass is missing
// or not accepted: the Gateway would then never be programmed. A user who
// may not read GatewayClasses (cluster-scoped) gets no warning.
func checkGatewayClass(ctx context.Context, c *kube.Clients, errOut io.Writer) {
	gc, err := c.Gateway.GatewayV1().GatewayClasses().Get(ctx, waypointspec.ClassName, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		warn(errOut, "GatewayClass %s does not exist, so no controller will deploy the waypoint; istiod-lite creates it when it starts: "+
			"install Cairn's control plane (kubectl apply -f install/manifests/istiod-lite.yaml) or check that it runs", waypointspec.ClassName)
		return
	case err != nil:
		return
	}
	for _, cond := range gc.Status.Conditions {
		if cond.Type == string(gatewayv1.GatewayClassConditionStatusAccepted) && cond.Status == metav1.ConditionFalse {
			warn(errOut, "GatewayClass %s is not accepted by its controller (%s: %s)", waypointspec.ClassName, cond.Reason, cond.Message)
		}
	}
}

// applyGateway creates or updates gw with server-side apply and says which
// happened: "created", "configured" or "unchanged". A Gateway of the same
// name that is not a waypoint is left alone.
func applyGateway(ctx context.Context, c *kube.Clients, gw *gatewayv1.Gateway) (*gatewayv1.Gateway, string, error) {
	gateways := c.Gateway.GatewayV1().Gateways(gw.Namespace)
	existing, err := gateways.Get(ctx, gw.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		existing = nil
	case err != nil:
		return nil, "", fmt.Errorf("reading Gateway %s/%s: %w", gw.Namespace, gw.Name, err)
	case !waypointspec.IsWaypoint(existing):
		return nil, "", fmt.Errorf("the Gateway %s/%s exists and is not a waypoint (its class is %q): choose another name with --name",
			gw.Namespace, gw.Name, existing.Spec.GatewayClassName)
	}
	body, err := json.Marshal(applyObject(gw))
	if err != nil {
		return nil, "", fmt.Errorf("encoding Gateway %s/%s: %w", gw.Namespace, gw.Name, err)
	}
	force := true
	applied, err := gateways.Patch(ctx, gw.Name, types.ApplyPatchType, body,
		metav1.PatchOptions{FieldManager: FieldManager, Force: &force})
	if err != nil {
		return nil, "", fmt.Errorf("applying Gateway %s/%s: %w", gw.Namespace, gw.Name, err)
	}
	// A repeated apply may still rewrite managedFields: what the user
	// cares about is the spec (generation) and the labels.
	switch {
	case existing == nil:
		return applied, "created", nil
	case existing.Generation == applied.Generation && maps.Equal(existing.Labels, applied.Labels):
		return applied, "unchanged", nil
	}
	return applied, "configured", nil
}

// waitProgrammed polls the Gateway until it is Programmed or timeout
// passes; the error then says what is missing.
func waitProgrammed(ctx context.Context, c *kube.Clients, namespace, name string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	ticker := time.NewTicker(pollInterval)
	defer ticker.Stop()
	var (
		last    *gatewayv1.Gateway
		lastErr error
	)
	for {
		gw, err := c.Gateway.GatewayV1().Gateways(namespace).Get(ctx, name, metav1.GetOptions{})
		if err == nil {
			if Programmed(gw) {
				return nil
			}
			last = gw
		} else if ctx.Err() == nil {
			lastErr = err
		}
		select {
		case <-ctx.Done():
			why := "no answer from the API server"
			switch {
			case last != nil:
				why = notProgrammedReason(last)
			case lastErr != nil:
				why = "reading it failed: " + lastErr.Error()
			}
			if errors.Is(ctx.Err(), context.Canceled) {
				return fmt.Errorf("stopped waiting for waypoint %s/%s: %w", namespace, name, ctx.Err())
			}
			return fmt.Errorf("waypoint %s/%s is not programmed after %v: %s\n(cairnctl waypoint status -n %s --name %s shows its conditions; --waypoint-timeout waits longer)",
				namespace, name, timeout, why, namespace, name)
		case <-ticker.C:
		}
	}
}

// enrollNamespace labels ns use-waypoint=name (and drops a
// use-waypoint-namespace label naming another namespace). The patch
// carries the resourceVersion checkEnrollment saw, so a label changed
// meanwhile by someone else is not overwritten blindly.
func enrollNamespace(ctx context.Context, c *kube.Clients, ns *corev1.Namespace, name string, out io.Writer) error {
	cur, set, _ := waypointspec.UseWaypoint(ns.Labels, ns.Name)
	if want := (waypointspec.Ref{Namespace: ns.Name, Name: name}); set && cur == want {
		if _, ok := ns.Labels[waypointspec.UseWaypointNamespaceLabel]; !ok {
			fmt.Fprintf(out, "namespace %s already uses waypoint %s (%s=%s)\n", ns.Name, name, waypointspec.UseWaypointLabel, name)
			return nil
		}
	}
	labels := map[string]any{waypointspec.UseWaypointLabel: name}
	if _, ok := ns.Labels[waypointspec.UseWaypointNamespaceLabel]; ok {
		labels[waypointspec.UseWaypointNamespaceLabel] = nil // JSON null removes it
	}
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{
		"labels":          labels,
		"resourceVersion": ns.ResourceVersion,
	}})
	if err != nil {
		return fmt.Errorf("encoding the namespace label: %w", err)
	}
	_, err = c.Kube.CoreV1().Namespaces().Patch(ctx, ns.Name, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: FieldManager})
	switch {
	case apierrors.IsConflict(err):
		return fmt.Errorf("namespace %s changed while cairnctl was applying the waypoint; run the command again", ns.Name)
	case err != nil:
		return fmt.Errorf("labelling namespace %s %s=%s: %w", ns.Name, waypointspec.UseWaypointLabel, name, err)
	}
	was := ""
	if set || ns.Labels[waypointspec.UseWaypointLabel] != "" {
		was = " (was " + useLabels(ns.Labels) + ")"
	}
	fmt.Fprintf(out, "namespace %s labelled %s=%s: its traffic now goes through waypoint %s%s\n",
		ns.Name, waypointspec.UseWaypointLabel, name, name, was)
	return nil
}
