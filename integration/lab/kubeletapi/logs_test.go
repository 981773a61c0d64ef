package kubeletapi

import (
	"bufio"
	"net/http"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseLogOptions(t *testing.T) {
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	i64 := func(n int64) *int64 { return &n }
	at := func(t time.Time) *time.Time { return &t }
	tests := []struct {
		query   string
		want    LogOptions
		wantErr string
	}{
		{query: "", want: LogOptions{}},
		{query: "follow=true&previous=true&timestamps=true", want: LogOptions{Follow: true, Previous: true, Timestamps: true}},
		{query: "follow=1&previous=0", want: LogOptions{Follow: true}},
		{query: "tailLines=0&limitBytes=1", want: LogOptions{TailLines: i64(0), LimitBytes: i64(1)}},
		{query: "tailLines=10&limitBytes=4096", want: LogOptions{TailLines: i64(10), LimitBytes: i64(4096)}},
		{query: "sinceSeconds=60", want: LogOptions{SinceTime: at(now.Add(-time.Minute))}},
		{query: "sinceTime=2026-05-01T11:00:00Z", want: LogOptions{SinceTime: at(now.Add(-time.Hour))}},
		{query: "sinceTime=2026-05-01T13:00:00%2B02:00", want: LogOptions{SinceTime: at(now.Add(-time.Hour).In(time.FixedZone("", 2*3600)))}},
		{query: "stream=All", want: LogOptions{}},
		{query: "follow=yes", wantErr: "follow=\"yes\" is not a boolean"},
		{query: "timestamps=2", wantErr: "is not a boolean"},
		{query: "tailLines=-1", wantErr: "tailLines=-1 must be at least 0"},
		{query: "tailLines=ten", wantErr: "is not an integer"},
		{query: "limitBytes=0", wantErr: "limitBytes=0 must be at least 1"},
		{query: "sinceSeconds=0", wantErr: "sinceSeconds=0 must be at least 1"},
		{query: "sinceTime=yesterday", wantErr: "not an RFC 3339 time"},
		{query: "sinceSeconds=5&sinceTime=2026-05-01T11:00:00Z", wantErr: "at most one of sinceTime and sinceSeconds"},
		{query: "stream=Stderr", wantErr: "stream=\"Stderr\" is not supported"},
	}
	for _, tc := range tests {
		t.Run(tc.query, func(t *testing.T) {
			q, err := url.ParseQuery(tc.query)
			if err != nil {
				t.Fatal(err)
			}
			got, err := parseLogOptions(q, now)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("parseLogOptions(%q) error = %v, want one containing %q", tc.query, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseLogOptions(%q): %v", tc.query, err)
			}
			if got.SinceTime != nil && tc.want.SinceTime != nil && got.SinceTime.Equal(*tc.want.SinceTime) {
				got.SinceTime = tc.want.SinceTime // same instant; zones may differ
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("parseLogOptions(%q) = %+v, want %+v", tc.query, got, tc.want)
			}
		})
	}
}

func TestContainerLogs(t *testing.T) {
	for _, finder := range []bool{false, true} {
		name := "runtime"
		if finder {
			name = "runtime with Finder"
		}
		t.Run(name, func(t *testing.T) {
			fake := newFakeRuntime("ns/pod/app")
			var rt Runtime = fake
			if finder {
				rt = finderRuntime{fake}
			}
			env := startServer(t, rt, nil)
			c := env.httpClient(t)
			fake.appendLog("ns/pod/app", "one")
			fake.appendLog("ns/pod/app", "two")
			fake.appendLog("ns/pod/app", "three")

			t.Run("all", func(t *testing.T) {
				code, body := get(t, c, env.base+"/containerLogs/ns/pod/app")
				if code != http.StatusOK || body != "one\ntwo\nthree\n" {
					t.Fatalf("got %d %q", code, body)
				}
			})
			t.Run("options reach the runtime", func(t *testing.T) {
				code, body := get(t, c, env.base+"/containerLogs/ns/pod/app?tailLines=1&timestamps=true&previous=true&limitBytes=100")
				if code != http.StatusOK || body != "three\n" {
					t.Fatalf("got %d %q", code, body)
				}
				got := fake.lastLogOptions()
				if !got.Timestamps || !got.Previous || got.Follow || *got.TailLines != 1 || *got.LimitBytes != 100 {
					t.Fatalf("runtime got %+v", got)
				}
			})
			t.Run("unknown pod", func(t *testing.T) {
				code, body := get(t, c, env.base+"/containerLogs/ns/nope/app")
				if code != http.StatusNotFound || !strings.Contains(body, "not found") {
					t.Fatalf("got %d %q, want 404 not found", code, body)
				}
			})
			t.Run("unknown container", func(t *testing.T) {
				code, body := get(t, c, env.base+"/containerLogs/ns/pod/other")
				if code != http.StatusNotFound || !strings.Contains(body, `container "other"`) {
					t.Fatalf("got %d %q, want 404 naming the container", code, body)
				}
			})
			t.Run("bad parameter", func(t *testing.T) {
				code, body := get(t, c, env.base+"/containerLogs/ns/pod/app?tailLines=-3")
				if code != http.StatusBadRequest || !strings.Contains(body, "tailLines") {
					t.Fatalf("got %d %q, want 400 naming tailLines", code, body)
				}
			})
			t.Run("follow", func(t *testing.T) {
				resp, err := c.Get(env.base + "/containerLogs/ns/pod/app?follow=true&tailLines=1")
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					t.Fatalf("status %d", resp.StatusCode)
				}
				lines := make(chan string)
				go func() {
					defer close(lines)
					sc := bufio.NewScanner(resp.Body)
					for sc.Scan() {
						lines <- sc.Text()
					}
				}()
				expect := func(want string) {
					t.Helper()
					select {
					case got := <-lines:
						if got != want {
							t.Fatalf("got line %q, want %q", got, want)
						}
					case <-time.After(5 * time.Second):
						t.Fatalf("line %q did not arrive", want)
					}
				}
				expect("three")
				fake.appendLog("ns/pod/app", "four") // written after the request
				expect("four")
				fake.appendLog("ns/pod/app", "five")
				expect("five")
				resp.Body.Close()
				for range lines {
				}
			})
		})
	}
}

// With a Finder, a followed log of a quiet container answers its headers
// at once, so the client knows the stream is open.
func TestContainerLogsFollowQuietContainer(t *testing.T) {
	env := startServer(t, finderRuntime{newFakeRuntime("ns/pod/app")}, nil)
	c := env.httpClient(t)
	c.Transport.(*http.Transport).ResponseHeaderTimeout = 5 * time.Second
	resp, err := c.Get(env.base + "/containerLogs/ns/pod/app?follow=true")
	if err != nil {
		t.Fatalf("headers of a followed quiet log: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
}
