// Package route decides, without I/O, what the waypoint does with one HTTP
// request: which filter chain and route it takes (Envoy's first-match
// order), which cluster of a split, how the path and Host are rewritten,
// where a redirect points, which mirrors get a copy. The proxy package
// then does it.
package route

import (
	"math/rand/v2"
	"net/http"
	"net/netip"
	"strings"

	"github.com/cairnmesh/cairn/waypoint/state"
)

// Rand is the randomness a decision uses (weighted clusters, mirror
// fractions). *rand.Rand of math/rand/v2 is one; it must be safe for
// concurrent use when the proxy shares it.
type Rand interface {
	Uint64N(n uint64) uint64
}

// GlobalRand is math/rand/v2's global source: safe for concurrent use.
type GlobalRand struct{}

// Uint64N returns a random number in [0, n).
func (GlobalRand) Uint64N(n uint64) uint64 { return rand.Uint64N(n) }

// Input is what a decision reads besides the request.
type Input struct {
	// Dst is the destination the client asked for: the CONNECT
	// authority (Service VIP:port or pod IP:port).
	Dst netip.AddrPort
	// PeerPrincipal is the SPIFFE ID of the client ("" when unknown), the
	// filter state io.istio.peer_principal.
	PeerPrincipal string
}

// Outcome is the kind of a decision.
type Outcome int

// The outcomes.
const (
	// NoChain: no filter chain takes the destination (Envoy closes the
	// connection; the waypoint refuses the tunnel or answers 404).
	NoChain Outcome = iota
	// TCP: the chain is a tcp_proxy to Decision.Cluster.
	TCP
	// NoRouteTable: the chain's RouteConfiguration has not arrived: 503.
	NoRouteTable
	// NoRoute: no virtual host or no route matches: 404.
	NoRoute
	// Forward the request to Decision.Cluster.
	Forward
	// Redirect: answer Decision.Route.Redirect.Code with Decision.Location.
	Redirect
	// Direct: answer Decision.Route.Direct.
	Direct
)

// Decision is what to do with one request.
type Decision struct {
	Outcome Outcome
	Chain   *state.Chain
	Route   *state.Route
	// Cluster is the cluster to forward to (the chosen one of a split),
	// Split the chosen split entry (its header mutations), or nil.
	Cluster string
	Split   *state.WeightedCluster
	// RawPath is the rewritten path (escaped, without the query) when
	// Rewritten is set; Host the rewritten Host ("" keeps it).
	RawPath   string
	Rewritten bool
	Host      string
	// Location is a redirect's Location.
	Location string
	// Mirrors are the clusters that get a copy of this request.
	Mirrors []*state.Mirror
}

// Decide decides what to do with r, sent to in.Dst.
func Decide(snap *state.Snapshot, in Input, r *http.Request, rnd Rand) Decision {
	var d Decision
	d.Chain = snap.Chain(in.Dst)
	if d.Chain == nil {
		return d
	}
	if d.Chain.HTTP == nil {
		d.Outcome, d.Cluster = TCP, d.Chain.TCPCluster
		return d
	}
	table := snap.RouteTable(d.Chain.HTTP)
	if table == nil {
		d.Outcome = NoRouteTable
		return d
	}
	vh := table.VirtualHost(r.Host)
	if vh == nil {
		d.Outcome = NoRoute
		return d
	}
	path, query := requestPath(r)
	for _, rt := range vh.Routes {
		if matches(&rt.Match, r, path, query, in) {
			d.Route = rt
			break
		}
	}
	if d.Route == nil {
		d.Outcome = NoRoute
		return d
	}
	switch d.Route.Kind {
	case state.ActionDirect:
		d.Outcome = Direct
	case state.ActionRedirect:
		d.Outcome = Redirect
		d.Location = location(d.Route.Redirect, &d.Route.Match, r, path, query, in.Dst.Port())
	case state.ActionForward:
		d.Outcome = Forward
		f := d.Route.Forward
		if len(f.Weighted) > 0 {
			d.Split = pickWeighted(f, rnd)
			d.Cluster = d.Split.Name
		} else {
			d.Cluster = f.Cluster
		}
		switch {
		case f.HasPrefixRewrite:
			d.RawPath, d.Rewritten = f.PrefixRewrite+path[matchedPrefixLen(&d.Route.Match, path):], true
		case f.RegexRewrite != nil:
			d.RawPath, d.Rewritten = f.RegexRewrite.Pattern.ReplaceAllString(path, f.RegexRewrite.Template), true
		}
		d.Host = f.HostRewrite
		for i := range f.Mirrors {
			m := &f.Mirrors[i]
			if m.PerMillion >= 1_000_000 || (m.PerMillion > 0 && rnd.Uint64N(1_000_000) < uint64(m.PerMillion)) {
				d.Mirrors = append(d.Mirrors, m)
			}
		}
	}
	return d
}

// requestPath splits the request target into its path (as sent, still
// escaped) and its raw query.
func requestPath(r *http.Request) (path, query string) {
	uri := r.RequestURI
	if !strings.HasPrefix(uri, "/") {
		// Absolute form, or a request built in process.
		return r.URL.EscapedPath(), r.URL.RawQuery
	}
	if i := strings.IndexByte(uri, '?'); i >= 0 {
		return uri[:i], uri[i+1:]
	}
	return uri, ""
}

func pickWeighted(f *state.Forward, rnd Rand) *state.WeightedCluster {
	n := rnd.Uint64N(f.TotalWeight)
	for i := range f.Weighted {
		w := uint64(f.Weighted[i].Weight)
		if n < w {
			return &f.Weighted[i]
		}
		n -= w
	}
	return &f.Weighted[len(f.Weighted)-1] // unreachable: the weights sum to TotalWeight
}

// matchedPrefixLen is how much of path a prefix rewrite replaces: the
// matched prefix, or all of an exact match.
func matchedPrefixLen(m *state.Match, path string) int {
	switch m.PathKind {
	case state.PathExact:
		return len(path)
	default:
		return min(len(m.Path), len(path))
	}
}
