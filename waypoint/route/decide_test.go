package route_test

import (
	"math"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sync"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/cairnmesh/cairn/waypoint/route"
	"github.com/cairnmesh/cairn/waypoint/state"
	"github.com/cairnmesh/cairn/waypoint/state/envoytest"
)

var vip = netip.MustParseAddrPort("10.96.0.10:80")

// lockedRand is a seeded source safe for concurrent use.
type lockedRand struct {
	mu sync.Mutex
	r  *rand.Rand
}

func (l *lockedRand) Uint64N(n uint64) uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.r.Uint64N(n)
}

func seeded() *lockedRand { return &lockedRand{r: rand.New(rand.NewPCG(1, 2))} }

func snapshot(t testing.TB, routes ...*routev3.Route) *state.Snapshot {
	t.Helper()
	snap, err := state.NewSnapshot(state.Options{},
		envoytest.Listener("l", envoytest.HTTPChain(vip, "r", hcmv3.HttpConnectionManager_AUTO)),
		envoytest.Routes("r", routes...),
	)
	if err != nil {
		t.Fatal(err)
	}
	return snap
}

func decide(snap *state.Snapshot, r *http.Request) route.Decision {
	return route.Decide(snap, route.Input{Dst: vip, PeerPrincipal: "spiffe://cluster.local/ns/consumer/sa/default"}, r, seeded())
}

func exact(path, cluster string) *routev3.Route {
	r := envoytest.Prefix("/", cluster)
	r.Match.PathSpecifier = &routev3.RouteMatch_Path{Path: path}
	return r
}

func sep(prefix, cluster string) *routev3.Route {
	r := envoytest.Prefix("/", cluster)
	r.Match.PathSpecifier = &routev3.RouteMatch_PathSeparatedPrefix{PathSeparatedPrefix: prefix}
	return r
}

func regex(re, cluster string) *routev3.Route {
	r := envoytest.Prefix("/", cluster)
	r.Match.PathSpecifier = &routev3.RouteMatch_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: re}}
	return r
}

func withHeader(r *routev3.Route, name string, sm *matcherv3.StringMatcher) *routev3.Route {
	r.Match.Headers = append(r.Match.Headers, &routev3.HeaderMatcher{
		Name: name, HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: sm},
	})
	return r
}

func withQuery(r *routev3.Route, name, value string) *routev3.Route {
	r.Match.QueryParameters = append(r.Match.QueryParameters, &routev3.QueryParameterMatcher{
		Name: name, QueryParameterMatchSpecifier: &routev3.QueryParameterMatcher_StringMatch{
			StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: value}},
		},
	})
	return r
}

func exactString(v string) *matcherv3.StringMatcher {
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: v}}
}

// TestFirstMatchWins: routes are tried in order, whatever their kind; each
// match kind matches what Envoy's does.
func TestFirstMatchWins(t *testing.T) {
	snap := snapshot(t,
		exact("/exact", "exact"),
		sep("/sep", "sep"),
		regex(`/re/[0-9]+`, "regex"),
		withHeader(envoytest.Prefix("/h", "header"), "x-version", exactString("two")),
		withHeader(envoytest.Prefix("/h", "method"), ":method", exactString("POST")),
		withQuery(envoytest.Prefix("/q", "query"), "animal", "whale"),
		envoytest.Prefix("/exact", "prefix-after-exact"),
		envoytest.Prefix("/", "default"),
	)
	tests := []struct {
		method, target string
		header         map[string]string
		want           string
	}{
		{"GET", "/exact", nil, "exact"},
		{"GET", "/exact?x=1", nil, "exact"},
		{"GET", "/exact/more", nil, "prefix-after-exact"},
		{"GET", "/sep", nil, "sep"},
		{"GET", "/sep/a", nil, "sep"},
		{"GET", "/separate", nil, "default"},
		{"GET", "/re/123", nil, "regex"},
		{"GET", "/re/12a", nil, "default"},
		{"GET", "/h", map[string]string{"X-Version": "two"}, "header"},
		{"GET", "/h", map[string]string{"X-Version": "one"}, "default"},
		{"POST", "/h", nil, "method"},
		{"GET", "/q?animal=whale", nil, "query"},
		{"GET", "/q?color=blue&animal=whale", nil, "query"},
		{"GET", "/q?animal=dolphin", nil, "default"},
		{"GET", "/q?animal=dolphin&animal=whale", nil, "default"}, // the first value counts
	}
	for _, tc := range tests {
		r := httptest.NewRequest(tc.method, tc.target, nil)
		for k, v := range tc.header {
			r.Header.Set(k, v)
		}
		d := decide(snap, r)
		if d.Outcome != route.Forward || d.Cluster != tc.want {
			t.Errorf("%s %s %v: outcome %v cluster %q, want %q", tc.method, tc.target, tc.header, d.Outcome, d.Cluster, tc.want)
		}
	}
}

