package kubeclient

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// ListOptions selects the objects of a list or watch.
type ListOptions struct {
	Namespace     string // empty: all namespaces
	FieldSelector string // e.g. spec.nodeName=node-a
	LabelSelector string
}

func (o ListOptions) query() url.Values {
	q := url.Values{}
	if o.FieldSelector != "" {
		q.Set("fieldSelector", o.FieldSelector)
	}
	if o.LabelSelector != "" {
		q.Set("labelSelector", o.LabelSelector)
	}
	return q
}

// listPageSize bounds one page of a list, as client-go's pager does, so
// that neither the API server nor we hold a whole large collection in one
// response.
const listPageSize = 500

// List reads every object of r that opts selects, page by page, and
// returns them with the collection's resource version, from which a
// watch continues. When a page's continue token has expired (the list took
// longer than etcd keeps its revision) it starts over in one unpaged
// request, as client-go does.
func List[T any](ctx context.Context, c *Client, r Resource, opts ListOptions) ([]T, string, error) {
	items, rv, err := list[T](ctx, c, r, opts, listPageSize)
	if IsGone(err) {
		items, rv, err = list[T](ctx, c, r, opts, 0)
	}
	return items, rv, err
}

func list[T any](ctx context.Context, c *Client, r Resource, opts ListOptions, limit int) ([]T, string, error) {
	var items []T
	cont := ""
	for {
		q := opts.query()
		if limit > 0 {
			q.Set("limit", strconv.Itoa(limit))
		}
		if cont != "" {
			q.Set("continue", cont)
		}
		var page struct {
			Metadata struct {
				ResourceVersion string `json:"resourceVersion"`
				Continue        string `json:"continue"`
			} `json:"metadata"`
			Items []T `json:"items"`
		}
		if err := c.getJSON(ctx, r.Path(opts.Namespace, ""), q, &page); err != nil {
			return nil, "", fmt.Errorf("listing %s: %w", r.Name, err)
		}
		if items == nil {
			items = page.Items
		} else {
			items = append(items, page.Items...)
		}
		if page.Metadata.Continue == "" {
			return items, page.Metadata.ResourceVersion, nil
		}
		cont = page.Metadata.Continue
	}
}

func (c *Client) getJSON(ctx context.Context, path string, q url.Values, out any) error {
	resp, err := c.do(ctx, path, q)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("decoding GET %s: %w", path, err)
	}
	return nil
}

// EventType is the type of a watch event.
type EventType string

// The event types of a watch stream.
const (
	Added    EventType = "ADDED"
	Modified EventType = "MODIFIED"
	Deleted  EventType = "DELETED"
	// Bookmark carries only a newer resource version to resume from.
	Bookmark EventType = "BOOKMARK"
	// Error carries a metav1.Status; Watcher.Next turns it into an error.
	Error EventType = "ERROR"
)

// Watcher reads the events of one watch request.
type Watcher struct {
	body io.ReadCloser
	dec  *json.Decoder
}

// Watch starts a watch of r from resourceVersion (a list's, or the last
// event's). The API server ends it after about timeout (zero: its own
// default) and sends bookmarks, so that a watch that saw nothing can still
// resume without a list.
func (c *Client) Watch(ctx context.Context, r Resource, opts ListOptions, resourceVersion string, timeout time.Duration) (*Watcher, error) {
	q := opts.query()
	q.Set("watch", "true")
	q.Set("allowWatchBookmarks", "true")
	if resourceVersion != "" {
		q.Set("resourceVersion", resourceVersion)
	}
	if timeout > 0 {
		q.Set("timeoutSeconds", strconv.Itoa(int(timeout.Seconds())))
	}
	resp, err := c.do(ctx, r.Path(opts.Namespace, ""), q)
	if err != nil {
		return nil, fmt.Errorf("watching %s: %w", r.Name, err)
	}
	return &Watcher{body: resp.Body, dec: json.NewDecoder(resp.Body)}, nil
}

// Next returns the next event's type and object, still encoded. It returns
// io.EOF when the server ended the watch (its timeout), and a
// *StatusError for an ERROR event: IsGone is true for one that says the
// resource version is too old, after which only a new list helps.
func (w *Watcher) Next() (EventType, json.RawMessage, error) {
	var ev struct {
		Type   EventType       `json:"type"`
		Object json.RawMessage `json:"object"`
	}
	if err := w.dec.Decode(&ev); err != nil {
		if err == io.EOF {
			return "", nil, io.EOF
		}
		return "", nil, fmt.Errorf("reading watch event: %w", err)
	}
	if ev.Type == Error {
		var st status
		if err := json.Unmarshal(ev.Object, &st); err != nil {
			return "", nil, fmt.Errorf("decoding watch error: %w", err)
		}
		return "", nil, fmt.Errorf("watch: %w", st.err(http.StatusInternalServerError))
	}
	return ev.Type, ev.Object, nil
}

// Close ends the watch.
func (w *Watcher) Close() error { return w.body.Close() }
