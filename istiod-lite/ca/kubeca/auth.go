// Package kubeca binds the CA to Kubernetes: a TokenReview Authenticator, a
// PodIndex over a pod informer, the root kept in a Secret, and the trust
// bundle published in a ConfigMap of every enrolled namespace.
package kubeca

import (
	"cmp"
	"container/list"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/semaphore"

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

// Defaults of TokenReviewer's bounds.
const (
	DefaultReviewCacheSize    = 4096
	DefaultReviewCacheTTL     = 30 * time.Second
	DefaultMaxReviewsInFlight = 16
	DefaultReviewWait         = 2 * time.Second
	// MaxTokenBytes bounds a bearer token. Kubernetes' ServiceAccount
	// tokens are about 1 KiB; a larger one is refused without a review.
	MaxTokenBytes = 16 << 10
)

// TokenReviewer authenticates gRPC callers by the bearer token in the
// "authorization" metadata with a TokenReview. The review runs with the
// client's own credentials, which need "create" on tokenreviews.
//
// A caller who can reach the port can send as many tokens as it likes, so
// what a token costs is bounded: a token that is not a JWT, is larger than
// MaxTokenBytes, has expired or names none of the audiences (read from its
// unverified claims, only ever to refuse) is refused without a review; the
// answer of a review (acceptance or rejection) is remembered by the
// token's SHA-256 for CacheTTL (never beyond the token's expiry), in a
// cache of CacheSize entries; and at most MaxInFlight reviews run at once,
// further callers waiting up to ReviewWait before they are told to retry
// (codes.Unavailable). The zero values of the bounds mean the defaults.
type TokenReviewer struct {
	Client kubernetes.Interface
	// Audiences the token must carry one of; {DefaultAudience} if empty.
	Audiences []string
	// CacheSize bounds the remembered reviews; negative turns the cache off.
	CacheSize int
	// CacheTTL is how long a review's answer is reused.
	CacheTTL time.Duration
	// MaxInFlight bounds the TokenReviews in flight at once.
	MaxInFlight int
	// ReviewWait bounds how long a caller waits for a review slot.
	ReviewWait time.Duration

	once    sync.Once
	cache   *reviewCache
	slots   *semaphore.Weighted
	now     func() time.Time
	reviews *prometheus.CounterVec
}

var _ ca.Authenticator = (*TokenReviewer)(nil)

func (r *TokenReviewer) init() {
	r.once.Do(func() {
		size := cmp.Or(r.CacheSize, DefaultReviewCacheSize)
		if size > 0 {
			r.cache = newReviewCache(size)
		}
		r.slots = semaphore.NewWeighted(int64(max(cmp.Or(r.MaxInFlight, DefaultMaxReviewsInFlight), 1)))
		if r.now == nil {
			r.now = time.Now
		}
		r.reviews = prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cairn_token_authentications_total",
			Help: "Bearer tokens checked, by result: reviewed (a TokenReview was made), cached (answered from the cache), " +
				"malformed (refused without a review), throttled (no review slot in time), error (the review failed).",
		}, []string{"result"})
	})
}

// Collectors returns the reviewer's metrics, for registration.
func (r *TokenReviewer) Collectors() []prometheus.Collector {
	r.init()
	return []prometheus.Collector{r.reviews}
}

// Authenticate implements ca.Authenticator. Bad tokens give
// Unauthenticated; a failing API server, or no review slot in time,
// Unavailable.
func (r *TokenReviewer) Authenticate(ctx context.Context) (ca.Caller, error) {
	r.init()
	token, err := bearerToken(ctx)
	if err != nil {
		r.reviews.WithLabelValues("malformed").Inc()
		return ca.Caller{}, status.Error(codes.Unauthenticated, err.Error())
	}
	auds := r.Audiences
	if len(auds) == 0 {
		auds = []string{DefaultAudience}
	}
	now := r.now()
	exp, err := precheck(token, auds, now)
	if err != nil {
		r.reviews.WithLabelValues("malformed").Inc()
		return ca.Caller{}, status.Errorf(codes.Unauthenticated, "token rejected: %v", err)
	}
	key := sha256.Sum256([]byte(token))
	if c, err, ok := r.cache.get(key, now); ok {
		r.reviews.WithLabelValues("cached").Inc()
		return c, err
	}

	wctx, cancel := context.WithTimeout(ctx, cmp.Or(r.ReviewWait, DefaultReviewWait))
	err = r.slots.Acquire(wctx, 1)
	cancel()
	if err != nil {
		r.reviews.WithLabelValues("throttled").Inc()
		return ca.Caller{}, status.Error(codes.Unavailable, "too many token reviews in flight; retry later")
	}
	defer r.slots.Release(1)
	// Another caller with the same token may have been reviewed meanwhile.
	if c, err, ok := r.cache.get(key, r.now()); ok {
		r.reviews.WithLabelValues("cached").Inc()
		return c, err
	}
	review, err := r.Client.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{
		Spec: authnv1.TokenReviewSpec{Token: token, Audiences: auds},
	}, metav1.CreateOptions{})
	if err != nil {
		r.reviews.WithLabelValues("error").Inc()
		return ca.Caller{}, status.Errorf(codes.Unavailable, "reviewing token: %v", err)
	}
	r.reviews.WithLabelValues("reviewed").Inc()
	c, err := callerOf(review.Status, auds)
	until := r.now().Add(cmp.Or(r.CacheTTL, DefaultReviewCacheTTL))
	if !exp.IsZero() && exp.Before(until) {
		until = exp
	}
	r.cache.put(key, c, err, until)
	return c, err
}