// TestNoRoute: nothing matches -> NoRoute (the proxy's 404); an unknown
// destination -> NoChain.
func TestNoRoute(t *testing.T) {
	snap := snapshot(t, envoytest.Prefix("/only", "c"))
	if d := decide(snap, httptest.NewRequest("GET", "/other", nil)); d.Outcome != route.NoRoute {
		t.Errorf("outcome %v, want NoRoute", d.Outcome)
	}
	d := route.Decide(snap, route.Input{Dst: netip.MustParseAddrPort("10.96.0.99:80")}, httptest.NewRequest("GET", "/only", nil), seeded())
	if d.Outcome != route.NoChain {
		t.Errorf("outcome %v, want NoChain", d.Outcome)
	}
}

// TestConsumerRouteMatchesPeerPrincipal: a route with a filter-state
// match on the peer principal (the consumer namespace's prefix, as the
// translator writes it) applies to callers from that namespace only.
func TestConsumerRouteMatchesPeerPrincipal(t *testing.T) {
	consumer := envoytest.Prefix("/", "consumer-route")
	consumer.Match.FilterState = []*matcherv3.FilterStateMatcher{{
		Key: state.FilterStateKeyPeerPrincipal,
		Matcher: &matcherv3.FilterStateMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{
			MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: "spiffe://cluster.local/ns/consumer/sa/"},
		}},
	}}
	snap := snapshot(t, consumer, envoytest.Prefix("/", "producer-route"))
	for peer, want := range map[string]string{
		"spiffe://cluster.local/ns/consumer/sa/app":     "consumer-route",
		"spiffe://cluster.local/ns/consumer-two/sa/app": "producer-route",
		"spiffe://cluster.local/ns/other/sa/app":        "producer-route",
		"":                                              "producer-route",
	} {
		d := route.Decide(snap, route.Input{Dst: vip, PeerPrincipal: peer}, httptest.NewRequest("GET", "/", nil), seeded())
		if d.Cluster != want {
			t.Errorf("peer %q: cluster %q, want %q", peer, d.Cluster, want)
		}
	}
}

// TestWeightsPerRequest: a 90/10 split chosen for each request lands
// within a binomial tolerance of 90/10 over 1000 requests (fixed seed);
// a zero weight never gets one.
func TestWeightsPerRequest(t *testing.T) {
	snap := snapshot(t, envoytest.Weighted("/", "v1", 90, "v2", 10, "v3", 0))
	rnd := seeded()
	counts := map[string]int{}
	const n = 1000
	for range n {
		d := route.Decide(snap, route.Input{Dst: vip}, httptest.NewRequest("GET", "/", nil), rnd)
		counts[d.Cluster]++
	}
	sigma := math.Sqrt(n * 0.9 * 0.1)
	if got := float64(counts["v1"]); math.Abs(got-900) > 4*sigma {
		t.Errorf("v1 got %v of %d, want 900 ± %.0f", got, n, 4*sigma)
	}
	if counts["v3"] != 0 {
		t.Errorf("weight 0 got %d requests", counts["v3"])
	}
	if counts["v1"]+counts["v2"] != n {
		t.Errorf("counts %v", counts)
	}
}

// TestMirrorFraction: a mirror with a runtime fraction copies about that
// share of requests; without a fraction, every request.
func TestMirrorFraction(t *testing.T) {
	r := envoytest.Prefix("/", "c")
	r.GetRoute().RequestMirrorPolicies = []*routev3.RouteAction_RequestMirrorPolicy{
		{Cluster: "half", RuntimeFraction: &corev3.RuntimeFractionalPercent{DefaultValue: &typev3.FractionalPercent{Numerator: 50}}},
		{Cluster: "all"},
	}
	snap := snapshot(t, r)
	rnd := seeded()
	counts := map[string]int{}
	const n = 1000
	for range n {
		d := route.Decide(snap, route.Input{Dst: vip}, httptest.NewRequest("GET", "/", nil), rnd)
		for _, m := range d.Mirrors {
			counts[m.Cluster]++
		}
	}
	sigma := math.Sqrt(n * 0.5 * 0.5)
	if got := float64(counts["half"]); math.Abs(got-500) > 4*sigma {
		t.Errorf("half mirrored %v of %d", got, n)
	}
	if counts["all"] != n {
		t.Errorf("all mirrored %d of %d", counts["all"], n)
	}
}

