package xds

import (
	"context"

	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"golang.org/x/sync/semaphore"
	"google.golang.org/protobuf/proto"
)

// DefaultSendBudget is Config.SendBudget's default.
const DefaultSendBudget = 64 << 20

// throttledADS bounds the bytes of responses being sent at once over all
// streams. A client's first response holds every resource (about 3 MB at
// 10k workloads), and gRPC holds a marshaled copy of each response until
// the transport has written most of it: 100 ztunnels connecting together
// (istiod-lite restarted) would otherwise hold 100 such copies at once. With
// a budget, responses wait their turn; small pushes are barely affected,
// since a response needs only its own size of the budget.
type throttledADS struct {
	server.Server
	budget *semaphore.Weighted
	max    int64
}

func (t *throttledADS) DeltaAggregatedResources(stream discoverygrpc.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) error {
	return t.Server.DeltaAggregatedResources(&throttledStream{
		AggregatedDiscoveryService_DeltaAggregatedResourcesServer: stream, t: t,
	})
}

type throttledStream struct {
	discoverygrpc.AggregatedDiscoveryService_DeltaAggregatedResourcesServer
	t *throttledADS
}

func (s *throttledStream) Send(resp *discoverygrpc.DeltaDiscoveryResponse) error {
	// A response larger than the whole budget takes all of it.
	n := min(int64(proto.Size(resp)), s.t.max)
	if err := s.t.budget.Acquire(s.Context(), n); err != nil {
		return context.Cause(s.Context())
	}
	defer s.t.budget.Release(n)
	return s.AggregatedDiscoveryService_DeltaAggregatedResourcesServer.Send(resp)
}