// callerOf reads the caller from a TokenReview's status.
func callerOf(st authnv1.TokenReviewStatus, auds []string) (ca.Caller, error) {
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
	var err error
	for key, dst := range map[string]*string{ExtraPodName: &c.PodName, ExtraPodUID: &c.PodUID, ExtraNodeName: &c.NodeName} {
		if *dst, err = one(key); err != nil {
			return ca.Caller{}, err
		}
	}
	return c, nil
}

// precheck refuses, without asking the API server, a token that cannot be
// a valid ServiceAccount token for auds at now: not a JWT, too large,
// expired, or for other audiences. The claims are not verified: they are
// only ever used to refuse, and to cap how long a review's answer is kept.
// It returns the token's expiry (zero if it has none).
func precheck(token string, auds []string, now time.Time) (time.Time, error) {
	if len(token) > MaxTokenBytes {
		return time.Time{}, fmt.Errorf("token of %d bytes, more than %d", len(token), MaxTokenBytes)
	}
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return time.Time{}, errors.New("token is not a JWT")
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return time.Time{}, errors.New("token is not a JWT: payload is not base64url")
	}
	var claims struct {
		Aud json.RawMessage `json:"aud"`
		Exp *float64        `json:"exp"`
	}
	if err := json.Unmarshal(payload, &claims); err != nil {
		return time.Time{}, errors.New("token is not a JWT: payload is not JSON")
	}
	var tokenAuds []string
	var one string
	if err := json.Unmarshal(claims.Aud, &one); err == nil {
		tokenAuds = []string{one}
	} else if err := json.Unmarshal(claims.Aud, &tokenAuds); err != nil {
		return time.Time{}, errors.New("token has no audience")
	}
	if !slices.ContainsFunc(tokenAuds, func(a string) bool { return slices.Contains(auds, a) }) {
		return time.Time{}, fmt.Errorf("token audiences %v include none of %v", tokenAuds, auds)
	}
	var exp time.Time
	if claims.Exp != nil {
		exp = time.Unix(int64(*claims.Exp), 0)
		if !exp.After(now) {
			return time.Time{}, fmt.Errorf("token expired at %s", exp.UTC().Format(time.RFC3339))
		}
	}
	return exp, nil
}

// reviewCache remembers reviews' answers by token hash, least recently
// used first out.
type reviewCache struct {
	mu    sync.Mutex
	size  int
	lru   *list.List // of *reviewEntry, most recent first
	byKey map[[sha256.Size]byte]*list.Element
}

type reviewEntry struct {
	key    [sha256.Size]byte
	caller ca.Caller
	err    error
	until  time.Time
}

func newReviewCache(size int) *reviewCache {
	return &reviewCache{size: size, lru: list.New(), byKey: make(map[[sha256.Size]byte]*list.Element, size)}
}

// get returns a remembered answer that is still fresh at now. A nil cache
// remembers nothing.
func (c *reviewCache) get(key [sha256.Size]byte, now time.Time) (ca.Caller, error, bool) {
	if c == nil {
		return ca.Caller{}, nil, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.byKey[key]
	if !ok {
		return ca.Caller{}, nil, false
	}
	e := el.Value.(*reviewEntry)
	if !now.Before(e.until) {
		c.lru.Remove(el)
		delete(c.byKey, key)
		return ca.Caller{}, nil, false
	}
	c.lru.MoveToFront(el)
	return e.caller, e.err, true
}

// put remembers an answer until until, evicting the least recently used
// entry when full.
func (c *reviewCache) put(key [sha256.Size]byte, caller ca.Caller, err error, until time.Time) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.byKey[key]; ok {
		el.Value = &reviewEntry{key: key, caller: caller, err: err, until: until}
		c.lru.MoveToFront(el)
		return
	}
	for c.lru.Len() >= c.size {
		old := c.lru.Back()
		c.lru.Remove(old)
		delete(c.byKey, old.Value.(*reviewEntry).key)
	}
	c.byKey[key] = c.lru.PushFront(&reviewEntry{key: key, caller: caller, err: err, until: until})
}

// len is the number of remembered answers.
func (c *reviewCache) len() int {
	if c == nil {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len()
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
