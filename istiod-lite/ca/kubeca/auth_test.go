package kubeca

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	authnv1 "k8s.io/api/authentication/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// jwt makes a JWT-shaped token (the signature is not checked here: the
// fake API server's review decides) with the given audience and expiry.
func jwt(aud string, exp time.Time, id int) string {
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(`{"alg":"RS256"}`)) + "." +
		enc([]byte(fmt.Sprintf(`{"aud":[%q],"exp":%d,"sub":"system:serviceaccount:ns:sa","jti":"%d"}`, aud, exp.Unix(), id))) +
		"." + enc([]byte("signature"))
}

func withToken(token string) context.Context {
	return metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", "Bearer "+token))
}

// fakeReviews is an API server that answers only TokenReviews: it accepts
// the tokens in good, counts the reviews and the most it saw at once, and
// may block until release is closed. (client-go's fake clientset runs its
// reactors one at a time, so it could not show concurrency.)
type fakeReviews struct {
	reviews, inFlight, maxInFlight atomic.Int64
	good                           sync.Map
	release                        chan struct{}
}

func (f *fakeReviews) client(t *testing.T) kubernetes.Interface {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/apis/authentication.k8s.io/v1/tokenreviews" {
			http.Error(w, "not served", http.StatusNotFound)
			return
		}
		n := f.inFlight.Add(1)
		defer f.inFlight.Add(-1)
		for {
			m := f.maxInFlight.Load()
			if n <= m || f.maxInFlight.CompareAndSwap(m, n) {
				break
			}
		}
		f.reviews.Add(1)
		if f.release != nil {
			<-f.release
		}
		var tr authnv1.TokenReview
		if err := json.NewDecoder(r.Body).Decode(&tr); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		tr.APIVersion, tr.Kind = "authentication.k8s.io/v1", "TokenReview"
		if _, ok := f.good.Load(tr.Spec.Token); ok {
			tr.Status = authnv1.TokenReviewStatus{Authenticated: true, Audiences: tr.Spec.Audiences,
				User: authnv1.UserInfo{Username: "system:serviceaccount:cairn-system:ztunnel"}}
		} else {
			tr.Status = authnv1.TokenReviewStatus{Error: "invalid signature"}
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		_ = json.NewEncoder(w).Encode(&tr)
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() {
		if f.release != nil {
			select {
			case <-f.release:
			default:
				close(f.release)
			}
		}
	})
	c, err := kubernetes.NewForConfig(&rest.Config{Host: srv.URL, QPS: -1, ContentConfig: rest.ContentConfig{ContentType: "application/json"}})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestTokenReviewCost: a token that cannot be valid costs no review; a
// review's answer, acceptance or rejection, is reused for the cache TTL
// and never beyond the token's expiry; the cache holds at most CacheSize
// answers.
func TestTokenReviewCost(t *testing.T) {
	f := &fakeReviews{}
	now := time.Unix(1_800_000_000, 0)
	r := &TokenReviewer{Client: f.client(t), CacheSize: 4, CacheTTL: time.Minute}
	r.init()
	r.now = func() time.Time { return now }

	for _, bad := range []string{
		"not-a-jwt",
		"a.b.c",
		jwt("other-audience", now.Add(time.Hour), 1),
		jwt(DefaultAudience, now.Add(-time.Second), 2),
		jwt(DefaultAudience, now.Add(time.Hour), 3) + string(make([]byte, MaxTokenBytes)),
	} {
		if _, err := r.Authenticate(withToken(bad)); status.Code(err) != codes.Unauthenticated {
			t.Errorf("token %.40q: %v, want Unauthenticated", bad, err)
		}
	}
	if n := f.reviews.Load(); n != 0 {
		t.Fatalf("tokens that cannot be valid cost %d TokenReviews, want 0", n)
	}

	good := jwt(DefaultAudience, now.Add(time.Hour), 10)
	f.good.Store(good, true)
	forged := jwt(DefaultAudience, now.Add(time.Hour), 11)
	for range 100 {
		if c, err := r.Authenticate(withToken(good)); err != nil || c.ServiceAccount != "ztunnel" {
			t.Fatalf("good token: %+v, %v", c, err)
		}
		if _, err := r.Authenticate(withToken(forged)); status.Code(err) != codes.Unauthenticated {
			t.Fatalf("forged token: %v, want Unauthenticated", err)
		}
	}
	if n := f.reviews.Load(); n != 2 {
		t.Fatalf("200 calls with 2 tokens made %d TokenReviews, want 2", n)
	}
	now = now.Add(time.Minute)
	if _, err := r.Authenticate(withToken(good)); err != nil {
		t.Fatal(err)
	}
	if n := f.reviews.Load(); n != 3 {
		t.Fatalf("after the TTL: %d reviews, want 3 (the answer is reviewed again)", n)
	}

	// A token that expires before the TTL is not served from the cache
	// after its expiry (the precheck refuses it, without a review).
	short := jwt(DefaultAudience, now.Add(10*time.Second), 12)
	f.good.Store(short, true)
	if _, err := r.Authenticate(withToken(short)); err != nil {
		t.Fatal(err)
	}
	now = now.Add(11 * time.Second)
	if _, err := r.Authenticate(withToken(short)); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("expired token after its cached review: %v, want Unauthenticated", err)
	}

	for i := range 10 {
		_, _ = r.Authenticate(withToken(jwt(DefaultAudience, now.Add(time.Hour), 100+i)))
	}
	if n := r.cache.len(); n != 4 {
		t.Errorf("cache holds %d answers, want its size 4", n)
	}
}

// TestTokenReviewsInFlightAreBounded: 40 callers with distinct tokens while
// the API server is slow: at most MaxInFlight reviews run at once, and the
// callers that find no slot within ReviewWait are told to retry.
func TestTokenReviewsInFlightAreBounded(t *testing.T) {
	f := &fakeReviews{release: make(chan struct{})}
	r := &TokenReviewer{Client: f.client(t), MaxInFlight: 3, ReviewWait: 200 * time.Millisecond}
	exp := time.Now().Add(time.Hour)
	var wg sync.WaitGroup
	var unavailable atomic.Int64
	for i := range 40 {
		wg.Go(func() {
			_, err := r.Authenticate(withToken(jwt(DefaultAudience, exp, i)))
			if status.Code(err) == codes.Unavailable {
				unavailable.Add(1)
			}
		})
	}
	deadline := time.Now().Add(10 * time.Second)
	for unavailable.Load() < 37 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	close(f.release)
	wg.Wait()
	if m := f.maxInFlight.Load(); m != 3 {
		t.Errorf("at most %d reviews ran at once, want the limit 3", m)
	}
	if n := unavailable.Load(); n != 37 {
		t.Errorf("%d callers were told to retry, want 37", n)
	}
}
