package waypoint

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/cairnmesh/cairn/cairnctl/kube"
	"github.com/cairnmesh/cairn/internal/waypointspec"
)

// user is a namespace or Service whose istio.io/use-waypoint label names
// a waypoint.
type user struct {
	kind      string // "namespace" or "service"
	namespace string // the Service's namespace; the namespace's own name
	name      string
	labels    string // the selecting labels, as useLabels formats them
	waypoint  waypointspec.Ref
}

func (u user) String() string {
	if u.kind == "namespace" {
		return "namespace " + u.name
	}
	return u.kind + " " + u.namespace + "/" + u.name
}

// unlabelCommand is the kubectl command that removes the labels.
func (u user) unlabelCommand() string {
	target := "namespace " + u.name
	if u.kind != "namespace" {
		target = "-n " + u.namespace + " " + u.kind + " " + u.name
	}
	return fmt.Sprintf("kubectl label %s %s- %s-", target, waypointspec.UseWaypointLabel, waypointspec.UseWaypointNamespaceLabel)
}

// findUsers returns the namespaces and Services whose labels name one of
// the waypoints in want, sorted by waypoint, kind, namespace and name. Only
// labelled objects are listed (a label selector), so the cost follows the
// number of users, not the size of the cluster. A user who may not list
// Services cluster-wide gets those in the waypoints' own namespaces.
func findUsers(ctx context.Context, c *kube.Clients, want map[waypointspec.Ref]bool) ([]user, error) {
	sel := metav1.ListOptions{LabelSelector: waypointspec.UseWaypointLabel}
	var (
		users []user
		errs  []error
	)
	add := func(kind string, meta metav1.ObjectMeta) {
		ns := meta.Namespace
		if kind == "namespace" {
			ns = meta.Name
		}
		ref, set, _ := waypointspec.UseWaypoint(meta.Labels, ns)
		if set && want[ref] {
			users = append(users, user{kind: kind, namespace: ns, name: meta.Name, labels: useLabels(meta.Labels), waypoint: ref})
		}
	}
	nss, err := c.Kube.CoreV1().Namespaces().List(ctx, sel)
	if err != nil {
		errs = append(errs, fmt.Errorf("listing namespaces: %w", err))
	} else {
		for _, ns := range nss.Items {
			add("namespace", ns.ObjectMeta)
		}
	}
	scopes := []string{metav1.NamespaceAll}
	svcs, err := c.Kube.CoreV1().Services(metav1.NamespaceAll).List(ctx, sel)
	if apierrors.IsForbidden(err) {
		scopes = scopes[:0]
		for ref := range want {
			if !slices.Contains(scopes, ref.Namespace) {
				scopes = append(scopes, ref.Namespace)
			}
		}
		slices.Sort(scopes)
	} else if err != nil {
		errs = append(errs, fmt.Errorf("listing Services: %w", err))
		scopes = nil
	} else {
		for _, svc := range svcs.Items {
			add("service", svc.ObjectMeta)
		}
		scopes = nil
	}
	for _, ns := range scopes {
		svcs, err := c.Kube.CoreV1().Services(ns).List(ctx, sel)
		if err != nil {
			errs = append(errs, fmt.Errorf("listing Services in %s: %w", ns, err))
			continue
		}
		for _, svc := range svcs.Items {
			add("service", svc.ObjectMeta)
		}
	}
	slices.SortFunc(users, func(a, b user) int {
		return cmp.Or(
			cmp.Compare(a.waypoint.String(), b.waypoint.String()),
			cmp.Compare(a.kind, b.kind),
			cmp.Compare(a.namespace, b.namespace),
			cmp.Compare(a.name, b.name))
	})
	return users, errors.Join(errs...)
}
