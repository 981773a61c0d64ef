package integration

import (
	"path/filepath"
	"slices"
	"testing"

	authzv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/cairnmesh/cairn/internal/manifest"
	"github.com/cairnmesh/cairn/internal/testenv"
)

// TestInstallGrantsLeastPrivilege applies install/ to a real API server as
// a user does (the DaemonSet and Deployment pass the API server's
// validation, securityContext included), then asks the API server, with
// SubjectAccessReviews, what the ServiceAccounts of istiod-lite and
// ztunnel may do: what their code uses, and nothing more.
func TestInstallGrantsLeastPrivilege(t *testing.T) {
	env := testenv.Get(t)
	ctx := testContext(t)
	root, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	applier, err := manifest.New(env.Config(), manifest.Options{FieldManager: "install-rbac-test"})
	if err != nil {
		t.Fatal(err)
	}
	crdFiles, err := filepath.Glob(filepath.Join(root, "install", "crds", "*.yaml"))
	if err != nil || len(crdFiles) == 0 {
		t.Fatalf("no CRDs in install/crds (%v)", err)
	}
	if _, err := applier.ApplyFiles(ctx, crdFiles...); err != nil {
		t.Fatal(err)
	}
	if _, err := applier.ApplyFiles(ctx,
		filepath.Join(root, "install", "manifests", "istiod-lite.yaml"),
		filepath.Join(root, "install", "manifests", "ztunnel.yaml")); err != nil {
		t.Fatalf("applying install/manifests: %v", err)
	}

	// ztunnel's container: the runtime's seccomp profile, no privilege
	// escalation, a read-only root, and only the capabilities it uses;
	// istiod-lite's: no privilege at all.
	ds, err := env.Client().AppsV1().DaemonSets("cairn-system").Get(ctx, "ztunnel", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	dep, err := env.Client().AppsV1().Deployments("cairn-system").Get(ctx, "istiod-lite", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		sc   *corev1.SecurityContext
		caps []corev1.Capability
	}{
		{"ztunnel", ds.Spec.Template.Spec.Containers[0].SecurityContext, []corev1.Capability{"NET_ADMIN", "NET_RAW", "SYS_ADMIN", "SYS_PTRACE"}},
		{"istiod-lite", dep.Spec.Template.Spec.Containers[0].SecurityContext, nil},
	} {
		sc := c.sc
		if sc == nil {
			t.Errorf("%s: no securityContext", c.name)
			continue
		}
		switch {
		case ptr.Deref(sc.Privileged, false):
			t.Errorf("%s: privileged", c.name)
		case !(sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation):
			t.Errorf("%s: allowPrivilegeEscalation is not false", c.name)
		case !ptr.Deref(sc.ReadOnlyRootFilesystem, false):
			t.Errorf("%s: root filesystem is writable", c.name)
		case sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || !slices.Equal(sc.Capabilities.Add, c.caps):
			t.Errorf("%s: capabilities %+v, want drop ALL, add %v", c.name, sc.Capabilities, c.caps)
		}
		seccomp := sc.SeccompProfile
		if seccomp == nil && c.name == "istiod-lite" {
			seccomp = dep.Spec.Template.Spec.SecurityContext.SeccompProfile
		}
		if seccomp == nil || seccomp.Type != corev1.SeccompProfileTypeRuntimeDefault {
			t.Errorf("%s: seccomp profile %+v, want RuntimeDefault", c.name, seccomp)
		}
	}

	const (
		istiod  = "system:serviceaccount:cairn-system:istiod-lite"
		ztunnel = "system:serviceaccount:cairn-system:ztunnel"
		shop    = "shop" // any namespace: RBAC does not need it to exist
	)
	type attrs = authzv1.ResourceAttributes
	for _, tc := range []struct {
		user string
		a    attrs
		want bool
	}{
		// istiod-lite: the mesh model, read.
		{istiod, attrs{Verb: "list", Resource: "pods"}, true},
		{istiod, attrs{Verb: "watch", Group: "discovery.k8s.io", Resource: "endpointslices"}, true},
		{istiod, attrs{Verb: "update", Resource: "pods", Namespace: shop, Name: "web"}, false},
		{istiod, attrs{Verb: "get", Resource: "nodes", Name: "node-a"}, false},
		// Policy status written, the policies themselves not.
		{istiod, attrs{Verb: "update", Group: "security.istio.io", Resource: "authorizationpolicies", Subresource: "status", Namespace: shop, Name: "p"}, true},
		{istiod, attrs{Verb: "update", Group: "security.istio.io", Resource: "authorizationpolicies", Namespace: shop, Name: "p"}, false},
		// The trust bundle ConfigMap, by name; no other ConfigMap.
		{istiod, attrs{Verb: "list", Resource: "configmaps", Name: "cairn-root-cert"}, true},
		{istiod, attrs{Verb: "watch", Resource: "configmaps", Name: "cairn-root-cert"}, true},
		{istiod, attrs{Verb: "get", Resource: "configmaps", Namespace: shop, Name: "cairn-root-cert"}, true},
		{istiod, attrs{Verb: "update", Resource: "configmaps", Namespace: shop, Name: "cairn-root-cert"}, true},
		{istiod, attrs{Verb: "create", Resource: "configmaps", Namespace: shop}, true},
		{istiod, attrs{Verb: "list", Resource: "configmaps"}, false},
		{istiod, attrs{Verb: "get", Resource: "configmaps", Namespace: shop, Name: "app-config"}, false},
		{istiod, attrs{Verb: "update", Resource: "configmaps", Namespace: shop, Name: "app-config"}, false},
		{istiod, attrs{Verb: "patch", Resource: "configmaps", Namespace: shop, Name: "cairn-root-cert"}, false},
		{istiod, attrs{Verb: "delete", Resource: "configmaps", Namespace: shop, Name: "cairn-root-cert"}, false},
		// The CA Secret, by name; no other Secret.
		{istiod, attrs{Verb: "get", Resource: "secrets", Namespace: "cairn-system", Name: "cairn-ca"}, true},
		{istiod, attrs{Verb: "watch", Resource: "secrets", Namespace: "cairn-system", Name: "cairn-ca"}, true},
		{istiod, attrs{Verb: "create", Resource: "secrets", Namespace: "cairn-system"}, true},
		{istiod, attrs{Verb: "list", Resource: "secrets", Namespace: "cairn-system"}, false},
		{istiod, attrs{Verb: "get", Resource: "secrets", Namespace: "cairn-system", Name: "other"}, false},
		{istiod, attrs{Verb: "update", Resource: "secrets", Namespace: "cairn-system", Name: "cairn-ca"}, false},
		{istiod, attrs{Verb: "get", Resource: "secrets", Namespace: shop, Name: "cairn-ca"}, false},
		{istiod, attrs{Verb: "create", Group: "authentication.k8s.io", Resource: "tokenreviews"}, true},

		// ztunnel: reads its node's pods (RBAC cannot narrow that to the
		// node: a list of every pod is allowed, as the manifest says),
		// namespaces, its Node and its DaemonSet. It writes nothing.
		{ztunnel, attrs{Verb: "watch", Resource: "pods"}, true},
		{ztunnel, attrs{Verb: "get", Resource: "pods", Namespace: shop, Name: "web"}, true},
		{ztunnel, attrs{Verb: "list", Resource: "namespaces"}, true},
		{ztunnel, attrs{Verb: "get", Resource: "nodes", Name: "node-a"}, true},
		{ztunnel, attrs{Verb: "get", Group: "apps", Resource: "daemonsets", Namespace: "cairn-system", Name: "ztunnel"}, true},
		{ztunnel, attrs{Verb: "get", Group: "apps", Resource: "daemonsets", Namespace: "cairn-system", Name: "other"}, false},
		{ztunnel, attrs{Verb: "list", Resource: "nodes"}, false},
		{ztunnel, attrs{Verb: "create", Resource: "events", Namespace: shop}, true},
		{ztunnel, attrs{Verb: "update", Resource: "events", Namespace: shop, Name: "x"}, false},
		{ztunnel, attrs{Verb: "delete", Resource: "pods", Namespace: shop, Name: "web"}, false},
		{ztunnel, attrs{Verb: "create", Resource: "pods", Subresource: "exec", Namespace: shop, Name: "web"}, false},
		{ztunnel, attrs{Verb: "get", Resource: "secrets", Namespace: shop, Name: "any"}, false},
		{ztunnel, attrs{Verb: "get", Resource: "configmaps", Namespace: shop, Name: "cairn-root-cert"}, false},
		{ztunnel, attrs{Verb: "create", Group: "authentication.k8s.io", Resource: "tokenreviews"}, false},
	} {
		a := tc.a
		sar, err := env.Client().AuthorizationV1().SubjectAccessReviews().Create(ctx, &authzv1.SubjectAccessReview{
			Spec: authzv1.SubjectAccessReviewSpec{User: tc.user, ResourceAttributes: &a},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if sar.Status.Allowed != tc.want {
			t.Errorf("%s %s %s/%s (namespace %q, name %q): allowed=%v, want %v",
				tc.user, a.Verb, a.Resource, a.Subresource, a.Namespace, a.Name, sar.Status.Allowed, tc.want)
		}
	}
}
