package state

import (
	"cmp"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/proto"

	"github.com/cairnmesh/cairn/internal/xdsclient"
)

// The type URLs of the resources a waypoint subscribes to.
var (
	typeURLListener = xdsclient.TypeURLOf(&listenerv3.Listener{})
	typeURLRoute    = xdsclient.TypeURLOf(&routev3.RouteConfiguration{})
	typeURLCluster  = xdsclient.TypeURLOf(&clusterv3.Cluster{})
	typeURLEndpoint = xdsclient.TypeURLOf(&endpointv3.ClusterLoadAssignment{})
)

// Registry is the xdsclient registry of the waypoint's types, in the order
// they should be subscribed to (Envoy's: clusters and their endpoints
// before the listeners and routes that name them).
func Registry() xdsclient.Registry {
	return xdsclient.NewRegistry(
		&clusterv3.Cluster{},
		&endpointv3.ClusterLoadAssignment{},
		&listenerv3.Listener{},
		&routev3.RouteConfiguration{},
	)
}

// Snapshot is one immutable version of the waypoint's configuration. The
// request path reads it without locks; a change makes a new one.
type Snapshot struct {
	listeners map[string]*CompiledListener
	routes    map[string]*RouteTable
	clusters  map[string]*Cluster
	loads     map[string]*Assignment
	chains    chainIndex
}

// Chain returns the filter chain for a destination (the CONNECT
// authority), or nil. Envoy's order: the chains of the destination port
// before those of any port; among them the longest prefix holding the
// address, then a chain without prefixes; last the default chain.
func (s *Snapshot) Chain(dst netip.AddrPort) *Chain {
	if s == nil {
		return nil
	}
	return s.chains.lookup(netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port()))
}

// RouteTable returns the RouteConfiguration an HTTP chain uses, or nil if
// it has not arrived (or was refused).
func (s *Snapshot) RouteTable(h *HTTPChain) *RouteTable {
	if h.Inline != nil {
		return h.Inline
	}
	return s.routes[h.RouteConfig]
}

// Cluster returns a cluster by name, or nil.
func (s *Snapshot) Cluster(name string) *Cluster {
	return s.clusters[name]
}

// Endpoints returns the usable endpoints of a cluster.
func (s *Snapshot) Endpoints(c *Cluster) []Endpoint {
	if c.EDS == "" {
		return c.Static
	}
	if a := s.loads[c.EDS]; a != nil {
		return a.Endpoints
	}
	return nil
}

// EndpointKeys returns the keys of every endpoint of every cluster, for
// dropping connections to endpoints that are gone.
func (s *Snapshot) EndpointKeys() map[string]bool {
	out := map[string]bool{}
	for _, a := range s.loads {
		for _, e := range a.Endpoints {
			out[e.Key] = true
		}
	}
	for _, c := range s.clusters {
		for _, e := range c.Static {
			out[e.Key] = true
		}
	}
	return out
}

// NewSnapshot compiles resources into a Snapshot in one step, for tests
// and tools: the first invalid resource is an error.
func NewSnapshot(opts Options, resources ...proto.Message) (*Snapshot, error) {
	st := NewStore(StoreConfig{Options: opts})
	byType := map[string]map[string]proto.Message{}
	for _, r := range resources {
		url := xdsclient.TypeURLOf(r)
		if byType[url] == nil {
			byType[url] = map[string]proto.Message{}
		}
		byType[url][resourceName(r)] = r
	}
	for url, res := range byType {
		if err := st.Apply(xdsclient.Update{TypeURL: url, Resources: res}); err != nil {
			return nil, err
		}
	}
	return st.Load(), nil
}

func resourceName(m proto.Message) string {
	switch r := m.(type) {
	case *listenerv3.Listener:
		return r.GetName()
	case *routev3.RouteConfiguration:
		return r.GetName()
	case *clusterv3.Cluster:
		return r.GetName()
	case *endpointv3.ClusterLoadAssignment:
		return r.GetClusterName()
	}
	return ""
}

