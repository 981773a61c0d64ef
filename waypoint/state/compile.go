package state

import (
	"fmt"
	"math"
	"net/http"
	"net/netip"
	"net/textproto"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/spf13/pflag"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/cairnmesh/cairn/internal/waypointcontract"
)

// Options bound what a resource may ask of the waypoint.
type Options struct {
	// MaxRetries is the most num_retries a RetryPolicy may set.
	MaxRetries int
	// MaxRegexBytes is the longest regular expression accepted.
	MaxRegexBytes int
	// MaxDirectResponseBytes is the largest direct_response body.
	MaxDirectResponseBytes int
}

// DefaultOptions are the defaults of the waypoint's flags.
func DefaultOptions() Options {
	return Options{MaxRetries: 10, MaxRegexBytes: 4096, MaxDirectResponseBytes: 4096}
}

// RegisterFlags adds a flag for each option, with o's values as defaults.
func (o *Options) RegisterFlags(fs *pflag.FlagSet) {
	fs.IntVar(&o.MaxRetries, "max-retries", o.MaxRetries, "most retries a route may ask for; a route asking more is refused")
	fs.IntVar(&o.MaxRegexBytes, "max-regex-bytes", o.MaxRegexBytes, "longest regular expression a route may use")
	fs.IntVar(&o.MaxDirectResponseBytes, "max-direct-response-bytes", o.MaxDirectResponseBytes, "largest body of a direct response")
}

func (o Options) withDefaults() Options {
	d := DefaultOptions()
	if o.MaxRetries <= 0 {
		o.MaxRetries = d.MaxRetries
	}
	if o.MaxRegexBytes <= 0 {
		o.MaxRegexBytes = d.MaxRegexBytes
	}
	if o.MaxDirectResponseBytes <= 0 {
		o.MaxDirectResponseBytes = d.MaxDirectResponseBytes
	}
	return o
}

// Envoy's defaults where a field is unset.
const (
	defaultRouteTimeout   = 15 * time.Second
	defaultConnectTimeout = 5 * time.Second
	defaultRetryBase      = 25 * time.Millisecond
	defaultChoiceCount    = 2
)

// check runs the generated Validate() and the supported-subset check of a
// resource; name is the name the control plane gave it.
func check(m proto.Message, typeURL, name string) *violations {
	v := &violations{typeURL: typeURL, resource: name}
	if val, ok := m.(validator); ok {
		if err := val.Validate(); err != nil {
			v.add("", "invalid: %v", err)
			return v
		}
	}
	checkSupported(m.ProtoReflect(), "", v)
	return v
}

// CompileListener checks and compiles a Listener into its filter chains
// (the default chain, if any, last with Default set in the result).
func CompileListener(l *listenerv3.Listener, opts Options) (*CompiledListener, error) {
	v := check(l, typeURLListener, l.GetName())
	if err := v.err(); err != nil {
		return nil, err
	}
	opts = opts.withDefaults()
	out := &CompiledListener{Name: l.GetName()}
	seen := map[string]string{}
	for i, fc := range l.GetFilterChains() {
		p := fmt.Sprintf("filter_chains[%d]", i)
		c := compileChain(l.GetName(), fc, p, opts, v)
		if c == nil {
			continue
		}
		key := matchKey(c)
		if prev, dup := seen[key]; dup {
			v.add(p+".filter_chain_match", "matches the same destinations as %s", prev)
			continue
		}
		seen[key] = p
		out.Chains = append(out.Chains, c)
	}
	if fc := l.GetDefaultFilterChain(); fc != nil {
		p := "default_filter_chain"
		if fc.GetFilterChainMatch() != nil {
			v.add(p+".filter_chain_match", "the default filter chain matches everything; it takes no filter_chain_match")
		} else if c := compileChain(l.GetName(), fc, p, opts, v); c != nil {
			out.Default = c
		}
	}
	if err := v.err(); err != nil {
		return nil, err
	}
	return out, nil
}

// CompiledListener is a compiled Listener.
type CompiledListener struct {
	Name    string
	Chains  []*Chain
	Default *Chain
}

func matchKey(c *Chain) string {
	ps := make([]string, len(c.Prefixes))
	for i, p := range c.Prefixes {
		ps[i] = p.String()
	}
	slices.Sort(ps)
	return strconv.Itoa(int(c.Port)) + "|" + strings.Join(ps, ",")
}

