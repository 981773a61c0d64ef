package manifest

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// CRDResource is the resource of CustomResourceDefinitions. They are read
// as unstructured objects so that the root module needs no
// k8s.io/apiextensions-apiserver.
var CRDResource = schema.GroupVersionResource{
	Group:    "apiextensions.k8s.io",
	Version:  "v1",
	Resource: "customresourcedefinitions",
}

// CRDNames returns the names of the CustomResourceDefinitions among objs.
func CRDNames(objs []*unstructured.Unstructured) []string {
	var names []string
	for _, o := range objs {
		gvk := o.GroupVersionKind()
		if gvk.Group == CRDResource.Group && gvk.Kind == "CustomResourceDefinition" {
			names = append(names, o.GetName())
		}
	}
	return names
}

// crdPollInterval is how often WaitForCRDs reads the CRDs.
const crdPollInterval = 100 * time.Millisecond

// WaitForCRDs waits until every named CRD reports the condition
// Established=True, i.e. its resource is served, and then resets the
// discovery cache so the new kinds can be applied at once. It returns the
// context's error, naming the CRDs still pending, if ctx ends first.
func (a *Applier) WaitForCRDs(ctx context.Context, names []string) error {
	pending := slices.Clone(names)
	tick := time.NewTicker(crdPollInterval)
	defer tick.Stop()
	reasons := map[string]string{}
	for {
		var still []string
		for _, name := range pending {
			crd, err := a.client.Resource(CRDResource).Get(ctx, name, metav1.GetOptions{})
			switch {
			case apierrors.IsNotFound(err):
				reasons[name] = "not found"
			case err != nil && ctx.Err() == nil:
				return fmt.Errorf("waiting for CRD %s: %w", name, err)
			case err != nil:
				reasons[name] = err.Error() // ctx ended mid-request; reported below
			default:
				ok, why := established(crd)
				if ok {
					continue
				}
				reasons[name] = why
			}
			still = append(still, name)
		}
		pending = still
		if len(pending) == 0 {
			a.mapper.Reset()
			return nil
		}
		select {
		case <-ctx.Done():
			var b strings.Builder
			for i, n := range pending {
				if i > 0 {
					b.WriteString(", ")
				}
				fmt.Fprintf(&b, "%s (%s)", n, reasons[n])
			}
			return fmt.Errorf("waiting for CRDs to be established: %s: %w", b.String(), ctx.Err())
		case <-tick.C:
		}
	}
}

// EstablishedTime returns when crd's Established condition last changed
// (second precision), and false if it is not Established.
func EstablishedTime(crd *unstructured.Unstructured) (time.Time, bool) {
	conds, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
	for _, c := range conds {
		m, ok := c.(map[string]any)
		if !ok || m["type"] != "Established" || m["status"] != "True" {
			continue
		}
		ts, _ := m["lastTransitionTime"].(string)
		t, err := time.Parse(time.RFC3339, ts)
		return t, err == nil
	}
	return time.Time{}, false
}

// established reports whether crd has Established=True, and otherwise why
// not.
func established(crd *unstructured.Unstructured) (bool, string) {
	conds, _, err := unstructured.NestedSlice(crd.Object, "status", "conditions")
	if err != nil {
		return false, fmt.Sprintf("unreadable status: %v", err)
	}
	for _, c := range conds {
		m, ok := c.(map[string]any)
		if !ok || m["type"] != "Established" {
			continue
		}
		if m["status"] == "True" {
			return true, ""
		}
		return false, fmt.Sprintf("Established=%v: %v", m["status"], m["message"])
	}
	return false, "no Established condition yet"
}