// StoreConfig configures a Store.
type StoreConfig struct {
	Options Options
	// OnChange, if set, is called (from Apply's goroutine) with each new
	// snapshot after it is published.
	OnChange func(*Snapshot)
	Log      *slog.Logger
}

// Store holds the waypoint's current Snapshot and applies xDS updates to
// it: it is the waypoint's xdsclient.Handler.
type Store struct {
	cfg StoreConfig
	mu  sync.Mutex // serialises Apply
	cur atomic.Pointer[Snapshot]
}

var _ xdsclient.Handler = (*Store)(nil)

// NewStore returns a Store holding an empty snapshot.
func NewStore(cfg StoreConfig) *Store {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	cfg.Options = cfg.Options.withDefaults()
	s := &Store{cfg: cfg}
	s.cur.Store(&Snapshot{
		listeners: map[string]*CompiledListener{},
		routes:    map[string]*RouteTable{},
		clusters:  map[string]*Cluster{},
		loads:     map[string]*Assignment{},
	})
	return s
}

// Load returns the current snapshot; it never returns nil.
func (s *Store) Load() *Snapshot { return s.cur.Load() }

// Apply applies one xDS update. Resources that fail to compile keep their
// previous version (or stay absent) and are named in the returned
// *xdsclient.RejectedError, whose error holds one FieldError per problem;
// the rest of the update applies.
func (s *Store) Apply(u xdsclient.Update) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.cur.Load()
	next := *old
	var rejected []string
	var errs []*FieldError
	reject := func(name string, err error) {
		rejected = append(rejected, name)
		fe := FieldErrors(err)
		if len(fe) == 0 {
			fe = []*FieldError{{TypeURL: u.TypeURL, Resource: name, Reason: err.Error()}}
		}
		errs = append(errs, fe...)
	}
	names := slices.Sorted(maps.Keys(u.Resources))
	switch u.TypeURL {
	case typeURLListener:
		next.listeners = maps.Clone(old.listeners)
		for _, name := range names {
			l, ok := u.Resources[name].(*listenerv3.Listener)
			if !ok {
				reject(name, fmt.Errorf("not a Listener: %T", u.Resources[name]))
				continue
			}
			if l.GetName() != name {
				reject(name, fmt.Errorf("resource name %q differs from the listener's name %q", name, l.GetName()))
				continue
			}
			c, err := CompileListener(l, s.cfg.Options)
			if err != nil {
				reject(name, err)
				continue
			}
			next.listeners[name] = c
		}
		for _, name := range u.Removed {
			delete(next.listeners, name)
		}
		next.chains = buildChainIndex(next.listeners)
	case typeURLRoute:
		next.routes = maps.Clone(old.routes)
		for _, name := range names {
			rc, ok := u.Resources[name].(*routev3.RouteConfiguration)
			if !ok {
				reject(name, fmt.Errorf("not a RouteConfiguration: %T", u.Resources[name]))
				continue
			}
			if rc.GetName() != name {
				reject(name, fmt.Errorf("resource name %q differs from the route configuration's name %q", name, rc.GetName()))
				continue
			}
			t, err := CompileRouteConfiguration(rc, s.cfg.Options)
			if err != nil {
				reject(name, err)
				continue
			}
			next.routes[name] = t
		}
		for _, name := range u.Removed {
			delete(next.routes, name)
		}
	case typeURLCluster:
		next.clusters = maps.Clone(old.clusters)
		for _, name := range names {
			c, ok := u.Resources[name].(*clusterv3.Cluster)
			if !ok {
				reject(name, fmt.Errorf("not a Cluster: %T", u.Resources[name]))
				continue
			}
			if c.GetName() != name {
				reject(name, fmt.Errorf("resource name %q differs from the cluster's name %q", name, c.GetName()))
				continue
			}
			cc, err := CompileCluster(c, s.cfg.Options)
			if err != nil {
				reject(name, err)
				continue
			}
			next.clusters[name] = cc
		}
		for _, name := range u.Removed {
			delete(next.clusters, name)
		}
	case typeURLEndpoint:
		next.loads = maps.Clone(old.loads)
		for _, name := range names {
			la, ok := u.Resources[name].(*endpointv3.ClusterLoadAssignment)
			if !ok {
				reject(name, fmt.Errorf("not a ClusterLoadAssignment: %T", u.Resources[name]))
				continue
			}
			if la.GetClusterName() != name {
				reject(name, fmt.Errorf("resource name %q differs from the assignment's cluster_name %q", name, la.GetClusterName()))
				continue
			}
			a, err := CompileAssignment(la)
			if err != nil {
				reject(name, err)
				continue
			}
			next.loads[name] = a
		}
		for _, name := range u.Removed {
			delete(next.loads, name)
		}
	default:
		return fmt.Errorf("waypoint: type %q is not handled", u.TypeURL)
	}
	s.cur.Store(&next)
	s.cfg.Log.Debug("waypoint configuration applied", "type", u.TypeURL, "updated", len(u.Resources)-len(rejected),
		"removed", len(u.Removed), "rejected", len(rejected))
	if s.cfg.OnChange != nil {
		s.cfg.OnChange(&next)
	}
	if len(rejected) == 0 {
		return nil
	}
	return &xdsclient.RejectedError{Names: rejected, Err: &InvalidError{Violations: errs}}
}