func compileChain(listener string, fc *listenerv3.FilterChain, p string, opts Options, v *violations) *Chain {
	c := &Chain{Listener: listener, Name: fc.GetName()}
	if m := fc.GetFilterChainMatch(); m != nil {
		if dp := m.GetDestinationPort(); dp != nil {
			if dp.GetValue() == 0 || dp.GetValue() > math.MaxUint16 {
				v.add(p+".filter_chain_match.destination_port", "port %d is out of range", dp.GetValue())
				return nil
			}
			c.Port = uint16(dp.GetValue())
		}
		for j, r := range m.GetPrefixRanges() {
			pp := fmt.Sprintf("%s.filter_chain_match.prefix_ranges[%d]", p, j)
			pfx, err := cidr(r)
			if err != nil {
				v.add(pp, "%v", err)
				return nil
			}
			c.Prefixes = append(c.Prefixes, pfx)
		}
	}
	filters := fc.GetFilters()
	if len(filters) != 1 {
		v.add(p+".filters", "exactly one network filter (http_connection_manager or tcp_proxy) is supported, got %d", len(filters))
		return nil
	}
	fp := p + ".filters[0].typed_config"
	msg, err := unpack(filters[0].GetTypedConfig())
	if err != nil {
		v.add(fp, "%v", err)
		return nil
	}
	switch f := msg.(type) {
	case *hcmv3.HttpConnectionManager:
		c.HTTP = compileHCM(f, fp, opts, v)
		if c.HTTP == nil {
			return nil
		}
	case *tcpv3.TcpProxy:
		if f.GetCluster() == "" {
			v.add(fp+".cluster", "a cluster is required")
			return nil
		}
		c.TCPCluster = f.GetCluster()
	default:
		v.add(fp, "network filter %T is not supported", msg)
		return nil
	}
	return c
}

func cidr(r *corev3.CidrRange) (netip.Prefix, error) {
	a, err := netip.ParseAddr(r.GetAddressPrefix())
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("address_prefix %q is not an IP address: %w", r.GetAddressPrefix(), err)
	}
	if a.Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("address_prefix %q has a zone", r.GetAddressPrefix())
	}
	a = a.Unmap()
	bits := 0
	if r.GetPrefixLen() != nil {
		bits = int(r.GetPrefixLen().GetValue())
	}
	if bits > a.BitLen() {
		return netip.Prefix{}, fmt.Errorf("prefix_len %d is longer than the address", bits)
	}
	return netip.PrefixFrom(a, bits).Masked(), nil
}

func compileHCM(h *hcmv3.HttpConnectionManager, p string, opts Options, v *violations) *HTTPChain {
	out := &HTTPChain{}
	switch h.GetCodecType() {
	case hcmv3.HttpConnectionManager_AUTO:
		out.Codec = CodecAuto
	case hcmv3.HttpConnectionManager_HTTP1:
		out.Codec = CodecHTTP1
	case hcmv3.HttpConnectionManager_HTTP2:
		out.Codec = CodecHTTP2
	default:
		v.add(p+".codec_type", "codec %s is not supported", h.GetCodecType())
		return nil
	}
	switch {
	case h.GetRds() != nil:
		rds := h.GetRds()
		if rds.GetConfigSource().GetAds() == nil {
			v.add(p+".rds.config_source", "only ads is supported")
			return nil
		}
		if rds.GetRouteConfigName() == "" {
			v.add(p+".rds.route_config_name", "a route configuration name is required")
			return nil
		}
		out.RouteConfig = rds.GetRouteConfigName()
	case h.GetRouteConfig() != nil:
		t := compileRoutes(h.GetRouteConfig(), p+".route_config", opts, v)
		if t == nil {
			return nil
		}
		out.Inline = t
	default:
		v.add(p, "rds or route_config is required")
		return nil
	}
	filters := h.GetHttpFilters()
	if len(filters) == 0 {
		v.add(p+".http_filters", "the router filter is required")
		return nil
	}
	for i, f := range filters {
		fp := fmt.Sprintf("%s.http_filters[%d].typed_config", p, i)
		msg, err := unpack(f.GetTypedConfig())
		if err != nil {
			v.add(fp, "%v", err)
			return nil
		}
		if _, ok := msg.(*routerv3.Router); !ok {
			v.add(fp, "HTTP filter %s is not supported", msg.ProtoReflect().Descriptor().FullName())
			return nil
		}
		if i != len(filters)-1 {
			v.add(fp, "the router filter must be the last HTTP filter")
			return nil
		}
	}
	for i, u := range h.GetUpgradeConfigs() {
		if u.GetEnabled() != nil && !u.GetEnabled().GetValue() {
			continue
		}
		t := strings.ToLower(u.GetUpgradeType())
		if t == "" {
			v.add(fmt.Sprintf("%s.upgrade_configs[%d].upgrade_type", p, i), "an upgrade type is required")
			return nil
		}
		out.Upgrades = append(out.Upgrades, t)
	}
	return out
}