func redirect(prefix string, ra *routev3.RedirectAction) *routev3.Route {
	r := envoytest.Prefix(prefix, "unused")
	r.Action = &routev3.Route_Redirect{Redirect: ra}
	return r
}

// TestRedirectLocation: the Location of each redirect follows Gateway
// API's RequestRedirect rules (port from the scheme, well-known ports left
// out, prefix and full path replacement).
func TestRedirectLocation(t *testing.T) {
	tests := []struct {
		name   string
		ra     *routev3.RedirectAction
		target string
		host   string
		want   string
		code   int
	}{
		{"host, default 301", &routev3.RedirectAction{HostRedirect: "example.org"}, "/a?x=1", "echo", "http://example.org/a?x=1", 301},
		{"302", &routev3.RedirectAction{HostRedirect: "example.org", ResponseCode: routev3.RedirectAction_FOUND}, "/a", "echo", "http://example.org/a", 302},
		{"303", &routev3.RedirectAction{ResponseCode: routev3.RedirectAction_SEE_OTHER}, "/a", "echo", "http://echo/a", 303},
		{"307", &routev3.RedirectAction{ResponseCode: routev3.RedirectAction_TEMPORARY_REDIRECT}, "/a", "echo:80", "http://echo/a", 307},
		{"308", &routev3.RedirectAction{ResponseCode: routev3.RedirectAction_PERMANENT_REDIRECT}, "/a", "echo", "http://echo/a", 308},
		{"https drops the port", &routev3.RedirectAction{SchemeRewriteSpecifier: &routev3.RedirectAction_SchemeRedirect{SchemeRedirect: "https"}}, "/a", "echo:80", "https://echo/a", 301},
		{"https with a port", &routev3.RedirectAction{SchemeRewriteSpecifier: &routev3.RedirectAction_HttpsRedirect{HttpsRedirect: true}, PortRedirect: 8443}, "/a", "echo", "https://echo:8443/a", 301},
		{"port", &routev3.RedirectAction{PortRedirect: 8083}, "/a", "echo", "http://echo:8083/a", 301},
		{"port 80 left out", &routev3.RedirectAction{PortRedirect: 80, HostRedirect: "example.org"}, "/a", "echo:8080", "http://example.org/a", 301},
		{"full path", &routev3.RedirectAction{PathRewriteSpecifier: &routev3.RedirectAction_PathRedirect{PathRedirect: "/full"}}, "/original/x?q=1", "echo", "http://echo/full?q=1", 301},
		{"prefix", &routev3.RedirectAction{PathRewriteSpecifier: &routev3.RedirectAction_PrefixRewrite{PrefixRewrite: "/new"}}, "/original/x", "echo", "http://echo/new/x", 301},
		{"strip query", &routev3.RedirectAction{StripQuery: true}, "/a?x=1", "echo", "http://echo/a", 301},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			prefix := "/"
			if tc.name == "prefix" {
				prefix = "/original"
			}
			snap := snapshot(t, redirect(prefix, tc.ra))
			r := httptest.NewRequest("GET", tc.target, nil)
			r.Host = tc.host
			d := decide(snap, r)
			if d.Outcome != route.Redirect {
				t.Fatalf("outcome %v", d.Outcome)
			}
			if d.Location != tc.want || d.Route.Redirect.Code != tc.code {
				t.Errorf("Location %q code %d, want %q %d", d.Location, d.Route.Redirect.Code, tc.want, tc.code)
			}
		})
	}
}

