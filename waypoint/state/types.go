package state

import (
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/cairnmesh/cairn/internal/waypointcontract"
)

// Codec is the HTTP protocol a filter chain speaks to its clients.
type Codec int

// The codecs of HttpConnectionManager.codec_type.
const (
	CodecAuto  Codec = iota // HTTP/2 if the client starts with its preface, else HTTP/1.1
	CodecHTTP1              // HTTP/1.1 only
	CodecHTTP2              // HTTP/2 with prior knowledge (h2c) only
)

func (c Codec) String() string {
	switch c {
	case CodecHTTP1:
		return "http1"
	case CodecHTTP2:
		return "http2"
	default:
		return "auto"
	}
}

// Chain is one compiled filter chain: which destinations it takes and
// what it does with them.
type Chain struct {
	Listener string
	Name     string
	// Prefixes are the destination addresses the chain takes (empty: any);
	// Port its destination port (0: any).
	Prefixes []netip.Prefix
	Port     uint16
	// HTTP is set for an HTTP chain, TCPCluster for a TCP one.
	HTTP       *HTTPChain
	TCPCluster string
}

// HTTPChain is an HttpConnectionManager.
type HTTPChain struct {
	Codec Codec
	// RouteConfig names the RouteConfiguration (RDS); Inline is set instead
	// when the route table came with the listener.
	RouteConfig string
	Inline      *RouteTable
	// Upgrades are the upgrade types allowed (lower case, e.g. "websocket").
	Upgrades []string
}

// AllowsUpgrade says whether the chain lets a request upgrade to proto.
func (h *HTTPChain) AllowsUpgrade(proto string) bool {
	for _, u := range h.Upgrades {
		if equalFold(u, proto) {
			return true
		}
	}
	return false
}

// RouteTable is a compiled RouteConfiguration.
type RouteTable struct {
	Name         string
	VirtualHosts []*VirtualHost

	// The domain index (see VirtualHost).
	exact    map[string]*VirtualHost
	suffixes []domainEntry // "*.example.com" as ".example.com", longest first
	prefixes []domainEntry // "example.*" as "example.", longest first
	any      *VirtualHost
}

type domainEntry struct {
	part string
	vh   *VirtualHost
}

// VirtualHost returns the virtual host for a Host header, in Envoy's
// order: an exact domain, then the longest suffix wildcard, then the
// longest prefix wildcard, then "*". A host with a port that matches
// nothing is tried again without its port.
func (t *RouteTable) VirtualHost(host string) *VirtualHost {
	if vh := t.lookupHost(host); vh != nil {
		return vh
	}
	if i := strings.LastIndexByte(host, ':'); i > 0 && !strings.HasSuffix(host, "]") {
		if vh := t.lookupHost(host[:i]); vh != nil {
			return vh
		}
	}
	return t.any
}

func (t *RouteTable) lookupHost(host string) *VirtualHost {
	if len(t.exact) > 0 {
		if vh := t.exact[host]; vh != nil {
			return vh
		}
		if vh := t.exact[strings.ToLower(host)]; vh != nil {
			return vh
		}
	}
	for _, e := range t.suffixes {
		if len(host) > len(e.part) && hasSuffixFold(host, e.part) {
			return e.vh
		}
	}
	for _, e := range t.prefixes {
		if len(host) > len(e.part) && equalFold(host[:len(e.part)], e.part) {
			return e.vh
		}
	}
	return nil
}

func hasSuffixFold(s, suffix string) bool {
	return len(s) >= len(suffix) && equalFold(s[len(s)-len(suffix):], suffix)
}

// index builds the domain index of t.
func (t *RouteTable) index() {
	t.exact = map[string]*VirtualHost{}
	for _, vh := range t.VirtualHosts {
		for _, d := range vh.Domains {
			switch {
			case d == "*":
				t.any = vh
			case strings.HasPrefix(d, "*"):
				t.suffixes = append(t.suffixes, domainEntry{part: d[1:], vh: vh})
			case strings.HasSuffix(d, "*"):
				t.prefixes = append(t.prefixes, domainEntry{part: d[:len(d)-1], vh: vh})
			default:
				t.exact[d] = vh
			}
		}
	}
	longestFirst := func(a, b domainEntry) int { return len(b.part) - len(a.part) }
	slices.SortStableFunc(t.suffixes, longestFirst)
	slices.SortStableFunc(t.prefixes, longestFirst)
}