// CompileRouteConfiguration checks and compiles a RouteConfiguration.
func CompileRouteConfiguration(rc *routev3.RouteConfiguration, opts Options) (*RouteTable, error) {
	v := check(rc, typeURLRoute, rc.GetName())
	if err := v.err(); err != nil {
		return nil, err
	}
	t := compileRoutes(rc, "", opts.withDefaults(), v)
	if err := v.err(); err != nil {
		return nil, err
	}
	return t, nil
}

func compileRoutes(rc *routev3.RouteConfiguration, p string, opts Options, v *violations) *RouteTable {
	t := &RouteTable{Name: rc.GetName()}
	n := len(v.list)
	domains := map[string]string{}
	for i, vh := range rc.GetVirtualHosts() {
		vp := join(p, fmt.Sprintf("virtual_hosts[%d]", i))
		h := &VirtualHost{Name: vh.GetName()}
		for j, d := range vh.GetDomains() {
			d = strings.ToLower(d)
			if prev, dup := domains[d]; dup {
				v.add(fmt.Sprintf("%s.domains[%d]", vp, j), "domain %q is also in %s", d, prev)
				continue
			}
			if strings.Count(d, "*") > 1 || (strings.Contains(d, "*") && d != "*" && !strings.HasPrefix(d, "*") && !strings.HasSuffix(d, "*")) {
				v.add(fmt.Sprintf("%s.domains[%d]", vp, j), "a wildcard may only start or end a domain: %q", d)
				continue
			}
			domains[d] = vp
			h.Domains = append(h.Domains, d)
		}
		for j, r := range vh.GetRoutes() {
			if cr := compileRoute(r, fmt.Sprintf("%s.routes[%d]", vp, j), opts, v); cr != nil {
				h.Routes = append(h.Routes, cr)
			}
		}
		t.VirtualHosts = append(t.VirtualHosts, h)
	}
	if len(v.list) > n {
		return nil
	}
	t.index()
	return t
}

func compileRoute(r *routev3.Route, p string, opts Options, v *violations) *Route {
	n := len(v.list)
	out := &Route{Name: r.GetName()}
	compileMatch(r.GetMatch(), p+".match", opts, v, &out.Match)
	out.RequestHeaders = compileHeaderOps(r.GetRequestHeadersToAdd(), r.GetRequestHeadersToRemove(), p+".request_headers", v)
	out.ResponseHeaders = compileHeaderOps(r.GetResponseHeadersToAdd(), r.GetResponseHeadersToRemove(), p+".response_headers", v)
	switch {
	case r.GetRoute() != nil:
		out.Kind = ActionForward
		out.Forward = compileForward(r.GetRoute(), &out.Match, p+".route", opts, v)
	case r.GetRedirect() != nil:
		out.Kind = ActionRedirect
		out.Redirect = compileRedirect(r.GetRedirect(), &out.Match, p+".redirect", opts, v)
	case r.GetDirectResponse() != nil:
		out.Kind = ActionDirect
		d := r.GetDirectResponse()
		out.Direct = &Direct{Status: int(d.GetStatus())}
		if out.Direct.Status < 200 || out.Direct.Status > 599 {
			v.add(p+".direct_response.status", "status %d is out of range", d.GetStatus())
		}
		if b := d.GetBody(); b != nil {
			if s := b.GetInlineString(); s != "" {
				out.Direct.Body = []byte(s)
			} else {
				out.Direct.Body = b.GetInlineBytes()
			}
			if len(out.Direct.Body) > opts.MaxDirectResponseBytes {
				v.add(p+".direct_response.body", "body of %d bytes is over the limit of %d", len(out.Direct.Body), opts.MaxDirectResponseBytes)
			}
		}
	default:
		v.add(p, "one of route, redirect or direct_response is required")
	}
	if len(v.list) > n {
		return nil
	}
	return out
}