// chainIndex finds filter chains by destination.
type chainIndex struct {
	exact   map[netip.AddrPort]*Chain // one-address prefix and a port
	byPort  map[uint16][]prefixChain  // longest prefix first; port 0 = any port
	anyAddr map[uint16]*Chain         // chains without prefixes
	def     *Chain
}

type prefixChain struct {
	prefix netip.Prefix
	chain  *Chain
}

// buildChainIndex indexes the chains of every listener, in listener-name
// order: a chain whose match an earlier listener already took is left out.
func buildChainIndex(ls map[string]*CompiledListener) chainIndex {
	idx := chainIndex{
		exact:   map[netip.AddrPort]*Chain{},
		byPort:  map[uint16][]prefixChain{},
		anyAddr: map[uint16]*Chain{},
	}
	seen := map[string]bool{}
	for _, name := range slices.Sorted(maps.Keys(ls)) {
		l := ls[name]
		for _, c := range l.Chains {
			key := matchKey(c)
			if seen[key] {
				continue
			}
			seen[key] = true
			if len(c.Prefixes) == 0 {
				idx.anyAddr[c.Port] = c
				continue
			}
			for _, p := range c.Prefixes {
				if p.IsSingleIP() && c.Port != 0 {
					ap := netip.AddrPortFrom(p.Addr(), c.Port)
					if _, taken := idx.exact[ap]; !taken {
						idx.exact[ap] = c
					}
					continue
				}
				idx.byPort[c.Port] = append(idx.byPort[c.Port], prefixChain{prefix: p, chain: c})
			}
		}
		if l.Default != nil && idx.def == nil {
			idx.def = l.Default
		}
	}
	for _, list := range idx.byPort {
		slices.SortStableFunc(list, func(a, b prefixChain) int { return cmp.Compare(b.prefix.Bits(), a.prefix.Bits()) })
	}
	return idx
}

func (idx *chainIndex) lookup(dst netip.AddrPort) *Chain {
	if c := idx.exact[dst]; c != nil {
		return c
	}
	for _, port := range [2]uint16{dst.Port(), 0} {
		// Longest prefix first (a one-address prefix with this port was
		// in exact), then the chain of this port for any address.
		for _, pc := range idx.byPort[port] {
			if pc.prefix.Contains(dst.Addr()) {
				return pc.chain
			}
		}
		if c := idx.anyAddr[port]; c != nil {
			return c
		}
	}
	return idx.def
}