// TestRewrite: prefix_rewrite replaces the matched prefix, regex_rewrite
// rewrites the path (here "/prefix" -> "/", the Gateway API
// ReplacePrefixMatch case), host_rewrite_literal the Host.
func TestRewrite(t *testing.T) {
	pr := envoytest.Prefix("/prefix", "c")
	pr.GetRoute().PrefixRewrite = "/new"
	rr := envoytest.Prefix("/strip", "c")
	rr.GetRoute().RegexRewrite = &matcherv3.RegexMatchAndSubstitute{
		Pattern:      &matcherv3.RegexMatcher{Regex: `^/strip/*`},
		Substitution: "/",
	}
	full := envoytest.Prefix("/full", "c")
	full.GetRoute().RegexRewrite = &matcherv3.RegexMatchAndSubstitute{
		Pattern:      &matcherv3.RegexMatcher{Regex: `^/.*$`},
		Substitution: "/replaced",
	}
	groups := envoytest.Prefix("/g", "c")
	groups.GetRoute().RegexRewrite = &matcherv3.RegexMatchAndSubstitute{
		Pattern:      &matcherv3.RegexMatcher{Regex: `^/g/([a-z]+)/([0-9]+)$`},
		Substitution: `/\2/\1`,
	}
	host := envoytest.Prefix("/host", "c")
	host.GetRoute().HostRewriteSpecifier = &routev3.RouteAction_HostRewriteLiteral{HostRewriteLiteral: "rewritten.example"}
	snap := snapshot(t, pr, rr, full, groups, host)
	tests := []struct{ target, path, host string }{
		{"/prefix/one", "/new/one", ""},
		{"/strip/one", "/one", ""},
		{"/strip", "/", ""},
		{"/full/x?q=1", "/replaced", ""},
		{"/g/abc/42", "/42/abc", ""},
		{"/host/x", "", "rewritten.example"},
	}
	for _, tc := range tests {
		d := decide(snap, httptest.NewRequest("GET", tc.target, nil))
		if (tc.path != "") != d.Rewritten || d.RawPath != tc.path || d.Host != tc.host {
			t.Errorf("%s: path %q (rewritten %v) host %q, want %q %q", tc.target, d.RawPath, d.Rewritten, d.Host, tc.path, tc.host)
		}
	}
}

// TestHeaderMatchForms: present/absent, invert, several values joined
// with a comma, case-insensitive exact.
func TestHeaderMatchForms(t *testing.T) {
	present := envoytest.Prefix("/", "present")
	present.Match.Headers = []*routev3.HeaderMatcher{{Name: "x-a", HeaderMatchSpecifier: &routev3.HeaderMatcher_PresentMatch{PresentMatch: true}}}
	inverted := withHeader(envoytest.Prefix("/", "inverted"), "x-b", exactString("no"))
	inverted.Match.Headers[0].InvertMatch = true
	joined := withHeader(envoytest.Prefix("/", "joined"), "x-c", exactString("1,2"))
	fold := withHeader(envoytest.Prefix("/", "fold"), "x-d", &matcherv3.StringMatcher{
		MatchPattern: &matcherv3.StringMatcher_Exact{Exact: "MiXeD"}, IgnoreCase: true,
	})
	snap := snapshot(t, present, joined, fold, inverted, envoytest.Prefix("/", "none"))
	tests := []struct {
		header http.Header
		want   string
	}{
		{http.Header{"X-A": {""}}, "present"},
		{http.Header{"X-C": {"1", "2"}, "X-B": {"no"}}, "joined"},
		{http.Header{"X-D": {"mixed"}, "X-B": {"no"}}, "fold"},
		{http.Header{"X-B": {"yes"}}, "inverted"},
		{http.Header{}, "inverted"},
		{http.Header{"X-B": {"no"}}, "none"},
	}
	for _, tc := range tests {
		r := httptest.NewRequest("GET", "/", nil)
		r.Header = tc.header
		if d := decide(snap, r); d.Cluster != tc.want {
			t.Errorf("%v: %q, want %q", tc.header, d.Cluster, tc.want)
		}
	}
}

// TestCaseInsensitivePath: case_sensitive false matches any case.
func TestCaseInsensitivePath(t *testing.T) {
	r := envoytest.Prefix("/Api", "c")
	r.Match.CaseSensitive = wrapperspb.Bool(false)
	snap := snapshot(t, r)
	if d := decide(snap, httptest.NewRequest("GET", "/aPI/x", nil)); d.Outcome != route.Forward {
		t.Errorf("outcome %v", d.Outcome)
	}
}

func BenchmarkDecide(b *testing.B) {
	var routes []*routev3.Route
	for i := range 50 {
		routes = append(routes, withHeader(exact("/svc/method"+string(rune('a'+i%26))+string(rune('a'+i/26)), "c"), "x-version", exactString("v1")))
	}
	routes = append(routes, withQuery(withHeader(envoytest.Prefix("/api", "last"), "x-version", exactString("v2")), "q", "1"))
	snap := snapshot(b, routes...)
	r := httptest.NewRequest("GET", "/api/items?q=1", nil)
	r.Header.Set("X-Version", "v2")
	in := route.Input{Dst: vip}
	rnd := route.GlobalRand{}
	b.ReportAllocs()
	for b.Loop() {
		if d := route.Decide(snap, in, r, rnd); d.Cluster != "last" {
			b.Fatal(d.Cluster)
		}
	}
}