func compileMatch(m *routev3.RouteMatch, p string, opts Options, v *violations, out *Match) {
	switch ps := m.GetPathSpecifier().(type) {
	case *routev3.RouteMatch_Prefix:
		out.PathKind, out.Path = PathPrefix, ps.Prefix
	case *routev3.RouteMatch_Path:
		out.PathKind, out.Path = PathExact, ps.Path
	case *routev3.RouteMatch_PathSeparatedPrefix:
		out.PathKind, out.Path = PathSeparatedPrefix, ps.PathSeparatedPrefix
	case *routev3.RouteMatch_SafeRegex:
		out.PathKind = PathRegex
		out.Regex = compileRegex(ps.SafeRegex.GetRegex(), p+".safe_regex.regex", true, opts, v)
	default:
		v.add(p, "a path match (prefix, path, path_separated_prefix or safe_regex) is required")
	}
	if cs := m.GetCaseSensitive(); cs != nil && !cs.GetValue() {
		out.CaseInsensitive = true
		out.Path = strings.ToLower(out.Path)
	}
	for i, h := range m.GetHeaders() {
		hp := fmt.Sprintf("%s.headers[%d]", p, i)
		hm := HeaderMatch{Invert: h.GetInvertMatch()}
		name := strings.ToLower(h.GetName())
		if strings.HasPrefix(name, ":") {
			switch name {
			case ":method", ":path", ":authority", ":scheme":
				hm.Name, hm.Pseudo = name, true
			default:
				v.add(hp+".name", "pseudo-header %s is not supported", name)
				continue
			}
		} else {
			hm.Name = textproto.CanonicalMIMEHeaderKey(name)
		}
		switch s := h.GetHeaderMatchSpecifier().(type) {
		case *routev3.HeaderMatcher_StringMatch:
			hm.String = compileString(s.StringMatch, hp+".string_match", opts, v)
		case *routev3.HeaderMatcher_PresentMatch:
			hm.Present, hm.Absent = s.PresentMatch, !s.PresentMatch
		default:
			hm.Present = true
		}
		out.Headers = append(out.Headers, hm)
	}
	for i, q := range m.GetQueryParameters() {
		qp := fmt.Sprintf("%s.query_parameters[%d]", p, i)
		qm := QueryMatch{Name: q.GetName()}
		switch s := q.GetQueryParameterMatchSpecifier().(type) {
		case *routev3.QueryParameterMatcher_StringMatch:
			qm.String = compileString(s.StringMatch, qp+".string_match", opts, v)
		case *routev3.QueryParameterMatcher_PresentMatch:
			if !s.PresentMatch {
				v.add(qp+".present_match", "present_match false is not supported")
				continue
			}
			qm.Present = true
		default:
			qm.Present = true
		}
		out.Query = append(out.Query, qm)
	}
	out.GRPC = m.GetGrpc() != nil
	for i, f := range m.GetFilterState() {
		fp := fmt.Sprintf("%s.filter_state[%d]", p, i)
		if f.GetKey() != FilterStateKeyPeerPrincipal {
			v.add(fp+".key", "filter state key %q is not supported (only %s)", f.GetKey(), FilterStateKeyPeerPrincipal)
			continue
		}
		sm := compileString(f.GetStringMatch(), fp+".string_match", opts, v)
		if sm == nil {
			if f.GetStringMatch() == nil {
				v.add(fp, "string_match is required")
			}
			continue
		}
		out.FilterState = append(out.FilterState, FilterStateMatch{Key: f.GetKey(), String: *sm})
	}
}

func compileString(s *matcherv3.StringMatcher, p string, opts Options, v *violations) *StringMatch {
	if s == nil {
		return nil
	}
	out := &StringMatch{IgnoreCase: s.GetIgnoreCase()}
	switch m := s.GetMatchPattern().(type) {
	case *matcherv3.StringMatcher_Exact:
		out.Kind, out.Value = StringExact, m.Exact
	case *matcherv3.StringMatcher_Prefix:
		out.Kind, out.Value = StringPrefix, m.Prefix
	case *matcherv3.StringMatcher_Suffix:
		out.Kind, out.Value = StringSuffix, m.Suffix
	case *matcherv3.StringMatcher_Contains:
		out.Kind, out.Value = StringContains, m.Contains
	case *matcherv3.StringMatcher_SafeRegex:
		out.Kind = StringRegex
		if out.IgnoreCase {
			v.add(p+".ignore_case", "ignore_case does not apply to safe_regex")
			return nil
		}
		out.Regex = compileRegex(m.SafeRegex.GetRegex(), p+".safe_regex.regex", true, opts, v)
		if out.Regex == nil {
			return nil
		}
	default:
		v.add(p, "a match pattern is required")
		return nil
	}
	if out.IgnoreCase {
		out.Value = strings.ToLower(out.Value)
	}
	return out
}

// compileRegex compiles an RE2 expression with Go's regexp (the same
// syntax). whole anchors it: Envoy's matchers must match the whole value.
func compileRegex(expr, p string, whole bool, opts Options, v *violations) *regexp.Regexp {
	if len(expr) > opts.MaxRegexBytes {
		v.add(p, "regular expression of %d bytes is over the limit of %d", len(expr), opts.MaxRegexBytes)
		return nil
	}
	if whole {
		expr = `^(?:` + expr + `)$`
	}
	re, err := regexp.Compile(expr)
	if err != nil {
		v.add(p, "invalid regular expression: %v", err)
		return nil
	}
	return re
}

func compileRewrite(r *matcherv3.RegexMatchAndSubstitute, p string, opts Options, v *violations) *Rewrite {
	re := compileRegex(r.GetPattern().GetRegex(), p+".pattern.regex", false, opts, v)
	if re == nil {
		return nil
	}
	return &Rewrite{Pattern: re, Template: re2Template(r.GetSubstitution())}
}

