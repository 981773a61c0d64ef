// Package kubeca binds the CA to Kubernetes: a TokenReview Authenticator, a
// PodIndex over a pod informer, the root kept in a Secret, and the trust
// bundle published in a ConfigMap of every enrolled namespace.
package kubeca

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/cairnmesh/cairn/istiod-lite/ca"
)

// DefaultAudience is the audience CA tokens must carry (Istio's).
const DefaultAudience = "istio-ca"

// The keys of a TokenReview's user extra for tokens bound to a pod; the
// node keys are there when the pod was bound to a node at token creation
// (kube-apiserver >= 1.30, feature ServiceAccountTokenPodNodeInfo).
const (
	ExtraPodName  = "authentication.kubernetes.io/pod-name"
	ExtraPodUID   = "authentication.kubernetes.io/pod-uid"
	ExtraNodeName = "authentication.kubernetes.io/node-name"
	ExtraNodeUID  = "authentication.kubernetes.io/node-uid"
)

const saPrefix = "system:serviceaccount:"

// TokenReviewer authenticates gRPC callers by the bearer token in the
// "authorization" metadata with a TokenReview. The review runs with the
// client's own credentials, which need "create" on tokenreviews.
type TokenReviewer struct {
	Client kubernetes.Interface
	// Audiences the token must carry one of; {DefaultAudience} if empty.
	Audiences []string
}

var _ ca.Authenticator = (*TokenReviewer)(nil)

// Authenticate implements ca.Authenticator. Bad tokens give
// Unauthenticated, a failing API server Unavailable.
func (r *TokenReviewer) Authenticate(ctx context.Context) (ca.Caller, error) {
	token, err := bearerToken(ctx)
	if err != nil {
		return ca.Caller{}, status.Error(codes.Unauthenticated, err.Error())
	}
	auds := r.Audiences
	if len(auds) == 0 {
		auds = []string{DefaultAudience}
	}
	review, err := r.Client.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{
		Spec: authnv1.TokenReviewSpec{Token: token, Audiences: auds},
	}, metav1.CreateOptions{})
	if err != nil {
		return ca.Caller{}, status.Errorf(codes.Unavailable, "reviewing token: %v", err)
	}
	st := review.Status
	if !st.Authenticated {
		msg := st.Error
		if msg == "" {
			msg = "token not authenticated"
		}
		return ca.Caller{}, status.Errorf(codes.Unauthenticated, "token rejected: %s", msg)
	}
	if !slices.ContainsFunc(st.Audiences, func(a string) bool { return slices.Contains(auds, a) }) {
		return ca.Caller{}, status.Errorf(codes.Unauthenticated, "token audiences %v include none of %v", st.Audiences, auds)
	}
	ns, sa, ok := strings.Cut(strings.TrimPrefix(st.User.Username, saPrefix), ":")
	if !strings.HasPrefix(st.User.Username, saPrefix) || !ok || ns == "" || sa == "" || strings.Contains(sa, ":") {
		return ca.Caller{}, status.Errorf(codes.Unauthenticated, "user %q is not a service account", st.User.Username)
	}
	one := func(key string) (string, error) {
		v := st.User.Extra[key]
		switch len(v) {
		case 0:
			return "", nil
		case 1:
			return v[0], nil
		}
		return "", status.Errorf(codes.Unauthenticated, "token has %d values for %s", len(v), key)
	}
	c := ca.Caller{Namespace: ns, ServiceAccount: sa}
	for key, dst := range map[string]*string{ExtraPodName: &c.PodName, ExtraPodUID: &c.PodUID, ExtraNodeName: &c.NodeName} {
		if *dst, err = one(key); err != nil {
			return ca.Caller{}, err
		}
	}
	return c, nil
}

// bearerToken returns the token of "authorization: Bearer <token>".
func bearerToken(ctx context.Context) (string, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	v := md.Get("authorization")
	if len(v) != 1 {
		return "", fmt.Errorf("want one \"authorization: Bearer <token>\" metadata entry, got %d", len(v))
	}
	scheme, token, ok := strings.Cut(v[0], " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(token) == "" {
		return "", fmt.Errorf("authorization metadata is not \"Bearer <token>\"")
	}
	return strings.TrimSpace(token), nil
}