// VirtualHost is one virtual host: its domains and its routes in order.
type VirtualHost struct {
	Name    string
	Domains []string // lower case, as configured ("*", "*.example.com", "example.*", "example.com")
	Routes  []*Route
}

// ActionKind is what a route does with a request.
type ActionKind int

// The route actions.
const (
	ActionForward  ActionKind = iota // RouteAction: to a cluster
	ActionRedirect                   // RedirectAction: answer with a redirect
	ActionDirect                     // DirectResponseAction: answer with a fixed response
)

// Route is one compiled route.
type Route struct {
	Name            string
	Match           Match
	Kind            ActionKind
	Forward         *Forward
	Redirect        *Redirect
	Direct          *Direct
	RequestHeaders  HeaderOps
	ResponseHeaders HeaderOps
}

// PathKind is how a route matches the path.
type PathKind int

// The path matches of RouteMatch.
const (
	PathPrefix          PathKind = iota // prefix
	PathExact                           // path
	PathSeparatedPrefix                 // path_separated_prefix
	PathRegex                           // safe_regex (on the path without the query)
)

// Match is a compiled RouteMatch. Every part must match.
type Match struct {
	PathKind PathKind
	Path     string
	Regex    *regexp.Regexp
	// CaseInsensitive is RouteMatch.case_sensitive = false (prefix and
	// path only; Envoy matches safe_regex as written).
	CaseInsensitive bool
	Headers         []HeaderMatch
	Query           []QueryMatch
	// GRPC: only requests with a content-type of application/grpc*.
	GRPC        bool
	FilterState []FilterStateMatch
}

// StringKind is the kind of a StringMatcher.
type StringKind int

// The StringMatcher patterns.
const (
	StringExact StringKind = iota
	StringPrefix
	StringSuffix
	StringContains
	StringRegex
)

// StringMatch is a compiled StringMatcher.
type StringMatch struct {
	Kind       StringKind
	Value      string // lower case when IgnoreCase
	Regex      *regexp.Regexp
	IgnoreCase bool
}

// HeaderMatch is a compiled HeaderMatcher. Name is canonical
// (textproto.CanonicalMIMEHeaderKey) for ordinary headers; pseudo-headers
// (":method", ":path", ":authority", ":scheme") keep their name.
type HeaderMatch struct {
	Name    string
	Pseudo  bool
	String  *StringMatch // nil with Present
	Present bool         // present_match: true (present_match false: absent)
	Absent  bool         // present_match: false
	Invert  bool
}

// QueryMatch is a compiled QueryParameterMatcher.
type QueryMatch struct {
	Name    string
	String  *StringMatch // nil: present_match
	Present bool
}

// FilterStateKeyPeerPrincipal is the filter-state key a route can match
// on to apply only to some callers (Gateway API consumer routes match the
// prefix spiffe://<trust domain>/ns/<namespace>/sa/): the SPIFFE ID of the
// client's certificate, as the HBONE server authenticated it. Istio's
// name, agreed with the translator in internal/waypointcontract.
const FilterStateKeyPeerPrincipal = waypointcontract.PeerPrincipalFilterState

// FilterStateMatch is a compiled FilterStateMatcher.
type FilterStateMatch struct {
	Key    string
	String StringMatch
}

// Forward is a compiled RouteAction.
type Forward struct {
	// Cluster, or Weighted when the route splits traffic (weights sum to
	// TotalWeight > 0).
	Cluster        string
	Weighted       []WeightedCluster
	TotalWeight    uint64
	NotFoundStatus int // cluster_not_found_response_code

	// PrefixRewrite replaces the matched prefix (or the whole path of an
	// exact match); RegexRewrite rewrites the path; HostRewrite the Host.
	PrefixRewrite    string
	HasPrefixRewrite bool
	RegexRewrite     *Rewrite
	HostRewrite      string

	// Timeout is the route timeout (RouteAction.timeout; Envoy's default
	// 15 s when unset, 0 = none).
	Timeout time.Duration
	Retry   *Retry
	Mirrors []Mirror
}

// WeightedCluster is one cluster of a split.
type WeightedCluster struct {
	Name            string
	Weight          uint32
	RequestHeaders  HeaderOps
	ResponseHeaders HeaderOps
}

// Rewrite is a compiled RegexMatchAndSubstitute: every match of Pattern is
// replaced by Template (Go's regexp template syntax, converted from RE2's
// \N references).
type Rewrite struct {
	Pattern  *regexp.Regexp
	Template string
}