// re2Template turns an RE2 substitution (\1 refers to a group, $ is a
// literal) into a template for regexp.Expand ($1 or ${1}, $$ for $).
func re2Template(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '$':
			b.WriteString("$$")
		case c == '\\' && i+1 < len(s) && s[i+1] >= '0' && s[i+1] <= '9':
			b.WriteString("${")
			b.WriteByte(s[i+1])
			b.WriteString("}")
			i++
		case c == '\\' && i+1 < len(s) && s[i+1] == '\\':
			b.WriteByte('\\')
			i++
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

func compileHeaderOps(add []*corev3.HeaderValueOption, remove []string, p string, v *violations) HeaderOps {
	var out HeaderOps
	for i, name := range remove {
		lower := strings.ToLower(name)
		if strings.HasPrefix(lower, ":") || lower == "host" {
			v.add(fmt.Sprintf("%s_to_remove[%d]", p, i), "header %s cannot be removed", name)
			continue
		}
		out.Remove = append(out.Remove, textproto.CanonicalMIMEHeaderKey(name))
	}
	for i, o := range add {
		ap := fmt.Sprintf("%s_to_add[%d]", p, i)
		key := o.GetHeader().GetKey()
		lower := strings.ToLower(key)
		if strings.HasPrefix(lower, ":") || lower == "host" {
			v.add(ap+".header.key", "header %s cannot be set", key)
			continue
		}
		val, err := literalHeaderValue(o.GetHeader().GetValue())
		if err != nil {
			v.add(ap+".header.value", "%v", err)
			continue
		}
		h := HeaderAdd{Name: textproto.CanonicalMIMEHeaderKey(key), Value: val}
		switch o.GetAppendAction() {
		case corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD:
			h.Action = AppendIfExistsOrAdd
		case corev3.HeaderValueOption_ADD_IF_ABSENT:
			h.Action = AddIfAbsent
		case corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD:
			h.Action = OverwriteIfExistsOrAdd
		case corev3.HeaderValueOption_OVERWRITE_IF_EXISTS:
			h.Action = OverwriteIfExists
		default:
			v.add(ap+".append_action", "append action %s is not supported", o.GetAppendAction())
			continue
		}
		out.Add = append(out.Add, h)
	}
	return out
}

// literalHeaderValue reads an Envoy header value: "%%" is a literal %, and
// any other % starts a command operator (%DOWNSTREAM_REMOTE_ADDRESS%...),
// which the waypoint does not implement.
func literalHeaderValue(s string) (string, error) {
	if !strings.Contains(s, "%") {
		return s, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '%' {
			b.WriteByte(s[i])
			continue
		}
		if i+1 < len(s) && s[i+1] == '%' {
			b.WriteByte('%')
			i++
			continue
		}
		return "", fmt.Errorf("header value %q uses a command operator (%%...%%), which is not supported; write %%%% for a literal %%", s)
	}
	return b.String(), nil
}

func compileForward(a *routev3.RouteAction, m *Match, p string, opts Options, v *violations) *Forward {
	out := &Forward{}
	switch {
	case a.GetCluster() != "":
		out.Cluster = a.GetCluster()
	case a.GetWeightedClusters() != nil:
		for i, c := range a.GetWeightedClusters().GetClusters() {
			cp := fmt.Sprintf("%s.weighted_clusters.clusters[%d]", p, i)
			if c.GetName() == "" {
				v.add(cp+".name", "a cluster name is required")
				continue
			}
			wc := WeightedCluster{Name: c.GetName(), Weight: c.GetWeight().GetValue()}
			wc.RequestHeaders = compileHeaderOps(c.GetRequestHeadersToAdd(), c.GetRequestHeadersToRemove(), cp+".request_headers", v)
			wc.ResponseHeaders = compileHeaderOps(c.GetResponseHeadersToAdd(), c.GetResponseHeadersToRemove(), cp+".response_headers", v)
			out.TotalWeight += uint64(wc.Weight)
			out.Weighted = append(out.Weighted, wc)
		}
		if out.TotalWeight == 0 {
			v.add(p+".weighted_clusters", "the weights sum to 0 (answer with a direct_response instead)")
		} else if out.TotalWeight > math.MaxUint32 {
			v.add(p+".weighted_clusters", "the weights sum to more than %d", uint32(math.MaxUint32))
		}
	default:
		v.add(p, "cluster or weighted_clusters is required")
	}
	switch a.GetClusterNotFoundResponseCode() {
	case routev3.RouteAction_SERVICE_UNAVAILABLE:
		out.NotFoundStatus = http.StatusServiceUnavailable
	case routev3.RouteAction_NOT_FOUND:
		out.NotFoundStatus = http.StatusNotFound
	case routev3.RouteAction_INTERNAL_SERVER_ERROR:
		out.NotFoundStatus = http.StatusInternalServerError
	default:
		v.add(p+".cluster_not_found_response_code", "code %s is not supported", a.GetClusterNotFoundResponseCode())
	}
	if a.GetPrefixRewrite() != "" {
		if a.GetRegexRewrite() != nil {
			v.add(p+".prefix_rewrite", "prefix_rewrite and regex_rewrite exclude each other")
		}
		if m.PathKind == PathRegex {
			v.add(p+".prefix_rewrite", "prefix_rewrite needs a prefix, path or path_separated_prefix match")
		}
		out.PrefixRewrite, out.HasPrefixRewrite = a.GetPrefixRewrite(), true
	}
	if r := a.GetRegexRewrite(); r != nil {
		out.RegexRewrite = compileRewrite(r, p+".regex_rewrite", opts, v)
	}
	out.HostRewrite = a.GetHostRewriteLiteral()
	out.Timeout = defaultRouteTimeout
	if t := a.GetTimeout(); t != nil {
		out.Timeout = duration(t, p+".timeout", v)
	}
	if rp := a.GetRetryPolicy(); rp != nil {
		out.Retry = compileRetry(rp, p+".retry_policy", opts, v)
	}
	for i, mp := range a.GetRequestMirrorPolicies() {
		mpp := fmt.Sprintf("%s.request_mirror_policies[%d]", p, i)
		if mp.GetCluster() == "" {
			v.add(mpp+".cluster", "a cluster is required")
			continue
		}
		mir := Mirror{Cluster: mp.GetCluster(), PerMillion: 1_000_000, DisableShadowSuffix: mp.GetDisableShadowHostSuffixAppend()}
		if rf := mp.GetRuntimeFraction(); rf != nil {
			mir.PerMillion = perMillion(rf.GetDefaultValue())
		}
		out.Mirrors = append(out.Mirrors, mir)
	}
	return out
}

// perMillion scales a FractionalPercent to parts per million, capped at
// all of them.
func perMillion(f *typev3.FractionalPercent) uint32 {
	n := uint64(f.GetNumerator())
	switch f.GetDenominator() {
	case typev3.FractionalPercent_HUNDRED:
		n *= 10_000
	case typev3.FractionalPercent_TEN_THOUSAND:
		n *= 100
	}
	return uint32(min(n, 1_000_000))
}

func duration(d *durationpb.Duration, p string, v *violations) time.Duration {
	if err := d.CheckValid(); err != nil || d.AsDuration() < 0 {
		v.add(p, "invalid duration %v", d)
		return 0
	}
	return d.AsDuration()
}

var retryConditions = map[string]RetryOn{
	"5xx":                    Retry5xx,
	"gateway-error":          RetryGatewayError,
	"reset":                  RetryReset,
	"connect-failure":        RetryConnectFailure,
	"retriable-status-codes": RetryRetriableStatusCodes,
	"refused-stream":         RetryRefusedStream,
	"retriable-4xx":          RetryRetriable4xx,
}

func compileRetry(rp *routev3.RetryPolicy, p string, opts Options, v *violations) *Retry {
	out := &Retry{NumRetries: 1, BaseInterval: defaultRetryBase}
	for _, c := range strings.Split(rp.GetRetryOn(), ",") {
		c = strings.TrimSpace(c)
		if c == "" {
			continue
		}
		on, ok := retryConditions[c]
		if !ok {
			v.add(p+".retry_on", "retry condition %q is not supported", c)
			continue
		}
		out.On |= on
	}
	if n := rp.GetNumRetries(); n != nil {
		if int64(n.GetValue()) > int64(opts.MaxRetries) {
			v.add(p+".num_retries", "%d retries is over the waypoint's limit of %d", n.GetValue(), opts.MaxRetries)
		}
		out.NumRetries = int(min(n.GetValue(), uint32(opts.MaxRetries)))
	}
	if t := rp.GetPerTryTimeout(); t != nil {
		out.PerTryTimeout = duration(t, p+".per_try_timeout", v)
	}
	for i, c := range rp.GetRetriableStatusCodes() {
		if c < 100 || c > 599 {
			v.add(fmt.Sprintf("%s.retriable_status_codes[%d]", p, i), "status %d is out of range", c)
			continue
		}
		out.StatusCodes = append(out.StatusCodes, int(c))
	}
	if b := rp.GetRetryBackOff(); b != nil {
		out.BaseInterval = duration(b.GetBaseInterval(), p+".retry_back_off.base_interval", v)
		if b.GetMaxInterval() != nil {
			out.MaxInterval = duration(b.GetMaxInterval(), p+".retry_back_off.max_interval", v)
			if out.MaxInterval < out.BaseInterval {
				v.add(p+".retry_back_off.max_interval", "shorter than base_interval")
			}
		}
	}
	if out.MaxInterval == 0 {
		out.MaxInterval = 10 * out.BaseInterval
	}
	return out
}

func compileRedirect(r *routev3.RedirectAction, m *Match, p string, opts Options, v *violations) *Redirect {
	out := &Redirect{Host: r.GetHostRedirect(), Port: r.GetPortRedirect(), StripQuery: r.GetStripQuery()}
	switch {
	case r.GetHttpsRedirect():
		out.Scheme = "https"
	case r.GetSchemeRedirect() != "":
		out.Scheme = strings.ToLower(r.GetSchemeRedirect())
	}
	if out.Port > math.MaxUint16 {
		v.add(p+".port_redirect", "port %d is out of range", out.Port)
	}
	switch ps := r.GetPathRewriteSpecifier().(type) {
	case *routev3.RedirectAction_PathRedirect:
		out.PathRedirect = ps.PathRedirect
	case *routev3.RedirectAction_PrefixRewrite:
		if m.PathKind == PathRegex {
			v.add(p+".prefix_rewrite", "prefix_rewrite needs a prefix, path or path_separated_prefix match")
		}
		out.PrefixRewrite, out.HasPrefix = ps.PrefixRewrite, true
	case *routev3.RedirectAction_RegexRewrite:
		out.RegexRewrite = compileRewrite(ps.RegexRewrite, p+".regex_rewrite", opts, v)
	}
	switch r.GetResponseCode() {
	case routev3.RedirectAction_MOVED_PERMANENTLY:
		out.Code = http.StatusMovedPermanently
	case routev3.RedirectAction_FOUND:
		out.Code = http.StatusFound
	case routev3.RedirectAction_SEE_OTHER:
		out.Code = http.StatusSeeOther
	case routev3.RedirectAction_TEMPORARY_REDIRECT:
		out.Code = http.StatusTemporaryRedirect
	case routev3.RedirectAction_PERMANENT_REDIRECT:
		out.Code = http.StatusPermanentRedirect
	default:
		v.add(p+".response_code", "code %s is not supported", r.GetResponseCode())
	}
	return out
}

// CompileCluster checks and compiles a Cluster.
func CompileCluster(c *clusterv3.Cluster, opts Options) (*Cluster, error) {
	v := check(c, typeURLCluster, c.GetName())
	if err := v.err(); err != nil {
		return nil, err
	}
	out := &Cluster{Name: c.GetName(), ConnectTimeout: defaultConnectTimeout, ChoiceCount: defaultChoiceCount}
	switch c.GetType() {
	case clusterv3.Cluster_EDS:
		eds := c.GetEdsClusterConfig()
		if eds.GetEdsConfig().GetAds() == nil {
			v.add("eds_cluster_config.eds_config", "only ads is supported")
		}
		out.EDS = c.GetName()
		if eds.GetServiceName() != "" {
			out.EDS = eds.GetServiceName()
		}
		if c.GetLoadAssignment() != nil {
			v.add("load_assignment", "an EDS cluster takes its endpoints from EDS")
		}
	case clusterv3.Cluster_STATIC:
		if c.GetEdsClusterConfig() != nil {
			v.add("eds_cluster_config", "a STATIC cluster has no EDS configuration")
		}
		if la := c.GetLoadAssignment(); la != nil {
			a := compileAssignment(la, "load_assignment", v)
			if a != nil {
				out.Static = a.Endpoints
			}
		}
	default:
		v.add("type", "cluster type %s is not supported (EDS or STATIC)", c.GetType())
	}
	switch c.GetLbPolicy() {
	case clusterv3.Cluster_ROUND_ROBIN:
		out.LB = LBRoundRobin
		if c.GetLeastRequestLbConfig() != nil {
			v.add("least_request_lb_config", "set with lb_policy ROUND_ROBIN")
		}
	case clusterv3.Cluster_LEAST_REQUEST:
		out.LB = LBLeastRequest
		if n := c.GetLeastRequestLbConfig().GetChoiceCount(); n != nil {
			out.ChoiceCount = int(n.GetValue())
			if out.ChoiceCount < 2 || out.ChoiceCount > 100 {
				v.add("least_request_lb_config.choice_count", "choice count %d is out of range [2, 100]", out.ChoiceCount)
			}
		}
	default:
		v.add("lb_policy", "policy %s is not supported (ROUND_ROBIN or LEAST_REQUEST)", c.GetLbPolicy())
	}
	if t := c.GetConnectTimeout(); t != nil {
		out.ConnectTimeout = duration(t, "connect_timeout", v)
	}
	for key, a := range c.GetTypedExtensionProtocolOptions() {
		kp := fmt.Sprintf("typed_extension_protocol_options[%q]", key)
		msg, err := unpack(a)
		if err != nil {
			v.add(kp, "%v", err)
			continue
		}
		o, ok := msg.(*httpv3.HttpProtocolOptions)
		if !ok || key != "envoy.extensions.upstreams.http.v3.HttpProtocolOptions" {
			v.add(kp, "only envoy.extensions.upstreams.http.v3.HttpProtocolOptions is supported")
			continue
		}
		switch {
		case o.GetExplicitHttpConfig().GetHttp2ProtocolOptions() != nil:
			out.Protocol = ProtocolHTTP2
		case o.GetExplicitHttpConfig() != nil:
			out.Protocol = ProtocolHTTP1
		case o.GetUseDownstreamProtocolConfig() != nil:
			out.Protocol = ProtocolDownstream
		}
	}
	if err := v.err(); err != nil {
		return nil, err
	}
	return out, nil
}

// CompileAssignment checks and compiles a ClusterLoadAssignment.
func CompileAssignment(la *endpointv3.ClusterLoadAssignment) (*Assignment, error) {
	v := check(la, typeURLEndpoint, la.GetClusterName())
	if err := v.err(); err != nil {
		return nil, err
	}
	a := compileAssignment(la, "", v)
	if err := v.err(); err != nil {
		return nil, err
	}
	return a, nil
}

func compileAssignment(la *endpointv3.ClusterLoadAssignment, p string, v *violations) *Assignment {
	n := len(v.list)
	out := &Assignment{Name: la.GetClusterName()}
	weight := uint32(0)
	for i, loc := range la.GetEndpoints() {
		for j, lb := range loc.GetLbEndpoints() {
			ep := join(p, fmt.Sprintf("endpoints[%d].lb_endpoints[%d]", i, j))
			if w := lb.GetLoadBalancingWeight(); w != nil {
				if weight == 0 {
					weight = w.GetValue()
				} else if w.GetValue() != weight {
					v.add(ep+".load_balancing_weight", "endpoint weights must all be equal (weighted endpoints are not supported)")
					continue
				}
			}
			switch lb.GetHealthStatus() {
			case corev3.HealthStatus_UNKNOWN, corev3.HealthStatus_HEALTHY:
			default:
				continue // not usable; Envoy does not send it requests either
			}
			sa := lb.GetEndpoint().GetAddress().GetSocketAddress()
			if sa == nil {
				v.add(ep+".endpoint.address", "a socket address is required")
				continue
			}
			ip, err := netip.ParseAddr(sa.GetAddress())
			if err != nil || ip.Zone() != "" {
				v.add(ep+".endpoint.address.socket_address.address", "%q is not an IP address", sa.GetAddress())
				continue
			}
			if sa.GetPortValue() == 0 || sa.GetPortValue() > math.MaxUint16 {
				v.add(ep+".endpoint.address.socket_address.port_value", "port %d is out of range", sa.GetPortValue())
				continue
			}
			e := Endpoint{Address: netip.AddrPortFrom(ip.Unmap(), uint16(sa.GetPortValue()))}
			if md, ok := lb.GetMetadata().GetFilterMetadata()[HBONEMetadataKey]; ok {
				mp := fmt.Sprintf("%s.metadata.filter_metadata[%q]", ep, HBONEMetadataKey)
				for k, val := range md.GetFields() {
					switch k {
					case waypointcontract.HBONEIdentityKey:
						id, err := spiffeid.FromString(val.GetStringValue())
						if err != nil {
							v.add(mp+".identity", "not a SPIFFE ID: %v", err)
							continue
						}
						e.Identity = id.String()
					case waypointcontract.HBONEPortKey:
						port := val.GetNumberValue()
						if port < 1 || port > math.MaxUint16 || port != math.Trunc(port) {
							v.add(mp+".port", "port %v is out of range", port)
							continue
						}
						e.TunnelPort = uint16(port)
					case waypointcontract.HBONENodeKey:
						// The endpoint's node, for logs; not used to connect.
					default:
						v.add(mp+"."+k, "unknown key")
					}
				}
				if e.Identity == "" || e.TunnelPort == 0 {
					v.add(mp, "identity and port are both required")
					continue
				}
			}
			e.Key = e.Address.String() + "|" + e.Identity + "|" + strconv.Itoa(int(e.TunnelPort))
			out.Endpoints = append(out.Endpoints, e)
		}
	}
	if len(v.list) > n {
		return nil
	}
	return out
}
