package xdsclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	xdsv1 "github.com/cairnmesh/cairn/apis/xdsclient/v1"
)

// wildcard subscribes to every resource of a type. The client sends it
// explicitly rather than relying on the legacy meaning of an empty first
// request, which servers may turn off.
const wildcard = "*"

// deltaADSMethod is Envoy's delta ADS method, which istiod-lite serves.
// The stream is opened by name with gRPC's generic stream API: its messages
// are apis/xdsclient/v1's, the wire-compatible subset of Envoy's, so no
// generated Envoy client (and none of Envoy's descriptors) is linked.
const deltaADSMethod = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"

// deltaADSDesc describes the method: a bidirectional stream.
var deltaADSDesc = grpc.StreamDesc{
	StreamName:    "DeltaAggregatedResources",
	ClientStreams: true,
	ServerStreams: true,
}

type adsStream = grpc.BidiStreamingClient[xdsv1.DeltaDiscoveryRequest, xdsv1.DeltaDiscoveryResponse]

// openStream opens a delta ADS stream on conn.
func openStream(ctx context.Context, conn grpc.ClientConnInterface) (adsStream, error) {
	cs, err := conn.NewStream(ctx, &deltaADSDesc, deltaADSMethod)
	if err != nil {
		return nil, err
	}
	return &grpc.GenericClientStream[xdsv1.DeltaDiscoveryRequest, xdsv1.DeltaDiscoveryResponse]{ClientStream: cs}, nil
}

// stream runs one ADS stream until it fails or ctx ends. It returns how
// long the stream was open (zero if it never opened) and why it ended.
// Everything happens on the caller's goroutine: each response is applied
// and answered before the next is read, so ACKs go out in order.
func (c *Client) stream(ctx context.Context, conn grpc.ClientConnInterface) (time.Duration, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // ends the stream, whichever way this returns
	s, err := openStream(ctx, conn)
	if err != nil {
		return 0, fmt.Errorf("opening stream: %w", err)
	}
	opened := time.Now()
	held := 0
	for i, t := range c.order {
		req := &xdsv1.DeltaDiscoveryRequest{
			TypeUrl:                 t.url,
			ResourceNamesSubscribe:  []string{wildcard},
			InitialResourceVersions: t.versions,
		}
		if i == 0 {
			req.Node = c.node // the server keeps it for the stream
		}
		held += len(t.versions)
		if err := send(s, req); err != nil {
			return time.Since(opened), fmt.Errorf("subscribing to %s: %w", t.label, err)
		}
	}
	c.log.Info("xDS stream open", "address", c.address, "node", c.cfg.NodeID, "types", len(c.order), "held", held)
	c.obs.Connected()

	err = c.serve(s)
	lived := time.Since(opened)
	if ctx.Err() != nil {
		c.obs.Disconnected(nil, lived)
		return lived, ctx.Err()
	}
	c.obs.Disconnected(err, lived)
	return lived, err
}

// serve answers responses until the stream fails.
func (c *Client) serve(s adsStream) error {
	for {
		resp, err := s.Recv()
		if err != nil {
			return fmt.Errorf("receiving: %w", err)
		}
		if err := send(s, c.handle(resp)); err != nil {
			return fmt.Errorf("answering %s nonce %q: %w", resp.GetTypeUrl(), resp.GetNonce(), err)
		}
	}
}

// send sends req. When the stream has ended, gRPC's Send says only io.EOF;
// the status that says why comes from Recv.
func send(s adsStream, req *xdsv1.DeltaDiscoveryRequest) error {
	err := s.Send(req)
	if errors.Is(err, io.EOF) {
		if _, rerr := s.Recv(); rerr != nil {
			return rerr
		}
	}
	return err
}

// handle applies one response and returns its ACK or NACK.
func (c *Client) handle(resp *xdsv1.DeltaDiscoveryResponse) *xdsv1.DeltaDiscoveryRequest {
	url := resp.GetTypeUrl()
	reply := &xdsv1.DeltaDiscoveryRequest{TypeUrl: url, ResponseNonce: resp.GetNonce()}
	t, ok := c.types[url]
	if !ok {
		return c.nack(reply, url, fmt.Errorf("type %q was not subscribed to", url))
	}
	u, versions, err := t.decode(resp)
	if err != nil {
		return c.nack(reply, t.label, err)
	}
	err = c.handler.Apply(u)
	var rejected *RejectedError
	switch {
	case errors.As(err, &rejected):
		for _, name := range rejected.Names {
			delete(versions, name)
		}
		t.commit(versions, u.Removed)
		reply = c.nack(reply, t.label, err)
	case err != nil:
		return c.nack(reply, t.label, err)
	default:
		t.commit(versions, u.Removed)
		c.obs.ACK(url, len(u.Resources), len(u.Removed))
		c.log.Debug("xDS ACK", "type", t.label, "nonce", resp.GetNonce(), "version", u.SystemVersion,
			"updated", len(u.Resources), "removed", len(u.Removed), "held", len(t.versions))
	}
	if !t.applied {
		t.applied = true
		c.pending--
		c.log.Info("xDS type synced", "type", t.label, "resources", len(t.versions))
		if c.pending == 0 {
			c.log.Info("xDS synced: every type applied")
			close(c.synced)
		}
	}
	return reply
}

// nack turns reply into a NACK for err. The versions of the type stay as
// they were: they describe what the handler holds.
func (c *Client) nack(reply *xdsv1.DeltaDiscoveryRequest, label string, err error) *xdsv1.DeltaDiscoveryRequest {
	reply.ErrorDetail = &xdsv1.Status{Code: int32(codes.InvalidArgument), Message: err.Error()}
	c.obs.NACK(reply.GetTypeUrl(), err)
	c.log.Warn("xDS NACK", "type", label, "nonce", reply.GetResponseNonce(), "err", err)
	return reply
}
