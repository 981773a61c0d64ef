package kubewatch

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/cairnmesh/cairn/internal/kubeclient"
	"github.com/cairnmesh/cairn/internal/retry"
)

// TestBookmarksAndAGoneWatchRequest covers two answers the real API
// server gives only at its own pace: a bookmark, whose resource version the
// next watch must resume from, and a watch request refused outright with
// 410 (rather than an ERROR event), which must lead to a new list.
func TestBookmarksAndAGoneWatchRequest(t *testing.T) {
	var mu sync.Mutex
	var requests []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		mu.Lock()
		requests = append(requests, fmt.Sprintf("watch=%s rv=%s bookmarks=%s", q.Get("watch"), q.Get("resourceVersion"), q.Get("allowWatchBookmarks")))
		n := len(requests)
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		switch {
		case q.Get("watch") == "" && n == 1:
			fmt.Fprint(w, `{"kind":"PodList","metadata":{"resourceVersion":"10"},"items":[{"metadata":{"name":"a","namespace":"x","resourceVersion":"9"}}]}`)
		case q.Get("watch") == "":
			fmt.Fprint(w, `{"kind":"PodList","metadata":{"resourceVersion":"30"},"items":[{"metadata":{"name":"b","namespace":"x","resourceVersion":"25"}}]}`)
		case q.Get("resourceVersion") == "10":
			fmt.Fprint(w, `{"type":"BOOKMARK","object":{"kind":"Pod","metadata":{"resourceVersion":"20"}}}`+"\n")
		case q.Get("resourceVersion") == "20":
			w.WriteHeader(http.StatusGone)
			fmt.Fprint(w, `{"kind":"Status","status":"Failure","message":"too old resource version: 20 (25)","reason":"Expired","code":410}`)
		default:
			<-r.Context().Done() // the resumed watch: nothing more happens
		}
	}))
	defer srv.Close()
	c, err := kubeclient.New(kubeclient.Config{Server: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var rec recorder
	in, err := New(Config[kubeclient.Pod]{Client: c, Resource: kubeclient.Pods, Handler: rec.handler(),
		Backoff: retry.Backoff{Base: time.Millisecond, Max: time.Millisecond}, Log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- in.Run(ctx) }()
	rec.wait(t, "delete a", "add b")
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	want := []string{
		"watch= rv= bookmarks=",
		"watch=true rv=10 bookmarks=true",
		"watch=true rv=20 bookmarks=true", // from the bookmark
		"watch= rv= bookmarks=",           // 410: list again
		"watch=true rv=30 bookmarks=true",
	}
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(requests) != fmt.Sprint(want) {
		t.Errorf("requests\n%q\nwant\n%q", requests, want)
	}
}