// RetryOn is a set of Envoy retry conditions (RetryPolicy.retry_on).
type RetryOn uint16

// The retry conditions the waypoint implements.
const (
	Retry5xx RetryOn = 1 << iota
	RetryGatewayError
	RetryReset
	RetryConnectFailure
	RetryRetriableStatusCodes
	RetryRefusedStream
	RetryRetriable4xx
)

// Retry is a compiled RetryPolicy.
type Retry struct {
	On            RetryOn
	NumRetries    int
	PerTryTimeout time.Duration
	StatusCodes   []int
	BaseInterval  time.Duration
	MaxInterval   time.Duration
}

// Mirror is a compiled RequestMirrorPolicy: a copy of PerMillion requests
// in a million goes to Cluster.
type Mirror struct {
	Cluster             string
	PerMillion          uint32
	DisableShadowSuffix bool
}

// Redirect is a compiled RedirectAction.
type Redirect struct {
	Scheme        string // "" keeps the request's
	Host          string
	Port          uint32
	PathRedirect  string
	PrefixRewrite string
	HasPrefix     bool
	RegexRewrite  *Rewrite
	Code          int
	StripQuery    bool
}

// Direct is a compiled DirectResponseAction.
type Direct struct {
	Status int
	Body   []byte
}

// AppendAction is HeaderValueOption.append_action.
type AppendAction int

// The append actions.
const (
	AppendIfExistsOrAdd AppendAction = iota
	AddIfAbsent
	OverwriteIfExistsOrAdd
	OverwriteIfExists
)

// HeaderOps are the header mutations of one level (route or weighted
// cluster): the removals first, then the additions in order.
type HeaderOps struct {
	Remove []string // canonical names
	Add    []HeaderAdd
}

// Empty says whether the ops change nothing.
func (h HeaderOps) Empty() bool { return len(h.Remove) == 0 && len(h.Add) == 0 }

// HeaderAdd is one HeaderValueOption.
type HeaderAdd struct {
	Name   string // canonical
	Value  string
	Action AppendAction
}

// LBPolicy is a cluster's load-balancing policy.
type LBPolicy int

// The policies the waypoint implements.
const (
	LBRoundRobin LBPolicy = iota
	LBLeastRequest
)

// Protocol is the HTTP protocol a cluster speaks to its endpoints.
type Protocol int

// The upstream protocols.
const (
	ProtocolHTTP1      Protocol = iota // Envoy's default
	ProtocolHTTP2                      // explicit_http_config.http2_protocol_options: h2c prior knowledge
	ProtocolDownstream                 // use_downstream_protocol_config: as the client spoke
)

// Cluster is a compiled Cluster.
type Cluster struct {
	Name string
	// EDS names the ClusterLoadAssignment of an EDS cluster; Static holds
	// the endpoints of a STATIC one.
	EDS            string
	Static         []Endpoint
	LB             LBPolicy
	ChoiceCount    int
	ConnectTimeout time.Duration
	Protocol       Protocol

	// rr is the round-robin position; shared by the requests that read
	// this version of the cluster.
	rr atomic.Uint64
}

// NextRR returns the next round-robin position.
func (c *Cluster) NextRR() uint64 { return c.rr.Add(1) - 1 }

// Endpoint is one usable endpoint of a cluster.
type Endpoint struct {
	// Address is where the application listens (pod IP, target port): the
	// HBONE :authority.
	Address netip.AddrPort
	// Identity is the SPIFFE ID the endpoint must prove, and TunnelPort
	// its HBONE port, from the endpoint's "cairn.hbone" metadata (both
	// empty without it).
	Identity   string
	TunnelPort uint16
	// Key names the endpoint for connection reuse and load accounting:
	// address, identity and tunnel port.
	Key string
}

// Assignment is a compiled ClusterLoadAssignment: its usable endpoints
// (HEALTHY or UNKNOWN health).
type Assignment struct {
	Name      string
	Endpoints []Endpoint
}

// HBONEMetadataKey is the filter_metadata key of an endpoint's HBONE
// details: {"identity": "spiffe://...", "port": 15008}, agreed with the
// translator in internal/waypointcontract.
const HBONEMetadataKey = waypointcontract.EndpointMetadataHBONE

func equalFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		ca, cb := a[i], b[i]
		if 'A' <= ca && ca <= 'Z' {
			ca += 'a' - 'A'
		}
		if 'A' <= cb && cb <= 'Z' {
			cb += 'a' - 'A'
		}
		if ca != cb {
			return false
		}
	}
	return true
}
