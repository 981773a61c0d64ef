package proxy

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"

	"github.com/cairnmesh/cairn/waypoint/state"
	"github.com/cairnmesh/cairn/waypoint/upstream"
)

// mirrorQueue sends copies of requests to mirror clusters: fire and
// forget, from a bounded queue served by a fixed number of workers, so a
// slow or dead mirror never holds the request it copies nor grows memory.
type mirrorQueue struct {
	cfg     Config
	jobs    chan *mirrorJob
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	once    sync.Once
	sent    atomic.Uint64
	dropped atomic.Uint64
}

type mirrorJob struct {
	req     *http.Request // without a body; body holds it
	body    []byte
	cluster *state.Cluster
	eps     []state.Endpoint
	h2      bool
}

func newMirrorQueue(cfg Config) *mirrorQueue {
	ctx, cancel := context.WithCancel(context.Background())
	q := &mirrorQueue{cfg: cfg, jobs: make(chan *mirrorJob, cfg.Limits.MirrorQueue), ctx: ctx, cancel: cancel}
	for range cfg.Limits.MirrorWorkers {
		q.wg.Add(1)
		go q.work()
	}
	return q
}

func (q *mirrorQueue) stop() {
	q.once.Do(func() {
		q.cancel()
		q.wg.Wait()
	})
}

func (q *mirrorQueue) work() {
	defer q.wg.Done()
	for {
		select {
		case <-q.ctx.Done():
			return
		case j := <-q.jobs:
			q.send(j)
		}
	}
}

// submit queues a copy of out (headers as they go to the endpoint) for
// each mirror. With a body, the copies wait for the whole body (rec) and
// are dropped if it is longer than the recorder keeps.
func (q *mirrorQueue) submit(out *http.Request, snap *state.Snapshot, mirrors []*state.Mirror, rec *recorder) {
	jobs := make([]*mirrorJob, 0, len(mirrors))
	for _, m := range mirrors {
		c := snap.Cluster(m.Cluster)
		if c == nil {
			q.dropped.Add(1)
			continue
		}
		req := out.Clone(q.ctx)
		req.Body, req.ContentLength, req.GetBody = nil, 0, nil
		if !m.DisableShadowSuffix {
			req.Host = shadowHost(req.Host)
		}
		h2 := c.Protocol == state.ProtocolHTTP2 || (c.Protocol == state.ProtocolDownstream && out.ProtoMajor == 2)
		jobs = append(jobs, &mirrorJob{req: req, cluster: c, eps: snap.Endpoints(c), h2: h2})
	}
	if len(jobs) == 0 {
		return
	}
	if rec == nil {
		q.enqueue(jobs, nil)
		return
	}
	rec.setOnEOF(func(body []byte) { q.enqueue(jobs, body) })
}

func (q *mirrorQueue) enqueue(jobs []*mirrorJob, body []byte) {
	for _, j := range jobs {
		j.body = body
		select {
		case q.jobs <- j:
		default:
			q.dropped.Add(1)
		}
	}
}

func (q *mirrorQueue) send(j *mirrorJob) {
	ep, err := q.cfg.Upstream.Pick(j.cluster, j.eps, nil)
	if err != nil {
		q.dropped.Add(1)
		return
	}
	ctx, cancel := context.WithTimeout(q.ctx, q.cfg.Limits.MirrorTimeout)
	defer cancel()
	req := j.req.WithContext(upstream.WithConnectTimeout(ctx, j.cluster.ConnectTimeout))
	if len(j.body) > 0 {
		req.Body = io.NopCloser(bytes.NewReader(j.body))
		req.ContentLength = int64(len(j.body))
	}
	done := ep.Begin()
	defer done()
	resp, err := ep.Transport(j.h2).RoundTrip(req)
	if err != nil {
		q.dropped.Add(1)
		q.cfg.Log.Debug("waypoint: mirrored request failed", "cluster", j.cluster.Name, "err", err)
		return
	}
	// The answer is nobody's: read a bounded part so the connection can
	// be reused, and close it.
	_, _ = io.CopyN(io.Discard, resp.Body, 64<<10)
	_ = resp.Body.Close()
	q.sent.Add(1)
}

// shadowHost appends Envoy's "-shadow" to the host part of a Host header.
func shadowHost(h string) string {
	if host, port, err := net.SplitHostPort(h); err == nil {
		return net.JoinHostPort(host+"-shadow", port)
	}
	return h + "-shadow"
}
